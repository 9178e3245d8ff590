"""The depthwise kernel (``sparsec::dwconv2d``): its names, what the lowering takes and why it refuses the
rest, the lowered graph against the unlowered one on the CPU (the op's reference kernel), a real nvcc
build, and on the GPU the kernel against a float64 reference with its output NaN-poisoned first."""

from __future__ import annotations

import itertools

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import sparsec  # noqa: E402
from sparsec.backends.cutlass import depthwise as D  # noqa: E402
from sparsec.api import resolve_backend  # noqa: E402
from sparsec.backends.cutlass import lowering  # noqa: E402
from sparsec.passes.manager import PassContext, PassManager  # noqa: E402

from .kernel_checks import assert_matches_unlowered, assert_nvcc_builds, gpu_arch  # noqa: E402
from .test_lowering import _randomise_bn  # noqa: E402  (trained-like BN statistics)


def test_names_round_trip_for_every_epilogue():
    for act, act2, res, tiled in itertools.product(D.ACTS, D.ACTS, (False, True), (False, True)):
        cfg = D.DwConfig("sm_90a", "bf16", 5, 2, act, act2, res, tiled)
        assert D.DwConfig.from_name(cfg.name) == cfg and D.is_name(cfg.name)
    for tw, occ, rows in itertools.product((0, *D.TWS), (0, *D.OCCS), (False, True)):
        cfg = D.DwConfig("sm_80", "fp16", 3, 1, "gelu_tanh", "none", True, False, tw, occ, rows)
        assert D.DwConfig.from_name(cfg.name) == cfg
    assert D.DwConfig("sm_90a", "fp16", 5, 1, rows=True, tiled=False).name == "dw_sm_90a_fp16_k5s1_none_none_rows"
    with pytest.raises(ValueError, match="rows variant has no shared-memory tile"):
        D.DwConfig("sm_90a", "fp16", 3, 1, rows=True)
    with pytest.raises(ValueError, match="unknown activation"):
        D.DwConfig("sm_90a", "fp16", 3, 1, "tanh")
    with pytest.raises(ValueError, match="not in"):
        D.DwConfig("sm_90a", "fp16", 4, 1)


def _conv_plan(**kw):
    c = kw.pop("c", 16)
    m = nn.Sequential(nn.Conv2d(c, c, groups=c, **kw))
    mod = sparsec.trace(m, (torch.randn(2, c, 12, 12),))
    node = next(n for n in mod.graph.nodes if n.op == "call_function" and "conv" in str(n.target))
    return lowering.plan(node)


@pytest.mark.parametrize("kw, why", [
    (dict(kernel_size=4, padding=1), "4x4 filter"),
    (dict(kernel_size=3, stride=3), "stride"),
    (dict(kernel_size=3, padding=2, dilation=2), "dilation"),
    (dict(kernel_size=3, padding=1, c=12), "C=12"),
])
def test_depthwise_convs_the_kernel_does_not_take_stay_in_pytorch_with_the_reason(kw, why):
    p = _conv_plan(**kw)
    assert not p and why in p.reason and "cuDNN" in p.reason


