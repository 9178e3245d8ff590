"""The Python API: sparsec.compile / sparsec.load / sparsec.load_model."""

from __future__ import annotations

import dataclasses
import textwrap

import pytest
import torch
from torch import nn

import sparsec
from sparsec.api import CompileResult
from sparsec.errors import RegistryError, TargetError, UsageError


def _close(a, b, rtol=1e-5):
    assert a.shape == b.shape
    assert a.dtype == b.dtype
    assert ((a - b).norm() / b.norm()).item() <= rtol


def _small() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 4)).eval()


def test_lazy_public_names():
    from sparsec import api

    assert sparsec.compile is api.compile
    assert sparsec.load is api.load
    from sparsec.ir.loader import load_model

    assert sparsec.load_model is load_model


def test_resnet18_round_trip(tmp_path):
    """resnet18 at 32x32, default cpu pipeline, to an artifact and back: matches eager."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):  # non-trivial statistics, so BN folding is really tested
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    res = sparsec.compile(model, (torch.randn(1, 3, 32, 32),), target="cpu", output=tmp_path / "r18.sparsec")
    assert isinstance(res, CompileResult)
    assert res.artifact == tmp_path / "r18.sparsec"
    assert res.target.name == "cpu"
    assert res.pipeline == "canonicalize,fold-bn,dce"
    assert [r.name for r in res.records] == ["canonicalize", "fold-bn", "dce"]
    loaded = sparsec.load(res.artifact)
    for _ in range(2):
        x = torch.randn(1, 3, 32, 32)
        with torch.no_grad():
            _close(loaded(x), model(x))


def test_compile_nn_module_needs_inputs():
    with pytest.raises(UsageError, match=r"compiling an nn.Module needs example_inputs"):
        sparsec.compile(_small())


def test_compile_rejects_other_types():
    with pytest.raises(UsageError, match=r"cannot compile a int"):
        sparsec.compile(3)


def test_compile_ir_module_leaves_callers_module(tmp_path):
    mod = sparsec.trace(_small(), (torch.randn(1, 3, 8, 8),))
    before = [n.name for n in mod.graph.nodes]
    res = sparsec.compile(mod, pipeline="fold-bn,dce")
    assert [n.name for n in mod.graph.nodes] == before
    assert not any("batch_norm" in n.name for n in res.module.graph.nodes)
    x = torch.randn(1, 3, 8, 8)
    _close(res.module(x), _small()(x))


def test_compile_spec_string(tmp_path):
    f = tmp_path / "net.py"
    f.write_text(textwrap.dedent("""
        import torch
        from torch import nn
        def build():
            torch.manual_seed(0)
            return nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2))
        def example_inputs():
            return (torch.randn(2, 6),)
    """))
    res = sparsec.compile(f"{f}:build", pipeline="canonicalize", output=tmp_path / "o.sparsec")
    assert res.module.name == "build"
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(2, 6)
    _close(sparsec.load(res.artifact)(x), ref(x))
    with pytest.raises(UsageError, match=r"example_inputs cannot go with a model spec string"):
        sparsec.compile(f"{f}:build", (x,))


def test_result_is_frozen():
    res = sparsec.compile(_small(), (torch.randn(1, 3, 8, 8),), pipeline="")
    assert res.artifact is None and res.records == ()
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.pipeline = "dce"


def test_explicit_pipeline_and_ctx_gets_target():
    from sparsec.passes.manager import PassContext

    seen = []

    class Spy:
        def before_pipeline(self, mod, pm, ctx):
            seen.append(ctx.target.name)

        def before_pass(self, *a): pass
        def after_pass(self, *a): pass
        def after_failure(self, *a): pass
        def after_pipeline(self, *a): pass

    res = sparsec.compile(_small(), (torch.randn(1, 3, 8, 8),), pipeline="dce", ctx=PassContext(instruments=[Spy()]))
    assert res.pipeline == "dce"
    assert seen == ["cpu"]


def test_ctx_with_other_target():
    from sparsec.passes.manager import PassContext
    from sparsec.registry import registry

    ctx = PassContext(target=registry().get("target", "a100"))
    with pytest.raises(UsageError, match=r"the PassContext names a different target than compile\(\)"):
        sparsec.compile(_small(), (torch.randn(1, 3, 8, 8),), pipeline="", ctx=ctx)


def test_unknown_target():
    with pytest.raises(RegistryError, match=r"unknown target 'cpux'") as e:
        sparsec.compile(_small(), (torch.randn(1, 3, 8, 8),), target="cpux")
    assert "'cpu'" in str(e.value)


def test_h100_sparse_compiles_without_a_gpu(tmp_path):
    out = tmp_path / "x.sparsec"
    res = sparsec.compile(_small(), (torch.randn(1, 3, 8, 8),), target="h100-sparse", output=out)
    assert res.target.name == "h100-sparse" and (out / "kernels.json").is_file()  # kernels build at load time


def test_load_model_reexport():
    from sparsec import api
    from sparsec.ir import loader

    assert api.load_model is loader.load_model
