"""Running the kernels: ctypes loading and the ``sparsec::`` torch custom ops.

The kernels live in plain shared libraries (extern "C", see :mod:`codegen`),
so nothing here depends on torch's C++ ABI. Each kernel family is one
``torch.library`` custom op with a fake implementation, so graphs holding it
export, ``torch.compile`` and CUDA-graph capture:

* ``sparsec::gemm24(x, values, meta, bias, residual, scale, config, m) -> y``
* ``sparsec::gemm_dense(x, weight, bias, residual, scale, config, m) -> y``

``x`` is [..., K] (N = the product of the leading dims, any value per call),
``y`` is [..., m]. The kernel runs on torch's current stream. Unaligned shapes
are padded, never refused: the weight is padded at pack time (rows to the
output alignment, K to the operand alignment); x, bias, residual and scale are
padded per call only when their K or m is not already aligned. Workspaces are
preallocated per device; a call allocates nothing but its output.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import threading
from pathlib import Path
from typing import Iterator, Optional

import torch
import torch.nn.functional as F

from sparsec.backends.cutlass.codegen import STATUS
from sparsec.backends.cutlass.config import KernelConfig
from sparsec.errors import KernelError

_TORCH_DTYPE = {"fp16": torch.float16, "bf16": torch.bfloat16}
_DTYPE_NAME = {v: k for k, v in _TORCH_DTYPE.items()}
_WORKSPACE_BYTES = 4 << 20
_lock = threading.Lock()
_poison = threading.local()


@contextlib.contextmanager
def poisoned_outputs() -> Iterator[None]:
    """Inside the block, every op output is NaN-filled before its kernel runs (tests: unwritten = NaN)."""
    saved = getattr(_poison, "on", False)
    _poison.on = True
    try:
        yield
    finally:
        _poison.on = saved


def poison(t: torch.Tensor) -> torch.Tensor:
    """``t``, NaN-filled inside :func:`poisoned_outputs`: an op's output before its kernel writes it."""
    if getattr(_poison, "on", False):
        t.fill_(float("nan"))
    return t


