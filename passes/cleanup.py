"""Cleanup passes: ``canonicalize`` and ``dce``.

``canonicalize`` puts an exported graph in the form the other passes match
on: no eval-mode dropout, no identity ops, and functional ops where an
in-place op can be rewritten without changing what any reader sees. ``dce``
removes what nothing reads, including parameters and buffers that no node
uses any more (``num_batches_tracked``, a folded BatchNorm's statistics).

Whether an in-place rewrite or a copy removal is safe is decided by a small
alias analysis over the ATen schemas (see :func:`storage_base` and
:func:`alias_closure`): two nodes alias when one is a view or in-place
result of the other.
"""

from __future__ import annotations

import dataclasses
import logging
import operator
from typing import ClassVar

import torch
from torch import fx

from sparsec.ir import ops
from sparsec.ir.module import is_valueless
from sparsec.passes.base import Pass, PassResult

log = logging.getLogger("sparsec.passes.cleanup")

aten = torch.ops.aten

# Copies: removing one makes its result share storage with its input.
_COPIES = {aten.clone.default, aten.lift_fresh_copy.default}
# Identity views: the result is the input's storage, so removal is always exact.
_VIEWS = {aten.alias.default, aten.detach.default}
_KEEPS_FORMAT = (None, torch.preserve_format)


# -- alias analysis ---------------------------------------------------------------


def _aliased_input(node: fx.Node) -> fx.Node | None:
    """The input whose storage ``node``'s result shares (a view or in-place op), else None."""
    if node.op != "call_function":
        return None
    if node.target is operator.getitem:
        src = node.args[0]
        return src if isinstance(src, fx.Node) and _aliased_input(src) is not None else None
    if node.target in ops.DROPOUT and ops.args_of(node)["train"] is False:
        return ops.args_of(node)["input"]  # eval dropout returns its input itself
    if not ops.is_aten(node):
        return None
    schema = node.target._schema
    sets = set()
    for ret in schema.returns:
        if ret.alias_info is not None:
            sets |= set(ret.alias_info.before_set)
    if not sets:
        return None
    given = ops.args_of(node)
    for arg in schema.arguments:
        if arg.alias_info is not None and sets & set(arg.alias_info.before_set):
            value = given[arg.name]
            if isinstance(value, fx.Node):
                return value
    return None


def _written_input(node: fx.Node) -> fx.Node | None:
    """The operand an in-place ATen op writes to, else None."""
    if not ops.is_aten(node):
        return None
    given = ops.args_of(node)
    for arg in node.target._schema.arguments:
        if arg.alias_info is not None and arg.alias_info.is_write and isinstance(given[arg.name], fx.Node):
            return given[arg.name]
    return None


def _may_write(user: fx.Node, value: fx.Node) -> bool:
    """Could ``user`` mutate ``value``? Unknown calls are assumed to."""
    if user.op == "output" or is_valueless(user) or user.target is operator.getitem:
        return False
    if ops.is_aten(user):
        given = ops.args_of(user)
        return any(
            a.alias_info is not None and a.alias_info.is_write and given[a.name] is value
            for a in user.target._schema.arguments
        )
    return user.op in ("call_function", "call_module", "call_method")


def storage_base(node: fx.Node) -> fx.Node:
    """Follow views and in-place results up to the node that owns the storage."""
    seen = set()
    while node not in seen:
        seen.add(node)
        src = _aliased_input(node)
        if src is None:
            return node
        node = src
    return node


def alias_closure(node: fx.Node) -> set[fx.Node]:
    """``node`` and every node that is (transitively) a view or in-place result of it."""
    out, todo = {node}, [node]
    while todo:
        n = todo.pop()
        for u in n.users:
            if u not in out and _aliased_input(u) is n:
                out.add(u)
                todo.append(u)
    return out


def _positions(graph: fx.Graph) -> dict[fx.Node, int]:
    return {n: i for i, n in enumerate(graph.nodes)}


def _dead_nodes(graph: fx.Graph) -> set[fx.Node]:
    """Nodes ``dce`` would remove: pure, and read only by dead nodes."""
    dead: set[fx.Node] = set()
    for n in reversed(graph.nodes):
        if n.op in ("placeholder", "output") or is_valueless(n) or n.is_impure():
            continue
        if all(u in dead for u in n.users):
            dead.add(n)
    return dead


