"""sparsec's CUTLASS GEMM ops as TVM-FFI packed functions: the first wiring of the kernel-op hook.

``sparsec::gemm24`` and ``sparsec::gemm_dense`` (backends/cutlass/runtime.py;
graphs hold them after the CUTLASS lowering) become
``relax.call_dps_packed("sparsec.gemm24" | "sparsec.gemm_dense", ...)`` in the
Relax graph (see :mod:`.custom_ops`). Importing this module registers both
packed functions. Each one calls the torch op, so it runs whatever that op
runs: the CUTLASS kernels on CUDA tensors (on torch's current stream, which
is the VM's, see :mod:`.runtime`), the reference kernels on the CPU. An
absent optional tensor (bias, residual, scale) travels as a 0-element tensor.

This is a Python hop per GEMM (tens of microseconds). The fast form is the
kernels exported as ``TVM_FFI_DLL_EXPORT_TYPED_FUNC`` symbols and linked
into the module: not done.
"""

from __future__ import annotations

import torch
import tvm_ffi

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


@tvm_ffi.register_global_func("sparsec.gemm24", override=True)
def gemm24(x, values, meta, bias, residual, scale, config, m, out) -> None:
    y = _ops().gemm24(_t(x), _t(values), _t(meta), _opt(bias), _opt(residual), _opt(scale), str(config), int(m))
    _t(out).copy_(y)


@tvm_ffi.register_global_func("sparsec.gemm_dense", override=True)
def gemm_dense(x, weight, bias, residual, scale, config, m, out) -> None:
    y = _ops().gemm_dense(_t(x), _t(weight), _opt(bias), _opt(residual), _opt(scale), str(config), int(m))
    _t(out).copy_(y)
