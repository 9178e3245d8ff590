"""The built-in targets: ``cpu`` (the reference) and the NVIDIA GPU targets.

``cpu`` runs on the ``eager`` backend: the transformed graph, re-exported and
run by PyTorch. The GPU targets run on the ``cutlass`` backend
(``backends/cutlass/backend.py``): sparsec's own CUTLASS kernels for the convs
and linears, PyTorch for the rest.

The 2:4 eligibility rule (this is the one place it is written down): the
sparse kernels pad, never refuse. The packed weight is padded at pack time
(rows to 8 on sm_90a / 32 on sm_80, K to 16 / 64: ``packing.pad_shape``) and
activations are padded per call only when K is not already aligned
(``runtime``). So the limits are only the 16-bit operands' alignment --
rows of 16 bytes, K and Cout multiples of 8 for fp16/bf16, which also keeps
the 2:4 groups of 4 inside whole rows -- plus the smallest useful sizes: K of
at least one sparse MMA step (32 for 16-bit types: sm_80 ``mma.sp`` m16n8k32,
sm_90 ``HGMMA.SP`` k32) and Cout of at least one MMA's 16 rows. Whether a
layer that passes pays (padding, tile waste, memory-bound shapes) is the
measured cost model's business (``sparsify-2-4{cost-model=measured}``
reading the tuning DB), not a limit. Pruned channel widths round to 32 on
sparse targets and to 16 on dense GPU targets (tile-friendly widths).
"""

from __future__ import annotations

import dataclasses

from sparsec.backends.target import SparseLimits, Target

# sparsec's CUTLASS 2:4 GEMMs, 16-bit types: 16-byte alignment (8 elements), one sparse MMA step (see above).
_CUTLASS_24_16BIT = SparseLimits(k_multiple=8, n_multiple=8, min_k=32, min_n=16)
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

# The tvm backend (backends/tvm): a Relax graph built by TVM. On the GPU targets the GEMMs and convs
# are packed-function calls (sparsec's CUTLASS kernels, and cuDNN for the convs CUTLASS does not
# take); the glue is TVM-generated. The sparse ones mirror h100-sparse / a100-sparse (same 2:4 limits).
CPU_TVM = Target(
    name="cpu-tvm",
    backend="tvm",
    description="TVM Relax built with llvm for this CPU (x86-64), all TVM-generated; runs with the TVM runtime alone",
    arch=None,
    dtypes=("fp32",),
    round_to=8,
)

A100_TVM = Target(
    name="a100-tvm",
    backend="tvm",
    description="NVIDIA A100 (sm_80), TVM Relax glue + sparsec's dense CUTLASS GEMMs / cuDNN convs as packed calls",
    arch="sm_80",
    dtypes=("fp16", "fp32"),
    round_to=16,
)

H100_TVM = Target(
    name="h100-tvm",
    backend="tvm",
    description="NVIDIA H100 (sm_90a), TVM Relax glue + sparsec's dense CUTLASS GEMMs / cuDNN convs as packed calls",
    arch="sm_90a",
    dtypes=("fp16", "fp32"),
    round_to=16,
)

# the 2:4 ones: the dense target plus the 2:4 limits and tile-friendly pruned widths of h100-sparse / a100-sparse
A100_SPARSE_TVM = dataclasses.replace(A100_TVM, name="a100-sparse-tvm", sparse=A100_SPARSE.sparse, round_to=32,
                                      description=A100_TVM.description.replace("dense", "2:4"))
H100_SPARSE_TVM = dataclasses.replace(H100_TVM, name="h100-sparse-tvm", sparse=H100_SPARSE.sparse, round_to=32,
                                      description=H100_TVM.description.replace("dense", "2:4"))

ALL = (CPU, A100, A100_SPARSE, H100, H100_SPARSE, CPU_TVM, A100_TVM, A100_SPARSE_TVM, H100_TVM, H100_SPARSE_TVM)