def _inplace_unsafe_reason(node: fx.Node, pos: dict[fx.Node, int], dead: set[fx.Node]) -> str | None:
    """Why rewriting in-place ``node`` to its functional twin would change semantics, else None.

    Readers in ``dead`` are ignored: ``dce`` removes them, and counting them
    would make ``canonicalize,dce`` rewrite more on a second run.
    """
    mutated = _written_input(node)
    if mutated is None:
        return "no mutated tensor operand"
    base = storage_base(mutated)
    if base.op in ("placeholder", "get_attr"):
        return f"it mutates {base.op} '{base.target}', which the caller can observe"
    derived = alias_closure(node)
    for m in alias_closure(base) - derived:
        for u in m.users:
            if u is not node and u not in dead and pos[u] > pos[node]:
                return f"'{m.name}' (which it mutates) is read afterwards by '{u.name}'"
    return None


def _copy_unsafe_reason(node: fx.Node) -> str | None:
    """Why replacing copy ``node`` by its input would change semantics, else None."""
    src = node.args[0]
    base = storage_base(src)
    mine, theirs = alias_closure(node), alias_closure(base)
    for m in mine | theirs:
        for u in m.users:
            if _may_write(u, m):
                return f"'{u.name}' mutates '{m.name}', so the copy is needed"
    if any(u.op == "output" for m in mine for u in m.users) and (
        base.op in ("placeholder", "get_attr") or any(u.op == "output" for m in theirs for u in m.users)
    ):
        return "the copy is returned, and its input is an input, a parameter or another output"
    return None


def _replace(node: fx.Node, value: fx.Node) -> None:
    node.replace_all_uses_with(value)
    node.graph.erase_node(node)


@dataclasses.dataclass(frozen=True)
class Canonicalize(Pass):
    """Remove eval-mode dropout and identity ops; make safe in-place ops functional.

    Rules (each counted in the stats):

    - ``dropout``: ``aten.dropout/feature_dropout/alpha_dropout(x, p, train=False)`` -> ``x``
    - ``identity``: ``aten.alias(x)``, ``aten.detach(x)`` -> ``x``
    - ``clone``: ``aten.clone(x)`` with no memory-format change -> ``x``, unless
      either side is later mutated, or it would make an output alias an input
    - ``inplace``: ``aten.relu_(x)`` -> ``aten.relu(x)`` (and the other ops of
      ``ir.ops.INPLACE``), unless ``x``'s storage belongs to an input or a
      parameter, or ``x`` (or a view of it) is read after the in-place op

    A rewrite that is not safe is skipped and counted (``*_skipped``); the
    reason is logged at debug level. Rules run to a fixed point, so a second
    run changes nothing.

    Example: sparsec opt m.pt2 --pipeline canonicalize
    """

    name: ClassVar[str] = "canonicalize"
    summary: ClassVar[str] = "drop eval dropout and identity ops; make safe in-place ops functional"
    changes_numerics: ClassVar[bool] = False
    idempotent: ClassVar[bool] = True

    def run(self, mod, ctx) -> PassResult:
        stats = {"dropout": 0, "identity": 0, "clone": 0, "inplace": 0, "clone_skipped": 0, "inplace_skipped": 0}
        graph = mod.graph
        for _ in range(len(graph.nodes) + 1):  # to a fixed point; each round removes or rewrites a node
            skipped_clone, skipped_inplace = 0, 0
            changed = False
            pos, dead = _positions(graph), _dead_nodes(graph)
            for node in list(graph.nodes):
                if node.op != "call_function" or node.target not in ops.INPLACE:
                    continue
                reason = _inplace_unsafe_reason(node, pos, dead)
                if reason is not None:
                    log.debug("canonicalize: keeping in-place %s: %s", node.name, reason)
                    skipped_inplace += 1
                    continue
                functional = ops.INPLACE[node.target]
                name = functional._schema.name.split("::")[-1]
                with graph.inserting_before(node):
                    new = graph.create_node("call_function", functional, node.args, node.kwargs, name=name)
                new.meta = dict(node.meta)
                _replace(node, new)
                pos, dead = _positions(graph), _dead_nodes(graph)
                stats["inplace"] += 1
                changed = True
            for node in list(graph.nodes):
                if node.op != "call_function":
                    continue
                if node.target in ops.DROPOUT:
                    a = ops.args_of(node)
                    if a["train"] is False:
                        _replace(node, a["input"])
                        stats["dropout"] += 1
                        changed = True
                    else:
                        log.debug("canonicalize: keeping %s: dropout in training mode", node.name)
                elif node.target in _VIEWS:
                    _replace(node, node.args[0])
                    stats["identity"] += 1
                    changed = True
                elif node.target in _COPIES:
                    if not self._keeps_format(node):
                        continue
                    reason = _copy_unsafe_reason(node)
                    if reason is not None:
                        log.debug("canonicalize: keeping %s: %s", node.name, reason)
                        skipped_clone += 1
                        continue
                    _replace(node, node.args[0])
                    stats["clone"] += 1
                    changed = True
            stats["clone_skipped"], stats["inplace_skipped"] = skipped_clone, skipped_inplace
            if not changed:
                break
        modified = any(stats[k] for k in ("dropout", "identity", "clone", "inplace"))
        return PassResult(modified=modified, stats=stats)

    @staticmethod
    def _keeps_format(node: fx.Node) -> bool:
        if node.target is not aten.clone.default:
            return True
        fmt = ops.args_of(node)["memory_format"]
        if fmt in _KEEPS_FORMAT:
            return True
        if fmt is torch.contiguous_format:
            val = node.args[0].meta.get("val") if isinstance(node.args[0], fx.Node) else None
            return isinstance(val, torch.Tensor) and val.is_contiguous()
        return False


