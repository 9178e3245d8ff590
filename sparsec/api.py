"""The Python API: ``sparsec.compile``, ``sparsec.load`` and ``sparsec.load_model``.

Example:
    >>> import sparsec, torch, torchvision
    >>> model = torchvision.models.resnet18().eval()
    >>> res = sparsec.compile(model, (torch.randn(1, 3, 32, 32),), target="cpu", output="r18.sparsec")
    >>> fast = sparsec.load("r18.sparsec")
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Sequence

import torch

from sparsec.errors import RegistryError, TargetError, UsageError
from sparsec.ir.loader import load_model

log = logging.getLogger("sparsec")

__all__ = ["CompileResult", "compile", "load", "load_model", "resolve_backend", "resolve_target"]


@dataclasses.dataclass(frozen=True)
class CompileResult:
    """What ``compile`` made: the transformed module, the target, the
    canonical pipeline text that ran, the per-pass records, and the artifact
    path (None if no ``output`` was given)."""

    module: Any
    target: Any
    pipeline: str
    records: tuple = ()
    artifact: Path | None = None


def resolve_target(target):
    """A Target from a name (or a Target, returned as is)."""
    from sparsec.backends.target import Target
    from sparsec.registry import registry

    if isinstance(target, Target):
        return target
    if not isinstance(target, str):
        raise UsageError(f"target must be a name or a Target, got {type(target).__name__}",
                         fix=f"use one of: {', '.join(registry().names('target'))}")
    return registry().get("target", target)


def resolve_backend(target):
    """The backend instance of ``target``; a TargetError if this sparsec lacks it or it refuses the target."""
    from sparsec.registry import registry

    reg = registry()
    try:
        backend = reg.get("backend", target.backend)
    except RegistryError as exc:
        raise TargetError(
            f"target '{target.name}' needs backend '{target.backend}', which is not implemented in this version of sparsec",
            where=f"target '{target.name}' ({target.description})",
            fix=f"compile for a target that works here: {', '.join(working_targets()) or '(none)'}",
        ) from exc
    backend = backend() if isinstance(backend, type) else backend
    if not backend.supports(target):
        raise TargetError(
            f"backend '{backend.name}' does not support target '{target.name}'",
            where=f"target '{target.name}' ({target.description})",
            fix=f"compile for a target that works here: {', '.join(working_targets()) or '(none)'}",
        )
    return backend.for_target(target)


def working_targets() -> list[str]:
    """Names of the registered targets whose backend exists and accepts them."""
    from sparsec.registry import registry

    reg = registry()
    backends = set(reg.names("backend"))
    out = []
    for name in reg.names("target"):
        try:
            t = reg.get("target", name)
            if t.backend in backends:
                b = reg.get("backend", t.backend)
                if (b() if isinstance(b, type) else b).supports(t):
                    out.append(name)
        except Exception as exc:  # a broken plugin target must not hide the others
            log.warning("target %s unusable: %s", name, exc)
    return out


def compile(  # noqa: A001 - the public name is sparsec.compile
    model,
    example_inputs: Sequence[torch.Tensor] | torch.Tensor | None = None,
    *,
    target="cpu",
    pipeline=None,
    output=None,
    force: bool = False,
    ctx=None,
) -> CompileResult:
    """Compile ``model`` for ``target``; write an artifact if ``output`` is given.

    ``model`` is an ``nn.Module`` (with ``example_inputs``), an ``ir.Module``
    (cloned first, so the caller's is untouched), or a spec string for
    :func:`load_model`. ``pipeline`` is pipeline text (or a PassManager);
    by default the backend's own. Never falls back to another target.

    Example:
        >>> res = sparsec.compile(model, (torch.randn(1, 3, 32, 32),), target="cpu", output="m.sparsec")
        >>> res.artifact
        PosixPath('m.sparsec')
    """
    from sparsec.ir.module import Module
    from sparsec.passes.manager import PassContext, PassManager

    tgt = resolve_target(target)
    backend = resolve_backend(tgt)  # fail before any tracing work
    mod = _as_module(model, example_inputs)
    if pipeline is None:
        pipeline = backend.pipeline(tgt)
    pm = pipeline if isinstance(pipeline, PassManager) else PassManager.parse(pipeline)
    if ctx is None:
        ctx = PassContext(target=tgt)
    elif ctx.target is None:
        ctx = dataclasses.replace(ctx, target=tgt)
    elif ctx.target != tgt:
        raise UsageError("the PassContext names a different target than compile()",
                         expected=tgt.name, actual=getattr(ctx.target, "name", str(ctx.target)),
                         fix="leave ctx.target unset, or pass the same target to compile()")
    log.info("compiling %s for %s with pipeline '%s'", mod.name, tgt.name, pm)
    records = tuple(pm.run(mod, ctx))
    lowered = backend.lower(mod, tgt)
    from sparsec.backends.artifact import Lowered, write_artifact

    module = lowered.module if isinstance(lowered, Lowered) else lowered  # Lowered: module + backend files
    artifact = None
    if output is not None:
        if not isinstance(module, Module):
            raise TargetError(f"backend '{backend.name}' lowered to {type(lowered).__name__}, which the artifact writer cannot store")
        artifact = write_artifact(output, lowered, target=tgt, pipeline=str(pm), records=records, force=force)
    return CompileResult(module=module, target=tgt, pipeline=str(pm), records=records, artifact=artifact)


def _as_module(model, example_inputs):
    from sparsec.ir.module import Module
    from sparsec.ir.trace import trace

    if isinstance(model, Module):
        if example_inputs is not None:
            log.warning("example_inputs ignored: an ir.Module carries its own")
        return model.clone()
    if isinstance(model, str):
        if example_inputs is not None:
            raise UsageError("example_inputs cannot go with a model spec string",
                             fix="use sparsec.load_model(spec, input_shape=...) then compile the Module")
        return load_model(model)
    if isinstance(model, torch.nn.Module):
        if example_inputs is None:
            raise UsageError("compiling an nn.Module needs example_inputs",
                             fix="pass example inputs: sparsec.compile(model, (torch.randn(1, 3, 224, 224),))")
        if model.training:
            log.warning("%s is in training mode; call model.eval() first for inference numerics", type(model).__name__)
        return trace(model, example_inputs)
    raise UsageError(f"cannot compile a {type(model).__name__}",
                     expected="an nn.Module, a sparsec.ir.Module or a model spec string", actual=type(model).__name__)


def load(path, *, cuda_graph: bool = False, batch_buckets: Sequence[int] | None = None) -> torch.nn.Module:
    """Load a compiled artifact as a callable module (hashes and target checked).

    ``cuda_graph=True`` (GPU targets): the module captures the whole program as one CUDA graph on its
    first call per input shape and replays it after; its outputs are overwritten by the next call of
    the same shape (see :mod:`sparsec.backends.cuda_graph`). For an artifact compiled with
    ``--dynamic-batch``, calls are padded to ``batch_buckets`` (default: powers of two up to 256, inside
    its batch range), so it keeps one graph per bucket; ``batch_buckets=()`` captures every batch size.

    Example:
        >>> model = sparsec.load("resnet18.sparsec")
        >>> fast = sparsec.load("r50.sparsec", cuda_graph=True)
        >>> dyn = sparsec.load("r50-dynamic.sparsec", cuda_graph=True, batch_buckets=(1, 8, 32, 256))
    """
    from sparsec.backends.artifact import load_artifact
    from sparsec.backends.cuda_graph import BatchBuckets, CudaGraphModule, default_buckets

    if batch_buckets is not None and not cuda_graph:  # before the artifact is read and verified
        raise UsageError("batch_buckets sizes the CUDA graphs of cuda_graph=True", fix="add cuda_graph=True, or drop it")
    module, manifest = load_artifact(path)
    if batch_buckets and not manifest.get("inputs", {}).get("dynamic_batch"):
        shape = [t.get("shape") for t in manifest.get("inputs", {}).get("tensors", [])]
        raise UsageError(f"artifact '{path}' has a static batch: it runs at its compiled shape only",
                         actual=f"inputs {shape}", fix="compile with --dynamic-batch, or drop batch_buckets")
    if not cuda_graph:
        return module
    graphs = CudaGraphModule(module)
    buckets = default_buckets(manifest) if batch_buckets is None else tuple(batch_buckets)
    return BatchBuckets(graphs, buckets) if buckets else graphs