class Kernel:
    """One loaded kernel: its config, its library and its entry points."""

    def __init__(self, cfg: KernelConfig, lib_path: Path) -> None:
        self.cfg = cfg
        self.path = Path(lib_path)
        self.lib = ctypes.CDLL(str(self.path))
        fn = getattr(self.lib, cfg.symbol)
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_void_p] * 7 + [ctypes.c_int] * 4 + [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        self.fn = fn
        ws = getattr(self.lib, cfg.symbol + "_workspace")
        ws.restype = ctypes.c_size_t
        ws.argtypes = [ctypes.c_int] * 3
        self.workspace_size = ws

    def __call__(self, a, e, b, d, c, bias, scale, m: int, n: int, k: int, swizzle: int = 1) -> None:
        """Launch on torch's current stream; tensors may be None (NULL)."""
        ws = _workspace(d.device)
        ptr = lambda t: None if t is None else t.data_ptr()  # noqa: E731
        stream = torch.cuda.current_stream(d.device).cuda_stream
        rc = self.fn(ptr(a), ptr(e), ptr(b), ptr(d), ptr(c), ptr(bias), ptr(scale), m, n, k, swizzle,
                     ws.data_ptr(), ws.numel(), stream)
        if rc != 0:
            raise KernelError(f"kernel {self.cfg.name} failed: {STATUS.get(rc, rc)}",
                              where=f"M={m} N={n} K={k}", fix="check the shapes and that the weight was packed for this config")


@functools.lru_cache(maxsize=None)
def _workspace_cached(index: int) -> torch.Tensor:
    return torch.empty(_WORKSPACE_BYTES, dtype=torch.uint8, device=torch.device("cuda", index))


def _workspace(device: torch.device) -> torch.Tensor:
    return _workspace_cached(device.index if device.index is not None else torch.cuda.current_device())


_kernels: dict[str, Kernel] = {}


def load(cfg: KernelConfig | str, *, build: bool = True) -> Kernel:
    """The loaded kernel of ``cfg`` (built into the cache first if needed and ``build``)."""
    from sparsec.backends.cutlass import build as _build

    cfg = KernelConfig.from_name(cfg) if isinstance(cfg, str) else cfg
    cfg = dataclasses.replace(cfg, swizzle=1)  # one library serves every swizzle
    with _lock:
        if cfg.lib_name in _kernels:
            return _kernels[cfg.lib_name]
    path = _build.build_one(cfg) if build else _build.cached_library(cfg)
    if path is None:
        raise KernelError(f"kernel {cfg.name} is not built", fix="build it first: sparsec.backends.cutlass.build.build([cfg])")
    kern = Kernel(cfg, path)
    with _lock:
        return _kernels.setdefault(cfg.lib_name, kern)


def preload(configs) -> None:
    """Build and load many configs at once (parallel nvcc), so that later calls do no setup."""
    from sparsec.backends.cutlass import build as _build

    paths = _build.build(list(configs))
    for cfg, path in paths.items():
        cfg = dataclasses.replace(cfg, swizzle=1)
        with _lock:
            if cfg.lib_name not in _kernels:
                _kernels[cfg.lib_name] = Kernel(cfg, path)


# ---------------------------------------------------------------- custom ops

def _pad_last(t: torch.Tensor, size: int) -> torch.Tensor:
    return t if t.shape[-1] == size else F.pad(t, (0, size - t.shape[-1]))


def _check(x: torch.Tensor, w: torch.Tensor, cfg: KernelConfig) -> None:
    want = _TORCH_DTYPE[cfg.dtype]
    if x.dtype != want or w.dtype != want:
        raise KernelError(f"kernel {cfg.name} takes {cfg.dtype}", expected=str(want), actual=f"x {x.dtype}, weight {w.dtype}",
                          fix="cast the activations, or pick the config of their dtype")
    if not x.is_cuda:
        raise KernelError("the CUTLASS kernels run on CUDA tensors", actual=str(x.device), fix="move the model to the GPU")


_ACT = {
    "identity": lambda y: y, "relu": torch.relu, "relu6": lambda y: y.clamp(0, 6), "silu": F.silu,
    "gelu": F.gelu, "hardswish": F.hardswish, "sigmoid": torch.sigmoid,
}


def _run(kernel: Kernel, cfg: KernelConfig, x: torch.Tensor, a: torch.Tensor, e: Optional[torch.Tensor], kp: int,
         mp: int, m: int, bias, residual, scale, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The kernel on ``x`` with its operands padded to (kp, mp). ``out``: a contiguous destination of n x mp
    elements for D (the caller's buffer, e.g. a TVM VM's), instead of a new tensor; not for sm_80 2:4."""
    lead = x.shape[:-1]
    x2 = _pad_last(x.reshape(-1, x.shape[-1]), kp).contiguous()
    n = x2.shape[0]
    if cfg.arch == "sm_80" and cfg.sparse:
        return _run_sm80_sparse(kernel, cfg, x2, a, e, kp, mp, m, bias, residual, scale).reshape(*lead, m)
    if bias is not None:
        bias = _pad_last(bias.to(x.dtype), mp).contiguous()
    if scale is not None:
        scale = _pad_last(scale.float(), mp).contiguous()
    if residual is not None:
        residual = _pad_last(residual.reshape(n, -1).to(x.dtype), mp).contiguous()
    y = poison(torch.empty(n, mp, dtype=x.dtype, device=x.device) if out is None else out.view(n, mp))
    if n > 0:
        kernel(a, e, x2, y, residual, bias, scale, mp, n, kp, cfg.swizzle)
    if mp != m:
        y = y[:, :m].contiguous()
    return y.reshape(*lead, m)


def _run_sm80_sparse(kernel, cfg, x2, a, e, kp, mp, m, bias, residual, scale) -> torch.Tensor:
    """sm_80 2:4: the kernel writes Y^T row-major [mp, n]; the epilogue runs here, unfused."""
    n = x2.shape[0]
    n8 = (n + 7) // 8 * 8  # SparseGemm needs N % 8 == 0 (B and row-major D alignment)
    if n8 != n:
        x2 = F.pad(x2, (0, 0, 0, n8 - n))
    yt = poison(torch.empty(mp, n8, dtype=x2.dtype, device=x2.device))
    if n > 0:
        kernel(a, e, x2, yt, None, None, None, mp, n8, kp, 1)
    return _torch_epilogue(yt[:m, :n].t(), cfg, bias, residual, scale)


def _torch_epilogue(acc: torch.Tensor, cfg: KernelConfig, bias, residual, scale) -> torch.Tensor:
    """act(scale * acc + bias + residual) in float32, for the sm_80 paths whose kernel cannot fuse it."""
    n, m = acc.shape
    y = acc.float()
    if scale is not None:
        y = y * scale.float()
    if bias is not None:
        y = y + bias.float()
    if residual is not None:
        y = y + residual.reshape(n, m).float()
    return _ACT[cfg.activation](y).to(acc.dtype).contiguous()


@torch.library.custom_op("sparsec::gemm24", mutates_args=())
def gemm24(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, bias: Optional[torch.Tensor],
           residual: Optional[torch.Tensor], scale: Optional[torch.Tensor], config: str, m: int) -> torch.Tensor:
    """y[..., m] = act(scale * (x @ W^T) + bias + residual) with W 2:4, packed (values, meta) for ``config``."""
    cfg = KernelConfig.from_name(config)
    _check(x, values, cfg)
    kernel = load(cfg.base() if cfg.arch == "sm_80" else cfg)  # sm_80 2:4: epilogue unfused
    return _run(kernel, cfg, x, values, meta, values.shape[1] * 2, values.shape[0], m, bias, residual, scale)


@gemm24.register_fake
def _gemm24_fake(x, values, meta, bias, residual, scale, config, m):
    return x.new_empty(*x.shape[:-1], m)


@torch.library.custom_op("sparsec::gemm_dense", mutates_args=())
def gemm_dense(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], residual: Optional[torch.Tensor],
               scale: Optional[torch.Tensor], config: str, m: int) -> torch.Tensor:
    """y[..., m] = act(scale * (x @ W^T) + bias + residual), W dense [mp, kp] (padded rows/cols are zero)."""
    cfg = KernelConfig.from_name(config)
    _check(x, weight, cfg)
    if cfg.arch == "sm_80" and (residual is not None or scale is not None):
        # the 2.x dense epilogue takes bias + activation only: run the plain kernel, finish here (unfused)
        plain = cfg.base()
        y = _run(load(plain), plain, x, weight, None, weight.shape[1], weight.shape[0], m, None, None, None)
        lead = y.shape[:-1]
        return _torch_epilogue(y.reshape(-1, m), cfg, bias, residual, scale).reshape(*lead, m)
    kernel = load(cfg)
    return _run(kernel, cfg, x, weight, None, weight.shape[1], weight.shape[0], m, bias, residual, scale)


@gemm_dense.register_fake
def _gemm_dense_fake(x, weight, bias, residual, scale, config, m):
    return x.new_empty(*x.shape[:-1], m)


# ---------------------------------------------------------------- weights on the device

def packed_tensors(p, dtype: str, device="cuda") -> tuple[torch.Tensor, torch.Tensor]:
    """(values, meta) torch tensors of a :class:`PackedWeight`, ready for ``sparsec::gemm24``."""
    import numpy as np

    values = torch.from_numpy(np.ascontiguousarray(p.values)).view(_TORCH_DTYPE[dtype]).to(device)
    meta = torch.from_numpy(np.ascontiguousarray(p.meta)).to(device)
    return values, meta


def pack_weight(w: torch.Tensor, cfg: KernelConfig, device="cuda") -> tuple[torch.Tensor, torch.Tensor]:
    """Pack a 2:4 weight [M, K] (any float dtype; cast to the config's) for a sparse ``cfg``.

    Packs with torch ops on ``device`` (:func:`packing.pack_torch`, bit-identical to the numpy
    reference :func:`packing.pack`).
    """
    from sparsec.backends.cutlass.packing import pack_torch

    return pack_torch(w.detach().to(device, _TORCH_DTYPE[cfg.dtype]).contiguous(), cfg.arch, cfg.pack_tile_k)


def pad_dense_weight(w: torch.Tensor, cfg: KernelConfig, device="cuda") -> torch.Tensor:
    """A dense weight [M, K] zero-padded to the aligned [mp, kp] a dense ``cfg`` is called with."""
    from sparsec.backends.cutlass.packing import pad_shape

    m, k = w.shape
    mp, kp = pad_shape(cfg.arch, m, k, sparse=False)
    out = torch.zeros(mp, kp, dtype=_TORCH_DTYPE[cfg.dtype], device=device)
    out[:m, :k] = w.to(device, out.dtype)
    return out


def dtype_name(dtype: torch.dtype) -> str:
    return _DTYPE_NAME[dtype]
