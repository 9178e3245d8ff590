"""Latency-aware channel pruning (after HALP): a per-layer latency lookup
table, and a solver that picks each group's width to fit a latency budget.

- :func:`layer_specs` lists the model's conv2d and linear layers with their
  shapes; :func:`fingerprint` hashes them, so a table is only ever used for
  the model it was measured on.
- :func:`profile` (``sparsec profile --target h100 --model SPEC``) times
  each distinct layer shape on the GPU over a grid of input and output
  widths (multiples of the target's ``round_to``), at each batch size, in
  fp16 channels-last, as CUDA-graph replays timed with CUDA events (median
  after warm-up), and returns a :class:`LatencyLUT` (JSON on disk).
- :class:`LatencyLUT` predicts a layer's latency at any widths by bilinear
  interpolation in its grid, and a model's latency as the sum over its
  layers. Ops that are not conv2d/linear (norms, activations, adds, pools)
  are not in the table: the prediction is of the layers that pruning
  shrinks, and it is lower than the measured whole-model latency.
- :func:`solve` chooses, for each prunable group, how many units to keep
  so that the predicted latency is at most ``budget`` times the dense one
  while keeping the most importance: a greedy descent that always takes
  the width cut (of any group, to any of its lower widths) that loses the
  least importance per millisecond saved, then a refill that gives width
  back where the budget still allows. ``max_ratio`` caps the fraction of
  any group removed: without it, a flat importance (random weights) lets
  the solver cut the cheapest-per-ms layers down to ``round_to``. Importance is each group's score
  divided by the group's mean (as the planner's global scope does), so
  groups compare. Widths stay on multiples of ``round_to`` and at least
  ``min_channels``, as the uniform planner's are.

Example:
    >>> lut = LatencyLUT.load("lut.json")
    >>> lut.check_model(mod)                       # the fingerprint must match
    >>> lut.predict(mod, batch=256)                # dense, ms
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from sparsec.errors import PassFailedError, SparsecError, UsageError

log = logging.getLogger("sparsec.passes.prune")

aten = torch.ops.aten
LUT_VERSION = 1
LUT_KIND = "sparsec-latency-lut"
_CONV = (aten.conv2d.default, aten.convolution.default)
_WINDOW = 8  # a move cuts (or gives back) at most this many width steps of one group


# -- layers and the model fingerprint ------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """A conv2d or linear layer: its shape, and the channel spaces of its input and output.

    ``spatial`` is the input's (H, W) for a conv, and the sizes between the
    batch and the feature dim for a linear (tokens). ``in_space``/``out_space``
    are the ``(node, dim)`` channel spaces whose width sets ``cin``/``cout``.
    """

    node: str
    kind: str  # "conv" | "linear"
    cin: int
    cout: int
    groups: int
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...] | str
    dilation: tuple[int, ...]
    spatial: tuple[int, ...]
    bias: bool
    in_space: tuple[str, int]
    out_space: tuple[str, int]

    @property
    def key(self) -> str:
        """The shape identity (no node name, no batch): layers with one key share a table."""
        if self.kind == "linear":
            return f"linear cin={self.cin} cout={self.cout} tokens={'x'.join(map(str, self.spatial)) or 1}"
        pad = self.padding if isinstance(self.padding, str) else "x".join(map(str, self.padding))
        return (f"conv k={'x'.join(map(str, self.kernel))} s={'x'.join(map(str, self.stride))} p={pad} "
                f"d={'x'.join(map(str, self.dilation))} g={self.groups} cin={self.cin} cout={self.cout} "
                f"in={'x'.join(map(str, self.spatial))}")

    @property
    def coupled(self) -> bool:
        """A grouped conv prunes whole groups: its in and out widths move together."""
        return self.groups > 1

    def groups_at(self, cin: int) -> int:
        return self.groups * cin // self.cin if self.groups > 1 else 1


def _pair(v: Any, n: int = 2) -> tuple[int, ...]:
    if isinstance(v, (list, tuple)):
        v = tuple(int(x) for x in v)
        return v * n if len(v) == 1 else v
    return (int(v),) * n


def _shape(n) -> tuple[int, ...] | None:
    v = n.meta.get("val") if hasattr(n, "meta") else None
    return tuple(int(d) for d in v.shape) if isinstance(v, torch.Tensor) else None


def layer_specs(mod) -> list[LayerSpec]:
    """Every conv2d (not transposed) and linear layer of ``mod``, in graph order."""
    from sparsec.ir import ops

    out = []
    for n in mod.graph.nodes:
        if n.op != "call_function":
            continue
        if n.target in _CONV:
            p = ops.conv_params(n)
            sx, sw = _shape(p["input"]), _shape(p["weight"])
            if p["transposed"] or sx is None or sw is None or len(sx) != 4:
                continue
            padding = p["padding"] if isinstance(p["padding"], str) else _pair(p["padding"] or 0)
            out.append(LayerSpec(
                n.name, "conv", sx[1], sw[0], int(p["groups"]), tuple(sw[2:]), _pair(p["stride"] or 1), padding,
                _pair(p["dilation"] or 1), tuple(sx[2:]), p["bias"] is not None, (p["input"].name, 1), (n.name, 1),
            ))
        elif n.target is aten.linear.default:
            x, w = n.args[0], n.args[1]
            sx, sw = _shape(x), _shape(w)
            if sx is None or sw is None:
                continue
            bias = (n.args[2] if len(n.args) > 2 else n.kwargs.get("bias")) is not None
            out.append(LayerSpec(n.name, "linear", sw[1], sw[0], 1, (), (), (), (), tuple(sx[1:-1]), bias,
                                 (x.name, len(sx) - 1), (n.name, len(sx) - 1)))
    return out


def fingerprint(specs: Sequence[LayerSpec]) -> str:
    """A short hash of the layer shapes, in graph order (not of names, weights or the batch)."""
    return hashlib.sha256(json.dumps([s.key for s in specs]).encode()).hexdigest()[:16]


# -- the table -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Table:
    """One layer shape's latencies: ``ms[batch][i][j]`` at ``in_widths[i]``, ``out_widths[j]``
    (for a grouped conv, ``coupled``: ``ms[batch][i]`` at in ``in_widths[i]``, out ``out_widths[i]``)."""

    in_widths: tuple[int, ...]
    out_widths: tuple[int, ...]
    coupled: bool
    ms: Mapping[int, np.ndarray]

    def at(self, cin: float, cout: float, batch: int) -> float:
        grid = self.ms[batch]
        xi = np.asarray(self.in_widths, dtype=float)
        if self.coupled:
            return float(np.interp(cin, xi, grid))
        xo = np.asarray(self.out_widths, dtype=float)
        rows = np.array([np.interp(cout, xo, grid[i]) for i in range(len(xi))])
        return float(np.interp(cin, xi, rows))


@dataclasses.dataclass(frozen=True)
class LatencyLUT:
    """A per-layer latency lookup table for one model on one GPU (see the module docstring)."""

    model: str
    fingerprint: str
    target: str
    round_to: int
    batches: tuple[int, ...]
    tables: Mapping[str, Table]
    layers: tuple[tuple[str, str], ...]  # (node, table key), in graph order
    info: Mapping[str, Any]  # device, capability, versions, date, dtype, layout, method
    path: str | None = None

    # -- I/O --------------------------------------------------------------------------
    def to_json(self) -> str:
        tables = {k: {"in_widths": list(t.in_widths), "out_widths": list(t.out_widths), "coupled": t.coupled,
                      "ms": {str(b): np.round(t.ms[b], 6).tolist() for b in self.batches}}
                  for k, t in self.tables.items()}
        doc = {"version": LUT_VERSION, "kind": LUT_KIND,
               "model": {"name": self.model, "fingerprint": self.fingerprint, "layers": len(self.layers)},
               "target": self.target, "round_to": self.round_to, "batches": list(self.batches), **self.info,
               "layers": [{"node": n, "table": k} for n, k in self.layers], "tables": tables}
        return json.dumps(doc, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str, path: str | None = None) -> "LatencyLUT":
        where = path or "<text>"
        try:
            d = json.loads(text)
            if d.get("kind") != LUT_KIND or d.get("version") != LUT_VERSION:
                raise ValueError(f"kind {d.get('kind')!r} version {d.get('version')!r}, "
                                 f"expected {LUT_KIND!r} version {LUT_VERSION}")
            batches = tuple(int(b) for b in d["batches"])
            tables = {}
            for k, t in d["tables"].items():
                ms = {b: np.asarray(t["ms"][str(b)], dtype=float) for b in batches}
                tables[k] = Table(tuple(int(w) for w in t["in_widths"]), tuple(int(w) for w in t["out_widths"]),
                                  bool(t["coupled"]), ms)
            layers = tuple((str(x["node"]), str(x["table"])) for x in d["layers"])
            info = {k: d[k] for k in ("device", "capability", "versions", "date", "command", "dtype", "layout", "method")
                    if k in d}
            return cls(str(d["model"]["name"]), str(d["model"]["fingerprint"]), str(d["target"]), int(d["round_to"]),
                       batches, tables, layers, info, path)
        except (ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"'{where}' is not a sparsec latency table", actual=f"{type(exc).__name__}: {exc}",
                             fix="make one with `sparsec profile --target h100 --model SPEC -o lut.json`") from exc

    @classmethod
    def load(cls, path: str | Path) -> "LatencyLUT":
        p = Path(path)
        if not p.is_file():
            raise UsageError(f"latency table '{path}' does not exist",
                             fix="make one with `sparsec profile --target h100 --model SPEC -o lut.json`")
        return cls.from_json(p.read_text(), str(path))

    # -- checks and predictions -------------------------------------------------------------
    def check_model(self, mod, specs: Sequence[LayerSpec] | None = None) -> list[LayerSpec]:
        """The model's layer specs; PassFailedError naming both models if the table is another model's."""
        specs = list(layer_specs(mod) if specs is None else specs)
        fp = fingerprint(specs)
        if fp != self.fingerprint:
            raise PassFailedError(
                f"the latency table{f' {self.path!r}' if self.path else ''} was made for another model",
                expected=f"a table for this model '{mod.name}' (fingerprint {fp}, {len(specs)} conv/linear layers)",
                actual=f"a table for model '{self.model}' (fingerprint {self.fingerprint}, {len(self.layers)} layers)",
                fix=f"profile this model: sparsec profile --target {self.target} --model SPEC "
                    "--input-shape N,C,H,W -o lut.json (the same input size as here)",
            )
        return specs

    def check_batch(self, batch: int) -> None:
        if batch not in self.batches:
            raise UsageError(f"the latency table has no batch size {batch}",
                             expected=f"one of {', '.join(map(str, self.batches))}", actual=str(batch),
                             fix="set batch= to a profiled size, or profile that batch size")

    def layer_ms(self, spec: LayerSpec, cin: float, cout: float, batch: int) -> float:
        return self.tables[spec.key].at(cin, cout, batch)

    def predict(self, mod, batch: int, widths: Mapping[tuple[str, int], int] | None = None) -> float:
        """Predicted ms of ``mod``'s conv/linear layers, with channel spaces narrowed to ``widths``."""
        specs = self.check_model(mod)
        self.check_batch(batch)
        widths = widths or {}
        return sum(self.layer_ms(s, widths.get(s.in_space, s.cin), widths.get(s.out_space, s.cout), batch)
                   for s in specs)


