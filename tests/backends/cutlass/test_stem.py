"""The stem kernel (``sparsec::stem_conv``): names, what the lowering takes and why it refuses the rest, the
lowered graph against the unlowered one on the CPU (the op's reference kernel), a real nvcc build, and on the
GPU the kernel against a float64 reference in both input layouts, its output NaN-poisoned first."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import sparsec  # noqa: E402
from sparsec.api import resolve_backend  # noqa: E402
from sparsec.backends.cutlass import lowering  # noqa: E402
from sparsec.backends.cutlass import stem as ST  # noqa: E402
from sparsec.passes.manager import PassContext, PassManager  # noqa: E402

from .kernel_checks import (  # noqa: E402
    assert_matches_unlowered, assert_nhwc_matches, assert_nvcc_builds, gpu_arch, image_conv_inputs)
from .test_lowering import _randomise_bn  # noqa: E402  (trained-like BN statistics)


def test_names_round_trip():
    for cin, k, s, act in [(3, 3, 2, "relu6"), (1, 5, 1, "none"), (4, 7, 2, "gelu_tanh")]:
        cfg = ST.StemConfig("sm_90a", "bf16", cin, k, s, act)
        assert ST.StemConfig.from_name(cfg.name) == cfg and ST.is_name(cfg.name)
    with pytest.raises(ValueError, match="not in"):
        ST.StemConfig("sm_90a", "fp16", 8, 3, 1)


def _stem_plan(cin=3, cout=32, k=3, stride=2, act=nn.ReLU6()):
    m = nn.Sequential(nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2), act)
    tgt = sparsec.registry().get("target", "h100")
    mod = sparsec.trace(m, (torch.randn(2, cin, 16, 16),))
    list(PassManager.parse("fuse-epilogue").run(mod, PassContext(target=tgt)))
    node = next(n for n in mod.graph.nodes if n.op == "call_function" and "conv" in str(n.target))
    return lowering.plan(node)


def test_the_plan_takes_small_stems_and_says_why_it_leaves_the_rest():
    p = _stem_plan()
    assert isinstance(p, lowering.StemPlan) and (p.k, p.stride, p.act) == (3, 2, "relu6")
    why = _stem_plan(k=7, cout=64).reason  # ResNet's stem: compute-bound, cuDNN's tensor cores win
    assert "7x7x3 = 147 multiply-adds" in why and "stays in PyTorch (cuDNN)" in why
    assert "Cout a multiple of 8" in _stem_plan(cout=12).reason
    assert "stride" in _stem_plan(stride=3).reason


class _Stem(nn.Module):
    """A MobileNet start: 3x3 s2 stem + BN + ReLU6 on the image, then a pointwise conv."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.pw = nn.Conv2d(16, 24, 1)

    def forward(self, x):
        return self.pw(self.stem(x))


def test_lowered_stem_matches_the_unlowered_graph_on_the_cpu_and_reads_the_image_as_it_is():
    torch.manual_seed(0)
    tgt = sparsec.registry().get("target", "h100")
    backend = resolve_backend(tgt)
    mod = sparsec.trace(_randomise_bn(_Stem()).eval(), (torch.randn(2, 3, 19, 21),))
    list(PassManager.parse(backend.pipeline(tgt)).run(mod, PassContext(target=tgt)))
    ref = mod.clone()
    lowered = backend.lower(mod, tgt)
    assert [r["config"] for r in lowered.section["layers"] if r["kind"] == "stem"] == ["stem_sm_90a_fp16_ci3_k3s2_relu6"]
    call = next(n for n in mod.graph.nodes if n.target is torch.ops.sparsec.stem_conv.default)
    cast = call.args[0]  # fp32 I/O: the image is cast as it is, with no channels-last copy before the cast
    assert cast.target is torch.ops.aten._to_copy.default and cast.args[0].op == "placeholder"
    assert not any(n.target is torch.ops.aten.clone.default for n in mod.graph.nodes)
    from sparsec.ir import Cost

    assert mod.analysis(Cost).total_flops == ref.analysis(Cost).total_flops
    x = torch.randn(2, 3, 19, 21).half()
    assert_matches_unlowered(mod, ref, x)


def test_nvcc_builds_stem_kernels_for_both_archs(tmp_path):
    cfgs = [ST.StemConfig("sm_90a", "fp16", 3, 3, 2, "relu6"), ST.StemConfig("sm_80", "bf16", 1, 7, 1, "silu")]
    assert_nvcc_builds(cfgs, tmp_path)


# ---------------------------------------------------------------- GPU

CASES = [  # (dtype, Cin, k, stride, act, N, H, W, Cout, channels_last input)
    ("fp16", 3, 3, 2, "relu6", 3, 224, 224, 32, False),  # MobileNetV2's stem
    ("fp16", 3, 3, 2, "silu", 2, 224, 224, 24, True),  # EfficientNet-B0's, pruned, channels-last input
    ("bf16", 3, 3, 2, "silu", 2, 33, 47, 40, False),
    ("fp16", 1, 5, 1, "none", 2, 17, 19, 8, False),
    ("fp16", 4, 3, 1, "hardswish", 1, 13, 10, 16, True),
    ("fp16", 3, 7, 2, "relu", 2, 64, 64, 64, False),  # ResNet's (the kernel takes it; the lowering does not)
]


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_kernel_matches_float64_on_the_gpu(case):
    from sparsec.backends.cutlass.runtime import poisoned_outputs
    from sparsec.passes.fusion.ops import ACTIVATIONS

    arch = gpu_arch()
    dtype, cin, k, s, act, n, h, w, cout, cl = case
    x, wt, bias = image_conv_inputs(n, cin, h, w, cout, k, ST.DTYPES[dtype], cl)
    cfg = ST.StemConfig(arch, dtype, cin, k, s, act)
    with poisoned_outputs():
        y = torch.ops.sparsec.stem_conv(x, wt.permute(2, 3, 1, 0).contiguous(), bias, [k // 2, k // 2], cfg.name)
    torch.cuda.synchronize()
    ref = ACTIVATIONS[act](torch.nn.functional.conv2d(x.double(), wt.double(), bias.double(), s, k // 2))
    assert_nhwc_matches(y, ref, dtype)