@dataclasses.dataclass(frozen=True)
class DeadCodeElimination(Pass):
    """Remove nodes whose results nothing reads, then unused parameters and buffers.

    Impure nodes (in-place ops, random ops, export's ``_guards_fn`` input
    check) are kept. A ``get_attr`` node with no users is removed, and its
    tensor is deleted from the module when no other node reads it (for
    example ``bn.num_batches_tracked``, or a BatchNorm's statistics after
    ``fold-bn``). Submodules left empty are removed too.

    Example: sparsec opt m.pt2 --pipeline fold-bn,dce
    """

    name: ClassVar[str] = "dce"
    summary: ClassVar[str] = "remove unused nodes, parameters and buffers"
    changes_numerics: ClassVar[bool] = False
    idempotent: ClassVar[bool] = True

    def run(self, mod, ctx) -> PassResult:
        graph = mod.graph
        before = len(graph.nodes)
        attrs_before = {n.target for n in graph.nodes if n.op == "get_attr"}
        graph.eliminate_dead_code(is_impure_node=lambda n: is_valueless(n) or n.is_impure())
        for n in [n for n in graph.nodes if n.op == "get_attr" and not n.users]:
            graph.erase_node(n)
        removed_params = 0
        live = {n.target for n in graph.nodes if n.op == "get_attr"}
        for target in sorted(attrs_before - live):
            try:
                mod.get_param(target)
            except AttributeError:
                continue
            mod.delete_param(target)
            _drop_empty_parents(mod.gm, target)
            removed_params += 1
            log.debug("dce: deleted unused tensor %s", target)
        removed_nodes = before - len(graph.nodes)
        return PassResult(
            modified=bool(removed_nodes or removed_params),
            stats={"nodes_removed": removed_nodes, "params_removed": removed_params},
        )


def _drop_empty_parents(gm: torch.nn.Module, target: str) -> None:
    """Delete plain ``nn.Module`` containers on ``target``'s path left with nothing in them."""
    path = target.split(".")[:-1]
    while path:
        owner = gm.get_submodule(".".join(path))
        if type(owner) is not torch.nn.Module or owner._parameters or owner._buffers or owner._modules:
            return
        if any(isinstance(v, torch.Tensor) for v in vars(owner).values()):
            return
        parent = gm.get_submodule(".".join(path[:-1])) if len(path) > 1 else gm
        delattr(parent, path[-1])
        path = path[:-1]
