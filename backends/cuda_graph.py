"""Whole-model CUDA graphs: capture a module once per input signature, then replay it.

``sparsec.load(path, cuda_graph=True)`` wraps the loaded program in a :class:`CudaGraphModule`. The first
call with a given signature (shape, dtype, stride and device of every input) warms the module up on a
side stream, captures one CUDA graph of the whole forward and keeps its static inputs and outputs; every
later call with that signature copies the inputs into the static ones and replays the graph: one launch,
no allocation, no Python per layer. Memory is planned once: the graph owns a private pool sized by the
capture, in which the caching allocator already reused the buffers of layers whose outputs were dead.

The outputs a call returns are the graph's static outputs: the next call with the same signature
overwrites them (clone them to keep them), as with ``torch.compile(mode="reduce-overhead")``.

Batch buckets (:class:`BatchBuckets`; ``sparsec.load`` puts one around the graphs of an artifact compiled
with ``--dynamic-batch``): a call of batch ``n`` runs padded to the smallest bucket ``b >= n`` and gets its
own ``n`` rows back, so a dynamic-batch model keeps at most one graph (and one memory pool) per bucket,
whatever batches come.

Example:
    >>> fast = sparsec.load("r50.sparsec", cuda_graph=True)
    >>> y = fast(x)            # first call: capture; later calls: copy x in, replay
    >>> y = fast(x2).clone()   # keep this output past the next call
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
from typing import Any, Sequence

import torch
from torch.utils._pytree import tree_map

from sparsec.errors import TargetError, UsageError

log = logging.getLogger("sparsec.backends.cuda_graph")

WARMUP_CALLS = 3  # eager calls on a side stream before capture (lazy init, cuDNN/cuBLAS handles, kernel loads)
# Buckets of a dynamic-batch artifact: powers of two, so padding wastes under half of a call's work.
DEFAULT_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def _signature(args: tuple) -> tuple:
    return tuple((tuple(a.shape), a.dtype, a.stride(), a.device) for a in args)


def default_buckets(manifest: dict) -> tuple[int, ...]:
    """An artifact's batch buckets: for a dynamic batch, :data:`DEFAULT_BATCH_BUCKETS` inside the range it
    was exported with; none for a static one."""
    inputs = manifest.get("inputs", {})
    if not inputs.get("dynamic_batch"):
        return ()
    lo, hi = 1, None
    for t in inputs.get("tensors", []):
        dim = t.get("dynamic_dims", {}).get("0") or {}
        lo = max(lo, dim.get("min") or 1)
        if dim.get("max"):
            hi = dim["max"] if hi is None else min(hi, dim["max"])
    return tuple(b for b in DEFAULT_BATCH_BUCKETS if lo <= b and (hi is None or b <= hi))


def check_buckets(sizes: Sequence[int]) -> tuple[int, ...]:
    """Sorted, distinct, positive batch sizes, or a UsageError."""
    if not sizes or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in sizes):
        raise UsageError("batch buckets must be positive integers", actual=repr(tuple(sizes)),
                         fix="e.g. batch_buckets=(1, 8, 32, 256)")
    return tuple(sorted(set(sizes)))


def bucket_for(batch: int, buckets: Sequence[int]) -> int | None:
    """The smallest bucket >= ``batch``; None above the largest."""
    i = bisect.bisect_left(buckets, batch)
    return buckets[i] if i < len(buckets) else None


def _memory_format(a: torch.Tensor) -> torch.memory_format:
    channels_last = a.dim() == 4 and not a.is_contiguous() and a.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if channels_last else torch.contiguous_format


def pad_batch(a: torch.Tensor, b: int) -> torch.Tensor:
    """``a`` grown to batch ``b`` in its own memory format, the extra rows repeating its last sample."""
    full = torch.empty((b, *a.shape[1:]), dtype=a.dtype, device=a.device, memory_format=_memory_format(a))
    full[: a.shape[0]].copy_(a)
    full[a.shape[0]:].copy_(a[-1:].expand(b - a.shape[0], *a.shape[1:]))
    return full


@dataclasses.dataclass
class CapturedGraph:
    """One captured forward: its graph, static inputs (copy new inputs in) and static outputs."""

    graph: torch.cuda.CUDAGraph
    inputs: tuple[torch.Tensor, ...]
    outputs: Any

    def copy_in(self, *args: torch.Tensor) -> None:
        for static, a in zip(self.inputs, args):
            static.copy_(a)

    def replay(self) -> Any:
        self.graph.replay()
        return self.outputs


class CudaGraphModule(torch.nn.Module):
    """``module`` run as CUDA graphs: captured on the first call per input signature, replayed after.

    Inputs are positional CUDA tensors. Outputs are static (overwritten by the next call of the same
    signature). ``graphs`` maps each signature seen to its :class:`CapturedGraph`. A module with
    parameters or buffers left on the CPU is refused; ``check_device=False`` skips that check (for a CUDA
    callable that is not an ``nn.Module``, e.g. a TVM runtime).

    Example:
        >>> m = CudaGraphModule(net.cuda().eval())
        >>> y = m(torch.randn(8, 3, 224, 224, device="cuda"))
    """

    def __init__(self, module: torch.nn.Module, *, warmup: int = WARMUP_CALLS, check_device: bool = True) -> None:
        super().__init__()
        if not torch.cuda.is_available():
            raise TargetError("cuda_graph=True needs a CUDA GPU", actual="torch.cuda.is_available() is False",
                              fix="load without cuda_graph=True on this machine, or run on the GPU machine")
        tensors = [*module.named_parameters(), *module.named_buffers()] if check_device else []
        on_cpu = [n for n, t in tensors if not t.is_cuda and t.dim() > 0]
        if on_cpu:
            raise UsageError("cuda_graph=True needs a module on the GPU", where=f"parameter/buffer '{on_cpu[0]}'",
                             expected="cuda tensors", actual=f"{len(on_cpu)} on the CPU",
                             fix="compile for a GPU target (e.g. --target h100), or move the module with .cuda()")
        self.module = module
        self.warmup = warmup
        self.graphs: dict[tuple, CapturedGraph] = {}

    def capture(self, *args: torch.Tensor) -> CapturedGraph:
        """Warm up on a side stream, capture ``module(*args)`` once, and keep it for this signature."""
        bad = [i for i, a in enumerate(args) if not (isinstance(a, torch.Tensor) and a.is_cuda)]
        if bad:
            a = args[bad[0]]
            raise UsageError(f"input {bad[0]} of a CUDA-graph module is not a CUDA tensor",
                             expected="positional CUDA tensors",
                             actual=str(a.device) if isinstance(a, torch.Tensor) else type(a).__name__,
                             fix="move the inputs to the GPU (x.cuda())")
        static = tuple(a.detach().clone() for a in args)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(self.warmup):
                self.module(*static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.no_grad():
            out = self.module(*static)
        captured = CapturedGraph(graph, static, out)
        self.graphs[_signature(args)] = captured
        return captured

    def forward(self, *args: torch.Tensor) -> Any:
        captured = self.graphs.get(_signature(args)) if all(isinstance(a, torch.Tensor) for a in args) else None
        if captured is None:
            return self.capture(*args).replay()  # the capture ran on copies of args: replay computes this call
        captured.copy_in(*args)
        return captured.replay()


class BatchBuckets(torch.nn.Module):
    """``module`` called only at bucketed batch sizes: a call of batch ``n`` (every input's dim 0) runs at
    the smallest bucket ``b >= n``, its inputs padded by repeating their last sample, and returns the first
    ``n`` rows of every output whose dim 0 is ``b``. Above the largest bucket a call runs at its own size,
    with a warning. Around a :class:`CudaGraphModule`, a dynamic-batch model keeps one graph (and one
    memory pool) per bucket. The rows of an inference model are independent, so padding costs time only.

    Example:
        >>> m = BatchBuckets(CudaGraphModule(net.cuda().eval()), (1, 8, 32))
        >>> y = m(torch.randn(5, 3, 224, 224, device="cuda"))  # the batch-8 graph; y is its first 5 rows
    """

    def __init__(self, module, buckets: Sequence[int]) -> None:
        super().__init__()
        self.module = module
        self.buckets = check_buckets(buckets)
        self._warned_over: set[int] = set()

    def forward(self, *args: torch.Tensor) -> Any:
        if not args or not all(isinstance(a, torch.Tensor) and a.dim() and a.shape[0] == args[0].shape[0]
                               for a in args):
            return self.module(*args)
        n = args[0].shape[0]
        b = bucket_for(n, self.buckets)
        if b is None:
            if n not in self._warned_over:
                self._warned_over.add(n)
                log.warning("batch %d is above the largest bucket %d: it runs at its own size (under a CUDA graph: "
                            "one more graph and memory pool)", n, self.buckets[-1])
            b = n
        if b == n:
            return self.module(*args)
        out = self.module(*(pad_batch(a, b) for a in args))
        return tree_map(lambda t: t[:n] if isinstance(t, torch.Tensor) and t.dim() and t.shape[0] == b else t, out)
