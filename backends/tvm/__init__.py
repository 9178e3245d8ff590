"""The TVM backend: lower sparsec graphs to TVM Relax, build anywhere, run with the runtime alone.

Design choice: **three targets** (``cpu-tvm``: llvm, ``a100-tvm``: sm_80,
``h100-tvm``: sm_90a) on one backend named ``tvm``, not a ``--backend tvm``
switch on the existing targets. A :class:`~sparsec.backends.target.Target`
already names its backend, and everything downstream keys on that pair:
``resolve_backend``, ``inspect --target`` (the support column),
``check_loadable`` when an artifact is loaded, the manifest's ``target``
section and ``sparsec targets``. A switch would add a second axis that every
one of those would have to thread through, and combinations that mean
nothing (``--target cpu --backend cutlass``). New targets are three frozen
dataclasses and three registry lines.

Pieces (importing this package imports neither torch nor TVM):

* :mod:`.backend`    -- ``TvmBackend``: ``support(node)``, ``lower``, ``check_loadable``, ``load_artifact``
* :mod:`.lowering`   -- ir.Module -> Relax (``from_exported_program``) -> ``tvm.compile`` -> ``model.so``
* :mod:`.custom_ops` -- sparsec's ops: fused ops decomposed; kernel ops as ``call_dps_packed`` (the CUTLASS hook)
* :mod:`.cutlass_kernels` -- ``sparsec.gemm24`` / ``sparsec.gemm_dense`` packed functions over the CUTLASS torch ops
* :mod:`.stub`       -- the stub ``libcuda.so.1`` (from ``cuda_stub.c``) for CUDA builds with no GPU driver
* :mod:`.fatbin`     -- which archs' cubins (or CUDA source) an exported library holds
* :mod:`.runtime`    -- ``TvmModule``: apache-tvm-ffi + ``libtvm_runtime*.so``, DLPack in and out

The artifact of a TVM target holds ``model.so`` (weights kept out with
``keep_params_as_input``), ``params.pt`` (the weights, in the order the
library takes them) and the manifest, whose ``payload.tvm`` section records
the TVM version, the target, the parameter names and the fatbin check. It
holds no ``program.pt2``: loading it needs neither TVM's compiler nor
``torch.export`` (whose format is tied to the torch version).
"""
