"""Kernel configurations of the CUTLASS backend: one frozen dataclass per kernel.

A :class:`KernelConfig` names everything that changes the generated C++:
arch, dtype, sparse or dense, tile, cluster, schedule and the epilogue. Its
``name`` is stable and human-readable (it goes into the tuning DB and the
artifact); its ``digest`` hashes the generated source with the toolchain, for
the build cache.

GEMM convention (fixed across sparsec): the weight W is the A operand
(M = output channels, K = reduction), X is row-major [N, K] (the B operand,
column-major K x N), and D = W @ X^T is column-major M x N, i.e. row-major
Y[N, M]. No transposes anywhere.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

ARCHES = ("sm_90a", "sm_80")
DTYPES = ("fp16", "bf16")
SCHEDULES = ("cooperative", "pingpong")
ACTIVATIONS = ("identity", "relu", "relu6", "silu", "gelu", "hardswish", "sigmoid")


@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """One GEMM kernel. Tile K is in logical (uncompressed) elements of K.

    Example:
        >>> KernelConfig("sm_90a", "fp16", sparse=True).name
        'sm90a_fp16_sp_t128x128x128_c1x2_coop_identity'
    """

    arch: str = "sm_90a"
    dtype: str = "fp16"
    sparse: bool = True
    tile: tuple[int, int, int] = (128, 128, 128)
    cluster: tuple[int, int] = (1, 2)
    schedule: str = "cooperative"
    activation: str = "identity"
    residual: bool = False  # D = act(scale*acc + bias + residual): C operand loaded
    scale: bool = False  # per-output-channel (per-row) scale on the accumulator
    stages: int = 0  # sm_80 only: mainloop stages (0 = the default for the tile)
    swizzle: int = 1  # sm_90a only: tile-scheduler swizzle (a run-time argument: same library)
    pdl: bool = False  # sm_90a only: launched with programmatic dependent launch (SPARSEC_CUTLASS_PDL)

    def __post_init__(self) -> None:
        if self.arch not in ARCHES:
            raise ValueError(f"arch {self.arch!r} not in {ARCHES}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r} not in {DTYPES}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule {self.schedule!r} not in {SCHEDULES}")
        if self.swizzle not in (1, 2, 4, 8) or (self.swizzle != 1 and self.arch != "sm_90a"):
            raise ValueError(f"swizzle {self.swizzle} not in (1, 2, 4, 8), or not sm_90a")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r} not in {ACTIVATIONS}")
        if self.pdl and self.arch != "sm_90a":
            raise ValueError("programmatic dependent launch (pdl) is for sm_90a kernels")
        tm, tn, tk = self.tile
        if self.arch == "sm_90a":
            if self.schedule == "cooperative" and tm % 128:
                raise ValueError(f"the cooperative schedule needs tile M % 128 == 0, got {tm}")
            if tk not in (64, 128) or tm not in (64, 128, 256) or tn % 16 or not 16 <= tn <= 256:
                raise ValueError(f"unsupported sm_90a tile {self.tile}")
        elif self.arch == "sm_80":
            if self.cluster != (1, 1):
                raise ValueError("sm_80 kernels have no clusters; use cluster=(1, 1)")
            if not self.stages:  # normalise, so that a config equals its parsed name
                object.__setattr__(self, "stages", 3 if tk >= 64 else 4)

    @property
    def name(self) -> str:
        """The config's full name (what the tuning DB and the ops' ``config`` argument hold)."""
        return self.lib_name + (f"_sw{self.swizzle}" if self.swizzle != 1 else "")

    @property
    def lib_name(self) -> str:
        """The name of the compiled kernel: the run-time swizzle is not part of it."""
        tm, tn, tk = self.tile
        parts = [self.arch.replace("_", ""), self.dtype, "sp" if self.sparse else "dn", f"t{tm}x{tn}x{tk}"]
        if self.arch == "sm_90a":
            parts += [f"c{self.cluster[0]}x{self.cluster[1]}", {"cooperative": "coop", "pingpong": "pp"}[self.schedule]]
        else:
            parts.append(f"s{self.stages}")
        parts.append(self.activation)
        if self.residual:
            parts.append("res")
        if self.scale:
            parts.append("scale")
        if self.pdl:
            parts.append("pdl")
        return "_".join(parts)

    @property
    def symbol(self) -> str:
        """The extern "C" entry point of this kernel in its shared library."""
        return "sparsec_" + self.lib_name

    @property
    def tile_k(self) -> int:
        return self.tile[2]

    @property
    def pack_tile_k(self) -> int:
        """The tile K the sparse weight must be packed for (sm_90 metadata depends on it)."""
        return min(self.tile[2], 128) if self.arch == "sm_90a" else 0

    def with_epilogue(self, activation: str = "identity", residual: bool = False, scale: bool = False) -> "KernelConfig":
        return dataclasses.replace(self, activation=activation, residual=residual, scale=scale)

    def base(self) -> "KernelConfig":
        """The same mainloop with the plain epilogue and launch (what the tuning DB names)."""
        return dataclasses.replace(self.with_epilogue(), swizzle=1, pdl=False)

    @classmethod
    def from_name(cls, name: str) -> "KernelConfig":
        """Parse ``name`` back (``KernelConfig.from_name(c.name) == c``)."""
        parts = name.split("_")
        arch = {"sm90a": "sm_90a", "sm80": "sm_80"}[parts[0]]
        dtype, kind, tile = parts[1], parts[2], parts[3]
        tm, tn, tk = (int(x) for x in tile[1:].split("x"))
        rest = parts[4:]
        kw: dict = {}
        if arch == "sm_90a":
            cm, cn = (int(x) for x in rest[0][1:].split("x"))
            kw.update(cluster=(cm, cn), schedule={"coop": "cooperative", "pp": "pingpong"}[rest[1]])
            rest = rest[2:]
        else:
            kw.update(cluster=(1, 1), stages=int(rest[0][1:]))
            rest = rest[1:]
        sw = [int(r[2:]) for r in rest[1:] if r.startswith("sw")]
        kw.update(activation=rest[0], residual="res" in rest[1:], scale="scale" in rest[1:], swizzle=sw[0] if sw else 1,
                  pdl="pdl" in rest[1:])
        return cls(arch=arch, dtype=dtype, sparse=(kind == "sp"), tile=(tm, tn, tk), **kw)


def candidates(arch: str, dtype: str, sparse: bool) -> list[KernelConfig]:
    """The configs ``sparsec tune`` measures for one (arch, dtype, sparse).

    sm_90a: tile x cluster x schedule, plus tile-scheduler swizzles of the
    large tiles (a swizzle is a run-time argument: no extra compile).
    """
    if arch == "sm_90a":
        if sparse:
            grid: Iterable = [
                ((256, 128, 128), (2, 1), "cooperative", (1, 2, 4, 8)),
                ((256, 128, 128), (1, 2), "cooperative", (1, 4)),
                ((256, 128, 128), (1, 1), "cooperative", (1,)),
                ((256, 128, 128), (2, 2), "cooperative", (1,)),
                ((256, 128, 64), (2, 1), "cooperative", (1,)),  # tile K 64: weights packed for tk64
                ((128, 256, 64), (2, 1), "cooperative", (1,)),
                ((128, 256, 128), (1, 2), "cooperative", (1,)),
                ((128, 256, 128), (2, 1), "cooperative", (1, 4)),
                ((128, 128, 128), (2, 1), "cooperative", (1,)),
                ((128, 128, 128), (1, 2), "cooperative", (1,)),
                ((128, 128, 128), (1, 2), "pingpong", (1,)),
                ((64, 128, 128), (1, 2), "pingpong", (1,)),
                ((128, 64, 128), (1, 1), "cooperative", (1,)),
            ]
        else:
            grid = [
                ((128, 256, 64), (1, 2), "cooperative", (1, 4)),
                ((256, 128, 64), (2, 1), "cooperative", (1, 4)),
                ((128, 256, 64), (2, 1), "cooperative", (1,)),
                ((128, 128, 64), (1, 2), "cooperative", (1,)),
                ((128, 128, 64), (1, 2), "pingpong", (1,)),
                ((64, 256, 64), (1, 1), "pingpong", (1,)),
                ((64, 128, 64), (1, 2), "pingpong", (1,)),
            ]
        return [KernelConfig(arch, dtype, sparse, t, c, s, swizzle=w) for t, c, s, ws in grid for w in ws]
    grid = [(128, 128, 64), (256, 128, 64)] if sparse else [(128, 128, 32), (256, 128, 32)]
    return [KernelConfig(arch, dtype, sparse, t, (1, 1), "cooperative") for t in grid]


def default_config(arch: str, dtype: str, sparse: bool) -> KernelConfig:
    """The config used where the tuning DB has no entry for a shape."""
    if arch == "sm_90a":
        return KernelConfig(arch, dtype, sparse, (256, 128, 128) if sparse else (128, 256, 64), (2, 1) if sparse else (1, 2))
    return candidates(arch, dtype, sparse)[0]