def test_depthwise_plan_takes_the_kernel_shapes_and_the_knob_picks_the_variant(tmp_path):
    import json
    from pathlib import Path

    from sparsec import knobs
    from sparsec.errors import UsageError

    p = _conv_plan(kernel_size=5, stride=2, padding=2)
    assert isinstance(p, lowering.DwPlan) and (p.k, p.stride, p.padding) == (5, 2, (2, 2))
    with knobs.scope(cache_dir=tmp_path):
        assert D.variant("sm_80", 5, 2)["tiled"] and not D.variant("sm_80", 3, 1)["tiled"]  # no table: by filter size
        shipped = json.loads((Path(D.__file__).parent / "tuned" / "dw_sm_90a.json").read_text())["choices"]["k3s1"]
        assert D.variant("sm_90a", 3, 1) == {"rows": False, **{k: shipped[k] for k in ("tiled", "tw", "occ", "rows")
                                                                if k in shipped}}
        (tmp_path / "tuning").mkdir()
        (tmp_path / "tuning" / "dw_sm_90a.json").write_text(json.dumps(
            {"schema": D.TUNING_SCHEMA, "choices": {"k3s1": {"tiled": True, "tw": 8, "occ": 2}}}))
        assert D.variant("sm_90a", 3, 1) == {"tiled": True, "tw": 8, "occ": 2, "rows": False}  # the table wins
        assert D.variant("sm_90a", 3, 1, "direct") == {"tiled": False, "tw": 0, "occ": 0, "rows": False}
        assert D.variant("sm_90a", 3, 1, "rows") == {"tiled": False, "tw": 0, "occ": 0, "rows": True}
    with knobs.scope(cutlass_depthwise="none"):
        assert "SPARSEC_CUTLASS_DEPTHWISE=none" in _conv_plan(kernel_size=3, padding=1).reason
    with knobs.scope(cutlass_depthwise="fast"), pytest.raises(UsageError, match="auto, tiled, direct, rows or none"):
        _conv_plan(kernel_size=3, padding=1)


