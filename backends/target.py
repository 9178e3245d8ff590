"""``Target`` and ``Backend``: what a compile is for, and who runs it.

A Target is a frozen description of a machine: its backend, GPU arch, the
dtypes it computes in, and per-dtype limits of its 2:4 sparse kernels. A
Backend declares which targets it ``supports``, which nodes it can take
(``support(node)`` returns :class:`Supported` or :class:`Unsupported` with a
reason), the pipeline it wants, and how it ``lower``s a module.
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Any, Mapping

from torch import fx


@dataclasses.dataclass(frozen=True)
class SparseLimits:
    """Shape limits of the 2:4 kernels for one dtype.

    ``k_multiple``: the reduction dim must be a multiple of this;
    ``n_multiple``: output channels likewise; ``min_k``/``min_n``: below
    these sizes a dense kernel wins anyway.
    """

    k_multiple: int
    n_multiple: int
    min_k: int = 64
    min_n: int = 64


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    backend: str
    description: str
    arch: str | None = None  # e.g. "sm_80", "sm_90a"; None for the CPU
    dtypes: tuple[str, ...] = ("fp32",)
    sparse: Mapping[str, SparseLimits] = dataclasses.field(default_factory=dict)
    round_to: int = 8  # preferred channel multiple for pruned widths

    def __post_init__(self) -> None:
        object.__setattr__(self, "sparse", MappingProxyType(dict(self.sparse)))

    @property
    def is_sparse(self) -> bool:
        return bool(self.sparse)

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "backend": self.backend,
            "arch": self.arch,
            "dtypes": list(self.dtypes),
            "sparse": {k: dataclasses.asdict(v) for k, v in self.sparse.items()},
            "round_to": self.round_to,
            "description": self.description,
        }


@dataclasses.dataclass(frozen=True)
class Supported:
    note: str = ""

    def __bool__(self) -> bool:
        return True

    def __str__(self) -> str:
        return "yes" + (f" ({self.note})" if self.note else "")


@dataclasses.dataclass(frozen=True)
class Unsupported:
    reason: str

    def __bool__(self) -> bool:
        return False

    def __str__(self) -> str:
        return f"no: {self.reason}"


class Backend:
    """Base class of backends; subclasses set ``name`` and override the hooks."""

    name: str = ""
    description: str = ""

    def supports(self, target: Target) -> bool:
        return target.backend == self.name

    def missing(self) -> str | None:
        """What this machine lacks to compile with this backend (shown by `sparsec targets`), or None."""
        return None

    def for_target(self, target: Target) -> "Backend":
        """This backend as it compiles ``target``: ``resolve_backend`` returns it, so ``support`` may
        depend on the target (``tvm``: CUTLASS kernels on GPUs, all TVM on the CPU). Default: ``self``."""
        return self

    def support(self, node: fx.Node) -> Supported | Unsupported:
        raise NotImplementedError

    def pipeline(self, target: Target) -> str:
        """The pass pipeline text this backend wants before ``lower``."""
        raise NotImplementedError

    def lower(self, mod, target: Target) -> Any:
        """Turn a transformed ``ir.Module`` into something the artifact stores."""
        raise NotImplementedError
