"""``fuse-conv-pool``: conv2d (+act) followed by max or avg pooling, as one ``sparsec.conv2d_pool``.

The seed paper's Conv_Pool idea: pool in the conv's epilogue, so the
full-resolution activation never goes to memory. Whether that pays depends
on the kernel and the shape, so the pass decides from a measurement:
``benchmarks/conv_pool.py`` times the fused op against the unfused pair on
the GPU and writes one record per site (keyed by :func:`site_key`) with
``gain = unfused_ms / fused_ms``. A site fuses when its measured gain is at
least ``min-gain``; otherwise, or when the site was never measured, the pass
declines with the measured (or missing) number as the reason. ``force=true``
fuses every site the rules accept, without a measurement.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import logging
import re
from pathlib import Path
from typing import ClassVar

import torch
from torch import fx

from sparsec.errors import PassFailedError, PipelineError
from sparsec.ir import meta as M
from sparsec.ir import ops
from sparsec.passes.base import Pass, PassResult
from sparsec.passes.fusion import ops as F
from sparsec.passes.fusion import rules as R
from sparsec.passes.fusion.epilogue import inherit_meta

log = logging.getLogger("sparsec.passes.fusion")

aten = torch.ops.aten

PASS_NAME = "fuse-conv-pool"
_POOLS = {aten.max_pool2d.default: "max", aten.avg_pool2d.default: "avg"}
_OTHER_POOLS = {aten.max_pool2d_with_indices.default, aten.adaptive_avg_pool2d.default,
                aten.adaptive_max_pool2d.default, aten._adaptive_avg_pool2d.default, aten.max_pool1d.default,
                aten.avg_pool1d.default, aten.max_pool3d.default, aten.avg_pool3d.default}


def site_key(x_shape, w_shape, stride, padding, dilation, groups, act, pool, kernel_size, pool_stride,
             pool_padding, pool_dilation, ceil_mode, count_include_pad, divisor_override, dtype: str) -> str:
    """The canonical text of one conv+pool site: what a measurement record is looked up by.

    ``pool_stride`` is spelled out (an empty stride means the kernel size).
    """
    def t(v) -> str:  # a symbolic (dynamic) dim prints as its symbol, and matches no measured record
        return "x".join(str(d) for d in v)

    ps = list(pool_stride) or list(kernel_size)
    extra = f" ceil={int(bool(ceil_mode))}"
    if pool == "max":
        extra += f" pd={t(pool_dilation)}"
    else:
        extra += f" cip={int(bool(count_include_pad))} div={divisor_override}"
    return (f"x={t(x_shape)} w={t(w_shape)} s={t(stride)} p={t(padding)} d={t(dilation)} g={int(groups)} "
            f"act={act} pool={pool} k={t(kernel_size)} ps={t(ps)} pp={t(pool_padding)}{extra} dtype={dtype}")


# -- rules --------------------------------------------------------------------------------------


def _check_act(state: dict, node: fx.Node, cur: fx.Node) -> str | None:
    if state["act"] != "none":
        return f"'{cur.name}' already applies {state['act']}"
    name, why = R.activation_name(node)
    if why is not None:
        return why
    state["act"] = name
    return None


def _is_pool(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target in (_POOLS.keys() | _OTHER_POOLS)


def _check_pool(state: dict, node: fx.Node, cur: fx.Node) -> str | None:
    if node.target not in _POOLS:
        return f"{ops.op_name(node.target)} is not fused (only aten.max_pool2d and aten.avg_pool2d)"
    a = ops.args_of(node)
    state["pool"] = _POOLS[node.target]
    state["kernel_size"] = _pair(a["kernel_size"])
    state["pool_stride"] = _pair(a["stride"]) if a["stride"] else []
    state["pool_padding"] = _pair(a["padding"])
    state["ceil_mode"] = bool(a["ceil_mode"])
    if node.target is aten.max_pool2d.default:
        state["pool_dilation"] = _pair(a["dilation"])
        state["count_include_pad"], state["divisor_override"] = True, None
    else:
        state["pool_dilation"] = [1, 1]
        state["count_include_pad"], state["divisor_override"] = bool(a["count_include_pad"]), a["divisor_override"]
    return None


def _pair(v) -> list[int]:
    v = list(v) if isinstance(v, (list, tuple)) else [v]
    return [int(d) for d in (v * 2 if len(v) == 1 else v)]


ACT = R.Stage("activation", R.is_activation, _check_act)
POOL = R.Stage("pool", _is_pool, _check_pool)

RULES: tuple[R.Rule, ...] = (
    R.Rule("conv2d-act-pool", 1, "conv2d", (ACT, POOL), "pool(act(conv2d(x, w, b))) -> sparsec.conv2d_pool(.., act, pool)"),
    R.Rule("conv2d-pool", 0, "conv2d", (POOL,), "pool(conv2d(x, w, b)) -> sparsec.conv2d_pool(.., pool)"),
)


def _anchor_state(node: fx.Node) -> dict | str | None:
    """A conv2d's operands (aten, or a fused_conv2d without residual or act2), or None if no anchor."""
    if node.op != "call_function":
        return None
    if node.target in ops.CONV:
        st = R.conv2d_state(node)
        return {**st, "act": "none"} if isinstance(st, dict) else st
    if node.target is F.fused_conv2d:
        a = ops.args_of(node)
        if a["residual"] is not None or a["act2"] != "none":
            return "the conv already has a residual epilogue"
        return {"x": a["x"], "weight": a["weight"], "bias": a["bias"],
                "stride": _pair(a["stride"]), "padding": _pair(a["padding"]), "dilation": _pair(a["dilation"]),
                "groups": int(a["groups"]), "act": a["act"]}
    return None


