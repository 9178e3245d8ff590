"""``fuse-squeeze-excite``: a squeeze-and-excitation block as one ``sparsec.squeeze_excite``.

MobileNetV3 and EfficientNet gate the channels of every inverted-residual block::

    squeeze-excite   x * gate(fc2(act(fc1(mean_hw(x)))))   -> sparsec.squeeze_excite(x, w1, b1, w2, b2, act, gate)

``mean_hw`` is ``adaptive_avg_pool2d(x, [1, 1])`` or ``mean(x, [2, 3], keepdim=True)``; ``fc1`` and
``fc2`` are 1x1 convs (``sparsec.fused_conv2d`` after ``fuse-epilogue``, or a plain conv2d) on the
[N, C, 1, 1] vector, with their activations. Run it after ``fuse-epilogue``.

Unfused, a GPU runs the block as six kernels, three of them full passes over ``x`` (the mean, and
the broadcast multiply's read and write), with the 1x1 convs on a [N, C, 1, 1] tensor in cuDNN and
their bias adds and activations on their own. A backend with a kernel for the fused op (the CUTLASS
backend: :mod:`sparsec.backends.cutlass.squeeze_excite`) reads ``x`` twice and writes it once. The
fused op's reference calls the unfused graph's ATen ops in the same order, so fusing is bit-exact.
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
from sparsec.passes.fusion.epilogue import inherit_meta

log = logging.getLogger("sparsec.passes.fusion")

aten = torch.ops.aten

PASS_NAME = "fuse-squeeze-excite"


def _squeeze_state(node: fx.Node) -> dict | str | None:
    """The block's input and squeeze kind, why this global mean cannot start one, or None (no mean)."""
    if node.op != "call_function":
        return None
    if node.target is aten.adaptive_avg_pool2d.default:
        if [int(d) for d in node.args[1]] != [1, 1]:
            return f"'{node.name}' pools to {list(node.args[1])}, not to [1, 1]"
        kind = "pool"
    elif node.target is aten.mean.dim:
        a = ops.args_of(node)
        x = R.val(a["self"])
        dims = sorted(int(d) % x.dim() for d in a["dim"]) if x is not None else None
        if x is None or x.dim() != 4 or dims != [2, 3] or not a["keepdim"] or a["dtype"] is not None:
            return None  # a mean of another kind: no squeeze
        kind = "mean"
    else:
        return None
    x = node.args[0]
    v = R.val(x)
    if v is None or v.dim() != 4:
        return f"'{node.name}' reads {R.shape_text(x)}, not an NCHW tensor"
    return {"x": x, "squeeze": kind}


def _is_fc(node: fx.Node) -> bool:
    return node.op == "call_function" and (node.target is F.fused_conv2d or node.target in ops.CONV)


def _check_fc(slot: str):
    """A 1x1 conv on the [N, C, 1, 1] vector: its weight, bias and activation go to ``state[slot]``."""

    def check(state: dict, node: fx.Node, cur: fx.Node) -> str | None:
        if node.target is F.fused_conv2d:
            a = ops.args_of(node)
            if a["residual"] is not None:
                return f"'{node.name}' adds a residual"
            if a["act"] != "none" and a["act2"] != "none":
                return f"'{node.name}' has two activations ({a['act']}, {a['act2']})"
            act = a["act"] if a["act"] != "none" else a["act2"]
            p = {**a, "input": a["x"]}
        else:
            p = ops.conv_params(node)
            if p["transposed"]:
                return f"'{node.name}' is a transposed conv"
            act = "none"
        w = R.val(p["weight"])
        if p["input"] is not cur or w is None or w.dim() != 4 or tuple(w.shape[2:]) != (1, 1):
            return f"'{node.name}' is not a 1x1 conv of '{cur.name}'"
        pair = lambda v: list(v) * 2 if len(list(v)) == 1 else list(v)  # noqa: E731
        if pair(p["stride"]) != [1, 1] or pair(p["padding"]) != [0, 0] or pair(p["dilation"]) != [1, 1] \
                or int(p["groups"]) != 1:
            return f"'{node.name}' has a stride, padding, dilation or groups"
        if not isinstance(p["weight"], fx.Node) or p["weight"].op != "get_attr":
            return f"'{node.name}' has a computed weight"
        state[slot] = (p["weight"], p["bias"], act)
        return None

    return check