def plan_widths(mod, plan) -> dict[tuple[str, int], int]:
    """(node, dim) -> its width after ``plan``, for every space the plan narrows."""
    from sparsec.passes.prune.apply import kept_indices

    return {k: len(v) for k, v in kept_indices(mod, plan).items()}


# -- measuring it (GPU) ------------------------------------------------------------------------


def sweep(full: int, step: int, points: int, prunable: bool) -> tuple[int, ...]:
    """Widths to time for a dim of ``full`` channels: up to ``points`` multiples of ``step``
    from ``step`` to ``full``, evenly spread, always with ``full`` (just ``full`` if not prunable)."""
    if not prunable or full <= step or points < 2:
        return (full,)
    cands = list(range(step, full, step)) + [full]
    idx = np.unique(np.round(np.linspace(0, len(cands) - 1, min(points, len(cands)))).astype(int))
    return tuple(cands[i] for i in idx)


def _elements_per_unit(g, i: int) -> int:
    u = g.unit_of[i]
    return max(1, len(u) // max(1, len(np.unique(u))))


def build_lut(mod, target_name: str, round_to: int, batches: Sequence[int], timer, *, points: int = 5,
              info: Mapping[str, Any] | None = None, progress=None) -> LatencyLUT:
    """A table for ``mod`` with ``timer(spec, cin, cout, batch) -> ms`` at each grid point.

    The grid of a layer sweeps each prunable dim over multiples of ``round_to``
    units (see :func:`sweep`); :func:`profile` passes the GPU timer.
    """
    from sparsec.passes.prune.depgraph import ChannelDepGraph

    specs = layer_specs(mod)
    if not specs:
        raise SparsecError(f"model '{mod.name}' has no conv2d or linear layer to profile")
    dg = mod.analysis(ChannelDepGraph)
    grids: dict[str, tuple[LayerSpec, tuple[int, ...], tuple[int, ...]]] = {}
    for s in specs:
        axes = []
        for space, full in ((s.in_space, s.cin), (s.out_space, s.cout)):
            g = dg.group_of(*space)
            ok = g is not None and g.prunable
            step = round_to * (_elements_per_unit(g, g.members.index(space)) if ok else 1)
            if s.coupled:  # whole groups: step over the per-group width too
                step = math.lcm(step, s.cin // s.groups)
            axes.append(sweep(full, step, points, ok))
        ins, outs = axes
        if s.coupled:
            ins = tuple(w for w in ins if w % (s.cin // s.groups) == 0)
            outs = tuple(w * s.cout // s.cin for w in ins)
        old = grids.get(s.key)
        if old is None or len(old[1]) * len(old[2]) < len(ins) * len(outs):
            grids[s.key] = (s, ins, outs)  # a shape seen twice keeps the finer grid
    tables: dict[str, Table] = {}
    for k, (key, (s, ins, outs)) in enumerate(grids.items()):
        ms = {}
        for b in batches:
            if s.coupled:
                ms[b] = np.array([timer(s, ci, co, b) for ci, co in zip(ins, outs)], dtype=float)
            else:
                ms[b] = np.array([[timer(s, ci, co, b) for co in outs] for ci in ins], dtype=float)
        tables[key] = Table(ins, outs, s.coupled, ms)
        if progress is not None:
            progress(k + 1, len(grids), key)
    return LatencyLUT(mod.name, fingerprint(specs), target_name, int(round_to), tuple(int(b) for b in batches),
                      tables, tuple((s.node, s.key) for s in specs), dict(info or {}))


def require_cuda() -> None:
    """SparsecError unless torch sees a CUDA GPU (profiling measures on it)."""
    if not torch.cuda.is_available():
        raise SparsecError("profiling latency needs a CUDA GPU, and torch sees none here",
                           actual=f"torch {torch.__version__}, torch.cuda.is_available() is False",
                           fix="run `sparsec profile` on the GPU machine you will deploy to")


def profile(mod, target, *, batches: Sequence[int] = (1, 256), points: int = 5, warmup: int = 3,
            iters: int = 10, dtype: torch.dtype = torch.float16, progress=None) -> LatencyLUT:
    """Measure the latency table of ``mod``'s layers on the current CUDA GPU (see the module docstring)."""
    require_cuda()
    import sys

    l2 = int(getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 << 20))
    info = {
        "device": torch.cuda.get_device_name(), "capability": list(torch.cuda.get_device_capability()),
        "versions": {"sparsec": _version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                     "cudnn": torch.backends.cudnn.version(), "python": sys.version.split()[0]},
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": " ".join(sys.argv),
        "dtype": str(dtype).replace("torch.", ""), "layout": "channels_last",
        "method": (f"measured: each distinct layer shape at each (in, out) width of its grid, as a CUDA graph of "
                   f"R calls (R >= 8 for small layers; inputs and weights rotated over buffer sets totalling "
                   f">= 2x L2), {warmup} warm-up replays, median of {iters} CUDA-event-timed replays, divided by R; "
                   f"cudnn.benchmark off; bias included; random normal data"),
    }
    bench = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False  # one algorithm per shape, chosen without timing runs
    try:
        return build_lut(mod, target.name, target.round_to, batches,
                         lambda s, ci, co, b: _time_layer(s, ci, co, b, dtype, warmup, iters, l2),
                         points=points, info=info, progress=progress)
    finally:  # the caller's setting (training runs with it on)
        torch.backends.cudnn.benchmark = bench


def _version() -> str:
    import sparsec

    return sparsec.__version__


def _time_layer(s: LayerSpec, cin: int, cout: int, batch: int, dtype, warmup: int, iters: int, l2: int) -> float:
    import torch.nn.functional as F

    dev = "cuda"
    gen = torch.Generator(device=dev).manual_seed(cin * 7919 + cout)
    if s.kind == "conv":
        groups = s.groups_at(cin)
        xshape, wshape = (batch, cin, *s.spatial), (cout, cin // groups, *s.kernel)
    else:
        groups = 1
        xshape, wshape = (batch, *s.spatial, cin), (cout, cin)
    set_bytes = (math.prod(xshape) + math.prod(wshape)) * torch.finfo(dtype).bits // 8
    nsets = max(1, min(8, math.ceil(2 * l2 / max(set_bytes, 1))))
    reps = nsets * max(1, math.ceil((8 if set_bytes < (8 << 20) else 1) / nsets))
    fmt = torch.channels_last if s.kind == "conv" else torch.contiguous_format
    xs = [torch.randn(xshape, device=dev, dtype=dtype, generator=gen).contiguous(memory_format=fmt)
          for _ in range(nsets)]
    ws = [(torch.randn(wshape, device=dev, dtype=dtype, generator=gen) * 0.05).contiguous(memory_format=fmt)
          for _ in range(nsets)]
    bs = [torch.randn(cout, device=dev, dtype=dtype, generator=gen) if s.bias else None for _ in range(nsets)]

    def call(k: int):
        if s.kind == "conv":
            return F.conv2d(xs[k], ws[k], bs[k], s.stride, s.padding, s.dilation, groups)
        return F.linear(xs[k], ws[k], bs[k])

    from sparsec.backends.timing import time_graph

    with torch.no_grad():  # µs per call over reps calls that cycle through the input sets
        return time_graph([functools.partial(call, r % nsets) for r in range(reps)],
                          warmup=warmup, iters=iters) / 1e3


# -- the solver --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Solution:
    """Units kept per group, and the predicted latencies (ms) of the dense and pruned model."""

    keep: Mapping[int, np.ndarray]
    dense_ms: float
    predicted_ms: float
    budget_ms: float


def _configs(g, round_to: int, min_channels: int, max_ratio: float) -> list[tuple[int, ...]]:
    """Units kept per part, for every width the rounding allows (and ``max_ratio``: no part
    loses more than that fraction of its units), widest first."""
    from sparsec.passes.prune.planner import round_width

    parts = g.partitions()
    steps = max(64, 4 * max(len(p) for p in parts) // max(round_to, 1) + 1)
    cfgs = {tuple(len(p) for p in parts)}
    for r in np.linspace(0.0, 1.0, steps, endpoint=False):
        c = tuple(round_width(len(p), float(r), round_to, min_channels) for p in parts)
        if all(k >= (1 - max_ratio) * len(p) - 1e-9 for k, p in zip(c, parts)):
            cfgs.add(c)
    return sorted(cfgs, key=lambda c: (-sum(c), c))


def solve(mod, lut: LatencyLUT, groups, scores: Mapping[int, np.ndarray], *, budget: float, batch: int,
          round_to: int, min_channels: int, max_ratio: float = 1.0) -> Solution:
    """Pick each candidate group's width (see the module docstring). ``groups``: the
    prunable, unprotected groups; ``scores[g.id]``: per-unit importance."""
    specs = lut.check_model(mod)
    lut.check_batch(batch)
    gid_index = {g.id: k for k, g in enumerate(groups)}
    parts = [g.partitions() for g in groups]
    cfgs = [_configs(g, round_to, min_channels, max_ratio) for g in groups]
    # importance kept by each config: top units of each part, by score over the group's mean
    value = []
    for g, ps, cs in zip(groups, parts, cfgs):
        s = scores[g.id] / max(float(np.mean(scores[g.id])), 1e-30)
        csum = [np.concatenate([[0.0], np.cumsum(np.sort(s[p])[::-1])]) for p in ps]
        value.append(np.array([sum(csum[i][k] for i, k in enumerate(c)) for c in cs]))

    # each layer's in/out width as a function of its group's config
    from sparsec.passes.prune.depgraph import ChannelDepGraph

    dg = mod.analysis(ChannelDepGraph)

    def member_width(space, full):
        g = dg.group_of(*space)
        if g is None or g.id not in gid_index:
            return None, None
        k = gid_index[g.id]
        part_of = np.empty(g.size, dtype=np.int64)
        for pi, p in enumerate(parts[k]):
            part_of[p] = pi
        cnt = np.bincount(part_of[g.unit_of[g.members.index(space)]], minlength=len(parts[k]))
        sizes = np.array([len(p) for p in parts[k]])
        # kept units of a part hold their share of the member's elements (exact for a single part)
        return k, [int(sum(round(n * kept / size) for n, kept, size in zip(cnt, c, sizes))) for c in cfgs[k]]

    layers = []  # (spec, in group | None, in widths per config, out group | None, out widths per config)
    touching: list[list[int]] = [[] for _ in groups]
    for s in specs:
        gi, wi = member_width(s.in_space, s.cin)
        go, wo = member_width(s.out_space, s.cout)
        layers.append((s, gi, wi, go, wo))
        for k in {gi, go} - {None}:
            touching[k].append(len(layers) - 1)
    memo: dict[tuple[str, int, int], float] = {}

    def layer_ms(li: int, st) -> float:
        s, gi, wi, go, wo = layers[li]
        cin = wi[st[gi]] if gi is not None else s.cin
        cout = wo[st[go]] if go is not None else s.cout
        key = (s.key, cin, cout)
        if key not in memo:
            memo[key] = lut.layer_ms(s, cin, cout, batch)
        return memo[key]

    def total(st) -> float:
        return sum(layer_ms(li, st) for li in range(len(layers)))

    dense = total([0] * len(groups))
    target_ms = budget * dense
    state = [0] * len(groups)

    def delta(k: int, j: int) -> float:
        new = list(state)
        new[k] = j
        return sum(layer_ms(li, new) - layer_ms(li, state) for li in touching[k])

    # descend: always the cut that loses the least importance per ms saved
    cur = dense
    while cur > target_ms:
        pick, pick_rate = None, math.inf
        for k in range(len(groups)):
            for j in range(state[k] + 1, min(len(cfgs[k]), state[k] + 1 + _WINDOW)):
                saved = -delta(k, j)
                if saved <= 1e-12:
                    continue
                rate = (value[k][state[k]] - value[k][j]) / saved
                if rate < pick_rate:
                    pick, pick_rate = (k, j), rate
        if pick is None:  # no cut saves time from here
            break
        state[pick[0]] = pick[1]
        cur = total(state)
    if cur > target_ms:
        narrowest = [len(c) - 1 for c in cfgs]
        best = total(narrowest)  # a measured table need not fall monotonically: try every group at its narrowest
        if best <= target_ms:
            state[:], cur = narrowest, best
        else:
            best = min(best, cur)
            raise PassFailedError(
                f"latency budget {budget:g} is unreachable for model '{mod.name}' at batch {batch}",
                expected=f"predicted latency <= {budget:g} x dense = {target_ms:.4f} ms",
                actual=f"the best reachable is {best / dense:.3f} x dense ({best:.4f} of {dense:.4f} ms), by "
                       f"narrowing the prunable groups (round_to={round_to}, min_channels={min_channels}, "
                       f"max_ratio={max_ratio:g})",
                fix=f"raise budget to at least {math.ceil(best / dense * 1000) / 1000:g}, "
                    "or lower round_to/min_channels, or raise max_ratio",
            )
    # refill: give width back where it buys the most importance per ms and the budget allows
    while True:
        pick, pick_rate = None, 0.0
        for k in range(len(groups)):
            for j in range(max(0, state[k] - _WINDOW), state[k]):
                cost = delta(k, j)
                gain = value[k][j] - value[k][state[k]]
                if gain <= 0 or cur + cost > target_ms:
                    continue
                rate = gain / max(cost, 1e-9)
                if rate > pick_rate:
                    pick, pick_rate = (k, j), rate
        if pick is None:
            break
        state[pick[0]] = pick[1]
        cur = total(state)

    keep = {}
    for k, g in enumerate(groups):
        c = cfgs[k][state[k]]
        kept = [p[np.argsort(-scores[g.id][p], kind="stable")[:n]] for p, n in zip(parts[k], c)]
        keep[g.id] = np.concatenate(kept)
    # the prediction of the plan itself: each layer's exact widths from the kept units
    widths = {}
    for s in specs:
        for space in (s.in_space, s.out_space):
            g = dg.group_of(*space)
            if g is not None and g.id in keep:
                widths[space] = int(np.isin(g.unit_of[g.members.index(space)], keep[g.id]).sum())
    predicted = sum(lut.layer_ms(s, widths.get(s.in_space, s.cin), widths.get(s.out_space, s.cout), batch)
                    for s in specs)
    return Solution(keep, dense, predicted, target_ms)
