"""The conv+pool kernel (``sparsec::conv_pool_nhwc``): names, the weight packing, what the lowering takes and
why it leaves the rest, the lowered graph against the unlowered one on the CPU (the op's reference kernel),
a real nvcc build, and on the GPU the kernel against a float64 reference, its output NaN-poisoned first."""

from __future__ import annotations

import re

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import sparsec  # noqa: E402
from sparsec.api import resolve_backend  # noqa: E402
from sparsec.backends.cutlass import conv_pool as CP  # noqa: E402
from sparsec.backends.cutlass import lowering  # noqa: E402
from sparsec.passes.fusion import ops as F  # noqa: E402
from sparsec.passes.manager import PassContext, PassManager  # noqa: E402

from .kernel_checks import (  # noqa: E402
    assert_matches_unlowered, assert_nhwc_matches, assert_nvcc_builds, gpu_arch, image_conv_inputs)
from .test_lowering import _randomise_bn  # noqa: E402  (trained-like BN statistics)

OP = torch.ops.sparsec.conv_pool_nhwc.default


def test_names_round_trip_and_bad_configs_say_why():
    for cfg in [CP.ConvPoolConfig("sm_90a", "fp16", 3, 7, 2, 64, "relu", "max", 3, 2, 1, (4, 8)),
                CP.ConvPoolConfig("sm_80", "bf16", 1, 11, 4, 128, "gelu_tanh", "avgx", 2, 2, 0, (4, 4)),
                CP.ConvPoolConfig("sm_90a", "fp16", 4, 3, 1, 8, "none", "avg", 3, 1, 1, (4, 4))]:
        assert CP.ConvPoolConfig.from_name(cfg.name) == cfg and CP.is_name(cfg.name)
    with pytest.raises(ValueError, match="Cout 96"):
        CP.ConvPoolConfig("sm_90a", "fp16", 3, 7, 2, 96, "relu", "max", 3, 2, 1)
    with pytest.raises(ValueError, match="bytes of shared memory"):
        CP.ConvPoolConfig("sm_90a", "fp16", 1, 11, 4, 128, "relu", "max", 2, 2, 0, (8, 8))
    with pytest.raises(ValueError, match="padding at most half"):
        CP.ConvPoolConfig("sm_90a", "fp16", 3, 7, 2, 64, "relu", "max", 2, 2, 2)


def test_packed_weight_round_trips_and_pads_with_zeros():
    w = torch.randn(16, 3, 7, 7)
    p = CP.pack_weight(w)
    assert p.shape == (16, 208)  # 7*7 taps x 4 channels = 196, rounded up to 16
    assert torch.equal(CP.unpack_weight(p, 3, 7), w)
    taps = p[:, :196].reshape(16, 49, 4)
    assert not taps[..., 3].any() and not p[:, 196:].any()


@pytest.mark.parametrize("pool,cip", [("max", True), ("avg", True), ("avg", False)])
def test_reference_kernel_is_the_fused_ops_reference(pool, cip):
    torch.manual_seed(1)
    x, w, b = torch.randn(2, 3, 29, 31), torch.randn(16, 3, 5, 5), torch.randn(16)
    name = "max" if pool == "max" else ("avg" if cip else "avgx")
    cfg = CP.ConvPoolConfig("sm_90a", "fp16", 3, 5, 2, 16, "silu", name, 3, 2, 1)
    got = CP.reference(x, CP.pack_weight(w, cfg.kp), b, [2, 2], cfg.name)
    want = F.conv2d_pool_ref(x, w, b, [2, 2], [2, 2], [1, 1], 1, "silu", pool, [3, 3], [2, 2], [1, 1], [1, 1], False,
                             cip, None)
    assert torch.allclose(got, want.permute(0, 2, 3, 1), rtol=1e-5, atol=1e-5)


class _ResNetStart(nn.Module):
    """ResNet's start: 7x7 s2 stem + BN + ReLU, 3x3 s2 max-pool, then a 1x1 conv."""

    def __init__(self, cout=32, pool=None):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, cout, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(cout),
                                  nn.ReLU())
        self.pool = pool or nn.MaxPool2d(3, 2, 1)
        self.pw = nn.Conv2d(cout, 16, 1)

    def forward(self, x):
        return self.pw(self.pool(self.stem(x)))


def _pipeline(tgt, fuse="fuse-conv-pool{force=true}"):
    return re.sub(r"fuse-conv-pool(\{[^}]*\})?", fuse, resolve_backend(tgt).pipeline(tgt))


def _plan(model, shape=(2, 3, 40, 40)):
    tgt = sparsec.registry().get("target", "h100")
    mod = sparsec.trace(model.eval(), (torch.randn(shape),))
    list(PassManager.parse(_pipeline(tgt).replace(",partition", "")).run(mod, PassContext(target=tgt)))
    node = next(n for n in mod.graph.nodes if n.op == "call_function" and "conv" in str(n.target))
    return lowering.plan(node)


