"""``fuse-epilogue``: conv2d/linear -> bias -> act -> residual add -> act, as one fused op.

The rule table (tried per anchor, highest priority first; every rule first
takes an optional separate bias add, ``op(x, w) + b`` with ``b`` a
per-channel parameter, when the op has no bias of its own)::

    conv2d-act-residual-act   act2(act(conv2d(x, w, b)) + r)   -> sparsec.fused_conv2d(.., act, act2)
    conv2d-residual-act       act2(conv2d(x, w, b) + r)        -> sparsec.fused_conv2d(.., act2=act2)
    conv2d-act-residual       act(conv2d(x, w, b)) + r         -> sparsec.fused_conv2d(.., act)
    conv2d-residual           conv2d(x, w, b) + r              -> sparsec.fused_conv2d(.., r)
    conv2d-act                act(conv2d(x, w, b))             -> sparsec.fused_conv2d(.., act)
    conv2d-bias               conv2d(x, w) + b                 -> sparsec.fused_conv2d(x, w, b)
    linear-*                  the same six with aten.linear    -> sparsec.fused_linear
"""

from __future__ import annotations

import dataclasses
import logging
from typing import ClassVar

import torch
from torch import fx

from sparsec.ir import meta as M
from sparsec.ir import ops
from sparsec.passes.base import Pass, PassResult
from sparsec.passes.fusion import ops as F
from sparsec.passes.fusion import rules as R

log = logging.getLogger("sparsec.passes.fusion")

aten = torch.ops.aten

PASS_NAME = "fuse-epilogue"


# -- stages ---------------------------------------------------------------------------------


def _check_bias(state: dict, node: fx.Node, cur: fx.Node) -> str | None:
    """``op(x, w) + b``: b a parameter that broadcasts along the channel dim only."""
    if state["bias"] is not None:
        return f"'{cur.name}' already has a bias"
    other, why = R.check_add_common(node, cur)
    if why is not None:
        return why
    if other.op != "get_attr":
        return f"'{other.name}' is computed, not a parameter"
    out, b = R.val(cur), R.val(other)
    if out is None or b is None or b.dtype != out.dtype:
        return f"'{other.name}' has another dtype than '{cur.name}'"
    c = out.shape[1] if state["kind"] == "conv2d" else out.shape[-1]
    ok = {(c, 1, 1), (1, c, 1, 1)} if state["kind"] == "conv2d" else {(c,), (1, c)}
    if tuple(b.shape) not in ok:
        return f"'{other.name}' {R.shape_text(other)} is not a per-channel bias of '{cur.name}' {R.shape_text(cur)}"
    state["bias_param"] = other
    return None


def _check_act(slot: str):
    def check(state: dict, node: fx.Node, cur: fx.Node) -> str | None:
        name, why = R.activation_name(node)
        if why is not None:
            return why
        state[slot] = name
        return None

    return check


def _check_residual(state: dict, node: fx.Node, cur: fx.Node) -> str | None:
    """``y + r`` with ``r`` of exactly ``y``'s shape and dtype (no broadcast)."""
    other, why = R.check_add_common(node, cur)
    if why is not None:
        return why
    y, r = R.val(cur), R.val(other)
    if y is None or r is None:
        return f"'{other.name}' has no shape metadata"
    if tuple(r.shape) != tuple(y.shape):
        return (f"'{node.name}' broadcasts '{other.name}' {R.shape_text(other)} to {R.shape_text(cur)}; "
                f"the epilogue takes a residual of the output's shape")
    if r.dtype != y.dtype:
        return f"'{node.name}' adds {M.dtype_name(r.dtype)} to {M.dtype_name(y.dtype)}"
    state["residual"] = other
    return None


BIAS = R.Stage("bias add", R.is_add, _check_bias, optional=True)
ACT = R.Stage("activation", R.is_activation, _check_act("act"))
ACT2 = R.Stage("activation", R.is_activation, _check_act("act2"))
RESIDUAL = R.Stage("residual add", R.is_add, _check_residual)
BIAS_ONLY = dataclasses.replace(BIAS, optional=False)