# -- the pass ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FuseConvPool(Pass):
    """Fuse conv2d (+activation) followed by max/avg pooling into one ``sparsec.conv2d_pool``, where measured to pay.

    Rules: ``conv2d-act-pool`` (``pool(act(conv2d(x,w,b)))``) and
    ``conv2d-pool``; the conv may be an ``aten.conv2d`` or a
    ``sparsec.fused_conv2d`` without residual. Run it after ``fuse-epilogue``
    (as the ``fusion`` pipeline does): run before it, its declines sit on
    nodes that ``fuse-epilogue`` then replaces, and are lost. The conv's
    output (and the activation's) must have no other reader.

    Options:

    - ``measurements``: a results JSON written by ``benchmarks/conv_pool.py``
      (records with ``key`` and ``gain``); a site fuses when its record's
      gain >= ``min-gain``. A site measured at other batch sizes only fuses
      when the measured batches nearest below and above its own both reach
      ``min-gain``; a dynamic batch, when every measured batch does. A bare
      file name that is not a file here names one sparsec ships
      (``backends/cutlass/tuned/conv_pool_sm_90a.json``: what the ``h100``
      targets' pipelines give).
    - ``min-gain``: the least measured speed-up (unfused / fused time) worth
      fusing for; default 1.05.
    - ``force``: fuse every site the rules accept, measured or not.

    Without ``measurements`` and without ``force`` every site is declined
    with the reason "not measured". Measurements from a GPU of another
    compute capability than the pipeline's target (``capability`` in the
    file, ``arch`` of the target) apply to no site. Declines are recorded on the conv as
    ``sparsec.declined = [fuse-conv-pool/RULE: reason]``.

    Example: sparsec opt m.pt2 --pipeline 'fold-bn,dce,fuse-conv-pool{measurements=benchmarks/results/conv_pool_h100.json}'
    """

    name: ClassVar[str] = PASS_NAME
    summary: ClassVar[str] = "fuse conv2d(+act) with a following max/avg pool where a measurement says it pays"
    changes_numerics: ClassVar[bool] = False
    idempotent: ClassVar[bool] = True

    measurements: str | None = None
    min_gain: float = 1.05
    force: bool = False

    def validate(self) -> None:
        if not self.min_gain > 0:
            raise PipelineError(f"option 'min-gain' of pass '{self.name}' must be positive",
                                expected="a speed-up ratio such as 1.05", actual=repr(self.min_gain))
        if self.measurements is not None and not measurements_path(self.measurements).is_file():
            raise PipelineError(f"option 'measurements' of pass '{self.name}' names no file",
                                actual=self.measurements,
                                fix="run benchmarks/conv_pool.py on the GPU and pass the JSON it writes")

    def run(self, mod, ctx) -> PassResult:
        gains, foreign = self._load_gains(getattr(ctx, "target", None))
        counts = {r.name: 0 for r in RULES}
        declined = 0
        changed = False
        for node in list(mod.graph.nodes):
            state = _anchor_state(node) if not getattr(node, "_erased", False) else None
            if state is None:
                continue
            before = M.get(node, R.Declined)
            R.drop_declined(node, f"{PASS_NAME}/")
            match, misses = R.best(node, list(RULES), state)
            reasons = [(m.rule.name, m.reason) for m in R.reportable(misses, match)]
            if match is not None:
                why = foreign or self._decide(match, gains)
                if why is None:
                    fused = _rewrite(mod, match)
                    counts[match.rule.name] += 1
                    changed = True
                    for rule, reason in reasons:
                        R.add_declined(fused, f"{PASS_NAME}/{rule}", reason)
                    declined += len(reasons)
                    continue
                reasons.insert(0, (match.rule.name, why))
            for rule, reason in reasons:
                R.add_declined(node, f"{PASS_NAME}/{rule}", reason)
                log.info("%s: declined %s at '%s': %s", PASS_NAME, rule, node.name, reason)
            declined += len(reasons)
            changed = changed or M.get(node, R.Declined) != before
        stats = {k: v for k, v in counts.items() if v}
        stats.update(fused=sum(counts.values()), declined=declined)
        return PassResult(modified=changed, stats=stats)

    def _load_gains(self, target) -> tuple[dict[str, float] | None, str | None]:
        """The measured gain per site key, and why the file does not apply to ``target`` (or None)."""
        if self.measurements is None:
            return None, None
        try:
            doc = json.loads(measurements_path(self.measurements).read_text())
            gains = {str(r["key"]): float(r["gain"]) for r in doc["records"] if r.get("gain") is not None}
            measured_on = doc.get("capability")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise PassFailedError(
                f"cannot read the conv+pool measurements '{self.measurements}'",
                expected='a JSON object with "records": [{"key": ..., "gain": ...}, ...]',
                actual=f"{type(exc).__name__}: {exc}",
                fix="regenerate it with benchmarks/conv_pool.py",
            ) from exc
        arch = getattr(target, "arch", None)
        if self.force or not arch or not measured_on:
            return gains, None
        want = [int(c) for c in divmod(int("".join(ch for ch in arch[3:] if ch.isdigit())), 10)]
        if list(measured_on) != want:
            return gains, (f"measured on {doc.get('device', 'another GPU')} (sm_{''.join(map(str, measured_on))}), "
                           f"but the target {target.name} is {arch}")
        return gains, None

    def _decide(self, match: R.Match, gains: dict[str, float] | None) -> str | None:
        """None to fuse, else the reason not to."""
        if self.force:
            return None
        if gains is None:
            return "not measured (give measurements=FILE from benchmarks/conv_pool.py, or force=true)"
        key = key_of(match)
        gain = gains.get(key)
        if gain is None:
            return self._decide_by_batch(key, gains)
        if gain < self.min_gain:
            return f"measured gain {gain:.3f}x < min-gain {self.min_gain:g}x ({self.measurements})"
        return None

    def _decide_by_batch(self, key: str, gains: dict[str, float]) -> str | None:
        """A site measured at other batches: fuse between two measured batches that both gain (any batch, for a
        dynamic one, when all do), else the reason not to."""
        batch, rest = _split_batch(key)
        by_batch = {}
        for k, g in gains.items():
            b, r = _split_batch(k)
            if r == rest and b.isdigit():
                by_batch[int(b)] = g
        if not by_batch:
            return f"not measured: no record for '{key}' in {self.measurements}"
        measured = sorted(by_batch)
        if batch.isdigit():
            i = bisect.bisect(measured, int(batch))
            if i == 0 or i == len(measured):
                return (f"not measured at batch {batch}: {self.measurements} has this site at batches "
                        f"{measured[0]} to {measured[-1]}")
            near = [measured[i - 1], measured[i]]
        else:
            near = measured
        worst = min(near, key=by_batch.get)
        if by_batch[worst] < self.min_gain:
            what = f"batch {batch}, between" if batch.isdigit() else f"a dynamic batch ({batch}), over"
            return (f"{what} measured batches {', '.join(map(str, near))}: gain {by_batch[worst]:.3f}x at "
                    f"batch {worst} < min-gain {self.min_gain:g}x ({self.measurements})")
        return None


