"""The built-in registry entries, as lazy ``module:attr`` strings.

Importing this module imports nothing heavy: each entry is loaded on lookup.
"""

from __future__ import annotations

PASSES = {
    "canonicalize": "sparsec.passes.cleanup:Canonicalize",
    "dce": "sparsec.passes.cleanup:DeadCodeElimination",
    "fold-bn": "sparsec.passes.fold_bn:FoldBatchNorm",
    "to-dtype": "sparsec.passes.convert:ToDtype",
    "to-channels-last": "sparsec.passes.convert:ToChannelsLast",
    "prune-channels": "sparsec.passes.prune.apply:PruneChannels",
    "sparsify-2-4": "sparsec.passes.sparsify.apply:Sparsify24",
    "fuse-epilogue": "sparsec.passes.fusion.epilogue:FuseEpilogue",
    "fuse-conv-pool": "sparsec.passes.fusion.conv_pool:FuseConvPool",
    "fuse-squeeze-excite": "sparsec.passes.fusion.squeeze_excite:FuseSqueezeExcite",
    "partition": "sparsec.passes.partition:BackendPartition",
}

# Named pipelines: a name standing for a pipeline text.
PIPELINES = {
    "default": "canonicalize,fold-bn,dce",
    "cleanup": "canonicalize,dce",
    # fold, fuse epilogues and squeeze-excite blocks, then conv+pool (only where forced or measured: see
    # fuse-conv-pool)
    "fusion": "canonicalize,fold-bn,dce,fuse-epilogue,fuse-squeeze-excite,fuse-conv-pool,dce",
    # for the 2:4 targets (a100-sparse, h100-sparse): the measured cost model decides per layer
    "sparse-24": "canonicalize,fold-bn,sparsify-2-4,dce",
}

TARGETS = {
    "cpu": "sparsec.backends.targets:CPU",
    "a100": "sparsec.backends.targets:A100",
    "a100-sparse": "sparsec.backends.targets:A100_SPARSE",
    "h100": "sparsec.backends.targets:H100",
    "h100-sparse": "sparsec.backends.targets:H100_SPARSE",
    "cpu-tvm": "sparsec.backends.targets:CPU_TVM",
    "a100-tvm": "sparsec.backends.targets:A100_TVM",
    "a100-sparse-tvm": "sparsec.backends.targets:A100_SPARSE_TVM",
    "h100-tvm": "sparsec.backends.targets:H100_TVM",
    "h100-sparse-tvm": "sparsec.backends.targets:H100_SPARSE_TVM",
}

BACKENDS = {
    "eager": "sparsec.backends.eager:EagerBackend",
    "cutlass": "sparsec.backends.cutlass.backend:CutlassBackend",
    "tvm": "sparsec.backends.tvm.backend:TvmBackend",
}


# Modules that define ``sparsec::`` torch.library ops (fused ops, kernels). A saved program that
# calls them loads only once they are registered: the loaders call load_op_libraries() first.
OP_LIBRARIES = (
    "sparsec.passes.fusion.ops",
    "sparsec.backends.cutlass.reference",  # sparsec::gemm24 / gemm_dense (CUDA kernels + CPU reference)
    "sparsec.backends.cutlass.depthwise",  # sparsec::dwconv2d (CUDA kernel + CPU reference)
    "sparsec.backends.cutlass.squeeze_excite",  # sparsec::squeeze_excite_nhwc (CUDA kernels + CPU reference)
    "sparsec.backends.cutlass.stem",  # sparsec::stem_conv (CUDA kernel + CPU reference)
    "sparsec.backends.cutlass.conv_pool",  # sparsec::conv_pool_nhwc (CUDA kernel + CPU reference)
)


def load_op_libraries() -> None:
    import importlib

    for name in OP_LIBRARIES:
        importlib.import_module(name)


def register(reg) -> None:
    for kind, table in (("pass", PASSES), ("pipeline", PIPELINES), ("target", TARGETS), ("backend", BACKENDS)):
        for name, factory in table.items():
            reg.add(kind, name, factory, provider="sparsec")
