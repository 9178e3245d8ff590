"""The CUTLASS backend: 2:4 sparse and dense GEMM kernels for sm_90a and sm_80.

Import is light: torch and the build machinery load only when used.

* :mod:`.config`   -- ``KernelConfig`` (one kernel) and the tuning candidates
* :mod:`.codegen`  -- the C++ source of each config (extern "C" ABI)
* :mod:`.build`    -- nvcc, the CUTLASS headers and the kernel cache
* :mod:`.packing`  -- numpy packers of 2:4 weights for each kernel layout
* :mod:`.runtime`  -- ctypes loading and the ``sparsec::gemm24`` / ``sparsec::gemm_dense`` ops
* :mod:`.tuning`   -- measuring candidates and the tuning DB
"""

from sparsec.backends.cutlass.config import KernelConfig, candidates, default_config

__all__ = ["KernelConfig", "candidates", "default_config"]