def _rules(anchor: str, fused: str) -> tuple[R.Rule, ...]:
    return (
        R.Rule(f"{anchor}-act-residual-act", 5, anchor, (BIAS, ACT, RESIDUAL, ACT2),
               f"act2(act({anchor}(x, w, b)) + r) -> {fused}(x, w, b, r, act, act2)"),
        R.Rule(f"{anchor}-residual-act", 4, anchor, (BIAS, RESIDUAL, ACT2),
               f"act2({anchor}(x, w, b) + r) -> {fused}(x, w, b, r, act2=act2)"),
        R.Rule(f"{anchor}-act-residual", 3, anchor, (BIAS, ACT, RESIDUAL),
               f"act({anchor}(x, w, b)) + r -> {fused}(x, w, b, r, act)"),
        R.Rule(f"{anchor}-residual", 2, anchor, (BIAS, RESIDUAL), f"{anchor}(x, w, b) + r -> {fused}(x, w, b, r)"),
        R.Rule(f"{anchor}-act", 1, anchor, (BIAS, ACT), f"act({anchor}(x, w, b)) -> {fused}(x, w, b, act=act)"),
        R.Rule(f"{anchor}-bias", 0, anchor, (BIAS_ONLY,), f"{anchor}(x, w) + b -> {fused}(x, w, b)"),
    )


RULES: tuple[R.Rule, ...] = _rules("conv2d", "sparsec.fused_conv2d") + _rules("linear", "sparsec.fused_linear")


def _anchor_state(node: fx.Node) -> tuple[str, dict | str] | None:
    """(anchor kind, its operands or why it cannot be fused), or None if it is no anchor."""
    if node.op != "call_function":
        return None
    if node.target in ops.CONV:
        st = R.conv2d_state(node)
        return "conv2d", ({**st, "kind": "conv2d"} if isinstance(st, dict) else st)
    if node.target in ops.LINEAR:
        return "linear", {**R.linear_state(node), "kind": "linear"}
    return None


# -- the pass ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FuseEpilogue(Pass):
    """Collapse conv2d/linear -> bias -> activation -> residual add -> activation into one fused op.

    Rules (named, by priority; each counted in the statistics under its name):

    - ``conv2d-act-residual-act``: ``act2(act(conv2d(x,w,b)) + r)`` -> ``sparsec.fused_conv2d``
    - ``conv2d-residual-act``: ``act2(conv2d(x,w,b) + r)`` (ResNet's block ending)
    - ``conv2d-act-residual``, ``conv2d-residual``, ``conv2d-act``, ``conv2d-bias``
    - ``linear-*``: the same six with ``aten.linear`` -> ``sparsec.fused_linear``

    Activations: relu, relu6 (``hardtanh(0,6)``), silu, gelu (erf and tanh),
    hardswish, sigmoid. Every rule first takes an optional separate
    per-channel bias add when the op has no bias of its own. A residual must
    have exactly the output's shape and dtype. An intermediate value read
    by anything outside the chain stops the chain there.

    A near miss (the next node is an add or an activation, but a check
    fails) is recorded on the node as ``sparsec.declined = [fuse-epilogue/RULE:
    reason]``, counted as ``declined``, and logged. The fused ops' reference
    implementations call the same ATen ops in the same order, so the result
    is bit-identical; only the ``*-bias`` absorption of a separate bias add
    can change rounding (exact on integer-valued data).

    Example: sparsec opt m.pt2 --pipeline canonicalize,fold-bn,dce,fuse-epilogue --pass-statistics
    """

    name: ClassVar[str] = PASS_NAME
    summary: ClassVar[str] = "fuse conv2d/linear with its bias, activation and residual add into one op"
    changes_numerics: ClassVar[bool] = False
    idempotent: ClassVar[bool] = True

    def run(self, mod, ctx) -> PassResult:
        counts = {r.name: 0 for r in RULES}
        declined = 0
        changed = False
        while True:  # to a fixed point; near misses are judged on the final graph, so a re-run agrees
            misses_at: list[tuple[fx.Node, list[R.Miss]]] = []
            fused_now = 0
            for node in list(mod.graph.nodes):
                got = _anchor_state(node) if not getattr(node, "_erased", False) else None  # erased this sweep
                if got is None:
                    continue
                kind, state = got
                match, misses = R.best(node, [r for r in RULES if r.anchor == kind], state)
                if match is None:
                    misses_at.append((node, misses))
                    continue
                fused = _rewrite(mod, match)
                counts[match.rule.name] += 1
                fused_now += 1
                log.debug("%s: %s -> %s", PASS_NAME, match.rule.name, fused.name)
                for miss in R.reportable(misses, match):  # longer rules that failed here
                    declined += self._decline(fused, miss)
            if not fused_now:
                break
            changed = True
        for node, misses in misses_at:
            before = M.get(node, R.Declined)
            R.drop_declined(node, f"{PASS_NAME}/")
            for miss in R.reportable(misses, None):
                declined += self._decline(node, miss)
            changed = changed or M.get(node, R.Declined) != before
        stats = {k: v for k, v in counts.items() if v}
        stats.update(fused=sum(counts.values()), declined=declined)
        return PassResult(modified=changed, stats=stats)

    @staticmethod
    def _decline(node: fx.Node, miss: R.Miss) -> int:
        R.add_declined(node, f"{PASS_NAME}/{miss.rule.name}", miss.reason)
        log.info("%s: declined %s at '%s': %s", PASS_NAME, miss.rule.name, node.name, miss.reason)
        return 1