def test_the_plan_takes_the_resnet_start_and_says_why_it_leaves_the_rest():
    p = _plan(_ResNetStart())
    assert isinstance(p, lowering.ConvPoolPlan)
    assert (p.k, p.stride, p.padding, p.act, p.pool, p.pk, p.ps, p.pp) == (7, 2, (3, 3), "relu", "max", 3, 2, 1)
    assert _plan(_ResNetStart(pool=nn.AvgPool2d(2, count_include_pad=False))).pool == "avgx"
    why = _plan(_ResNetStart(pool=nn.MaxPool2d(3, 2, 1, ceil_mode=True))).reason
    assert "no ceil mode" in why and "the fused op runs in PyTorch" in why
    wide = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
    assert "1 to 4 channels" in _plan(wide, (2, 16, 20, 20)).reason
    odd = nn.Sequential(nn.Conv2d(3, 96, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
    assert "Cout=96" in _plan(odd, (2, 3, 20, 20)).reason


def test_the_cutlass_pipeline_measures_before_it_fuses():
    """Without a measurement for the site the target's pipeline keeps conv and pool apart, and says why."""
    tgt = sparsec.registry().get("target", "h100")
    backend = resolve_backend(tgt)
    assert "fuse-conv-pool" in backend.pipeline(tgt)
    mod = sparsec.trace(_ResNetStart().eval(), (torch.randn(1, 3, 37, 41),))  # a shape nobody measured
    list(PassManager.parse(backend.pipeline(tgt)).run(mod, PassContext(target=tgt)))
    assert not any(n.target is F.conv2d_pool for n in mod.graph.nodes)
    from sparsec.ir import print_module

    assert "fuse-conv-pool/conv2d-pool: not measured" in print_module(mod)


def test_the_h100_pipeline_fuses_resnets_start_on_the_shipped_measurement():
    """conv_pool_sm_90a.json (benchmarks/conv_pool.py on an H100) holds ResNet-50's stem at 224x224; the a100
    pipeline, with no sm_80 measurements shipped, keeps conv and pool apart."""
    for name, fused in (("h100", True), ("a100", False)):
        tgt = sparsec.registry().get("target", name)
        pipeline = resolve_backend(tgt).pipeline(tgt)
        assert ("fuse-conv-pool{measurements=conv_pool_sm_90a.json}" in pipeline) == fused
        mod = sparsec.trace(_ResNetStart(cout=64).eval(), (torch.randn(1, 3, 224, 224),))
        list(PassManager.parse(pipeline).run(mod, PassContext(target=tgt)))
        pooled = [n for n in mod.graph.nodes if n.target is F.conv2d_pool]
        assert bool(pooled) == fused, name
        if fused:  # what `sparsec inspect --target h100` shows for it
            assert str(resolve_backend(tgt).support(pooled[0])) == (
                "yes (cutlass: conv of 3 input channels (the stem) and its pool as one tensor-core kernel, fused "
                "epilogue (act=relu), max-pool epilogue)")


def test_lowered_conv_pool_matches_the_unlowered_graph_on_the_cpu_and_reads_the_image_as_it_is():
    torch.manual_seed(0)
    tgt = sparsec.registry().get("target", "h100")
    backend = resolve_backend(tgt)
    mod = sparsec.trace(_randomise_bn(_ResNetStart()).eval(), (torch.randn(2, 3, 45, 38),))
    list(PassManager.parse(_pipeline(tgt)).run(mod, PassContext(target=tgt)))
    ref = mod.clone()
    lowered = backend.lower(mod, tgt)
    cfgs = [r["config"] for r in lowered.section["layers"] if r["kind"] == "conv-pool"]
    assert cfgs == ["cpool_sm_90a_fp16_ci3_k7s2_co32_relu_max3s2p1_t4x8"]
    call = next(n for n in mod.graph.nodes if n.target is OP)
    assert call.args[0].target is torch.ops.aten._to_copy.default and call.args[0].args[0].op == "placeholder"
    assert not any(n.target is torch.ops.aten.clone.default for n in mod.graph.nodes)
    assert not any(n.target is torch.ops.aten.max_pool2d.default for n in mod.graph.nodes)
    from sparsec.ir import Cost

    assert mod.analysis(Cost).total_flops == ref.analysis(Cost).total_flops  # the kernel call keeps the conv's MACs
    x = torch.randn(2, 3, 45, 38).half()
    assert_matches_unlowered(mod, ref, x)


def test_tile_choice_falls_back_to_a_smaller_tile_within_shared_memory():
    def make(tile, cout=64, pk=3, ps=2):
        return CP.ConvPoolConfig("sm_90a", "fp16", 3, 7, 2, cout, "relu", "max", pk, ps, 1, tile)

    assert CP.choose_tile(make).tile == (4, 8)
    assert CP.choose_tile(lambda t: make(t, 128, 4, 4)).tile == (4, 4)  # 4x8's patch and conv tile are too large
    with pytest.raises(ValueError, match="shared memory"):
        CP.choose_tile(lambda t: CP.ConvPoolConfig("sm_90a", "fp16", 4, 11, 4, 128, "relu", "max", 4, 4, 0, t))


def test_nvcc_builds_conv_pool_kernels_for_both_archs(tmp_path):
    cfgs = [CP.ConvPoolConfig("sm_90a", "fp16", 3, 7, 2, 64, "relu", "max", 3, 2, 1, (4, 8)),
            CP.ConvPoolConfig("sm_80", "bf16", 3, 3, 2, 128, "silu", "avgx", 2, 2, 0, (8, 8))]
    assert_nvcc_builds(cfgs, tmp_path)


# ---------------------------------------------------------------- GPU

CASES = [  # (dtype, Cin, k, stride, pad, Cout, act, pool, pk, ps, pp, tile, N, H, W, channels_last)
    ("fp16", 3, 7, 2, 3, 64, "relu", "max", 3, 2, 1, (4, 8), 2, 224, 224, False),  # ResNet-50's start
    ("fp16", 3, 7, 2, 3, 32, "relu", "max", 3, 2, 1, (4, 4), 1, 224, 224, False),  # pruned, batch 1
    ("bf16", 3, 7, 2, 3, 64, "relu", "max", 3, 2, 1, (8, 8), 3, 97, 131, True),
    ("fp16", 3, 3, 1, 1, 128, "silu", "avg", 3, 1, 1, (8, 8), 2, 37, 53, False),
    ("fp16", 1, 5, 1, 2, 8, "none", "avgx", 3, 2, 1, (4, 4), 2, 30, 27, False),
    ("bf16", 4, 3, 2, 0, 24, "hardswish", "max", 2, 2, 0, (4, 8), 2, 41, 64, True),
]


@pytest.mark.gpu
@pytest.mark.parametrize("arch", ["native", "sm_80"])  # sm_80 on an H100: its compute_80 PTX, a correctness check
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_kernel_matches_float64_on_the_gpu(case, arch):
    from sparsec.backends.cutlass.runtime import poisoned_outputs
    from sparsec.passes.fusion.ops import ACTIVATIONS

    native = gpu_arch()
    arch = native if arch == "native" else arch
    dtype, cin, k, s, pad, cout, act, pool, pk, ps, pp, tile, n, h, w, cl = case
    x, wt, bias = image_conv_inputs(n, cin, h, w, cout, k, CP.DTYPES[dtype], cl)
    cfg = CP.ConvPoolConfig(arch, dtype, cin, k, s, cout, act, pool, pk, ps, pp, tile)
    with poisoned_outputs():
        y = OP(x, CP.pack_weight(wt, cfg.kp), bias, [pad, pad], cfg.name)
    torch.cuda.synchronize()
    ref = ACTIVATIONS[act](torch.nn.functional.conv2d(x.double(), wt.double(), bias.double(), s, pad))
    if pool == "max":
        ref = torch.nn.functional.max_pool2d(ref, pk, ps, pp)
    else:
        ref = torch.nn.functional.avg_pool2d(ref, pk, ps, pp, count_include_pad=pool == "avg")
    assert_nhwc_matches(y, ref, dtype)


@pytest.mark.gpu
def test_compiled_artifact_runs_the_fused_kernel_and_matches_the_model(tmp_path):
    """sparsec.compile with the fusion forced, sparsec.load, run on the GPU: one conv_pool_nhwc call, no
    max-pool left, logits within fp16 tolerance of the float32 model; and the same replayed as a CUDA graph."""
    target = "h100" if gpu_arch() == "sm_90a" else "a100"
    tgt = sparsec.registry().get("target", target)
    torch.manual_seed(3)
    model = _randomise_bn(_ResNetStart(cout=64)).eval()
    res = sparsec.compile(model, (torch.randn(4, 3, 96, 80),), target=target, pipeline=_pipeline(tgt),
                          output=tmp_path / "m.sparsec")
    layers = __import__("json").loads((res.artifact / "manifest.json").read_text())["payload"]["layers"]
    assert [r["config"] for r in layers if r["kind"] == "conv-pool"] == [
        f"cpool_{tgt.arch}_fp16_ci3_k7s2_co64_relu_max3s2p1_t4x8"]
    fast = sparsec.load(res.artifact, cuda_graph=True)
    g = torch.Generator(device="cuda").manual_seed(5)
    for _ in range(2):  # capture, then replay on a new input
        x = torch.randn(4, 3, 96, 80, device="cuda", generator=g)
        with torch.no_grad():
            y, r = fast(x), model.cuda()(x)
        rel = ((y.double() - r.double()).norm() / r.double().norm()).item()
        assert torch.isfinite(y).all() and rel < 1e-2, rel


def test_a_dynamic_batch_lowers_to_the_same_kernel_for_every_batch():
    torch.manual_seed(1)
    tgt = sparsec.registry().get("target", "h100")
    backend = resolve_backend(tgt)
    model = _randomise_bn(_ResNetStart()).eval()
    mod = sparsec.trace(model, (torch.randn(4, 3, 45, 38),), dynamic_batch=True)
    list(PassManager.parse(_pipeline(tgt)).run(mod, PassContext(target=tgt)))
    ref = mod.clone()
    lowered = backend.lower(mod, tgt)
    assert [r["kind"] for r in lowered.section["layers"]].count("conv-pool") == 1
    for n in (1, 3, 6):
        assert_matches_unlowered(mod, ref, torch.randn(n, 3, 45, 38).half())
