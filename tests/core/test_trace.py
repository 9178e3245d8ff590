"""Tracing: both tracers give one IR, dynamic batch, and clear errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsec
from sparsec.errors import TraceError, UsageError
from sparsec.ir.printer import print_module

from .nets import small_net


def test_export_and_symbolic_tracers_agree() -> None:
    model, x = small_net(), torch.randn(2, 3, 8, 8)
    a = sparsec.trace(model, x, tracer="export")
    b = sparsec.trace(model, x, tracer="symbolic")
    assert print_module(a) == print_module(b)
    y = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        ref = model(y)
        torch.testing.assert_close(a(y), ref, rtol=0, atol=0)
        torch.testing.assert_close(b(y), ref, rtol=0, atol=0)


def test_name_defaults_to_the_class_name() -> None:
    x = torch.randn(1, 3, 8, 8)
    assert sparsec.trace(small_net(), x).name == "smallnet"
    assert sparsec.trace(small_net(), x, name="mine").name == "mine"


@pytest.mark.parametrize("tracer", ["export", "symbolic"])
def test_dynamic_batch(tracer: str) -> None:
    model = small_net()
    mod = sparsec.trace(model, torch.randn(1, 3, 8, 8), tracer=tracer, dynamic_batch=True)
    x = mod.placeholders()[0]
    assert isinstance(x.meta["val"].shape[0], torch.SymInt)
    assert print_module(mod).startswith("module @smallnet(%x: f32[s")
    assert mod.example_inputs[0].shape == (2, 3, 8, 8)  # export would specialise batch 1
    mod.verify()
    for batch in (1, 7):
        inp = torch.randn(batch, 3, 8, 8)
        with torch.no_grad():
            out = mod(inp)
            ref = model(inp)
        assert out.shape == (batch, 10)
        torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    assert mod.export() is not None  # re-export keeps the dynamic dim


def test_static_batch_is_concrete() -> None:
    mod = sparsec.trace(small_net(), torch.randn(3, 3, 8, 8))
    assert mod.placeholders()[0].meta["val"].shape[0] == 3
    assert print_module(mod).startswith("module @smallnet(%x: f32[3,3,8,8])")


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:
            return self.fc(x)
        return x


@pytest.mark.parametrize("tracer, how", [("export", "torch.export"), ("symbolic", "torch.fx.symbolic_trace")])
def test_data_dependent_control_flow(tracer: str, how: str) -> None:
    with pytest.raises(TraceError, match="control flow depends on tensor values") as info:
        sparsec.trace(DataDependent(), torch.randn(2, 4), tracer=tracer)
    msg = str(info.value)
    assert msg.startswith(f"the model is not traceable with {how}: its control flow depends on tensor values")
    assert "torch.cond" in msg and "actual:" in msg


def test_unknown_tracer() -> None:
    with pytest.raises(UsageError, match="unknown tracer 'jit'") as info:
        sparsec.trace(small_net(), torch.randn(1, 3, 8, 8), tracer="jit")
    assert "use one of: export, symbolic" in str(info.value)


def test_not_a_module() -> None:
    with pytest.raises(TraceError, match="expected a torch.nn.Module to trace, got function"):
        sparsec.trace(lambda x: x, torch.randn(1))


def test_other_trace_failures_are_trace_errors() -> None:
    class WrongShape(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(5, 2)

        def forward(self, x):
            return self.fc(x)

    with pytest.raises(TraceError, match="the model could not be traced with torch.export") as info:
        sparsec.trace(WrongShape(), torch.randn(2, 4))
    assert "--input-shape" in str(info.value)
    assert info.value.__cause__ is not None


def test_multiple_inputs_and_tuple_outputs() -> None:
    class Two(nn.Module):
        def forward(self, a, b):
            return a + b, a * b

    a, b = torch.randn(2, 3), torch.randn(2, 3)
    mod = sparsec.trace(Two(), (a, b))
    assert [p.name for p in mod.placeholders()] == ["a", "b"]
    s, p = mod(a, b)
    assert torch.equal(s, a + b) and torch.equal(p, a * b)


def test_passes_never_modify_the_traced_model() -> None:
    # fold-bn rewrites the conv weight; the user's model must keep its own.
    from sparsec.passes import PassManager

    from .nets import small_net

    model = small_net().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mod = sparsec.trace(model, torch.randn(2, 3, 8, 8))
    PassManager.parse("fold-bn,dce").run(mod)
    with torch.no_grad():
        for p in mod.gm.parameters():
            p.mul_(0)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
