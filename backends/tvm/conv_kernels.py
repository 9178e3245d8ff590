"""``sparsec.conv2d`` / ``sparsec.conv2d_nhwc``: cuDNN convolutions as TVM-FFI packed functions.

The GPU tvm targets call these for every 2-D conv the CUTLASS lowering keeps
(dense kxk convs, depthwise and grouped convs, the stem; ``sparsec inspect
--target h100-tvm`` says which): dlight's conv schedules use no tensor cores
(0.15x-0.56x of eager, benchmarks/results/tvm_h100.json), cuDNN does. The
Relax converter is :func:`.custom_ops._packed_convolution`, which adds the
bias in TVM afterwards (cuDNN convolutions take none); importing this module
registers both functions.

Destination-passing style: on CUDA, ``aten::cudnn_convolution.out`` writes
straight into the VM's ``out`` buffer, in ``out``'s memory format, on torch's
current stream (the VM's, see :mod:`.runtime`). ``conv2d_nhwc`` takes its
input NHWC ([N, H, W, C], a lowered GEMM's output) and writes NHWC: both are
channels-last views for cuDNN, so nothing is transposed (the weight is made
channels-last per call: a small copy). On the CPU (the llvm tests) torch's
conv runs and its result is copied into ``out``.
"""

from __future__ import annotations

import torch
import tvm_ffi


def _conv_into(out: torch.Tensor, x: torch.Tensor, w, stride, padding, dilation, groups) -> None:
    """out (NCHW logical, any layout) = conv(x, w), no bias."""
    w = torch.from_dlpack(w)
    stride, padding, dilation = ([int(v) for v in s] for s in (stride, padding, dilation))
    if x.is_cuda:
        cudnn = torch.backends.cudnn
        torch.ops.aten.cudnn_convolution.out(x, w, padding, stride, dilation, int(groups), cudnn.benchmark,
                                             cudnn.deterministic, cudnn.allow_tf32, out=out)
    else:
        out.copy_(torch.ops.aten.convolution(x, w, None, stride, padding, dilation, False, [0, 0], int(groups)))


@tvm_ffi.register_global_func("sparsec.conv2d", override=True)
def conv2d(x, w, stride, padding, dilation, groups, out) -> None:
    _conv_into(torch.from_dlpack(out), torch.from_dlpack(x), w, stride, padding, dilation, groups)


@tvm_ffi.register_global_func("sparsec.conv2d_nhwc", override=True)
def conv2d_nhwc(x, w, stride, padding, dilation, groups, out) -> None:
    nchw = (0, 3, 1, 2)  # an NHWC buffer seen as NCHW: a channels-last view
    _conv_into(torch.from_dlpack(out).permute(nchw), torch.from_dlpack(x).permute(nchw), w, stride, padding, dilation,
               groups)
