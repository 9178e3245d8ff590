"""The squeeze-excite kernels (``sparsec::squeeze_excite_nhwc``): names, what the lowering takes and why it
refuses the rest, the lowered graph against the unlowered one on the CPU (the op's reference kernel), a real
nvcc build, and on the GPU the kernels against a float64 reference with the output NaN-poisoned first."""

from __future__ import annotations

import itertools

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import sparsec  # noqa: E402
from sparsec.api import resolve_backend  # noqa: E402
from sparsec.backends.cutlass import lowering  # noqa: E402
from sparsec.backends.cutlass import squeeze_excite as S  # noqa: E402
from sparsec.passes.manager import PassContext, PassManager  # noqa: E402

from .kernel_checks import assert_matches_unlowered, assert_nvcc_builds, gpu_arch  # noqa: E402
from .test_lowering import _randomise_bn  # noqa: E402  (trained-like BN statistics)


def test_names_round_trip():
    for dtype, act, gate in itertools.product(("fp16", "bf16"), S.ACTS, S.ACTS):
        cfg = S.SeConfig("sm_90a", dtype, act, gate)
        assert S.SeConfig.from_name(cfg.name) == cfg and S.is_name(cfg.name)
    with pytest.raises(ValueError, match="unknown activation"):
        S.SeConfig("sm_90a", "fp16", "tanh", "sigmoid")


class _SE(nn.Module):
    """An EfficientNet-style block: 3x3 depthwise + SiLU, squeeze-excite, 1x1 project."""

    def __init__(self, c=32, r=8, mean=False):
        super().__init__()
        self.mean = mean
        self.dw = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False), nn.BatchNorm2d(c), nn.SiLU())
        self.fc1, self.fc2 = nn.Conv2d(c, r, 1), nn.Conv2d(r, c, 1)
        self.project = nn.Sequential(nn.Conv2d(c, 16, 1, bias=False), nn.BatchNorm2d(16))

    def forward(self, x):
        x = self.dw(x)
        s = x.mean((2, 3), keepdim=True) if self.mean else nn.functional.adaptive_avg_pool2d(x, 1)
        s = torch.sigmoid(self.fc2(nn.functional.silu(self.fc1(s))))
        return self.project(x * s)


def _lowered(model, shape):
    tgt = sparsec.registry().get("target", "h100")
    backend = resolve_backend(tgt)
    mod = sparsec.trace(model, (torch.randn(*shape),))
    list(PassManager.parse(backend.pipeline(tgt)).run(mod, PassContext(target=tgt)))
    ref = mod.clone()
    return mod, ref, backend.lower(mod, tgt)


@pytest.mark.parametrize("mean", [False, True], ids=["pool", "mean"])
def test_lowered_squeeze_excite_matches_the_unlowered_graph_on_the_cpu(mean):
    torch.manual_seed(0)
    mod, ref, lowered = _lowered(_randomise_bn(_SE(mean=mean)).eval(), (2, 32, 10, 10))
    se = [r for r in lowered.section["layers"] if r["kind"] == "squeeze-excite"]
    assert [r["config"] for r in se] == ["se_sm_90a_fp16_silu_sigmoid"]
    assert "se_sm_90a_fp16_silu_sigmoid" in lowered.section["kernels"]
    calls = [n for n in mod.graph.nodes if n.target is torch.ops.sparsec.squeeze_excite_nhwc.default]
    assert len(calls) == 1
    assert not any("fc2.weight" in n for n, _ in mod.gm.named_parameters())  # held once, as the kernel's w2t
    from sparsec.ir import Cost

    assert mod.analysis(Cost).total_flops == ref.analysis(Cost).total_flops
    x = torch.randn(2, 32, 10, 10).half()
    assert_matches_unlowered(mod, ref, x)


