"""The built-in targets: ``cpu`` (the reference) and the NVIDIA GPU targets.

``cpu`` runs on the ``eager`` backend: the transformed graph, re-exported and
run by PyTorch. The GPU targets name the ``cutlass`` backend, which is not in
this version; compiling for them fails with a TargetError that says so.

The sparse shape limits are those of the CUTLASS 2:4 kernels PyTorch itself
ships (``torch.sparse.SparseSemiStructuredTensorCUTLASS._DTYPE_SHAPE_CONSTRAINTS``):
for fp16 and bf16 the sparse operand (the weight, N x K: output channels by
reduction size, K = Cin*kh*kw for a conv) must have N a multiple of 32 and
K a multiple of 64. The sm80 ``mma.sp`` instruction for 16-bit types is
m16n8k32, and CUTLASS's threadblock tiles and the 2:4 metadata layout
(reordered in 32-row blocks) add the rest. sm90 CUTLASS 2:4 kernels accept
the same shapes, so both GPUs share the limits. Pruned channel widths round
to 32 on sparse targets (the N multiple) and to 16 on dense GPU targets
(tensor-core friendly widths for 16-bit GEMMs).
"""

from __future__ import annotations

from sparsec.backends.target import SparseLimits, Target

# CUTLASS 2:4 GEMM, 16-bit types: N % 32 == 0, K % 64 == 0 (see the module docstring).
_CUTLASS_24_16BIT = SparseLimits(k_multiple=64, n_multiple=32, min_k=64, min_n=64)
_GPU_DTYPES = ("fp16", "bf16")

CPU = Target(
    name="cpu",
    backend="eager",
    description="PyTorch on the CPU: the reference, and the default target",
    arch=None,
    dtypes=("fp32", "fp16", "bf16"),
    round_to=8,
)

A100 = Target(
    name="a100",
    backend="cutlass",
    description="NVIDIA A100 (sm_80), dense tensor-core kernels",
    arch="sm_80",
    dtypes=_GPU_DTYPES,
    round_to=16,
)

A100_SPARSE = Target(
    name="a100-sparse",
    backend="cutlass",
    description="NVIDIA A100 (sm_80), 2:4 sparse tensor-core kernels",
    arch="sm_80",
    dtypes=_GPU_DTYPES,
    sparse={"fp16": _CUTLASS_24_16BIT, "bf16": _CUTLASS_24_16BIT},
    round_to=32,
)

H100 = Target(
    name="h100",
    backend="cutlass",
    description="NVIDIA H100 (sm_90a), dense tensor-core kernels",
    arch="sm_90a",
    dtypes=_GPU_DTYPES,
    round_to=16,
)

H100_SPARSE = Target(
    name="h100-sparse",
    backend="cutlass",
    description="NVIDIA H100 (sm_90a), 2:4 sparse tensor-core kernels",
    arch="sm_90a",
    dtypes=_GPU_DTYPES,
    sparse={"fp16": _CUTLASS_24_16BIT, "bf16": _CUTLASS_24_16BIT},
    round_to=32,
)

ALL = (CPU, A100, A100_SPARSE, H100, H100_SPARSE)