def _rewrite(mod, match: R.Match) -> fx.Node:
    st, graph = match.state, mod.graph
    anchor, last = match.nodes[0], match.nodes[-1]
    with graph.inserting_before(last):
        bias = st["bias"]
        if "bias_param" in st:
            bias = _vector_bias(mod, st["bias_param"])
        act, act2 = st.get("act", "none"), st.get("act2", "none")
        if st["kind"] == "conv2d":
            args = (st["x"], st["weight"], bias, st.get("residual"), st["stride"], st["padding"], st["dilation"],
                    st["groups"], act, act2)
            fused = graph.create_node("call_function", F.fused_conv2d, args, name="fused_conv2d")
        else:
            args = (st["x"], st["weight"], bias, st.get("residual"), act, act2)
            fused = graph.create_node("call_function", F.fused_linear, args, name="fused_linear")
    inherit_meta(fused, anchor, last)
    M.put(fused, R.Fused(match.rule.name, tuple(n.name for n in match.nodes)))
    last.replace_all_uses_with(fused)
    for n in reversed(match.nodes):
        graph.erase_node(n)
    return fused


def inherit_meta(new: fx.Node, anchor: fx.Node, last: fx.Node) -> None:
    """Give a fused node the value of ``last`` (same shape and dtype), and its anchor's source
    location and sparsec metadata (not backend or declines)."""
    new.meta["val"] = last.meta.get("val")
    for key in ("stack_trace", "nn_module_stack", "source_fn_stack"):
        if key in anchor.meta:
            new.meta[key] = anchor.meta[key]
    skip = {M.BackendAssignment.key, R.Declined.key, R.Fused.key}
    for key, value in M.items(anchor):
        if key not in skip:
            new.meta[key] = value


def _vector_bias(mod, param: fx.Node) -> fx.Node:
    """A get_attr of ``param``'s tensor as a 1-D vector (a new parameter if it is not 1-D already)."""
    t = mod.get_param(param.target)
    if t.dim() == 1:
        return param
    name = mod.fresh_param_name(f"{param.target}_vec")
    mod.set_param(name, t.detach().reshape(-1).clone())
    return mod.graph.get_attr(name)
