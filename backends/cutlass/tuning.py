"""Autotuning: time candidate kernels per (M, N, K, dtype, arch) and keep the best.

The tuning DB is JSON in the schema the ``sparsify-2-4`` cost model reads::

    {"schema": "sparsec.tuning/1", "arch": "sm_90a", "device": "...", "created": "<ISO date>",
     "versions": {"torch": ..., "cuda": ..., "cutlass": ...},
     "entries": [{"m": 2048, "n": 8192, "k": 1024, "dtype": "fp16",
                  "dense": {"config": "<name>", "us": 12.3}, "sparse": {"config": "<name>", "us": 8.1}}, ...]}

Timing method (the device tool's METHOD.md): random inputs, never zeros; the
inputs rotate over enough copies to exceed L2; each config is captured in a
CUDA graph that runs every copy once, the graph is replayed after warm-up, each
replay timed by CUDA events; the time per GEMM is the median replay time over
the copy count. Every candidate's output is checked against a float64
reference of the masked product before it may win.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import math
from importlib import resources
from pathlib import Path
from typing import Callable, Iterable

from sparsec.backends.cutlass.config import KernelConfig, candidates
from sparsec.backends.timing import time_graph  # the tuner and the GEMM benchmark time with it
from sparsec.errors import UsageError

log = logging.getLogger("sparsec.backends.cutlass")

SCHEMA = "sparsec.tuning/1"
TOLERANCE = {"fp16": 5e-3, "bf16": 2e-2}
L2_BYTES = 50 << 20  # H100: 50 MB; rotate over > 2x this


# ------------------------------------------------------------------ the DB

def load_db(path: str | Path | None = None, arch: str = "sm_90a") -> dict:
    """A tuning DB: ``path``, else the one shipped for ``arch`` (empty entries if none)."""
    if path is not None:
        doc = json.loads(Path(path).read_text())
    else:
        try:
            doc = json.loads(resources.files("sparsec.backends.cutlass").joinpath("tuned", f"{arch}.json").read_text())
        except FileNotFoundError:
            doc = {"schema": SCHEMA, "arch": arch, "entries": []}
    if doc.get("schema") != SCHEMA:
        raise UsageError(f"not a sparsec tuning DB: schema {doc.get('schema')!r}", where=str(path), expected=SCHEMA)
    return doc


def lookup(db: dict, m: int, n: int, k: int, dtype: str, sparse: bool) -> KernelConfig | None:
    """The tuned config for a shape: the exact entry, else the nearest (log-distance) of that dtype."""
    key = "sparse" if sparse else "dense"
    best, best_d = None, math.inf
    for e in db.get("entries", []):
        if e["dtype"] != dtype or not e.get(key):
            continue
        d = sum(abs(math.log(e[a] / v)) for a, v in (("m", m), ("n", n), ("k", k)))
        if d < best_d:
            best, best_d = e[key]["config"], d
    return KernelConfig.from_name(best) if best else None


def choose(m: int, n: int, k: int, dtype: str, sparse: bool, *, arch: str = "sm_90a", activation: str = "identity",
           residual: bool = False, scale: bool = False, db: dict | None = None) -> KernelConfig:
    """The kernel for one layer: the tuned mainloop of the nearest DB entry (else the default) with this epilogue."""
    from sparsec.backends.cutlass.config import default_config

    cfg = lookup(db if db is not None else load_db(arch=arch), m, n, k, dtype, sparse) or default_config(arch, dtype, sparse)
    return cfg.with_epilogue(activation, residual, scale)


def new_db(arch: str, entries: list[dict]) -> dict:
    import torch

    from sparsec.backends.cutlass.build import toolchain

    try:
        cutlass_version = toolchain().cutlass_version
    except Exception:  # noqa: BLE001 -- the DB is still valid without it
        cutlass_version = None
    return {
        "schema": SCHEMA, "arch": arch, "device": torch.cuda.get_device_name(),
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "versions": {"torch": torch.__version__, "cuda": torch.version.cuda, "cutlass": cutlass_version},
        "entries": entries,
    }


def merge_entries(old: list[dict], new: list[dict]) -> list[dict]:
    key = lambda e: (e["m"], e["n"], e["k"], e["dtype"])  # noqa: E731
    merged = {key(e): e for e in old}
    merged.update({key(e): e for e in new})
    return sorted(merged.values(), key=lambda e: (e["dtype"], e["m"], e["n"], e["k"]))


# ------------------------------------------------------------------ measuring

def rel_err(y, ref) -> float:
    """‖y − ref‖ / ‖ref‖ in float64; NaN anywhere (an unwritten output) gives inf."""
    import torch

    y64 = y.double()
    if not torch.isfinite(y64).all():
        return math.inf
    return (torch.linalg.vector_norm(y64 - ref) / torch.linalg.vector_norm(ref).clamp_min(1e-30)).item()



def rotations(bytes_per_copy: int, cap: int = 16) -> int:
    return max(2, min(cap, math.ceil(2 * L2_BYTES / max(1, bytes_per_copy))))


@dataclasses.dataclass
class Problem:
    """Random operands of one GEMM, rotated over ``copies`` for timing, plus the float64 reference."""

    m: int
    n: int
    k: int
    dtype: str
    copies: int
    w: object  # masked 2:4 weight [m, k] (torch, on the GPU)
    xs: list
    ref: object  # float64 [n, m] of copy 0
    packed: dict = dataclasses.field(default_factory=dict)  # (arch, tile_k or dense) -> weight copies

    def weights(self, cfg: KernelConfig) -> list:
        """The weight in ``cfg``'s layout, one copy per rotation (packed once per layout)."""
        from sparsec.backends.cutlass import runtime

        key = (cfg.arch, cfg.sparse, cfg.pack_tile_k, cfg.dtype)
        if key not in self.packed:
            first = runtime.pack_weight(self.w, cfg) if cfg.sparse else (runtime.pad_dense_weight(self.w, cfg),)
            self.packed[key] = [first] + [tuple(t.clone() for t in first) for _ in range(self.copies - 1)]
        return self.packed[key]

    @classmethod
    def make(cls, m: int, n: int, k: int, dtype: str, seed: int = 0) -> "Problem":
        import torch

        from sparsec.backends.cutlass.runtime import _TORCH_DTYPE

        g = torch.Generator(device="cuda").manual_seed(seed)
        dt = _TORCH_DTYPE[dtype]
        w = torch.randn(m, k, device="cuda", generator=g).to(dt)
        grp = w.float().abs().reshape(m, k // 4, 4)
        keep = torch.zeros_like(grp, dtype=torch.bool).scatter_(-1, grp.topk(2, dim=-1).indices, True)
        w = (w.reshape(m, k // 4, 4) * keep).reshape(m, k)
        copies = rotations(2 * (n * k + m * k + n * m))
        xs = [torch.randn(n, k, device="cuda", generator=g).to(dt) for _ in range(copies)]
        ref = xs[0].double() @ w.double().t()
        return cls(m, n, k, dtype, copies, w, xs, ref)


def measure_config(p: Problem, cfg: KernelConfig, *, warmup: int = 5, iters: int = 20) -> tuple[float, float]:
    """(µs per call, relative error) of one config on problem ``p``; error checked on a NaN-poisoned output."""
    import torch

    from sparsec.backends.cutlass import runtime

    ws = p.weights(cfg)
    if cfg.sparse:
        call = lambda i: torch.ops.sparsec.gemm24(p.xs[i], ws[i][0], ws[i][1], None, None, None, cfg.name, p.m)  # noqa: E731
    else:
        call = lambda i: torch.ops.sparsec.gemm_dense(p.xs[i], ws[i][0], None, None, None, cfg.name, p.m)  # noqa: E731
    with runtime.poisoned_outputs():
        y = call(0)
    torch.cuda.synchronize()
    err = rel_err(y, p.ref)
    outs = [None] * p.copies

    def runner(i):
        def fn():
            outs[i] = call(i)
        return fn

    us = time_graph([runner(i) for i in range(p.copies)], warmup=warmup, iters=iters)
    return us, err


def tune_shape(m: int, n: int, k: int, dtype: str, arch: str = "sm_90a", *, configs: dict | None = None,
               seed: int = 0, on_result: Callable[[KernelConfig, float, float], None] | None = None) -> dict:
    """Time every candidate of (arch, dtype) for dense and sparse; returns one DB entry.

    Candidates that fail to run or exceed the error tolerance are skipped (and reported to ``on_result``
    with inf time).
    """
    from sparsec.errors import KernelError

    p = Problem.make(m, n, k, dtype, seed)
    entry: dict = {"m": m, "n": n, "k": k, "dtype": dtype, "dense": None, "sparse": None}
    for sparse in (False, True):
        cands = (configs or {}).get(sparse) or candidates(arch, dtype, sparse)
        best = None
        for cfg in cands:
            try:
                us, err = measure_config(p, cfg)
            except KernelError as exc:
                log.info("%s on %dx%dx%d: %s", cfg.name, m, n, k, exc.what)
                us, err = math.inf, math.inf
            ok = err <= TOLERANCE[dtype]
            if on_result:
                on_result(cfg, us if ok else math.inf, err)
            if ok and (best is None or us < best[1]):
                best = (cfg, us)
        if best:
            entry["sparse" if sparse else "dense"] = {"config": best[0].name, "us": round(best[1], 2)}
    return entry


def tune(shapes: Iterable[tuple[int, int, int]], dtypes: Iterable[str], arch: str = "sm_90a",
         on_result=None) -> list[dict]:
    return [tune_shape(m, n, k, dt, arch, on_result=on_result) for dt in dtypes for (m, n, k) in shapes]