def _split_batch(key: str) -> tuple[str, str]:
    """(the batch dim as printed, the rest of the key) of a :func:`site_key`."""
    m = re.match(r"x=([^x ]+)x(.*)$", key)
    return (m.group(1), m.group(2)) if m else ("", key)


def measurements_path(value: str) -> Path:
    """The file ``value`` names: a path, or the bare name of a measurements file sparsec ships."""
    path = Path(value)
    if path.is_file() or path.name != value:
        return path
    from sparsec.backends import cutlass

    shipped = Path(cutlass.__file__).parent / "tuned" / value
    return shipped if shipped.is_file() else path


def key_of(match: R.Match) -> str:
    st = match.state
    x, w = M.tensor_meta(R.val(st["x"])), M.tensor_meta(R.val(st["weight"]))
    return site_key(x.shape, w.shape, st["stride"], st["padding"], st["dilation"], st["groups"], st["act"],
                    st["pool"], st["kernel_size"], st["pool_stride"], st["pool_padding"], st["pool_dilation"],
                    st["ceil_mode"], st["count_include_pad"], st["divisor_override"], M.dtype_name(x.dtype))


def _rewrite(mod, match: R.Match) -> fx.Node:
    st, graph = match.state, mod.graph
    anchor, last = match.nodes[0], match.nodes[-1]
    args = (st["x"], st["weight"], st["bias"], st["stride"], st["padding"], st["dilation"], st["groups"], st["act"],
            st["pool"], st["kernel_size"], st["pool_stride"], st["pool_padding"], st["pool_dilation"],
            st["ceil_mode"], st["count_include_pad"], st["divisor_override"])
    with graph.inserting_before(last):
        fused = graph.create_node("call_function", F.conv2d_pool, args, name="conv2d_pool")
    inherit_meta(fused, anchor, last)
    prev = M.get(anchor, R.Fused)
    names = (prev.nodes if prev else (anchor.name,)) + tuple(n.name for n in match.nodes[1:])
    M.put(fused, R.Fused(match.rule.name, names))
    last.replace_all_uses_with(fused)
    for n in reversed(match.nodes):
        graph.erase_node(n)
    return fused
