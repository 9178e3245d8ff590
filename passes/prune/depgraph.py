"""``ChannelDepGraph``: which channels must be pruned together, and how.

After Torch-Pruning's ``dependency.py``, on sparsec's ATen fx IR. A channel
space is one dim of one node's output, ``(node, dim)``; a ``get_attr``
parameter is a node like any other, so a conv weight's dim 0 is a space too.
Each op's rule (:mod:`sparsec.passes.prune.rules`) couples spaces element by
element: ``conv`` couples ``weight[o]`` with ``out[:, o]``, ``cat`` couples
input ``k``'s channel ``c`` with output channel ``offset_k + c``, flatten
couples feature ``j`` with channel ``j // (H*W)``.

The coupled *elements* fall into **units** (union-find over every element
of every space: one unit is one channel, or a whole conv group, norm group or
head, removed everywhere at once); the coupled *spaces* fall into **groups**
(union-find over spaces). A group is prunable when some rule named one of its
spaces a pruning root (a conv or linear output), no member is protected (the
model's inputs and outputs), and no member was blocked: an op without a rule
blocks every group it touches, with a diagnostic naming the op, the node and
its source line. Nothing is guessed.

Example:
    >>> dg = mod.analysis(ChannelDepGraph)
    >>> print(dg.summary())
"""

from __future__ import annotations

import dataclasses
import logging
from types import MappingProxyType
from typing import Any, Mapping

import numpy as np
import torch
from torch import fx

from sparsec.errors import node_location
from sparsec.ir import ops
from sparsec.passes.prune import rules as R

log = logging.getLogger("sparsec.passes.prune")


@dataclasses.dataclass(frozen=True)
class Diagnostic:
    """Why a space (and so its group) is not prunable."""

    node: str
    dim: int
    reason: str

    def __str__(self) -> str:
        return f"{self.node}:{self.dim}: {self.reason}"


@dataclasses.dataclass(frozen=True, eq=False)
class ChannelGroup:
    """Coupled channel spaces, pruned together.

    ``members``: ``(node name, dim)`` in graph order; ``unit_of[i]``: for
    member ``i``, the unit index (``0..size-1``) of each of its elements;
    ``roots``: the members that are producer outputs; ``params``: members
    that are parameters, as ``(member index, get_attr target)``.
    """

    id: int
    members: tuple[tuple[str, int], ...]
    unit_of: tuple[np.ndarray, ...]
    size: int
    roots: tuple[int, ...]
    params: tuple[tuple[int, str], ...]
    diagnostics: tuple[Diagnostic, ...]
    protected: tuple[str, ...]

    @property
    def prunable(self) -> bool:
        return bool(self.roots) and not self.diagnostics and not self.protected and self.size > 1

    @property
    def why_not(self) -> str:
        if self.protected:
            return "model " + self.protected[0]
        if self.diagnostics:
            return str(self.diagnostics[0])
        if not self.roots:
            return "no producer (conv/linear output) in the group"
        if self.size <= 1:
            return "a single unit"
        return ""

    def label(self) -> str:
        root = self.members[self.roots[0]] if self.roots else self.members[0]
        return f"{root[0]}:{root[1]}"

    def partitions(self) -> list[np.ndarray]:
        """Units split by which members hold them (each cat input, each split
        output is its own part), so keeping >= 1 unit per part leaves no member empty."""
        rng = np.random.default_rng(12345)
        keys = rng.integers(1, 2**62, size=len(self.members), dtype=np.int64)
        sig = np.zeros(self.size, dtype=np.int64)
        for k, u in zip(keys, self.unit_of):
            sig[np.unique(u)] ^= k
        _, inverse = np.unique(sig, return_inverse=True)
        return [np.nonzero(inverse == p)[0] for p in range(inverse.max() + 1)]


