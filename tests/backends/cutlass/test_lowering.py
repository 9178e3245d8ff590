"""The cutlass backend's lowering on the CPU: the rewrite into sparsec::gemm24 / gemm_dense is exact
when the ops' CPU reference kernels run it (fresh random inputs, never zeros), the packers round-trip
through the reference unpacker, and the backend compiles an artifact without a GPU."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import sparsec  # noqa: E402
from sparsec.backends.cutlass import depthwise, packing, reference  # noqa: E402,F401  (depthwise: the op)
from sparsec.backends.cutlass.config import KernelConfig  # noqa: E402
from sparsec.backends.cutlass.lowering import GemmPlan, StemPlan, epilogue, lower_reference, plan  # noqa: E402
from sparsec.errors import TargetError  # noqa: E402
from sparsec.passes.manager import PassContext, PassManager  # noqa: E402

nn = torch.nn
GEMM24 = torch.ops.sparsec.gemm24.default
DENSE = torch.ops.sparsec.gemm_dense.default
DW = torch.ops.sparsec.dwconv2d.default


class Net(nn.Module):
    """3x3 (pad), strided 3x3, strided 1x1 projection + residual, depthwise, linear: every lowering kind."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.c1 = nn.Conv2d(32, 64, 3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(64)
        self.c2 = nn.Conv2d(64, 64, 1)
        self.proj = nn.Conv2d(32, 64, 1, stride=2)
        self.dw = nn.Conv2d(64, 64, 3, padding=1, groups=64)
        self.c3 = nn.Conv2d(64, 32, 3, padding=1, bias=False)
        self.fc = nn.Linear(32 * 4 * 4, 40)
        self.fc2 = nn.Linear(40, 16)

    def forward(self, x):
        s = torch.relu(self.stem(x))
        y = torch.relu(self.bn1(self.c1(s)))
        y = torch.relu(self.c2(y) + self.proj(s))
        y = torch.nn.functional.silu(self.dw(y))
        y = torch.nn.functional.hardswish(self.c3(y))
        y = torch.nn.functional.gelu(self.fc(y.flatten(1)), approximate="tanh")
        return self.fc2(y)


def _randomise_bn(model):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return model


def _prepared(model, x, pipeline="canonicalize,fold-bn,dce,sparsify-2-4{cost-model=off},fuse-epilogue,dce"):
    mod = sparsec.trace(model, (x,))
    list(PassManager.parse(pipeline).run(mod, PassContext(target=sparsec.registry().get("target", "cpu"))))
    return mod


def _rel(a, b):
    a = a[0] if isinstance(a, (tuple, list)) else a
    b = b[0] if isinstance(b, (tuple, list)) else b
    return ((a.double() - b.double()).norm() / a.double().norm()).item()


def _count(mod, target):
    return sum(1 for n in mod.graph.nodes if n.op == "call_function" and n.target is target)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_reference_lowering_is_exact_on_a_small_net(dtype, tol):
    torch.manual_seed(0)
    model = _randomise_bn(Net()).eval().to(dtype)
    mod = _prepared(model, torch.randn(2, 3, 8, 8, dtype=dtype))
    ref = mod.clone()
    records = lower_reference(mod)
    kinds = {r["kind"] for r in records}
    assert kinds == {"conv-im2col", "conv1x1", "conv1x1-strided", "linear"}
    assert _count(mod, GEMM24) >= 4
    convs = [n for n in mod.graph.nodes if n.op == "call_function" and "conv2d" in str(n.target)]
    # left to PyTorch in reference mode: the stem (Cin=3: sparsec::stem_conv on a GPU, tested in test_stem.py)
    # and the depthwise conv (sparsec::dwconv2d, test_depthwise.py)
    assert sorted(int(c.args[1].meta["val"].shape[1]) for c in convs) == [1, 3]
    for seed in (1, 2):
        x = torch.randn(2, 3, 8, 8, dtype=dtype, generator=torch.Generator().manual_seed(seed))  # fresh inputs
        assert _rel(ref(x), mod(x)) < tol


