"""Kernel configs and the C++ they generate (CPU only)."""

from __future__ import annotations

import pytest

from sparsec.backends.cutlass.codegen import emit, emit_sm90_compressor, nvcc_arch_flags
from sparsec.backends.cutlass.config import ACTIVATIONS, KernelConfig, candidates


def test_name_round_trips_for_every_candidate_and_epilogue():
    cfgs = [c for arch in ("sm_90a", "sm_80") for dt in ("fp16", "bf16") for sp in (True, False) for c in candidates(arch, dt, sp)]
    cfgs += [KernelConfig().with_epilogue(a, residual=True, scale=True) for a in ACTIVATIONS]
    names = [c.name for c in cfgs]
    assert len(set(names)) == len(names)
    for c in cfgs:
        assert KernelConfig.from_name(c.name) == c


def test_sm90_sparse_source_uses_the_sparse_collective_and_the_epilogue():
    cfg = KernelConfig(dtype="bf16", tile=(128, 256, 128), cluster=(1, 2), schedule="cooperative", activation="silu")
    src = emit(cfg)
    assert "cutlass::arch::OpClassSparseTensorOp" in src
    assert "using TileShape = Shape<_128, _256, _128>;" in src
    assert "using ClusterShape = Shape<_1, _2, _1>;" in src
    assert "KernelTmaWarpSpecializedCooperative" in src and "TmaWarpSpecializedCooperative" in src
    assert "LinCombPerRowBiasEltAct<\n    cutlass::epilogue::thread::SiLu, ElementD" in src
    assert "using ElementA = cutlass::bfloat16_t;" in src
    assert "using ElementC = void;" in src  # no residual: C is never read
    assert f'extern "C" int {cfg.symbol}(' in src and f'extern "C" size_t {cfg.symbol}_workspace(' in src
    assert "SparseConfig::fill_layoutE(problem)" in src


def test_sm90_epilogue_variants():
    base = KernelConfig(schedule="pingpong", tile=(64, 128, 128))
    assert "KernelTmaWarpSpecializedPingpong" in emit(base) and "cutlass::epilogue::TmaWarpSpecialized," in emit(base)
    res = emit(base.with_epilogue("relu", residual=True))
    assert "using ElementC = ElementD;" in res and "fusion.beta = C ? 1.f : 0.f;" in res
    assert "PerRowLinCombPerRowBiasEltAct" in emit(base.with_epilogue(scale=True))
    assert "fusion.alpha_ptr = scale;" in emit(base.with_epilogue(scale=True))
    relu6 = emit(base.with_epilogue("relu6"))
    assert "thread::Clamp" in relu6 and "upper_bound = 6.f" in relu6
    dense = emit(KernelConfig(sparse=False, tile=(128, 128, 64)))
    assert "OpClassSparseTensorOp" not in dense and "cutlass::arch::OpClassTensorOp" in dense


def test_sm80_source_and_flags():
    cfg = KernelConfig("sm_80", "fp16", True, (128, 128, 64), (1, 1), activation="gelu")
    src = emit(cfg)
    assert "SparseGemm<" in src and "GemmShape<16, 8, 32>" in src and "thread::GELU" in src
    assert nvcc_arch_flags("sm_80") == ["-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_80,code=compute_80"]
    assert nvcc_arch_flags("sm_90a") == ["-gencode", "arch=compute_90a,code=sm_90a"]


def test_compressor_source():
    src = emit_sm90_compressor("fp16", 64)
    assert "StructuredSparseCompressor" in src and "Shape<_128, _128, _64>" in src


@pytest.mark.parametrize("bad", [
    dict(arch="sm_70"), dict(dtype="fp32"), dict(schedule="stream"), dict(activation="tanh"),
    dict(tile=(64, 128, 128), schedule="cooperative"), dict(tile=(128, 128, 96)),
])
def test_invalid_configs_are_refused(bad):
    with pytest.raises(ValueError):
        KernelConfig(**bad)


def test_pack_tile_k():
    assert KernelConfig(tile=(128, 128, 64)).pack_tile_k == 64
    assert KernelConfig().pack_tile_k == 128


def test_pdl_is_a_named_sm90_variant_and_leaves_other_sources_alone():
    import dataclasses

    cfg = dataclasses.replace(KernelConfig().with_epilogue("relu", residual=True), pdl=True, swizzle=4)
    assert cfg.name.endswith("_res_pdl_sw4") and KernelConfig.from_name(cfg.name) == cfg
    assert not cfg.base().pdl  # the tuning DB names the plain launch
    src, plain = emit(cfg), emit(dataclasses.replace(cfg, pdl=False))
    assert "#define CUTLASS_ENABLE_GDC_FOR_SM90 1" in src and "gemm.run(stream, nullptr, true)" in src
    assert "CUTLASS_ENABLE_GDC" not in plain and "gemm.run(stream)" in plain  # (cached kernels keep their digest)
    with pytest.raises(ValueError, match="sm_90a"):
        KernelConfig("sm_80", "fp16", True, (128, 128, 64), (1, 1), pdl=True)
