"""The measured cost model: a layer goes 2:4 only where the tuned sparse kernel
beats the tuned dense kernel on that GEMM shape.

The tuning DB is the JSON that ``sparsec tune`` writes (one per GPU arch; by
default to ``<cache dir>/tuning/<arch>.json``, and the CUTLASS backend ships
them as ``backends/cutlass/tuned/<arch>.json``; see :func:`default_db`)::

    {"schema": "sparsec.tuning/1", "arch": "sm_90a", "device": "...", "created": "...",
     "versions": {...},
     "entries": [{"m": 2048, "n": 8192, "k": 1024, "dtype": "fp16",
                  "dense": {"config": "...", "us": 12.3}, "sparse": {"config": "...", "us": 8.1}}]}

GEMM convention (team-wide): M = Cout (the weight is the sparse A operand),
K = kh*kw*Cin, N = tokens (batch*H*W for a conv, the leading dims of a
linear). A lookup matches (m, k, dtype) exactly and takes the entry whose n
is nearest in log scale (ties: the larger n), since N varies with the batch
size while M and K are fixed by the weights.
"""

from __future__ import annotations

import dataclasses
import json
import math
from fractions import Fraction
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from sparsec.errors import UsageError

SCHEMA = "sparsec.tuning/1"
CostModelKind = Literal["measured", "shape", "off"]


@dataclasses.dataclass(frozen=True)
class GemmShape:
    """One layer as a GEMM: D[M, N] = W[M, K] . X[K, N]."""

    m: int
    k: int
    n: int
    dtype: str

    def __str__(self) -> str:
        return f"M={self.m} K={self.k} N={self.n} {self.dtype}"


@dataclasses.dataclass(frozen=True)
class Measurement:
    m: int
    n: int
    k: int
    dtype: str
    dense_us: float
    sparse_us: float
    dense_config: str
    sparse_config: str


@dataclasses.dataclass(frozen=True)
class Verdict:
    sparse: bool
    reason: str


@dataclasses.dataclass(frozen=True)
class TuningDB:
    """A parsed tuning DB; ``source`` names the file it came from."""

    source: str
    arch: str
    device: str
    entries: tuple[Measurement, ...]

    @classmethod
    def load(cls, path: str | Path) -> "TuningDB":
        path = Path(path)
        if not path.is_file():
            raise missing_db(path)
        return cls.parse(path.read_text(), str(path))

    @classmethod
    def parse(cls, text: str, source: str = "<string>") -> "TuningDB":
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("schema") != SCHEMA:
                got = data.get("schema") if isinstance(data, dict) else type(data).__name__
                raise ValueError(f"schema is {got!r}, expected {SCHEMA!r}")
            entries = tuple(_entry(e, i) for i, e in enumerate(_field(data, "entries", list)))
            return cls(source, _field(data, "arch", str), str(data.get("device", "")), entries)
        except (ValueError, KeyError, TypeError) as exc:
            raise UsageError(
                f"tuning DB '{source}' is not a valid {SCHEMA} file",
                actual=f"{type(exc).__name__}: {exc}",
                fix="regenerate it with `sparsec tune`, or decide by shape alone with cost-model=shape",
            ) from exc

    def lookup(self, shape: GemmShape) -> Measurement | None:
        """The entry with this (m, k, dtype) whose n is nearest to ``shape.n`` in log scale."""
        same = [e for e in self.entries if (e.m, e.k, e.dtype) == (shape.m, shape.k, shape.dtype)]
        if not same:
            return None
        n = max(shape.n, 1)
        # |log(e.n / n)| compared exactly as the ratio max/min, so ties are real ties
        return min(same, key=lambda e: (Fraction(max(e.n, n), min(e.n, n)), -e.n))


def missing_db(path: str | Path) -> UsageError:
    return UsageError(
        f"tuning DB file '{path}' does not exist",
        fix="measure one on the GPU with `sparsec tune`, give the right path with tuning-db=FILE, "
        "or decide by shape alone with cost-model=shape",
    )


def _field(data: dict, key: str, tp: type) -> Any:
    if key not in data:
        raise ValueError(f"missing key {key!r}")
    value = data[key]
    if not isinstance(value, tp) or isinstance(value, bool):
        want = " or ".join(t.__name__ for t in (tp if isinstance(tp, tuple) else (tp,)))
        raise TypeError(f"{key!r} is {type(value).__name__}, expected {want}")
    return value


def _entry(e: Any, i: int) -> Measurement:
    if not isinstance(e, dict):
        raise TypeError(f"entries[{i}] is {type(e).__name__}, expected an object")
    try:
        dims = {k: _field(e, k, int) for k in ("m", "n", "k")}
        if min(dims.values()) < 1:
            raise ValueError("m, n and k must be positive")
        times = {}
        for kind in ("dense", "sparse"):
            side = _field(e, kind, dict)
            us = _field(side, "us", (int, float))
            if not (math.isfinite(us) and us > 0):
                raise ValueError(f"{kind}.us is {us!r}, expected a positive time")
            times[kind] = (float(us), str(side.get("config", "")))
        return Measurement(dims["m"], dims["n"], dims["k"], _field(e, "dtype", str),
                           times["dense"][0], times["sparse"][0], times["dense"][1], times["sparse"][1])
    except (KeyError, TypeError, ValueError) as exc:
        raise type(exc)(f"entries[{i}]: {exc}") from None


def default_db(arch: str) -> TuningDB | None:
    """The tuning DB for ``arch`` when none is named, or None if there is none. In order:

    1. ``<cache dir>/tuning/<arch>.json``, where ``sparsec tune`` writes by
       default (the ``SPARSEC_CACHE_DIR`` knob, ``--cache-dir``): this machine's own measurements;
    2. the DB the CUTLASS backend ships, ``backends/cutlass/tuned/<arch>.json``,
       found with importlib.resources under ``sparsec.backends`` (so the
       backend package itself is not imported).
    """
    from sparsec import knobs

    local = Path(knobs.get("cache_dir")) / "tuning" / f"{arch}.json"
    if local.is_file():
        return TuningDB.load(local)
    ref = shipped_db(arch)
    if not ref.is_file():
        return None
    return TuningDB.parse(ref.read_text(), f"sparsec.backends.cutlass/tuned/{arch}.json")


def shipped_db(arch: str):
    """Where the CUTLASS backend's own DB for ``arch`` lives (an importlib.resources Traversable)."""
    return resources.files("sparsec.backends").joinpath("cutlass", "tuned", f"{arch}.json")


def default_db_names(arch: str) -> str:
    return f"neither <cache dir>/tuning/{arch}.json nor backends/cutlass/tuned/{arch}.json exists"


def _us(t: float) -> str:
    return f"{t:.3g}us"


def measured(db: TuningDB, shape: GemmShape) -> Verdict:
    """Sparse only where the tuned sparse kernel is faster than the tuned dense one."""
    e = db.lookup(shape)
    if e is None:
        return Verdict(False, f"no measurement for this shape (m={shape.m}, k={shape.k}, {shape.dtype}) "
                              f"in {db.source}: stays dense")
    near = "" if e.n == shape.n else f" (nearest measured to n={shape.n})"
    if e.sparse_us < e.dense_us:
        return Verdict(True, f"measured: sparse {_us(e.sparse_us)} < dense {_us(e.dense_us)} at n={e.n}{near}")
    return Verdict(False, f"measured: sparse {_us(e.sparse_us)} >= dense {_us(e.dense_us)} at n={e.n}{near}: "
                          f"stays dense")
