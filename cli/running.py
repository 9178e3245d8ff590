"""``sparsec run``: load an artifact, feed it inputs, report its outputs."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from sparsec.errors import LoadError, UsageError


@dataclasses.dataclass(frozen=True)
class InputSpec:
    shape: tuple  # ints; None (or a name) for a dynamic dim
    dtype: torch.dtype


def load(path: Path):
    from sparsec.backends.artifact import load_artifact

    return load_artifact(path)


def _dtype(text: Any) -> torch.dtype:
    if isinstance(text, torch.dtype):
        return text
    from sparsec.ir.meta import parse_dtype

    name = str(text).replace("torch.", "")
    try:
        return parse_dtype(name)
    except UsageError:
        value = getattr(torch, name, None)
        if isinstance(value, torch.dtype):
            return value
        raise


def input_spec(manifest: dict) -> tuple[InputSpec, ...]:
    """The artifact's inputs, from ``manifest["inputs"]["tensors"]``:
    ``[{"name": "x", "shape": [1, 3, 32, 32], "dtype": "f32"}, ...]``.

    A dim that is not an int (a symbol such as ``"s0"``, or null) is dynamic.
    """
    entries = manifest.get("input_spec") or (manifest.get("inputs") or {}).get("tensors") or ()
    out = []
    for entry in entries:
        shape = tuple(d if isinstance(d, int) else None for d in entry["shape"])
        out.append(InputSpec(shape, _dtype(entry["dtype"])))
    return tuple(out)


def random_inputs(spec: tuple[InputSpec, ...], *, seed: int, batch: int | None) -> tuple[torch.Tensor, ...]:
    from sparsec.passes.instruments import random_like

    gen = torch.Generator().manual_seed(seed)
    out = []
    for s in spec:
        shape = [d if d is not None else (batch or 2) for d in s.shape]  # --batch sizes dynamic dims
        out.append(random_like(torch.empty(shape, dtype=s.dtype), gen))
    return tuple(out)


def load_inputs(path: Path) -> tuple[torch.Tensor, ...]:
    if not path.is_file():
        raise LoadError(f"input file '{path}' not found", fix="save inputs with torch.save(x, 'x.pt')")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise LoadError(
            f"cannot load inputs from '{path}'",
            actual=f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}",
            fix="save plain tensors: torch.save(x, 'x.pt') or torch.save((x1, x2), 'x.pt') "
            "(inputs are loaded with weights_only=True, which runs no code)",
        ) from exc
    if isinstance(obj, torch.Tensor):
        return (obj,)
    if isinstance(obj, (tuple, list)) and obj and all(isinstance(x, torch.Tensor) for x in obj):
        return tuple(obj)
    raise LoadError(
        f"'{path}' holds {type(obj).__name__}, not input tensors",
        expected="a tensor, or a tuple/list of tensors", actual=type(obj).__name__,
        fix="save the inputs with torch.save(x, 'x.pt')",
    )


def check_inputs(inputs: tuple[torch.Tensor, ...], spec: tuple[InputSpec, ...]) -> None:
    if not spec:
        return
    want = ", ".join(_spec_text(s) for s in spec)
    got = ", ".join(f"{_dtype_name(x.dtype)}[{','.join(str(d) for d in x.shape)}]" for x in inputs)
    if len(inputs) != len(spec):
        raise UsageError(f"the artifact takes {len(spec)} inputs, got {len(inputs)}", expected=want, actual=got)
    for i, (x, s) in enumerate(zip(inputs, spec)):
        if x.dim() != len(s.shape) or any(d is not None and d != real for d, real in zip(s.shape, x.shape)):
            raise UsageError(f"input {i} has the wrong shape", expected=want, actual=got,
                             fix="save inputs shaped like the model's --input-shape, or use --random")
        if x.dtype != s.dtype:
            raise UsageError(f"input {i} has the wrong dtype", expected=want, actual=got,
                             fix=f"convert it with x.to(torch.{str(s.dtype).replace('torch.', '')})")


def _dtype_name(dtype: torch.dtype) -> str:
    from sparsec.ir.meta import dtype_name

    return dtype_name(dtype)


def _spec_text(s: InputSpec) -> str:
    return f"{_dtype_name(s.dtype)}[{','.join('?' if d is None else str(d) for d in s.shape)}]"


def run(model, inputs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    with torch.no_grad():
        out = model(*inputs)
    flat = []

    def walk(v: Any) -> None:
        if isinstance(v, torch.Tensor):
            flat.append(v)
        elif isinstance(v, (tuple, list)):
            for x in v:
                walk(x)
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)

    walk(out)
    return flat


def print_stats(outputs: list[torch.Tensor], out) -> None:
    from rich.table import Table

    table = Table(title="outputs", title_justify="left", header_style="bold")
    for col in ("#", "shape", "dtype", "min", "max", "mean", "std", "finite"):
        table.add_column(col, justify="right" if col not in ("shape", "dtype") else "left")
    for i, t in enumerate(outputs):
        d = t.detach().double()
        if d.numel():
            stats = [f"{d.min().item():.6g}", f"{d.max().item():.6g}", f"{d.mean().item():.6g}",
                     f"{d.std().item():.6g}" if d.numel() > 1 else "-"]
        else:
            stats = ["-"] * 4
        finite = "yes" if bool(torch.isfinite(d).all()) else "NO"
        table.add_row(str(i), "[" + ",".join(str(s) for s in t.shape) + "]", _dtype_name(t.dtype), *stats, finite)
    out.print(table)
