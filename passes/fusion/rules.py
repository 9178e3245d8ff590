"""Named, prioritised fusion rules over chains of single-use nodes.

A :class:`Rule` is an anchor (conv2d or linear) followed by stages, in the
style of TVM's CUTLASS pattern table: ``conv2d-act-residual-act`` is
``conv2d -> act -> add(., r) -> act``. Each stage is a predicate that says
whether a node is of the stage's kind (an activation, an add, a pool) and a
check that says why a node of that kind cannot be fused (an unsupported
activation, a broadcasting add, an intermediate read elsewhere). Rules are
tried per anchor in priority order; the first that matches is applied.

fx's ``SubgraphMatcher`` matches fixed op targets, and one pattern per
(anchor, activation, activation) combination would be several hundred
patterns, each a full-graph search; and it cannot say why a near-match
failed. A chain of single-use edges is what an epilogue is, so the matcher
here walks that chain and keeps the reason of the stage that stopped it.

Declines are kept on the graph as ``sparsec.declined`` metadata (shown by
the printer and ``sparsec inspect``), and fusions as ``sparsec.fused``.
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Any, Callable, ClassVar

import torch
from torch import fx

from sparsec.ir import meta as M
from sparsec.ir import ops

aten = torch.ops.aten


# -- metadata -------------------------------------------------------------------------------


@M.metadata
class Fused:
    """This node is a fused op made by ``rule`` from the (original) ``nodes``."""

    key: ClassVar[str] = "sparsec.fused"
    rule: str
    nodes: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.rule}[{','.join(self.nodes)}]"


@M.metadata
class Declined:
    """Fusions that were considered at this node and declined, as ``"rule: reason"``."""

    key: ClassVar[str] = "sparsec.declined"
    reasons: tuple[str, ...]

    def __str__(self) -> str:
        return "[" + "; ".join(self.reasons) + "]"


def add_declined(node: fx.Node, rule: str, reason: str) -> None:
    """Record ``rule: reason`` on ``node`` (kept sorted and unique, so re-runs print the same)."""
    prev = M.get(node, Declined)
    reasons = set(prev.reasons if prev else ()) | {f"{rule}: {reason}"}
    M.put(node, Declined(tuple(sorted(reasons))))


def drop_declined(node: fx.Node, prefix: str) -> None:
    """Forget the declines of rules whose name starts with ``prefix`` (a pass re-deciding)."""
    prev = M.get(node, Declined)
    if prev is None:
        return
    keep = tuple(r for r in prev.reasons if not r.startswith(prefix))
    M.drop(node, Declined)
    if keep:
        M.put(node, Declined(keep))


# -- values ---------------------------------------------------------------------------------


def val(node: Any) -> torch.Tensor | None:
    v = node.meta.get("val") if isinstance(node, fx.Node) else None
    return v if isinstance(v, torch.Tensor) else None


def shape_text(node: Any) -> str:
    v = val(node)
    return "?" if v is None else "[" + ",".join(str(d) for d in v.shape) + "]"


def users_text(node: fx.Node) -> str:
    """The users in graph order (``node.users`` keeps insertion order, which copies change)."""
    return ", ".join(u.name for u in node.graph.nodes if u in node.users)


# -- activations ----------------------------------------------------------------------------

# activation ops this pass can fold: target -> fused op name (hardtanh and gelu are checked below)
_ACT_NAMES = {
    aten.relu.default: "relu",
    aten.hardtanh.default: "relu6",
    aten.silu.default: "silu",
    aten.gelu.default: "gelu",
    aten.hardswish.default: "hardswish",
    aten.sigmoid.default: "sigmoid",
}
# activation-like ops the fused ops do not take: a decline, with the reason, rather than silence
_OTHER_ACTS = {
    aten.leaky_relu.default, aten.elu.default, aten.hardsigmoid.default, aten.tanh.default, aten.mish.default,
    aten.softplus.default, aten.clamp.default, aten.clamp_min.default, aten.clamp_max.default, aten.relu6.default,
    aten.prelu.default, aten.selu.default, aten.celu.default, aten.log_sigmoid.default,
}
_INPLACE_ACTS = {k for k, v in ops.INPLACE.items() if v in _ACT_NAMES or v in _OTHER_ACTS}
SUPPORTED_ACTS = "relu, relu6 (hardtanh(0,6)), silu, gelu, hardswish, sigmoid"


def is_activation(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target in (_ACT_NAMES.keys() | _OTHER_ACTS | _INPLACE_ACTS)


def activation_name(node: fx.Node) -> tuple[str | None, str | None]:
    """(the fused op's activation name, None), or (None, why it cannot be fused)."""
    if node.target in _INPLACE_ACTS:
        return None, f"in-place activation {ops.op_name(node.target)}: run canonicalize first"
    if node.target not in _ACT_NAMES:
        return None, f"unsupported activation {ops.op_name(node.target)} (supported: {SUPPORTED_ACTS})"
    a = ops.args_of(node)
    if node.target is aten.hardtanh.default:
        lo, hi = a["min_val"], a["max_val"]
        if (lo, hi) != (0.0, 6.0):
            return None, f"unsupported activation hardtanh(min={lo:g}, max={hi:g}) (supported: {SUPPORTED_ACTS})"
    if node.target is aten.gelu.default:
        return ("gelu" if a["approximate"] == "none" else "gelu_tanh"), None
    return _ACT_NAMES[node.target], None


# -- stages ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Stage:
    """One step of a rule after the anchor.

    ``kind(node)``: is the node of this stage's kind; ``check(state, node, prev)``
    returns ``None`` and records what it took in ``state``, or the reason it
    cannot be fused. ``optional`` stages are skipped when the next node is not
    of their kind.
    """

    name: str
    kind: Callable[[fx.Node], bool]
    check: Callable[[dict, fx.Node, fx.Node], str | None]  # (state, node, the node before it)
    optional: bool = False


@dataclasses.dataclass(frozen=True)
class Rule:
    """A named rewrite: ``anchor -> stages``; higher ``priority`` is tried first.

    ``algebra`` is the one-line meaning of the rewrite (the pass docstrings
    list the same table, which ``sparsec passes NAME`` prints).
    """

    name: str
    priority: int
    anchor: str  # "conv2d" or "linear"
    stages: tuple[Stage, ...]
    algebra: str


@dataclasses.dataclass
class Match:
    rule: Rule
    nodes: list[fx.Node]  # anchor first, then the node of each stage taken
    state: dict


@dataclasses.dataclass(frozen=True)
class Miss:
    rule: Rule
    depth: int  # how many stages matched before the one that failed
    reason: str
    kind_matched: bool  # the failing node was of the stage's kind (a near miss worth reporting)


def try_rule(rule: Rule, anchor: fx.Node, state: dict) -> Match | Miss:
    nodes, cur, depth = [anchor], anchor, 0
    for stage in rule.stages:
        users = list(cur.users)
        if len(users) != 1 or users[0].op != "call_function":
            if stage.optional:
                continue
            if len(users) > 1 and any(stage.kind(u) for u in users):
                return Miss(rule, depth, f"'{cur.name}' has {len(users)} users ({users_text(cur)}), "
                                         f"so its value must stay in memory", True)
            return Miss(rule, depth, f"'{cur.name}' is not followed by a {stage.name}", False)
        nxt = users[0]
        if not stage.kind(nxt):
            if stage.optional:
                continue
            return Miss(rule, depth, f"'{nxt.name}' ({ops.op_name(nxt.target)}) is not a {stage.name}", False)
        reason = stage.check(state, nxt, cur)
        if reason is not None:
            if stage.optional:
                continue
            return Miss(rule, depth, reason, True)
        nodes.append(nxt)
        cur = nxt
        depth += 1
    return Match(rule, nodes, state)


def best(anchor: fx.Node, rules: list[Rule], state: dict | str) -> tuple[Match | None, list[Miss]]:
    """The first rule (by priority) that matches at ``anchor``, and the misses tried before it.

    ``state`` is the anchor's operands, or the reason the anchor itself cannot
    be fused (reported only where its user is of some rule's first stage kind).
    """
    ordered = sorted(rules, key=lambda r: -r.priority)
    if isinstance(state, str):
        users = list(anchor.users)
        near = [r for r in ordered if len(users) == 1 and _first_required(r) and _first_required(r).kind(users[0])]
        return None, [Miss(near[-1], 0, state, True)] if near else []
    misses: list[Miss] = []
    for rule in ordered:
        got = try_rule(rule, anchor, dict(state))
        if isinstance(got, Match):
            return got, misses
        misses.append(got)
    return None, misses


def reportable(misses: list[Miss], matched: Match | None) -> list[Miss]:
    """Near misses worth showing: of a stage's kind, and reaching past what was matched."""
    out = [m for m in misses if m.kind_matched]
    if matched is not None:
        out = [m for m in out if m.depth >= len(matched.nodes) - 1]
    last: dict[str, Miss] = {}
    for m in out:  # one reason failing several rules is reported once, for the simplest (last) rule
        last[m.reason] = m
    return list(last.values())


def _first_required(rule: Rule) -> Stage | None:
    return next((s for s in rule.stages if not s.optional), None)


# -- anchors ---------------------------------------------------------------------------------


def conv2d_state(node: fx.Node) -> dict | str:
    """The conv's operands, or why this conv has no fused op."""
    if node.target not in ops.CONV:
        return f"{ops.op_name(node.target)} is not a conv"
    p = ops.conv_params(node)
    x = val(p["input"])
    if p["transposed"]:
        return "transposed convs have no fused op"
    if x is None or x.dim() != 4:
        return f"only 2-D convs (4-D NCHW input) have a fused op; this one has input {shape_text(p['input'])}"
    if node.target is aten.convolution.default and any(ops.args_of(node)["output_padding"]):
        return "the conv has output padding"

    def pair(v: Any) -> list[int]:
        v = list(v) if isinstance(v, (list, tuple)) else [v]
        return v * 2 if len(v) == 1 else v

    return {"x": p["input"], "weight": p["weight"], "bias": p["bias"], "stride": pair(p["stride"]),
            "padding": pair(p["padding"]), "dilation": pair(p["dilation"]), "groups": int(p["groups"])}


def linear_state(node: fx.Node) -> dict | str:
    a = ops.args_of(node)
    return {"x": a["input"], "weight": a["weight"], "bias": a["bias"]}


def is_add(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target in (aten.add.Tensor, aten.add_.Tensor)


def _same_value_kind(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and tuple(a.shape) == tuple(b.shape)


def check_add_common(node: fx.Node, cur: fx.Node) -> tuple[fx.Node | None, str | None]:
    """The other operand of ``add(cur, other)``, or why the add cannot go in an epilogue."""
    if node.target is aten.add_.Tensor:
        return None, f"in-place add '{node.name}': run canonicalize first"
    a = ops.args_of(node)
    if a["alpha"] != 1:
        return None, f"'{node.name}' scales its operand (alpha={a['alpha']})"
    other = a["other"] if a["self"] is cur else a["self"]
    if not isinstance(other, fx.Node):
        return None, f"'{node.name}' adds a scalar ({other!r}), not a tensor"
    if other is cur:
        return None, f"'{node.name}' adds '{cur.name}' to itself"
    return other, None


def is_getitem(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target is operator.getitem
