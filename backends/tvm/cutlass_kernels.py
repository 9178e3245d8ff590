"""sparsec's CUTLASS GEMM ops as TVM-FFI packed functions: the first wiring of the kernel-op hook.

``sparsec::gemm24`` and ``sparsec::gemm_dense`` (backends/cutlass/runtime.py;
graphs hold them after the CUTLASS lowering) become
``relax.call_dps_packed("sparsec.gemm24" | "sparsec.gemm_dense", ...)`` in the
Relax graph (see :mod:`.custom_ops`). Importing this module registers both
packed functions. Each one calls the torch op, so it runs whatever that op
runs: the CUTLASS kernels on CUDA tensors (on torch's current stream, which
is the VM's, see :mod:`.runtime`), the reference kernels on the CPU. An
absent optional tensor (bias, residual, scale) travels as a 0-element tensor.

On CUDA the kernel writes straight into the VM's ``out`` when the layer needs
no row padding (Cout a multiple of 8 on sm_90a: every ResNet/MobileNet/
EfficientNet layer); otherwise, and on sm_80 (whose 2:4 and fused-residual
paths finish the epilogue in PyTorch) and the CPU, the op's result is copied
into ``out``.

This is a Python hop per GEMM (tens of microseconds of CPU time, hidden
behind the GPU at large batch). The fast form is the kernels exported as
``TVM_FFI_DLL_EXPORT_TYPED_FUNC`` symbols and linked into the module: not done.
"""

from __future__ import annotations

import functools

import torch
import tvm_ffi

from sparsec import knobs
from sparsec.backends.cutlass import runtime
from sparsec.backends.cutlass.config import KernelConfig
from sparsec.backends.tvm.custom_ops import KernelOp

OPS = (
    KernelOp("sparsec::gemm24.default", "sparsec.gemm24", provider=__name__),
    KernelOp("sparsec::gemm_dense.default", "sparsec.gemm_dense", provider=__name__),
)


def _t(x) -> torch.Tensor:
    return torch.from_dlpack(x)


def _opt(x) -> torch.Tensor | None:
    t = torch.from_dlpack(x)
    return None if t.numel() == 0 else t


def _ops():
    import sparsec.backends.cutlass.reference  # noqa: F401 - defines the ops and their CPU kernels

    return torch.ops.sparsec


@functools.lru_cache(maxsize=None)
def _kernel(cfg_name: str):
    """(config, loaded kernel) of a config name: parsed and looked up once, not per call."""

    cfg = KernelConfig.from_name(cfg_name)
    return cfg, runtime.load(cfg)


def _direct(cfg_name: str, x: torch.Tensor, a, e, kp: int, mp: int, m: int, bias, residual, scale, out) -> bool:
    """Run the kernel with ``out`` as its D operand (``runtime._run``'s destination); False where that does not
    apply (switched off, CPU, sm_80, padded rows, another dtype): the caller then runs the op."""
    if not knobs.get("tvm_gemm_direct") or not x.is_cuda or cfg_name.startswith("sm80") or mp != m \
            or x.dtype != a.dtype or x.dtype != out.dtype:
        return False
    cfg, kernel = _kernel(cfg_name)
    runtime._run(kernel, cfg, x, a, e, kp, mp, m, bias, residual, scale, out=out)
    return True


@tvm_ffi.register_global_func("sparsec.gemm24", override=True)
def gemm24(x, values, meta, bias, residual, scale, config, m, out) -> None:
    x, values, meta, out = _t(x), _t(values), _t(meta), _t(out)
    bias, residual, scale, config, m = _opt(bias), _opt(residual), _opt(scale), str(config), int(m)
    if not _direct(config, x, values, meta, values.shape[1] * 2, values.shape[0], m, bias, residual, scale, out):
        out.copy_(_ops().gemm24(x, values, meta, bias, residual, scale, config, m))


@tvm_ffi.register_global_func("sparsec.gemm_dense", override=True)
def gemm_dense(x, weight, bias, residual, scale, config, m, out) -> None:
    x, weight, out = _t(x), _t(weight), _t(out)
    bias, residual, scale, config, m = _opt(bias), _opt(residual), _opt(scale), str(config), int(m)
    if not _direct(config, x, weight, None, weight.shape[1], weight.shape[0], m, bias, residual, scale, out):
        out.copy_(_ops().gemm_dense(x, weight, bias, residual, scale, config, m))
