"""cpu-tvm: lowering to Relax, the llvm build, the artifact, and the errors of the TVM path."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import sparsec
from sparsec.errors import ArtifactError, TargetError

from .conftest import live_bn, rel_err


def _compile(net, x, tmp_path, *, target="cpu-tvm", pipeline=None, name="m"):
    return sparsec.compile(net, (x,), target=target, pipeline=pipeline, output=str(tmp_path / f"{name}.sparsec"))


def test_small_net_matches_eager(tvm, small_net, tmp_path):
    x = torch.randn(2, 3, 32, 32)
    res = _compile(small_net, x, tmp_path)
    files = sorted(p.name for p in res.artifact.iterdir())
    assert files == ["manifest.json", "model.so", "params.pt"]
    manifest = json.loads((res.artifact / "manifest.json").read_text())
    tvm_sec = manifest["payload"]["tvm"]
    assert manifest["payload"]["backend"] == "tvm" and manifest["payload"]["files"] == ["model.so", "params.pt"]
    assert tvm_sec["target"] == {"kind": "llvm"} and tvm_sec["device"] == "cpu" and tvm_sec["fatbin"] is None
    assert tvm_sec["version"] == tvm.__version__
    assert len(tvm_sec["param_names"]) == 10  # 5 folded convs (weight+bias), BN gone: fold-bn ran
    assert (res.artifact / "model.so").stat().st_size < 2_000_000  # the weights live in params.pt
    model = sparsec.load(res.artifact)
    for _ in range(2):
        x2 = torch.randn(2, 3, 32, 32)
        y = model(x2)
        ref = small_net(x2)
        assert y.shape == ref.shape and y.dtype == ref.dtype
        assert rel_err(y, ref) < 1e-4


def test_pruned_and_24_variant_runs_masked_dense(tvm, small_net, tmp_path):
    """prune-channels then sparsify-2-4 on cpu-tvm: the 2:4 weights run as ordinary (masked) dense weights."""
    x = torch.randn(2, 3, 32, 32)
    pipeline = ("canonicalize,fold-bn,dce,prune-channels{ratio=0.25,round-to=4},"
                "sparsify-2-4{cost-model=off},dce")
    mod = sparsec.trace(small_net, (x,))
    res = sparsec.compile(mod, target="cpu-tvm", pipeline=pipeline, output=str(tmp_path / "p24.sparsec"))
    from sparsec.ir import meta as M

    sparse = [n for n in res.module.graph.nodes if n.op == "get_attr" and M.get(n, M.Sparsity24) is not None]
    assert sparse, "sparsify-2-4 marked no weight: the variant would not be 2:4"
    for n in sparse:
        w = res.module.get_param(n.target)
        groups = (w.permute(0, 2, 3, 1) if w.dim() == 4 else w).reshape(-1, 4)
        assert int((groups != 0).sum(1).max()) <= 2  # really 2:4
    model = sparsec.load(res.artifact)
    for _ in range(2):
        x2 = torch.randn(2, 3, 32, 32)
        assert rel_err(model(x2), res.module(x2)) < 1e-4  # the transformed (pruned, masked) graph is the reference


def test_fused_ops_decompose_for_tvm(tvm, small_net, tmp_path):
    """The fusion pipeline's sparsec:: ops decompose to their ATen references on the TVM path."""
    x = torch.randn(2, 3, 32, 32)
    res = _compile(small_net, x, tmp_path, pipeline="fusion")
    fused = [n for n in res.module.graph.nodes if n.op == "call_function" and "sparsec" in str(n.target)]
    assert fused, "the fusion pipeline fused nothing: the test would prove nothing"
    model = sparsec.load(res.artifact)
    x2 = torch.randn(2, 3, 32, 32)
    assert rel_err(model(x2), small_net(x2)) < 1e-4


def test_unimportable_op_is_named(tvm, tmp_path):
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return torch.lgamma(self.conv(x).abs() + 1)

    with pytest.raises(TargetError, match=r"TVM's Relax importer cannot take aten\.lgamma\.default") as e:
        _compile(Odd().eval(), torch.randn(1, 3, 8, 8), tmp_path)
    assert "node 'lgamma'" in e.value.where
    assert "inspect" in e.value.fix
    assert not (tmp_path / "m.sparsec").exists()


