"""Typed node metadata under namespaced ``sparsec.*`` keys.

Each kind of metadata is a frozen dataclass with a class-level ``key``. It is
stored in ``node.meta[key]`` and read and written only through :func:`get`,
:func:`put` and :func:`drop`, so a typo is an error rather than silent
``None``. ``str(value)`` is what the canonical printer shows.

Shape metadata is fx's own ``node.meta["val"]`` (a fake tensor), refreshed by
the pass manager after every pass; :func:`tensor_meta` reads it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, TypeVar

import torch
from torch import fx

META_KEYS: dict[str, type] = {}

T = TypeVar("T")


def metadata(cls: type[T]) -> type[T]:
    """Class decorator: a frozen dataclass registered under its ``key``."""
    cls = dataclasses.dataclass(frozen=True)(cls)
    key = cls.key  # type: ignore[attr-defined]
    if not key.startswith("sparsec."):
        raise ValueError(f"metadata key {key!r} must start with 'sparsec.'")
    if key in META_KEYS and META_KEYS[key] is not cls:
        raise ValueError(f"metadata key {key!r} registered twice: {META_KEYS[key]} and {cls}")
    META_KEYS[key] = cls
    return cls


def get(node: fx.Node, cls: type[T]) -> T | None:
    return node.meta.get(cls.key)  # type: ignore[attr-defined]


def put(node: fx.Node, value: Any) -> None:
    if type(value) not in META_KEYS.values():
        raise TypeError(f"{type(value).__name__} is not registered sparsec metadata")
    node.meta[value.key] = value


def drop(node: fx.Node, cls: type) -> None:
    node.meta.pop(cls.key, None)  # type: ignore[attr-defined]


def items(node: fx.Node) -> list[tuple[str, Any]]:
    """All sparsec metadata on a node, sorted by key (for the printer)."""
    return sorted((k, v) for k, v in node.meta.items() if k.startswith("sparsec."))


# -- the metadata kinds ---------------------------------------------------------


@metadata
class Sparsity24:
    """The weight of this get_attr node is 2:4 sparse along ``dim``.

    ``dim`` is the input-channel dim (1 for conv and linear weights); a conv
    weight's groups of 4 run along Cin inside each (kh, kw) tap, i.e. along
    the last dim of the weight viewed as (Cout, kh, kw, Cin). ``retained``:
    the fraction of the weight's L1 magnitude the mask kept; ``gain``: how
    much of that the channel permutation added (None: no permutation ran);
    ``reason``: why the layer went sparse (the cost model's verdict).
    """

    key: ClassVar[str] = "sparsec.sparsity"
    dim: int = 1
    retained: float | None = None
    gain: float | None = None
    reason: str = ""

    def __str__(self) -> str:
        parts = [f"dim={self.dim}"]
        if self.retained is not None:
            parts.append(f"retained={self.retained:.4f}")
        if self.gain is not None:
            parts.append(f"gain={self.gain:+.4f}")
        if self.reason:
            parts.append('"' + self.reason.replace('"', "'") + '"')
        return f"2:4({', '.join(parts)})"


@metadata
class Dense24:
    """This conv/linear node was considered for 2:4 sparsity and stays dense: ``reason`` says why."""

    key: ClassVar[str] = "sparsec.dense24"
    reason: str

    def __str__(self) -> str:
        return 'dense("' + self.reason.replace('"', "'") + '")'


@metadata
class Pruned:
    """This node's output channels were pruned from ``before`` to ``after``."""

    key: ClassVar[str] = "sparsec.pruned"
    before: int
    after: int

    def __str__(self) -> str:
        return f"{self.before}->{self.after}"


@metadata
class BackendAssignment:
    """The backend this node is lowered to."""

    key: ClassVar[str] = "sparsec.backend"
    backend: str

    def __str__(self) -> str:
        return self.backend


@metadata
class FoldedFrom:
    """This node absorbed others (e.g. a BatchNorm folded into a conv)."""

    key: ClassVar[str] = "sparsec.folded"
    nodes: tuple[str, ...]

    def __str__(self) -> str:
        return "[" + ",".join(self.nodes) + "]"


# -- shapes ------------------------------------------------------------------------

_DTYPE_SHORT = {
    torch.float64: "f64",
    torch.float32: "f32",
    torch.float16: "f16",
    torch.bfloat16: "bf16",
    torch.int64: "i64",
    torch.int32: "i32",
    torch.int16: "i16",
    torch.int8: "i8",
    torch.uint8: "u8",
    torch.bool: "i1",
    torch.complex64: "c64",
}
_DTYPE_FROM_SHORT = {v: k for k, v in _DTYPE_SHORT.items()}
_DTYPE_ALIASES = {"fp16": "f16", "half": "f16", "float16": "f16", "bf16": "bf16", "bfloat16": "bf16",
                  "fp32": "f32", "float": "f32", "float32": "f32", "fp64": "f64", "double": "f64", "float64": "f64"}


def dtype_name(dtype: torch.dtype) -> str:
    return _DTYPE_SHORT.get(dtype, str(dtype).replace("torch.", ""))


def parse_dtype(text: str) -> torch.dtype:
    """``fp16``/``f16``/``float16``/``half`` -> torch.float16, etc."""
    key = _DTYPE_ALIASES.get(text.lower(), text.lower())
    if key not in _DTYPE_FROM_SHORT:
        from sparsec.errors import UsageError

        raise UsageError(
            f"unknown dtype '{text}'",
            fix="use one of fp32, fp16, bf16, fp64",
        )
    return _DTYPE_FROM_SHORT[key]


@dataclasses.dataclass(frozen=True)
class TensorMeta:
    shape: tuple  # ints, or strings for symbolic dims
    dtype: torch.dtype

    def __str__(self) -> str:
        return f"{dtype_name(self.dtype)}[{','.join(str(d) for d in self.shape)}]"

    @property
    def numel(self) -> int | None:
        n = 1
        for d in self.shape:
            if not isinstance(d, int):
                return None
            n *= d
        return n


def _dim(d: Any) -> int | str:
    if isinstance(d, torch.SymInt):
        # never int() a symbolic dim: that guards on it and specialises the graph
        const = d.node.maybe_as_int()
        return const if const is not None else str(d)
    try:
        return int(d)
    except Exception:
        return str(d)


def tensor_meta(value: Any) -> TensorMeta | None:
    """The TensorMeta of a (fake) tensor, else None."""
    if isinstance(value, torch.Tensor):
        return TensorMeta(tuple(_dim(d) for d in value.shape), value.dtype)
    return None


def node_meta(node: fx.Node) -> TensorMeta | tuple | None:
    """Shape/dtype of a node's output; a tuple of them for multi-output nodes."""
    val = node.meta.get("val")
    if isinstance(val, (tuple, list)):
        return tuple(tensor_meta(v) for v in val)
    return tensor_meta(val)
