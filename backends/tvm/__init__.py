"""The TVM backend: lower sparsec graphs to TVM Relax, build anywhere, run with the runtime alone.

Design choice: **targets** on one backend named ``tvm``, not a ``--backend tvm``
switch on the existing targets: ``cpu-tvm`` (llvm), and on GPUs a dense and a
2:4 target per arch, mirroring the CUTLASS targets -- ``h100-tvm`` /
``h100-sparse-tvm`` (sm_90a), ``a100-tvm`` / ``a100-sparse-tvm`` (sm_80). A
:class:`~sparsec.backends.target.Target` already names its backend and its
sparse limits, and everything downstream keys on that: ``resolve_backend``,
``inspect --target`` (the support column), ``sparsify-2-4`` (which reads the
target's limits), ``check_loadable``, the manifest's ``target`` section and
``sparsec targets``. A switch (or a pipeline option for sparsity) would add a
second axis that each of those would have to thread through.

What runs where:

==================  ==========================================  ===========================
node                GPU tvm targets                             ``cpu-tvm``
==================  ==========================================  ===========================
linear, 1x1 conv,   sparsec's CUTLASS kernels (``gemm_dense``,   TVM (llvm)
2:4 kxk conv        ``gemm24``; bias, activation, residual in
                    the epilogue) via ``call_dps_packed``
other convs (dense  cuDNN: torch's conv via ``call_dps_packed``  TVM (llvm)
kxk, depthwise,     (``sparsec.conv2d[_nhwc]``, :mod:`.conv_kernels`)
grouped, stem)
elementwise,        TVM-generated (dlight CUDA schedules),       TVM (llvm)
pooling, layout,    the im2col of 2:4 kxk convs included
reductions
==================  ==========================================  ===========================

On a GPU target the pipeline is the CUTLASS backend's (``canonicalize,fold-bn,
dce,[sparsify-2-4,]fuse-epilogue,dce,to-dtype,partition``), and ``lower`` runs
that backend's lowering (:func:`.backend.lower_gemms`, the same code and the
same ``SPARSEC_CUTLASS_*`` knobs as the ``h100`` target: kxk convs stay
cuDNN unless ``SPARSEC_CUTLASS_KXK`` says otherwise) before the Relax import. Each packed
call is a Python hop (:mod:`.cutlass_kernels`, :mod:`.conv_kernels`) on
torch's current stream, which is the VM's (``tvm_ffi.use_torch_stream``); the
CUTLASS kernels write into the VM's output buffer, cuDNN's result is copied
into it. The artifact also holds the CUTLASS backend's ``kernels.json`` and
``tuning.json``, and its manifest lists the kernels (``payload.cutlass``):
``sparsec.load`` builds what the kernel cache lacks, or loads it, before the
first call. Not done: the kernels exported as ``TVM_FFI_DLL_EXPORT_TYPED_FUNC``
symbols and linked into the library (no Python hop).

Pieces (importing this package imports neither torch nor TVM):

* :mod:`.backend`    -- ``TvmBackend``: ``support(node)``, ``lower``, ``check_loadable``, ``load_artifact``
* :mod:`.lowering`   -- ir.Module -> Relax (``from_exported_program``) -> ``tvm.compile`` -> ``model.so``
* :mod:`.custom_ops` -- sparsec's ops: fused ops decomposed; kernel ops and (GPU) convs as ``call_dps_packed``
* :mod:`.cutlass_kernels` -- ``sparsec.gemm24`` / ``sparsec.gemm_dense`` packed functions over the CUTLASS kernels
* :mod:`.conv_kernels` -- ``sparsec.conv2d`` / ``sparsec.conv2d_nhwc`` packed functions over torch's conv (cuDNN)
* :mod:`.bench`      -- the ``tvm`` variants of ``sparsec bench`` (artifacts prebuilt on a CPU machine)
* :mod:`.stub`       -- the stub ``libcuda.so.1`` (from ``cuda_stub.c``) for CUDA builds with no GPU driver
* :mod:`.fatbin`     -- which archs' cubins (or CUDA source) an exported library holds
* :mod:`.runtime`    -- ``TvmModule``: apache-tvm-ffi + ``libtvm_runtime*.so``, DLPack in and out

The artifact of a TVM target holds ``model.so`` (weights kept out with
``keep_params_as_input``), ``params.pt`` (the weights -- the packed CUTLASS
ones too -- in the order the library takes them), on GPU targets
``kernels.json`` and ``tuning.json``, and the manifest, whose ``payload.tvm`` section records
the TVM version, the target, the parameter names and the fatbin check. It
holds no ``program.pt2``: loading it needs neither TVM's compiler nor
``torch.export`` (whose format is tied to the torch version).
"""