class _Mobile(nn.Module):
    """Inverted residual (expand, 3x3 depthwise, project, add) and a strided 5x5 SiLU depthwise."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU6())
        self.expand = nn.Sequential(nn.Conv2d(16, 48, 1, bias=False), nn.BatchNorm2d(48), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(48, 48, 3, padding=1, groups=48, bias=False), nn.BatchNorm2d(48), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(48, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.dw5 = nn.Sequential(nn.Conv2d(16, 16, 5, stride=2, padding=2, groups=16), nn.SiLU())

    def forward(self, x):
        x = self.stem(x)
        x = x + self.project(self.dw(self.expand(x)))
        return self.dw5(x)


def test_lowered_depthwise_convs_match_the_unlowered_graph_on_the_cpu():
    """h100 pipeline + lowering, run on the CPU: the GEMM and depthwise ops' reference kernels compute what
    the fused graph before lowering computed (the weight repacking, NHWC permutes and epilogues)."""
    torch.manual_seed(0)
    model = _randomise_bn(_Mobile()).eval()
    tgt = sparsec.registry().get("target", "h100")
    backend = resolve_backend(tgt)
    mod = sparsec.trace(model, (torch.randn(2, 3, 20, 20),))
    list(PassManager.parse(backend.pipeline(tgt)).run(mod, PassContext(target=tgt)))
    ref = mod.clone()
    lowered = backend.lower(mod, tgt)
    layers = lowered.section["layers"]
    dws = [r for r in layers if r["kind"] == "depthwise"]
    assert [D.DwConfig.from_name(r["config"]).k for r in dws] == [3, 5]
    assert all(n in lowered.section["kernels"] for n in (r["config"] for r in dws))
    calls = [n for n in mod.graph.nodes if n.op == "call_function" and n.target is torch.ops.sparsec.dwconv2d.default]
    assert len(calls) == 2
    from sparsec.ir import Cost

    assert mod.analysis(Cost).total_flops == ref.analysis(Cost).total_flops  # kernel calls keep their MACs
    x = torch.randn(2, 3, 20, 20).half()  # fresh values (the batch is static)
    assert_matches_unlowered(mod, ref, x)


def test_nvcc_builds_depthwise_kernels_for_both_archs(tmp_path):
    cfgs = [D.DwConfig("sm_90a", "fp16", 3, 1, "relu6"), D.DwConfig("sm_80", "bf16", 7, 2, "gelu_tanh", "hardswish", True)]
    assert_nvcc_builds(cfgs, tmp_path)


# ---------------------------------------------------------------- GPU

CASES = [  # (dtype, k, stride, act, act2, residual, N, H, W, C)
    ("fp16", 3, 1, "relu6", "none", False, 3, 13, 17, 24),
    ("fp16", 3, 2, "relu6", "none", False, 2, 15, 16, 264),
    ("fp16", 5, 1, "silu", "none", False, 2, 14, 14, 240),
    ("fp16", 5, 2, "silu", "none", False, 4, 9, 11, 40),
    ("fp16", 7, 1, "gelu", "relu", True, 2, 10, 12, 8),
    ("fp16", 3, 1, "none", "hardswish", True, 2, 7, 7, 960),
    ("bf16", 3, 1, "sigmoid", "none", False, 2, 28, 28, 144),
    ("bf16", 5, 2, "gelu_tanh", "silu", True, 1, 12, 12, 32),
    ("bf16", 7, 2, "relu", "none", False, 2, 23, 19, 56),
    ("fp16", 3, 1, "relu6", "none", False, 2, 56, 56, 144),  # many tiles; cv=18 (no divisor in the tile range)
    ("fp16", 5, 2, "silu", "none", True, 2, 57, 55, 672),
]


def _f64_reference(x, w, bias, res, k, stride, pad, act, act2):
    from sparsec.passes.fusion.ops import ACTIVATIONS

    c = x.shape[-1]
    y = torch.nn.functional.conv2d(x.double().permute(0, 3, 1, 2), w.double().permute(2, 0, 1).unsqueeze(1),
                                   bias.double(), stride, pad, 1, c)
    y = ACTIVATIONS[act](y)
    if res is not None:
        y = y + res.double().permute(0, 3, 1, 2)
    return ACTIVATIONS[act2](y).permute(0, 2, 3, 1)


VARIANTS = [(True, 0, 0, False), (False, 0, 0, False), (True, 8, 2, False), (False, 1, 3, False), (True, 2, 4, False),
            (False, 0, 0, True), (False, 2, 2, True), (False, 8, 0, True)]  # (tiled, tw, occ, rows)


@pytest.fixture(scope="module")
def built(request):
    """Every kernel the selected GPU cases run, built at once (parallel nvcc) rather than one per test."""
    arch = gpu_arch()
    wanted = {(it.callspec.params["case"], it.callspec.params["variant"]) for it in request.session.items
              if getattr(it, "originalname", "") == "test_kernel_matches_float64_on_the_gpu"
              and getattr(it, "module", None) is request.module}  # other modules have a test of that name
    D.preload([D.DwConfig(arch, c[0], c[1], c[2], c[3], c[4], c[5], *v) for c, v in wanted])
    return arch


@pytest.mark.gpu
@pytest.mark.parametrize("variant", VARIANTS,
                         ids=lambda v: f"{'tiled' if v[0] else 'rows' if v[3] else 'direct'}-tw{v[1]}-o{v[2]}")
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c[:6] + c[-3:])))
def test_kernel_matches_float64_on_the_gpu(case, variant, built):
    from sparsec.backends.cutlass.runtime import poisoned_outputs

    arch = built
    dtype, k, s, act, act2, res, n, h, w, c = case
    dt = D.DTYPES[dtype]
    g = torch.Generator(device="cuda").manual_seed(hash(case) % 1000)
    pad = k // 2
    x = torch.randn(n, h, w, c, device="cuda", generator=g).to(dt)
    wt = (torch.randn(k, k, c, device="cuda", generator=g) / k).to(dt)
    bias = torch.randn(c, device="cuda", generator=g).to(dt)
    oh, ow = D.out_size(h, k, s, pad), D.out_size(w, k, s, pad)
    r = torch.randn(n, oh, ow, c, device="cuda", generator=g).to(dt) if res else None
    cfg = D.DwConfig(arch, dtype, k, s, act, act2, res, *variant)
    with poisoned_outputs():
        y = torch.ops.sparsec.dwconv2d(x, wt, bias, r, [pad, pad], cfg.name)
    torch.cuda.synchronize()
    ref = _f64_reference(x, wt, bias, r, k, s, pad, act, act2)
    assert y.shape == ref.shape and torch.isfinite(y).all(), "NaN left: some output was not written"
    rel = ((y.double() - ref).norm() / ref.norm()).item()
    assert rel < (5e-3 if dtype == "fp16" else 2e-2), rel
