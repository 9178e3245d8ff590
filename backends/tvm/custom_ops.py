"""sparsec's own ops on the TVM path: decomposed, or called as packed kernels.

Two mechanisms, both applied by :func:`sparsec.backends.tvm.lowering.to_relax`:

* **Decompositions.** The fused ops of the ``fusion`` pipeline
  (``sparsec::fused_conv2d``, ``fused_linear``, ``conv2d_pool``, ``squeeze_excite``) are defined
  by ATen references (passes/fusion/ops.py). Before import they decompose to
  those, and TVM fuses the epilogue again by itself.
* **Kernel ops** (the hook for sparsec's CUTLASS kernels). A ``KernelOp``
  maps one ``sparsec::`` torch op to a TVM-FFI packed function. The importer
  gets a ``custom_convert_map`` entry that emits
  ``relax.call_dps_packed(packed_name, tensor args, out_ty=<node's shape>)``;
  scalar arguments travel as ``PrimValue``/``StringImm``. The packed function
  must be registered in the process that runs the VM: the runtime imports
  each kernel op's ``provider`` module before it starts the VM, and the
  manifest lists the providers. A provider registers with
  ``tvm_ffi.register_global_func(packed_name, fn)`` (a Python function on
  DLPack tensors) or exports ``TVM_FFI_DLL_EXPORT_TYPED_FUNC`` symbols.

``sparsec::gemm24`` and ``sparsec::gemm_dense`` (the CUTLASS lowering's ops)
are built in, provided by :mod:`.cutlass_kernels`.

Two ATen converters complete the GPU path (``custom_convert_map(packed_convs=True)``):

* ``convolution.default`` -> ``call_dps_packed("sparsec.conv2d" | "sparsec.conv2d_nhwc", ...)``
  (:mod:`.conv_kernels`: cuDNN, writing into the VM's buffer) and a TVM-generated bias add:
  the convs the CUTLASS lowering keeps (dense kxk, depthwise, grouped, the stem). A conv whose input is
  ``permute(t, [0, 3, 1, 2])`` of an NHWC tensor (a lowered GEMM's output) takes ``t`` as is
  and returns NHWC, then a ``permute_dims`` back, so the NHWC chains the lowering builds stay
  NHWC and TVM fuses the permutes into the neighbouring elementwise kernels.
* ``unfold.default`` (the NHWC im2col of the 2:4 kxk convs) -> ``size`` strided slices
  stacked on a new last axis: plain Relax, one fused TVM kernel with the permute and reshape.

Example:
    >>> register_kernel_op(KernelOp("mylib::fast_gemm.default", "mylib.fast_gemm", provider="mylib.tvm_kernels"))
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

KernelOpTable = dict[str, "KernelOp"]


@dataclasses.dataclass(frozen=True)
class KernelOp:
    """A ``sparsec::`` op that TVM calls as a packed kernel, destination-passing style.

    ``op``: the torch op overload's qualified name (``sparsec::gemm24.default``);
    ``packed``: the TVM-FFI global function name, called as ``packed(*inputs, out)``;
    ``provider``: the module that registers ``packed`` when imported.
    """

    op: str
    packed: str
    provider: str

    @property
    def key(self) -> str:
        """The importer's convert-map key: the overload's ``__name__`` (``gemm24.default``)."""
        return self.op.split("::", 1)[-1]


_KERNEL_OPS: KernelOpTable = {}


def register_kernel_op(kop: KernelOp) -> None:
    """Route ``kop.op`` to a packed kernel in every later TVM lowering (replaces an entry of the same op)."""
    _KERNEL_OPS[kop.op] = kop


def unregister_kernel_op(op: str) -> None:
    _KERNEL_OPS.pop(op, None)


# sparsec's own kernel ops, always routed (their provider registers the packed functions)
_BUILTIN = {
    "sparsec::gemm24.default": KernelOp("sparsec::gemm24.default", "sparsec.gemm24",
                                        provider="sparsec.backends.tvm.cutlass_kernels"),
    "sparsec::gemm_dense.default": KernelOp("sparsec::gemm_dense.default", "sparsec.gemm_dense",
                                            provider="sparsec.backends.tvm.cutlass_kernels"),
}


def kernel_ops() -> tuple[KernelOp, ...]:
    return tuple({**_BUILTIN, **_KERNEL_OPS}.values())


CONV_PROVIDER = "sparsec.backends.tvm.conv_kernels"


def custom_convert_map(packed_convs: bool = False) -> dict[str, Callable]:
    """The Relax importer's ``custom_convert_map``: 16-bit-safe GEMM/conv converters, unfold, the kernel ops.

    ``packed_convs``: 2-D convs become packed cuDNN calls (the GPU targets) instead of Relax conv2d.
    """
    conv = _packed_convolution if packed_convs else _convolution
    table: dict[str, Callable] = {"convolution.default": conv, "addmm.default": _addmm, "unfold.default": _unfold}
    table.update({op: _fp32_accumulating(method) for op, method in _REDUCTIONS.items()})
    table.update({k.key: _dps_converter(k) for k in kernel_ops()})
    return table


# TVM 0.27's converters for conv and addmm emit ``out_dtype="float32"`` and then add the bias in
# the input's dtype, which fails for fp16/bf16 graphs ("Binary operators must have the same
# datatype"). These keep fp32 accumulation, cast the product to the graph's dtype (as torch's
# fp16 kernels round their fp32 accumulators) and then add the bias. fp32 graphs and other
# convolutions (transposed, 1-D, 3-D) go to TVM's own converters unchanged.
def _convolution(node, importer) -> Any:
    from tvm import relax

    a = importer.retrieve_args(node)
    x, w, bias = a[0], a[1], a[2] if len(a) > 2 else None
    transposed = a[6] if len(a) > 6 else False
    if x.ty.dtype == "float32" or transposed or x.ty.ndim != 4:
        return importer._convolution(node)
    bb = importer.block_builder
    y = bb.emit(relax.op.nn.conv2d(x, w, strides=a[3], padding=a[4], dilation=a[5], groups=a[8],
                                   data_layout="NCHW", kernel_layout="OIHW", out_dtype="float32"))
    y = bb.emit(relax.op.astype(y, x.ty.dtype))
    if bias is None:
        return y
    return bb.emit(relax.op.add(y, relax.op.reshape(bias, (1, -1, 1, 1))))  # y + bias[None, :, None, None]


# TVM 0.27 sums a 16-bit mean / average pool in the input's dtype: ResNet-50's global pool (49 values of
# up to a few thousand, fp16) overflows to inf, where torch accumulates in fp32. These run TVM's own
# converter on an fp32 copy of the input and round the result back (TVM fuses both casts into the pool).
_REDUCTIONS = {"mean.dim": "_mean", "adaptive_avg_pool2d.default": "_adaptive_avg_pool2d",
               "avg_pool2d.default": "_avg_pool2d"}


def _fp32_accumulating(method: str) -> Callable:
    def convert(node, importer) -> Any:
        from tvm import relax

        src = node.args[0]
        x = importer.env[src]
        if x.ty.dtype not in ("float16", "bfloat16"):
            return getattr(importer, method)(node)
        bb = importer.block_builder
        importer.env[src] = bb.emit(relax.op.astype(x, "float32"))
        try:
            y = getattr(importer, method)(node)
        finally:
            importer.env[src] = x
        return bb.emit(relax.op.astype(y, x.ty.dtype))

    return convert


def _addmm(node, importer) -> Any:
    from tvm import relax

    bias, x, w = (importer.env[a] for a in node.args[:3])
    alpha, beta = node.kwargs.get("alpha", 1), node.kwargs.get("beta", 1)
    if x.ty.dtype == "float32" or (alpha, beta) != (1, 1):
        return importer._addmm(node)
    bb = importer.block_builder
    y = bb.emit(relax.op.astype(bb.emit(relax.op.linear_algebra.matmul(x, w, out_dtype="float32")), x.ty.dtype))
    return bb.emit(relax.op.add(bias, y))  # bias + x @ w


def _packed_convolution(node, importer) -> Any:
    """A 2-D conv as ``sparsec.conv2d`` (NCHW) or, on a permuted NHWC input, ``sparsec.conv2d_nhwc``."""
    import torch
    from tvm import relax

    a = importer.retrieve_args(node)
    x, w, bias = a[0], a[1], a[2] if len(a) > 2 else None
    transposed = a[6] if len(a) > 6 else False
    if transposed or x.ty.ndim != 4:
        return _convolution(node, importer)
    src = node.args[0]
    nhwc = (isinstance(src, torch.fx.Node) and src.op == "call_function" and src.target is torch.ops.aten.permute.default
            and list(src.args[1]) == [0, 3, 1, 2])
    n, c, h, wd = (int(d) for d in node.meta["val"].shape)
    dtype = importer._convert_data_type(node.meta["val"].dtype)
    args = [importer.env[src.args[0]] if nhwc else x, w] + [_relax_arg(v, importer) for v in (*a[3:6], a[8])]
    bb = importer.block_builder
    if nhwc:
        y = bb.emit(relax.call_dps_packed("sparsec.conv2d_nhwc", args, out_ty=relax.TensorType([n, h, wd, c], dtype)))
    else:
        y = bb.emit(relax.call_dps_packed("sparsec.conv2d", args, out_ty=relax.TensorType([n, c, h, wd], dtype)))
    if bias is not None:  # cuDNN convs take no bias: TVM adds it, fused with what follows
        y = bb.emit(relax.op.add(y, relax.op.reshape(bias, (1, 1, 1, c) if nhwc else (1, c, 1, 1))))
    return bb.emit(relax.op.permute_dims(y, [0, 3, 1, 2])) if nhwc else y  # NCHW view, fused away by TVM


def _unfold(node, importer) -> Any:
    """aten.unfold(x, dim, size, step): ``size`` strided slices along ``dim``, stacked on a new last axis."""
    from tvm import relax

    x, dim, size, step = importer.retrieve_args(node)[:4]
    dim = dim % x.ty.ndim
    windows = (int(x.ty.shape[dim]) - size) // step + 1
    bb = importer.block_builder
    taps = [bb.emit(relax.op.strided_slice(x, [dim], [i], [i + step * (windows - 1) + 1], [step]))
            for i in range(size)]  # taps[i][..., j, ...] = x[..., i + j*step, ...]
    return bb.emit(relax.op.stack(taps, axis=x.ty.ndim))


def _dps_converter(kop: KernelOp) -> Callable:
    def convert(node, importer) -> Any:
        import torch
        from tvm import relax

        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor):
            raise TypeError(f"{kop.op}: only single-tensor outputs are supported, got {type(val).__name__}")
        out_ty = relax.TensorType([int(d) for d in val.shape], importer._convert_data_type(val.dtype))
        args = [_relax_arg(a, importer) for a in importer.retrieve_args(node)]
        return importer.block_builder.emit(relax.call_dps_packed(kop.packed, args, out_ty=out_ty))

    return convert


def _relax_arg(a: Any, importer) -> Any:
    import tvm
    from tvm import relax
    from tvm.relax.expr import prim_value

    if isinstance(a, relax.Expr):
        return a
    if a is None:  # an absent optional tensor: a 0-element tensor (the provider reads it as None)
        import numpy as np

        return relax.const(np.zeros((0,), dtype="float32"))
    if isinstance(a, (bool, int, float)):
        return prim_value(a)  # 0.27: scalars are PrimExprs (IntImm/FloatImm), no relax.PrimValue
    if isinstance(a, str):
        return tvm.ir.StringImm(a)
    if isinstance(a, (list, tuple)) and all(isinstance(v, int) for v in a):
        return relax.ShapeExpr([int(v) for v in a])  # int lists (stride, padding): a tvm_ffi.Shape in the callee
    raise TypeError(f"cannot pass {type(a).__name__} {a!r} to a packed kernel")


def decompositions() -> dict:
    """sparsec's fused ops -> their ATen reference implementations (for ``run_decompositions``)."""
    import torch

    from sparsec.passes.fusion import ops as F  # registers the sparsec:: ops

    table = {
        torch.ops.sparsec.fused_conv2d.default: F.fused_conv2d_ref,
        torch.ops.sparsec.fused_linear.default: F.fused_linear_ref,
        torch.ops.sparsec.conv2d_pool.default: F.conv2d_pool_ref,
        torch.ops.sparsec.squeeze_excite.default: F.squeeze_excite_ref,
    }
    for kop in kernel_ops():  # a kernel op is called, never decomposed
        try:
            table.pop(_overload(kop.op), None)
        except AttributeError:  # its torch library is not loaded: nothing to keep from decomposing
            pass
    return table


def _overload(qualified: str):
    import torch

    ns, _, rest = qualified.partition("::")
    name, _, overload = rest.partition(".")
    return getattr(getattr(getattr(torch.ops, ns), name), overload or "default")
