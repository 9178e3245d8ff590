"""Whole-model CUDA graphs: capture a module once per input signature, then replay it.

``sparsec.load(path, cuda_graph=True)`` wraps the loaded program in a :class:`CudaGraphModule`. The first
call with a given signature (shape, dtype, stride and device of every input) warms the module up on a
side stream, captures one CUDA graph of the whole forward and keeps its static inputs and outputs; every
later call with that signature copies the inputs into the static ones and replays the graph: one launch,
no allocation, no Python per layer. Memory is planned once: the graph owns a private pool sized by the
capture, in which the caching allocator already reused the buffers of layers whose outputs were dead.

The outputs a call returns are the graph's static outputs: the next call with the same signature
overwrites them (clone them to keep them), as with ``torch.compile(mode="reduce-overhead")``.

Example:
    >>> fast = sparsec.load("r50.sparsec", cuda_graph=True)
    >>> y = fast(x)            # first call: capture; later calls: copy x in, replay
    >>> y = fast(x2).clone()   # keep this output past the next call
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from sparsec.errors import TargetError, UsageError

WARMUP_CALLS = 3  # eager calls on a side stream before capture (lazy init, cuDNN/cuBLAS handles, kernel loads)


def _signature(args: tuple) -> tuple:
    return tuple((tuple(a.shape), a.dtype, a.stride(), a.device) for a in args)


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