def test_reference_lowering_resnet18_fp32():
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = _randomise_bn(tv.models.resnet18()).eval()
    mod = _prepared(model, torch.randn(1, 3, 64, 64))
    ref = mod.clone()
    records = lower_reference(mod)
    # 19 convs + fc: the 7x7 stem stays in PyTorch (plan(): 147 MACs per output, compute-bound for the stem
    # kernel, and reference mode lowers GEMMs only)
    assert len(records) == 20 and "conv1.weight" not in [r["weight"] for r in records]
    assert all(r["sparse"] for r in records)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    assert _rel(ref(x), mod(x)) < 1e-5
    # back-to-back lowered convs stay NHWC: one permute pair per layer would be 40 permutes
    permutes = _count(mod, torch.ops.aten.permute.default)
    assert permutes < 40


@pytest.mark.parametrize("arch, tile_k", [("sm_90a", 128), ("sm_90a", 64), ("sm_80", 0)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_pack_any_round_trips_through_the_reference_unpacker(arch, tile_k, dtype):
    g = torch.Generator().manual_seed(3)
    w = torch.randn(72, 200, generator=g)
    w = torch.from_numpy(np.where(packing.mask_2to4(w.numpy()), w.numpy(), 0)).to(dtype)
    w[0, :8] = 0  # all-zero groups
    w[1, :4] = torch.tensor([0, 0, 0, 2.0])  # one nonzero, last position
    cfg = KernelConfig(arch, "fp16", True, (128, 128, tile_k or 64), (1, 2) if arch == "sm_90a" else (1, 1))
    values, meta = reference.pack_any(w, cfg)
    dense = reference.unpack(values, meta, cfg)
    assert torch.equal(dense[:72, :200], w) and not dense[:, 200:].any()
    if dtype == torch.float16:  # the same bits as the numpy reference packer
        p = packing.pack(w.numpy(), arch, tile_k or 128)
        assert np.array_equal(values.view(torch.int16).numpy().view(np.uint16), p.values)
        assert np.array_equal(meta.numpy(), p.meta)


@pytest.mark.parametrize("act, act2, res, want", [
    ("relu", "none", False, ("relu", False, [("act", "none")])),
    ("none", "relu", True, ("relu", True, [])),
    ("relu", "relu", True, ("relu", False, [("add", None), ("act", "relu")])),
    ("gelu_tanh", "none", False, ("identity", False, [("act", "gelu_tanh"), ("act", "none")])),
])
def test_epilogue_split_between_kernel_and_pytorch(act, act2, res, want):
    p = GemmPlan("linear", None, None, None, object() if res else None, act, act2)
    assert epilogue(p) == want


def test_support_narrows_the_declared_table():
    backend = sparsec.registry().get("backend", "cutlass")
    backend = backend() if isinstance(backend, type) else backend
    torch.manual_seed(0)
    mod = _prepared(Net().eval(), torch.randn(1, 3, 8, 8),
                    "canonicalize,fold-bn,dce,fuse-epilogue,dce,to-dtype{dtype=fp16}")
    verdicts = {n.name: backend.support(n) for n in mod.graph.nodes if n.op == "call_function"}
    text = {k: str(v) for k, v in verdicts.items()}
    assert any(t.startswith("yes (cutlass: depthwise conv, dense direct kernel") for t in text.values())
    assert any(t.startswith("no: kxk conv: stays cuDNN (SPARSEC_CUTLASS_KXK=none") for t in text.values())  # default
    # c1 (+ folded BN + ReLU) stays cuDNN, its epilogue inside the cuDNN call; c3 (hardswish) has no fused cuDNN route
    assert text["fused_conv2d_1"].endswith("its bias + ReLU run inside the cuDNN call (SPARSEC_CUDNN_FUSED=0: separately)")
    assert "cuDNN call" not in text["fused_conv2d_4"], text
    from sparsec import knobs

    with knobs.scope(cutlass_kxk="sparse"):
        assert any(str(backend.support(n)).startswith("no: dense kxk conv: stays cuDNN")
                   for n in mod.graph.nodes if n.op == "call_function")
    with knobs.scope(cutlass_kxk="all"):
        assert any(str(backend.support(n)).startswith("yes (cutlass: implicit-GEMM 3x3 conv")
                   for n in mod.graph.nodes if n.op == "call_function")
    stem = next(n for n in mod.graph.nodes if n.op == "call_function" and "conv" in str(n.target)
                and n.args[1].meta["val"].shape[1] == 3)
    assert str(backend.support(stem)).startswith("yes (cutlass: direct conv of 3 input channels (the stem)")
    assert isinstance(plan(stem), StemPlan)


@pytest.mark.parametrize("target, arch", [("h100-sparse", "sm_90a"), ("a100-sparse", "sm_80")])
def test_compile_sparse_target_on_cpu_writes_the_artifact(tmp_path, target, arch):
    torch.manual_seed(0)
    model = _randomise_bn(Net()).eval()
    x = torch.randn(2, 3, 8, 8)
    out = tmp_path / "net.sparsec"
    backend = sparsec.registry().get("backend", "cutlass")()
    pipeline = backend.pipeline(sparsec.registry().get("target", target))
    assert "sparsify-2-4," in pipeline and pipeline.endswith(",partition")
    # cost-model=shape: every eligible layer 2:4, and SPARSEC_CUTLASS_KXK=sparse: the 2:4 3x3 convs take the
    # im2col path (by default every kxk conv stays cuDNN)
    from sparsec import knobs

    with knobs.scope(cutlass_kxk="sparse"):
        res = sparsec.compile(model, (x,), target=target, output=out,
                              pipeline=pipeline.replace("sparsify-2-4,", "sparsify-2-4{cost-model=shape},"))
    manifest = json.loads((out / "manifest.json").read_text())
    payload = manifest["payload"]
    assert payload["backend"] == "cutlass" and payload["arch"] == arch and payload["build"] == "load"
    assert set(payload["files"]) == {"kernels.json", "tuning.json"}
    kernels = json.loads((out / "kernels.json").read_text())["kernels"]
    assert set(kernels) == set(payload["kernels"]) and kernels
    assert all("-gencode" in " ".join(k["flags"]) and "extern \"C\"" in k["source"] for k in kernels.values())
    assert json.loads((out / "tuning.json").read_text())["schema"] == "sparsec.tuning/1"
    layers = payload["layers"]
    assert {r["kind"] for r in layers} >= {"conv-im2col", "conv1x1", "linear", "depthwise"}
    # the lowered module runs on the CPU through the reference kernels, and matches the masked fp16 graph
    lowered = res.module
    stems = _count(lowered, torch.ops.sparsec.stem_conv.default)
    assert stems == 1 and _count(lowered, GEMM24) + _count(lowered, DENSE) + _count(lowered, DW) + stems == len(layers)
    masked = sparsec.trace(model, (x,))
    pm = PassManager.parse(res.pipeline.replace(",partition", ""))
    list(pm.run(masked, PassContext(target=sparsec.registry().get("target", target))))
    xs = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    assert _rel(masked(xs), lowered(xs)) < 1e-2


def test_loading_a_cutlass_artifact_without_a_gpu_names_both_arches(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "net.sparsec"
    sparsec.compile(Net().eval(), (torch.randn(1, 3, 8, 8),), target="h100", output=out)
    with pytest.raises(TargetError, match="built for|for sm_90a") as e:
        sparsec.load(out)
    assert "sm_90a" in str(e.value) and "no CUDA GPU" in str(e.value)


def test_loading_on_another_arch_names_both(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 6))
    out = tmp_path / "net.sparsec"
    sparsec.compile(Net().eval(), (torch.randn(1, 3, 8, 8),), target="h100-sparse", output=out)
    with pytest.raises(TargetError, match="built for sm_90a and this GPU is sm_86"):
        sparsec.load(out)


def test_plan_reasons_for_what_stays_in_pytorch():
    g = torch.fx.Graph()
    assert "not lowered" in plan(g.placeholder("x")).reason


@pytest.mark.parametrize("target, knob, pdl", [("h100", None, True), ("h100", False, False), ("a100", None, False)])
def test_pdl_knob_names_the_sm90_gemms_pdl_variants(tmp_path, target, knob, pdl):
    """By default (SPARSEC_CUTLASS_PDL=1) the h100 GEMMs lower to their ..._pdl kernels (launched with
    programmatic dependent launch), and with 0 to the plain ones; sm_80 has no such launch, so a100's stay as
    they are. The lowered graph is the same either way."""
    from sparsec import knobs

    model = _randomise_bn(Net()).eval()
    with knobs.scope(**({} if knob is None else {"cutlass_pdl": knob})):
        res = sparsec.compile(model, (torch.randn(2, 3, 8, 8),), target=target, output=tmp_path / "n.sparsec")
    payload = json.loads((res.artifact / "manifest.json").read_text())["payload"]
    gemms = [r["config"] for r in payload["layers"] if r["kind"] in ("conv1x1", "linear")]
    assert gemms and all(c.endswith("_pdl") == pdl for c in gemms)
    assert all(k.endswith("_pdl") == pdl for k in payload["kernels"] if k.startswith("sm"))