class RuleContext:
    """What a rule may do: couple spaces, block them, name roots."""

    def __init__(self, graph: "_Builder", node: fx.Node) -> None:
        self._b = graph
        self.node = node

    def shape(self, n: Any) -> tuple[int, ...] | None:
        return self._b.shape(n)

    def same(self, a: fx.Node, da: int, b: fx.Node, db: int) -> None:
        """Couple a[da] with b[db] index for index (sizes must agree)."""
        sa, sb = self._b.shape(a), self._b.shape(b)
        if sa is None or sb is None:
            return
        da, db = R._nd(da, len(sa)), R._nd(db, len(sb))
        if sa[da] != sb[db]:
            if 1 in (sa[da], sb[db]):
                return  # broadcast: nothing couples
            raise R.Unsupported(f"dims disagree: {a.name}[{da}]={sa[da]} vs {b.name}[{db}]={sb[db]}")
        i = torch.arange(sa[da])
        self.couple(a, da, i, b, db, i)

    def couple(self, a: fx.Node, da: int, ia, b: fx.Node, db: int, ib) -> None:
        """Couple element ia[k] of a[da] with element ib[k] of b[db], for each k."""
        self._b.couple(a, da, np.asarray(ia), b, db, np.asarray(ib))

    def identity(self, a: fx.Node, b: fx.Node) -> None:
        """Couple every dim of a with the same dim of b."""
        sa, sb = self._b.shape(a), self._b.shape(b)
        if sa is None or sb is None:
            return
        if len(sa) != len(sb):
            raise R.Unsupported(f"{a.name} and {b.name} differ in rank")
        for d in range(len(sa)):
            self.same(a, d, b, d)

    def broadcast(self, out: fx.Node, *inputs: fx.Node) -> None:
        """Elementwise with numpy broadcasting: dims align from the right."""
        so = self._b.shape(out)
        for t in inputs:
            st = self._b.shape(t)
            if st is None or so is None:
                continue
            for k in range(1, len(st) + 1):
                if st[-k] == so[-k]:
                    self.same(t, len(st) - k, out, len(so) - k)

    def block(self, n: fx.Node, dim: int, reason: str) -> None:
        self._b.block(n, dim, self.node, reason)

    def block_all(self, n: fx.Node, reason: str) -> None:
        s = self._b.shape(n)
        for d in range(len(s or ())):
            self.block(n, d, reason)

    def root(self, n: fx.Node, dim: int) -> None:
        """Mark n[dim] as a producer output: a group holding it is worth pruning."""
        s = self._b.shape(n)
        self._b.roots.add(self._b.space(n, R._nd(dim, len(s))))

    def getitem(self, n: fx.Node, index: int) -> fx.Node | None:
        """The ``getitem(n, index)`` user of a multi-output node, if any."""
        import operator

        for u in n.users:
            if u.target is operator.getitem and u.args[1] == index:
                return u
        return None