def _is_mul(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target is aten.mul.Tensor


def _check_excite(state: dict, node: fx.Node, cur: fx.Node) -> str | None:
    a = ops.args_of(node)
    other = a["other"] if a["self"] is cur else a["self"]
    if other is not state["x"]:
        return f"'{node.name}' scales '{getattr(other, 'name', other)}', not the squeezed '{state['x'].name}'"
    x, s, y = R.val(state["x"]), R.val(cur), R.val(node)
    c = x.shape[1]
    if tuple(s.shape) != (x.shape[0], c, 1, 1) or tuple(y.shape) != tuple(x.shape) or s.dtype != x.dtype:
        return f"'{node.name}' multiplies {R.shape_text(cur)} with {R.shape_text(state['x'])}, not per channel"
    w1, w2 = R.val(state["fc1"][0]), R.val(state["fc2"][0])
    if w1.shape[1] != c or w2.shape[0] != c or w2.shape[1] != w1.shape[0]:
        return f"the fc weights {tuple(w1.shape)} and {tuple(w2.shape)} do not map {c} channels to {c}"
    return None


RULES: tuple[R.Rule, ...] = (
    R.Rule("squeeze-excite", 0, "squeeze",
           (R.Stage("1x1 conv", _is_fc, _check_fc("fc1")), R.Stage("1x1 conv", _is_fc, _check_fc("fc2")),
            R.Stage("channel-wise multiply", _is_mul, _check_excite)),
           "x * gate(fc2(act(fc1(mean_hw(x))))) -> sparsec.squeeze_excite(x, w1, b1, w2, b2, act, gate)"),
)


@dataclasses.dataclass(frozen=True)
class FuseSqueezeExcite(Pass):
    """Collapse a squeeze-and-excitation block into one ``sparsec.squeeze_excite``.

    Rule ``squeeze-excite``: ``x * gate(fc2(act(fc1(mean_hw(x)))))``, with ``mean_hw`` an
    ``adaptive_avg_pool2d(x, [1, 1])`` or ``mean(x, [2, 3], keepdim=True)`` and ``fc1``/``fc2``
    1x1 convs (fused with their activation by ``fuse-epilogue``, which must run first). A near miss
    (a mean followed by a 1x1 conv, but not a whole block) is recorded on the mean as
    ``sparsec.declined = [fuse-squeeze-excite/squeeze-excite: reason]``. Bit-exact: the fused op's
    reference runs the same ATen ops in the same order.

    Example: sparsec opt m.pt2 --pipeline canonicalize,fold-bn,dce,fuse-epilogue,fuse-squeeze-excite --pass-statistics
    """

    name: ClassVar[str] = PASS_NAME
    summary: ClassVar[str] = "fuse a squeeze-and-excitation block (mean, two 1x1 convs, channel gate) into one op"
    changes_numerics: ClassVar[bool] = False
    idempotent: ClassVar[bool] = True

    def run(self, mod, ctx) -> PassResult:
        fused_n = declined = 0
        changed = False
        for node in list(mod.graph.nodes):
            state = _squeeze_state(node) if not getattr(node, "_erased", False) else None
            if state is None:
                continue
            before = M.get(node, R.Declined)
            R.drop_declined(node, f"{PASS_NAME}/")
            match, misses = R.best(node, list(RULES), state)
            if match is not None:
                _rewrite(mod, match)
                fused_n += 1
                changed = True
                continue
            for miss in R.reportable(misses, None):
                R.add_declined(node, f"{PASS_NAME}/{miss.rule.name}", miss.reason)
                log.info("%s: declined at '%s': %s", PASS_NAME, node.name, miss.reason)
                declined += 1
            changed = changed or M.get(node, R.Declined) != before
        stats = {"squeeze-excite": fused_n} if fused_n else {}
        stats.update(fused=fused_n, declined=declined)
        return PassResult(modified=changed, stats=stats)


def _rewrite(mod, match: R.Match) -> fx.Node:
    st, graph = match.state, mod.graph
    last = match.nodes[-1]
    (w1, b1, act), (w2, b2, gate) = st["fc1"], st["fc2"]
    with graph.inserting_before(last):
        fused = graph.create_node("call_function", F.squeeze_excite,
                                  (st["x"], w1, b1, w2, b2, act, gate, st["squeeze"]), name="squeeze_excite")
    inherit_meta(fused, last, last)  # the multiply's value and source location
    M.put(fused, R.Fused("squeeze-excite", tuple(n.name for n in match.nodes)))
    last.replace_all_uses_with(fused)
    for n in reversed(match.nodes):
        graph.erase_node(n)
    return fused
