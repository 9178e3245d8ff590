"""Capture an ``nn.Module`` as an ATen-level ``ir.Module``.

``tracer="export"`` (default) uses ``torch.export.export``: the training IR,
so the graph can still be fine-tuned. ``tracer="symbolic"`` first runs
``torch.fx.symbolic_trace`` (Python-level tracing that does not analyse the
model's bytecode) and then exports the traced GraphModule, so both end as the
same ATen IR and every pass sees one form.
"""

from __future__ import annotations

import copy

import logging
from typing import Any, Sequence

import torch

from sparsec.errors import TraceError, UsageError, _last_user_frame
from sparsec.ir.module import Module

log = logging.getLogger("sparsec.ir")

TRACERS = ("export", "symbolic")


def trace(
    model: torch.nn.Module,
    example_inputs: Sequence[torch.Tensor] | torch.Tensor,
    *,
    name: str | None = None,
    tracer: str = "export",
    dynamic_batch: bool = False,
) -> Module:
    """Trace ``model`` on ``example_inputs`` into an ``ir.Module``.

    The module owns copies of the model's parameters and buffers: passes that
    change weights never touch ``model`` itself.

    Example:
        >>> mod = sparsec.trace(torchvision.models.resnet18().eval(), torch.randn(1, 3, 224, 224))
    """
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    example_inputs = tuple(example_inputs)
    if tracer not in TRACERS:
        raise UsageError(f"unknown tracer '{tracer}'", fix=f"use one of: {', '.join(TRACERS)}")
    if not isinstance(model, torch.nn.Module):
        raise TraceError(
            f"expected a torch.nn.Module to trace, got {type(model).__name__}",
            fix="pass an nn.Module (a factory must return one)",
        )
    name = name or type(model).__name__.lower()
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1, max=65536)
        dynamic_shapes = tuple({0: batch} for _ in example_inputs)
        if any(x.shape[0] < 2 for x in example_inputs):
            # export specialises a size-1 dim to the constant 1; trace at batch 2.
            example_inputs = tuple(x.expand(2, *x.shape[1:]).clone() for x in example_inputs)
    target = model
    if tracer == "symbolic":
        try:
            target = torch.fx.symbolic_trace(model)
        except Exception as exc:
            raise _trace_error(exc, "torch.fx.symbolic_trace") from exc
    try:
        ep = torch.export.export(target, example_inputs, dynamic_shapes=dynamic_shapes)
    except Exception as exc:
        raise _trace_error(exc, "torch.export") from exc
    # ep.module() shares its parameters and buffers with ``model``; passes edit weights in
    # place (BN folding, 2:4 masks, fine-tuning), and the caller's model must never change.
    gm = copy.deepcopy(ep.module())
    return Module(gm, example_inputs, name=name, dynamic_shapes=dynamic_shapes)


def _trace_error(exc: Exception, how: str) -> TraceError:
    text = str(exc)
    first = next((line for line in text.splitlines() if line.strip()), type(exc).__name__)
    where = _last_user_frame(text) if "File \"" in text else None
    data_dependent = any(
        key in text
        for key in ("data-dependent", "data dependent", "GuardOnDataDependentSymNode", "symbolically traced variables cannot be used as inputs to control flow", "Could not guard on data-dependent")
    )
    if data_dependent:
        return TraceError(
            f"the model is not traceable with {how}: its control flow depends on tensor values",
            where=where,
            actual=first,
            fix="rewrite the branch with torch.cond / torch.where, or move it out of forward(); "
            "then export the model yourself with torch.export.export and pass the .pt2",
        )
    return TraceError(
        f"the model could not be traced with {how}",
        where=where,
        actual=f"{type(exc).__name__}: {first}",
        fix="try --tracer symbolic (or export), check the --input-shape, or export it yourself to .pt2",
    )