class _Builder:
    def __init__(self) -> None:
        self.spaces: list[tuple[fx.Node, int, int]] = []  # (node, dim, size)
        self.index: dict[tuple[fx.Node, int], int] = {}
        self.offsets: list[int] = []
        self.total = 0
        self.edges_a: list[np.ndarray] = []
        self.edges_b: list[np.ndarray] = []
        self.space_parent: list[int] = []
        self.roots: set[int] = set()
        self.diags: dict[int, list[Diagnostic]] = {}
        self.protected: dict[int, str] = {}

    def shape(self, n: Any) -> tuple[int, ...] | None:
        if not isinstance(n, fx.Node):
            return None
        v = n.meta.get("val")
        if not isinstance(v, torch.Tensor):
            return None
        return tuple(_concrete(v.shape))

    def space(self, n: fx.Node, dim: int) -> int:
        key = (n, dim)
        sid = self.index.get(key)
        if sid is None:
            size = self.shape(n)[dim]
            sid = len(self.spaces)
            self.spaces.append((n, dim, size))
            self.index[key] = sid
            self.offsets.append(self.total)
            self.total += size
            self.space_parent.append(sid)
        return sid

    def _find(self, s: int) -> int:
        p = self.space_parent
        while p[s] != s:
            p[s] = p[p[s]]
            s = p[s]
        return s

    def couple(self, a, da, ia, b, db, ib) -> None:
        sa, sb = self.space(a, da), self.space(b, db)
        if len(ia) == 0:
            return
        self.edges_a.append(self.offsets[sa] + ia.astype(np.int64))
        self.edges_b.append(self.offsets[sb] + ib.astype(np.int64))
        ra, rb = self._find(sa), self._find(sb)
        if ra != rb:
            self.space_parent[max(ra, rb)] = min(ra, rb)

    def block(self, n: fx.Node, dim: int, at: fx.Node, reason: str) -> None:
        s = self.shape(n)
        if s is None:
            return
        sid = self.space(n, R._nd(dim, len(s)))
        self.diags.setdefault(sid, []).append(Diagnostic(n.name, R._nd(dim, len(s)), f"{reason} (at {node_location(at)})"))

    def protect(self, n: fx.Node, what: str) -> None:
        s = self.shape(n)
        for d in range(len(s or ())):
            self.protected[self.space(n, d)] = what

    def block_touched(self, node: fx.Node, reason: str) -> None:
        """Block every dim of every tensor the node reads or writes."""
        import operator

        touched = [a for a in node.all_input_nodes]
        if isinstance(node.meta.get("val"), torch.Tensor):
            touched.append(node)
        touched += [u for u in node.users if u.target is operator.getitem]
        for n in touched:
            s = self.shape(n)
            for d in range(len(s or ())):
                sid = self.space(n, d)
                self.diags.setdefault(sid, []).append(Diagnostic(n.name, d, reason))

    def element_labels(self) -> np.ndarray:
        """Connected components of the element graph (hook roots, then compress)."""
        labels = np.arange(self.total, dtype=np.int64)
        if not self.edges_a:
            return labels
        a = np.concatenate(self.edges_a)
        b = np.concatenate(self.edges_b)
        while True:
            ra, rb = labels[a], labels[b]
            diff = ra != rb
            if not diff.any():
                return labels
            ra, rb = ra[diff], rb[diff]
            lo, hi = np.minimum(ra, rb), np.maximum(ra, rb)
            np.minimum.at(labels, hi, lo)
            while True:
                nxt = labels[labels]
                if np.array_equal(nxt, labels):
                    break
                labels = nxt
            a, b = a[diff], b[diff]


def _concrete(shape) -> list[int]:
    out = []
    for d in shape:
        try:
            out.append(int(d))
        except Exception:  # a symbolic dim: use its hint
            out.append(int(d.node.hint) if getattr(d.node, "hint", None) is not None else 1)
    return out