def test_squeeze_excite_the_kernels_do_not_take_stays_in_pytorch_with_the_reason():
    torch.manual_seed(0)
    tgt = sparsec.registry().get("target", "h100")
    mod = sparsec.trace(_randomise_bn(_SE(c=12, r=4)).eval(), (torch.randn(2, 12, 6, 6),))
    list(PassManager.parse(resolve_backend(tgt).pipeline(tgt)).run(mod, PassContext(target=tgt)))
    node = next(n for n in mod.graph.nodes if n.target is torch.ops.sparsec.squeeze_excite.default)
    p = lowering.plan(node)
    assert not p and "C=12" in p.reason and "stays in PyTorch" in p.reason
    from sparsec.ir import meta as M

    assert M.get(node, M.BackendAssignment) is None or M.get(node, M.BackendAssignment).backend != "cutlass"


def test_nvcc_builds_squeeze_excite_kernels_for_both_archs(tmp_path):
    cfgs = [S.SeConfig("sm_90a", "fp16", "silu", "sigmoid"), S.SeConfig("sm_80", "bf16", "relu", "hardswish")]
    assert_nvcc_builds(cfgs, tmp_path)


# ---------------------------------------------------------------- GPU

CASES = [  # (dtype, act, gate, N, H, W, C, R)
    ("fp16", "silu", "sigmoid", 3, 112, 112, 32, 8),  # EfficientNet-B0's first block: many pixels, 4 vectors
    ("fp16", "silu", "sigmoid", 2, 7, 7, 1152, 48),  # its last: few pixels, several channel tiles
    ("fp16", "relu", "hardswish", 1, 5, 9, 264, 4),  # C with no tile divisor, odd R, one image
    ("bf16", "silu", "sigmoid", 4, 14, 14, 480, 20),
    ("fp16", "none", "sigmoid", 2, 28, 28, 96, 6),
]


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_kernels_match_float64_on_the_gpu(case):
    from sparsec.backends.cutlass.runtime import poisoned_outputs
    from sparsec.passes.fusion.ops import ACTIVATIONS

    arch = gpu_arch()
    dtype, act, gate, n, h, w, c, r = case
    dt = S.DTYPES[dtype]
    g = torch.Generator(device="cuda").manual_seed(n * c + r)
    x = torch.randn(n, h, w, c, device="cuda", generator=g).to(dt)
    w1 = (torch.randn(r, c, device="cuda", generator=g) / c ** 0.5).to(dt)
    w2t = (torch.randn(r, c, device="cuda", generator=g) / r ** 0.5).to(dt)
    b1, b2 = (torch.randn(k, device="cuda", generator=g).to(dt) for k in (r, c))
    cfg = S.SeConfig(arch, dtype, act, gate)
    with poisoned_outputs():
        y = torch.ops.sparsec.squeeze_excite_nhwc(x, w1, b1, w2t, b2, cfg.name)
    torch.cuda.synchronize()
    hidden = ACTIVATIONS[act](x.double().mean((1, 2)) @ w1.double().t() + b1.double())
    ref = x.double() * ACTIVATIONS[gate](hidden @ w2t.double() + b2.double())[:, None, None, :]
    assert y.shape == ref.shape and torch.isfinite(y).all(), "NaN left: some output was not written"
    rel = ((y.double() - ref).norm() / ref.norm()).item()
    assert rel < (5e-3 if dtype == "fp16" else 2e-2), rel


@pytest.mark.gpu
def test_kernels_replay_in_a_cuda_graph_on_fresh_inputs():
    arch = gpu_arch()
    cfg = S.SeConfig(arch, "fp16", "silu", "sigmoid").name
    g = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(4, 14, 14, 64, device="cuda", generator=g).half()
    w1, w2t = (torch.randn(8, 64, device="cuda", generator=g).half() / 8 for _ in range(2))
    op = torch.ops.sparsec.squeeze_excite_nhwc
    op(x, w1, None, w2t, None, cfg)  # load before capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = op(x, w1, None, w2t, None, cfg)
    for _ in range(2):  # the channel sums are zeroed inside the graph: replays do not accumulate
        x.copy_(torch.randn(x.shape, device="cuda", generator=g))
        graph.replay()
        torch.cuda.synchronize()
        want = S.reference(x.cpu(), w1.cpu(), None, w2t.cpu(), None, cfg)
        assert torch.allclose(y.cpu().float(), want.float(), rtol=1e-2, atol=1e-3)