def test_tvm_missing_says_how_to_install(monkeypatch, tmp_path):
    import builtins

    real = builtins.__import__

    def no_tvm(name, *args, **kwargs):
        if name == "tvm" or name.startswith("tvm."):
            raise ImportError("No module named 'tvm'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tvm)
    net = nn.Sequential(nn.Conv2d(3, 4, 3)).eval()
    with pytest.raises(TargetError, match="needs Apache TVM, which is not installed") as e:
        _compile(net, torch.randn(1, 3, 8, 8), tmp_path)
    assert "pip install 'sparsec[tvm]'" in e.value.fix


def test_wrong_input_shape_is_a_usage_error(tvm, small_net, tmp_path):
    from sparsec.errors import UsageError

    res = _compile(small_net, torch.randn(2, 3, 32, 32), tmp_path)
    model = sparsec.load(res.artifact)
    with pytest.raises(UsageError, match="built for static shapes") as e:
        model(torch.randn(1, 3, 32, 32))
    assert "[2, 3, 32, 32]" in e.value.expected


def test_tampered_library_is_refused(tvm, small_net, tmp_path):
    res = _compile(small_net, torch.randn(2, 3, 32, 32), tmp_path)
    with open(res.artifact / "model.so", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ArtifactError, match="artifact file 'model.so' does not match its hash"):
        sparsec.load(res.artifact)


def test_kernel_op_hook_calls_a_packed_function(tvm, tmp_path):
    """The CUTLASS hook: a sparsec:: op becomes relax.call_dps_packed of a registered TVM-FFI function."""
    import tvm_ffi

    from sparsec.backends.tvm.custom_ops import KernelOp, register_kernel_op, unregister_kernel_op

    lib = torch.library.Library("sparsec_tvmtest", "FRAGMENT")  # noqa: TOR901
    lib.define("scaled(Tensor x, float alpha) -> Tensor")
    lib.impl("scaled", lambda x, alpha: x * alpha, "CompositeExplicitAutograd")
    lib._register_fake("scaled", lambda x, alpha: torch.empty_like(x))
    calls = []

    def scaled(x, alpha, out):  # destination-passing style: the VM allocates ``out``
        calls.append(alpha)
        torch.from_dlpack(out).copy_(torch.from_dlpack(x) * alpha)

    tvm_ffi.register_global_func("sparsec_tvmtest.scaled", scaled, override=True)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return torch.relu(torch.ops.sparsec_tvmtest.scaled(self.conv(x), 0.5))

    net = Net().eval()
    register_kernel_op(KernelOp("sparsec_tvmtest::scaled.default", "sparsec_tvmtest.scaled", provider="torch"))
    try:
        res = _compile(net, torch.randn(1, 3, 8, 8), tmp_path, pipeline="canonicalize,dce")
        model = sparsec.load(res.artifact)
        x = torch.randn(1, 3, 8, 8)
        assert rel_err(model(x), net(x)) < 1e-5
        assert calls == [pytest.approx(0.5)]
        from sparsec.backends.tvm.backend import TvmBackend

        node = next(n for n in res.module.graph.nodes if "scaled" in str(n.target))
        assert "packed kernel sparsec_tvmtest.scaled" in str(TvmBackend().support(node))
    finally:
        unregister_kernel_op("sparsec_tvmtest::scaled.default")
        lib._destroy()


def test_inspect_support_column(tvm):
    """inspect --target cpu-tvm/h100-tvm asks the tvm backend: every op of a CNN is taken, lgamma is not."""
    from sparsec.cli import inspect_view

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return torch.lgamma(torch.relu(self.conv(x)) + 1)

    mod = sparsec.trace(Net().eval(), (torch.randn(1, 3, 8, 8),))
    for target in ("cpu-tvm", "h100-tvm"):
        report = inspect_view.build(mod, backend=inspect_view.backend_for(target), target=target)
        verdict = {r.name: (r.supported, r.reason) for r in report.rows if r.supported is not None}
        conv = next(v for k, v in verdict.items() if k.startswith("conv"))
        assert conv[0] is True and ("tvm:" if target == "cpu-tvm" else "cudnn: packed sparsec.conv2d") in conv[1]
        assert verdict["lgamma"][0] is False and "no Relax converter" in verdict["lgamma"][1]
        assert report.backend == "tvm" and not report.declared


def test_cutlass_gemm_ops_run_as_packed_kernels(tvm, tmp_path):
    """A graph after the CUTLASS lowering (sparsec::gemm24 / gemm_dense) runs in TVM through call_dps_packed.

    On the CPU the packed functions reach the ops' reference kernels; on a GPU the same calls reach
    the CUTLASS kernels. A kxk conv's NHWC im2col (aten.unfold) imports as strided slices.
    """
    from sparsec.backends.cutlass.lowering import lower_reference

    class Pointwise(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.fc = nn.Conv2d(16, 32, 1), nn.Conv2d(32, 16, 1), nn.Linear(16, 8)

        def forward(self, x):
            return self.fc(torch.relu(self.b(torch.relu(self.a(x)))).mean((2, 3)))

    x = torch.randn(2, 16, 8, 8)
    mod = sparsec.trace(Pointwise().eval(), (x,))
    sparsec.PassManager.parse("canonicalize,sparsify-2-4{cost-model=off},dce").run(mod)
    lower_reference(mod)
    mod.recompile()
    kinds = sorted(str(n.target) for n in mod.graph.nodes if str(n.target).startswith("sparsec."))
    assert "sparsec.gemm24.default" in kinds and len(kinds) == 3, kinds
    res = sparsec.compile(mod, target="cpu-tvm", pipeline="dce", output=str(tmp_path / "g.sparsec"))
    manifest = json.loads((res.artifact / "manifest.json").read_text())
    assert manifest["payload"]["tvm"]["kernel_providers"] == ["sparsec.backends.tvm.cutlass_kernels"]
    model = sparsec.load(res.artifact)
    for _ in range(2):
        x2 = torch.randn(2, 16, 8, 8)
        assert rel_err(model(x2), mod(x2)) < 1e-5

    conv = sparsec.trace(nn.Sequential(nn.Conv2d(16, 16, 3, stride=2, padding=1)).eval(), (x,))
    ref = conv.clone()
    assert [r["kind"] for r in lower_reference(conv)] == ["conv-im2col"]
    conv.recompile()
    assert any(n.target is torch.ops.aten.unfold.default for n in conv.graph.nodes)
    model = sparsec.load(sparsec.compile(conv, target="cpu-tvm", pipeline="dce", output=str(tmp_path / "k.sparsec")).artifact)
    x2 = torch.randn(2, 16, 8, 8)
    y = model(x2)
    assert y.shape == (2, 16, 4, 4) and rel_err(y, ref(x2)) < 1e-5


def _gemmnet_for(target: str):
    from sparsec.api import resolve_backend, resolve_target
    from sparsec.passes.manager import PassContext, PassManager

    from .prebuilt import SHAPE, make_net

    tgt = resolve_target(target)
    mod = sparsec.trace(make_net(), (torch.randn(*SHAPE),))
    PassManager.parse(resolve_backend(tgt).pipeline(tgt)).run(mod, PassContext(target=tgt))
    return mod


def test_inspect_shows_cutlass_cudnn_and_tvm_nodes(tvm):
    """inspect --target h100-tvm: which nodes run as CUTLASS kernels, which as cuDNN, which TVM generates."""
    from sparsec.cli import inspect_view

    mod = _gemmnet_for("h100-tvm")
    for target, cutlass in (("h100-tvm", True), ("cpu-tvm", False)):
        report = inspect_view.build(mod, backend=inspect_view.backend_for(target), target=target)
        verdict = {r.name: r.reason for r in report.rows if r.supported}
        route = {name: reason.removeprefix("yes (").split(":")[0] for name, reason in verdict.items()}
        fused = sorted(n for n in verdict if n.startswith("fused_conv2d"))
        assert len(fused) == 5 and "linear" in verdict and "mean" in verdict
        if cutlass:  # fused_conv2d: stem, expand, kxk, project, dw
            assert [route[n] for n in fused] == ["cudnn", "cutlass", "cudnn", "cutlass", "cudnn"]
            assert route["linear"] == "cutlass" and route["mean"] == "tvm"
            assert "kxk conv: stays cuDNN" in verdict[fused[2]] and "depthwise" in verdict[fused[4]]
        else:
            assert set(route.values()) == {"tvm"}


def test_packed_gemms_and_convs_run_on_the_cpu(tvm, tmp_path):
    """The GPU targets' routes in an llvm build: CUTLASS ops (CPU reference kernels, 2:4 and dense, im2col)
    and convs as packed torch convs (NCHW and NHWC), called by the TVM VM on CPU tensors, match the graph."""
    from sparsec.backends.cutlass.lowering import lower_reference
    from sparsec.backends.tvm import custom_ops
    from sparsec.backends.tvm.lowering import build, prepare
    from sparsec.backends.tvm.runtime import TvmModule
    from sparsec.registry import registry

    from .prebuilt import SHAPE, make_net

    mod = sparsec.trace(make_net(), (torch.randn(*SHAPE),))
    sparsec.PassManager.parse("canonicalize,fold-bn,dce,sparsify-2-4{cost-model=off},fuse-epilogue,dce").run(mod)
    ref = mod.clone()
    kinds = sorted((r["kind"], r["sparse"]) for r in lower_reference(mod))
    assert ("conv-im2col", True) in kinds and ("conv1x1", True) in kinds and ("linear", True) in kinds
    prepared = prepare(mod, packed_convs=True)
    lib, _ = build(prepared, registry().get("target", "cpu-tvm"), tmp_path)
    data = lib.read_bytes()
    assert all(name in data for name in (b"sparsec.gemm24", b"sparsec.conv2d_nhwc"))
    model = TvmModule(lib, prepared.params, device="cpu", inputs=(), single_output=True,
                      providers=("sparsec.backends.tvm.cutlass_kernels", custom_ops.CONV_PROVIDER))
    for _ in range(2):
        x = torch.randn(*SHAPE)
        y, want = model(x), ref(x)
        assert y.shape == want.shape == (SHAPE[0], 16) and y.dtype == want.dtype
        assert rel_err(y, want) < 1e-5


class _Pools(nn.Module):
    def forward(self, x):
        return torch.cat([nn.functional.adaptive_avg_pool2d(x, 1).flatten(1), x.mean(dim=(2, 3)),
                          nn.functional.avg_pool2d(x, 7).flatten(1)], 1)


def test_16_bit_pools_and_means_accumulate_in_fp32(tvm, tmp_path):
    """fp16 activations of a few thousand (ResNet-50's last block): a 49-value sum overflows fp16 (65504)."""
    x = (torch.rand(2, 8, 7, 7) * 1000 + 2500).half()
    res = _compile(_Pools(), x, tmp_path, pipeline="canonicalize,dce,to-dtype{dtype=fp16}")
    y = sparsec.load(res.artifact)(x)
    ref = _Pools()(x.float())
    assert torch.isfinite(y).all()
    assert rel_err(y.float(), ref) < 1e-3


def test_gpu_targets_take_the_plain_gemm_launches():
    """PDL launches (the h100 targets' default) have not been run through TVM's VM: h100-tvm's GEMMs are the
    plain kernels, whatever SPARSEC_CUTLASS_PDL says. Needs no TVM: the CUTLASS half of the lowering."""
    from sparsec.api import resolve_backend, resolve_target
    from sparsec.backends.tvm.backend import lower_gemms
    from sparsec.passes.manager import PassContext, PassManager

    net = torch.nn.Sequential(torch.nn.Conv2d(64, 128, 1), torch.nn.ReLU(), torch.nn.Conv2d(128, 64, 1)).eval()
    tgt = resolve_target("h100-tvm")
    mod = sparsec.trace(net, (torch.randn(2, 64, 8, 8),))
    list(PassManager.parse(resolve_backend(tgt).pipeline(tgt)).run(mod, PassContext(target=tgt)))
    configs = lower_gemms(mod, tgt).section["configs"]
    assert configs and not any(c.endswith("_pdl") for c in configs)