@dataclasses.dataclass(frozen=True)
class ChannelDepGraph:
    """The channel groups of a module (an analysis: ``mod.analysis(ChannelDepGraph)``)."""

    groups: tuple[ChannelGroup, ...]
    space_group: Mapping[tuple[str, int], tuple[int, int]]  # (node, dim) -> (group id, member index)

    @classmethod
    def run(cls, mod) -> "ChannelDepGraph":
        b = _Builder()
        order = {n: i for i, n in enumerate(mod.graph.nodes)}
        for node in mod.graph.nodes:
            if node.op == "placeholder":
                b.protect(node, f"input '{node.name}'")
            elif node.op == "output":
                for n in _flat_nodes(node.args):
                    b.protect(n, f"output '{n.name}'")
            elif node.op == "call_function":
                rule = R.rule_for(node.target)
                if rule is None:
                    b.block_touched(node, f"no channel rule for {ops.op_name(node.target)} at {node_location(node)}; "
                                          f"register one with @channel_rule")
                    continue
                try:
                    rule.couple(node, RuleContext(b, node))
                except R.Unsupported as exc:
                    b.block_touched(node, f"{exc} at {node_location(node)}")
            elif node.op == "call_module":
                from sparsec.ir.module import is_valueless

                if not is_valueless(node):
                    b.block_touched(node, f"call_module {node.target} has no channel rule at {node_location(node)}")
        labels = b.element_labels()
        # groups: components of the space union-find, in graph order of their first member
        comp: dict[int, list[int]] = {}
        for sid in range(len(b.spaces)):
            comp.setdefault(b._find(sid), []).append(sid)
        members_sorted = sorted(
            (sorted(sids, key=lambda s: (order[b.spaces[s][0]], b.spaces[s][1])) for sids in comp.values()),
            key=lambda sids: (order[b.spaces[sids[0]][0]], b.spaces[sids[0]][1]),
        )
        groups, space_group = [], {}
        for gid, sids in enumerate(members_sorted):
            elem_labels = [labels[b.offsets[s]: b.offsets[s] + b.spaces[s][2]] for s in sids]
            # units numbered by first appearance, scanning members in order
            flat = np.concatenate(elem_labels) if elem_labels else np.zeros(0, np.int64)
            _, first = np.unique(flat, return_index=True)
            uniq_in_order = flat[np.sort(first)]
            remap = {int(u): k for k, u in enumerate(uniq_in_order)}
            lut_keys = np.array(list(remap.keys()), dtype=np.int64)
            lut_vals = np.array(list(remap.values()), dtype=np.int64)
            srt = np.argsort(lut_keys)
            unit_of = tuple(lut_vals[srt][np.searchsorted(lut_keys[srt], el)] for el in elem_labels)
            members = tuple((b.spaces[s][0].name, b.spaces[s][1]) for s in sids)
            roots = tuple(i for i, s in enumerate(sids) if s in b.roots)
            params = tuple((i, b.spaces[s][0].target) for i, s in enumerate(sids) if b.spaces[s][0].op == "get_attr")
            diags = tuple(d for s in sids for d in b.diags.get(s, ()))
            prot = tuple(sorted({b.protected[s] for s in sids if s in b.protected}))
            groups.append(ChannelGroup(gid, members, unit_of, len(remap), roots, params, diags, prot))
            for i, m in enumerate(members):
                space_group[m] = (gid, i)
        return cls(tuple(groups), MappingProxyType(space_group))

    # -- queries ---------------------------------------------------------------------
    def prunable(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.prunable]

    def group_of(self, node: fx.Node | str, dim: int) -> ChannelGroup | None:
        name = node if isinstance(node, str) else node.name
        hit = self.space_group.get((name, dim))
        return self.groups[hit[0]] if hit else None

    def unprunable_with_producers(self) -> list[ChannelGroup]:
        """Groups that hold a conv/linear output but cannot be pruned (worth reporting)."""
        return [g for g in self.groups if g.roots and not g.prunable]

    def summary(self) -> str:
        lines = [f"{len(self.groups)} channel groups, {len(self.prunable())} prunable"]
        for g in self.groups:
            if not g.roots:
                continue
            state = "prunable" if g.prunable else f"unprunable: {g.why_not}"
            lines.append(f"  group {g.id} {g.label()} units={g.size} members={len(g.members)} {state}")
        return "\n".join(lines)

    def to_networkx(self):
        """A networkx graph: one node per channel space, edges within a group (for DOT pictures)."""
        import networkx as nx

        G = nx.Graph()
        for g in self.groups:
            names = [f"{n}:{d}" for n, d in g.members]
            for nm in names:
                G.add_node(nm, group=g.id, prunable=g.prunable)
            for x, y in zip(names, names[1:]):
                G.add_edge(x, y)
        return G

    def to_dot(self, only_producers: bool = True) -> str:
        return to_dot(self, only_producers)


def to_dot(dg: ChannelDepGraph, only_producers: bool = True) -> str:
    """A Graphviz DOT picture: one cluster per group (green prunable, grey not),
    one box per channel space, the networkx edges of :meth:`ChannelDepGraph.to_networkx`."""
    G = dg.to_networkx()
    lines = ["graph channels {", "  node [shape=box, fontsize=10];"]
    for g in dg.groups:
        if only_producers and not g.roots:
            continue
        color = "palegreen" if g.prunable else "lightgrey"
        why = g.why_not.replace('"', "'")[:120]
        label = f"group {g.id}: {g.size} units" + ("" if g.prunable else f"\\n{why}")
        lines.append(f'  subgraph cluster_{g.id} {{ label="{label}"; style=filled; color={color};')
        for n, d in g.members:
            lines.append(f'    "{n}:{d}";')
        lines.append("  }")
        names = {f"{n}:{d}" for n, d in g.members}
        for a, b in G.subgraph(names).edges:
            lines.append(f'  "{a}" -- "{b}";')
    lines.append("}")
    return "\n".join(lines)


def _flat_nodes(args) -> list[fx.Node]:
    out: list[fx.Node] = []
    fx.node.map_arg(args, lambda n: out.append(n))
    return out
