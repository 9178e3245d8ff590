"""``canonicalize`` and ``dce``: structure (FileCheck), exact numerics, idempotence, safety."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from torch import fx, nn

import sparsec
from sparsec.ir import Module, print_module
from sparsec.passes.base import is_allowed_type
from sparsec.registry import registry

from .conftest import run, run_twice_is_once

aten = torch.ops.aten


class Messy(nn.Module):
    """Every canonicalize rule once: eval dropouts, detach, clone, relu_, add_."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.drop, self.fdrop, self.adrop = nn.Dropout(0.3), nn.Dropout2d(0.2), nn.AlphaDropout(0.1)
        self.lin = nn.Linear(4, 5)

    def forward(self, x):
        y = torch.relu_(self.conv(x))
        y = self.fdrop(self.drop(y).detach().clone())
        z = self.lin(self.adrop(y.mean((2, 3))))
        z += 1
        return z


class ViewThenMutate(nn.Module):
    """``v`` views ``y``'s storage and is read after ``y.relu_()``: the relu_ must stay."""

    def forward(self, x):
        y = x * 2
        v = y.view(-1)
        y.relu_()
        return y + 1, v.sum()


class Copies(nn.Module):
    """Clones that must stay: a mutated copy, a returned copy of an input, a format change."""

    def forward(self, x):
        y = x.clone()
        v = y.view(-1)
        y.relu_()
        return v * 2, x.clone(), torch.ops.aten.alias(x) + 1, x.clone(memory_format=torch.channels_last) + 1


def _trace(model, *xs):
    return sparsec.trace(model.eval(), xs)


def _hand_built(build, *inputs, owner: nn.Module | None = None) -> Module:
    """An ir.Module from a graph written by hand: ``build(graph, *placeholders)`` returns the output."""
    g = fx.Graph()
    phs = [g.placeholder(f"x{i}") for i in range(len(inputs))]
    g.output(build(g, *phs))
    return Module(fx.GraphModule(owner or nn.Module(), g), inputs, name="hand")


# -- canonicalize -------------------------------------------------------------------


def test_canonicalize_removes_dropout_identity_and_inplace(filecheck):
    torch.manual_seed(0)
    model, x = Messy().eval(), torch.randn(2, 3, 8, 8)
    mod = _trace(model, x)
    (rec,) = run(mod, "canonicalize")
    assert rec.modified
    assert {k: rec.stats[k] for k in ("dropout", "identity", "clone", "inplace")} == {
        "dropout": 3, "identity": 1, "clone": 1, "inplace": 2,
    }
    filecheck(print_module(mod), r"""
        CHECK-LABEL: module @messy(%x: f32[2,3,8,8])
        CHECK-NOT: dropout
        CHECK: [[C:%[a-z_0-9]+]]: f32[2,4,8,8] = aten.conv2d(%x, @conv.weight, @conv.bias, padding=[1,1])
        CHECK-NEXT: [[R:%[a-z_0-9]+]]: f32[2,4,8,8] = aten.relu([[C]])
        CHECK-NEXT: [[M:%[a-z_0-9]+]]: f32[2,4] = aten.mean.dim([[R]], dim=[2,3])
        CHECK-NEXT: [[L:%[a-z_0-9]+]]: f32[2,5] = aten.linear([[M]], @lin.weight, @lin.bias)
        CHECK-NEXT: [[A:%[a-z_0-9]+]]: f32[2,5] = aten.add.Tensor([[L]], other=1)
        CHECK-NEXT: return {{\[}}[[A]]{{\]}}
    """)
    text = print_module(mod)
    for gone in ("dropout", "detach", "clone", "relu_", "add_"):
        assert gone not in text
    x2 = torch.randn(2, 3, 8, 8)
    assert torch.equal(mod(x2), model(x2))


def test_canonicalize_is_idempotent():
    mod = _trace(Messy(), torch.randn(2, 3, 8, 8))
    run_twice_is_once(mod, "canonicalize")


def test_inplace_kept_when_mutated_tensor_is_read_afterwards():
    # a = -x; b = relu_(a); c = a + b. `a` is read after the relu_ mutated it,
    # so relu_ -> relu would change c from 2*relu(-x) to -x + relu(-x).
    def build(g, x):
        a = g.call_function(aten.neg.default, (x,))
        b = g.call_function(aten.relu_.default, (a,))
        return g.call_function(aten.add.Tensor, (a, b))

    mod = _hand_built(build, torch.randn(4, 5))
    ref = copy.deepcopy(mod.gm)
    (rec,) = run(mod, "canonicalize")
    assert not rec.modified and rec.stats["inplace"] == 0 and rec.stats["inplace_skipped"] == 1
    assert "aten.relu_(" in print_module(mod)
    x = torch.randn(4, 5)
    assert torch.equal(mod(x.clone()), ref(x.clone()))
    assert torch.equal(mod(x.clone()), 2 * torch.relu(-x))


def test_inplace_kept_when_a_view_is_read_afterwards(filecheck):
    model = ViewThenMutate()
    mod = _trace(model, torch.randn(3, 4))
    (rec,) = run(mod, "canonicalize")
    assert rec.stats["inplace_skipped"] == 1 and rec.stats["inplace"] == 0
    filecheck(print_module(mod), """
        CHECK-LABEL: module @viewthenmutate(
        CHECK: [[Y:%[a-z_0-9]+]]: f32[3,4] = aten.mul.Tensor(%x, other=2)
        CHECK-NEXT: [[V:%[a-z_0-9]+]]: f32[12] = aten.view([[Y]], size=[-1])
        CHECK-NEXT: aten.relu_([[Y]])
        CHECK: aten.sum([[V]])
    """)
    x = torch.randn(3, 4)
    for got, want in zip(mod(x), model(x)):
        assert torch.equal(got, want)


def test_inplace_on_an_input_or_a_parameter_is_kept():
    # relu_ on a graph input: the caller sees x change, so it must stay in place.
    def build(g, x):
        return g.call_function(aten.mul.Tensor, (g.call_function(aten.relu_.default, (x,)), 2))

    mod = _hand_built(build, torch.randn(6))
    (rec,) = run(mod, "canonicalize")
    assert rec.stats["inplace_skipped"] == 1 and not rec.modified
    x = torch.randn(6)
    seen = x.clone()
    out = mod(x)
    assert torch.equal(x, torch.relu(seen)) and torch.equal(out, 2 * torch.relu(seen))

    # BatchNorm traced in training mode bumps the num_batches_tracked buffer with add_.
    bn = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)).train()
    mod = sparsec.trace(bn, torch.randn(2, 3, 4, 4))
    (rec,) = run(mod, "canonicalize")
    assert rec.stats["inplace_skipped"] == 1
    assert "aten.add_.Tensor(@1.num_batches_tracked" in print_module(mod)


def test_canonicalize_keeps_clones_that_matter(filecheck):
    model = Copies()
    mod = _trace(model, torch.randn(2, 3, 4, 4))
    (rec,) = run(mod, "canonicalize")
    assert rec.stats["identity"] == 1  # only the alias goes
    assert rec.stats["clone"] == 0 and rec.stats["clone_skipped"] == 2
    filecheck(print_module(mod), """
        CHECK-LABEL: module @copies(
        CHECK: [[Y:%[a-z_0-9]+]]: f32[2,3,4,4] = aten.clone(%x)
        CHECK: aten.relu_([[Y]])
        CHECK: aten.clone(%x)
        CHECK-NOT: aten.alias
        CHECK: aten.add.Tensor(%x, other=1)
        CHECK: aten.clone(%x, memory_format=channels_last)
    """)
    x = torch.randn(2, 3, 4, 4)
    seen = x.clone()
    outs = mod(x)
    assert torch.equal(x, seen), "a removed clone let relu_ mutate the caller's input"
    assert outs[1].data_ptr() != x.data_ptr(), "a returned clone of the input must stay a copy"
    for got, want in zip(outs, model(x)):
        assert torch.equal(got, want)
    assert outs[3].is_contiguous(memory_format=torch.channels_last)


# -- dce --------------------------------------------------------------------------


class DeadBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.side = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(8, 8)

    def forward(self, x):
        _unused = self.side(x).sum()  # noqa: F841 - traced, then dead
        return torch.relu(self.bn(self.conv(x)))


def test_dce_removes_dead_nodes_and_unused_tensors(filecheck):
    torch.manual_seed(1)
    model, x = DeadBranch().eval(), torch.randn(2, 3, 8, 8)
    mod = _trace(model, x)
    (rec,) = run(mod, "dce")
    # linear, sum, and the get_attrs of side.weight, side.bias, bn.num_batches_tracked
    assert rec.modified and rec.stats == {"nodes_removed": 5, "params_removed": 3}
    filecheck(print_module(mod), """
        CHECK-LABEL: module @deadbranch(
        CHECK-NOT: num_batches_tracked
        CHECK-NOT: side
        CHECK: aten.conv2d(%x
        CHECK-NOT: aten.linear
        CHECK: return
    """)
    assert not hasattr(mod.gm, "side"), "the emptied submodule should be gone"
    assert not hasattr(mod.gm.bn, "num_batches_tracked") and hasattr(mod.gm.bn, "running_var")
    assert any(n.target == "_guards_fn" for n in mod.graph.nodes), "export's input guard must stay"
    x2 = torch.randn(2, 3, 8, 8)
    assert torch.equal(mod(x2), model(x2))
    run_twice_is_once(mod, "dce")


def test_dce_keeps_impure_nodes():
    # Training-mode BN: the add_ on num_batches_tracked has no readers but mutates a buffer.
    mod = sparsec.trace(nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)).train(), torch.randn(2, 3, 4, 4))
    (rec,) = run(mod, "dce")
    assert rec.stats["params_removed"] == 0
    assert "aten.add_.Tensor(@1.num_batches_tracked" in print_module(mod)

    # A dead in-place result whose operand is live: b = relu_(a) is unread, but a is returned.
    def build(g, x):
        a = g.call_function(aten.neg.default, (x,))
        g.call_function(aten.relu_.default, (a,))
        return a

    mod = _hand_built(build, torch.randn(5))
    (rec,) = run(mod, "dce")
    assert not rec.modified
    x = torch.randn(5)
    assert torch.equal(mod(x), torch.relu(-x))


def test_dce_keeps_a_tensor_another_node_still_reads():
    owner = nn.Module()
    owner.w = nn.Parameter(torch.randn(5))

    def build(g, x):
        g.get_attr("w")  # dead
        return g.call_function(aten.mul.Tensor, (x, g.get_attr("w")))

    mod = _hand_built(build, torch.randn(5), owner=owner)
    (rec,) = run(mod, "dce")
    assert rec.stats == {"nodes_removed": 1, "params_removed": 0}
    assert isinstance(mod.gm.w, nn.Parameter)
    x = torch.randn(5)
    assert torch.equal(mod(x), x * owner.w)


def test_cleanup_pipeline_is_exact_on_random_data():
    torch.manual_seed(2)
    model = Messy().eval()
    mod = _trace(model, torch.randn(2, 3, 8, 8))
    run(mod, "cleanup")
    for _ in range(3):
        x = torch.randn(2, 3, 8, 8)
        assert torch.equal(mod(x), model(x))


# -- declarations -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["canonicalize", "dce", "fold-bn", "to-dtype", "to-channels-last"])
def test_pass_declarations(name):
    cls = registry().get("pass", name)
    assert cls.name == name
    assert cls.summary and "Example: sparsec opt" in (cls.__doc__ or "")
    assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen
    assert all(is_allowed_type(tp) for tp in cls.option_types().values())
    p = cls()
    assert str(sparsec.PassManager.parse(str(p))) == str(p)


def test_filecheck_helper_rejects_a_wrong_check(filecheck):
    text = "%a: f32[2] = aten.relu(%x)\n%b: f32[2] = aten.neg(%a)\n"
    filecheck(text, "CHECK: [[A:%[a-z_0-9]+]]: f32[2] = aten.relu\nCHECK-NEXT: aten.neg([[A]])\n")
    with pytest.raises(pytest.fail.Exception, match="FileCheck failed"):
        filecheck(text, "CHECK: aten.relu\nCHECK-NOT: aten.neg\n")


# -- property: random programs with views, copies and in-place ops -------------------------

_UNARY = {
    "neg": aten.neg.default, "relu_": aten.relu_.default, "clone": aten.clone.default,
    "detach": aten.detach.default, "alias": aten.alias.default, "sigmoid_": aten.sigmoid_.default,
}
_BINARY = {"add": aten.add.Tensor, "add_": aten.add_.Tensor, "mul_": aten.mul_.Tensor}
_STEP = st.tuples(st.sampled_from([*_UNARY, *_BINARY, "view", "dropout"]), st.integers(0, 99), st.integers(0, 99))


def _program(steps, n_out):
    def build(g, x):
        vals = [x]
        for op, i, j in steps:
            a, b = vals[i % len(vals)], vals[j % len(vals)]
            if op in _UNARY:
                vals.append(g.call_function(_UNARY[op], (a,)))
            elif op in _BINARY:
                vals.append(g.call_function(_BINARY[op], (a, b)))
            elif op == "view":
                vals.append(g.call_function(aten.view.default, (a, [6])))
            else:
                vals.append(g.call_function(aten.dropout.default, (a, 0.5, False)))
        return tuple(vals[-1 - k % len(vals)] for k in range(n_out))

    return build


@given(steps=st.lists(_STEP, min_size=1, max_size=8), n_out=st.integers(1, 3))
# add_(relu_(c), c) reads c through its second operand after relu_ mutated it
@example(steps=[("neg", 0, 0), ("relu_", 1, 0), ("add_", 2, 1)], n_out=1)
# relu_(b) looks unsafe only because of a dead reader of b, which dce removes
@example(steps=[("neg", 0, 0), ("relu_", 1, 0), ("neg", 1, 0), ("neg", 0, 0)], n_out=1)
def test_cleanup_preserves_semantics_of_random_aliasing_programs(steps, n_out):
    """Outputs and the input's final state match the untouched graph; a second run changes nothing."""
    x = torch.randn(6)
    mod = _hand_built(_program(steps, n_out), x)
    ref = copy.deepcopy(mod.gm)
    run(mod, "canonicalize,dce")
    once = print_module(mod)
    assert [r.modified for r in run(mod, "canonicalize,dce")] == [False, False]
    assert print_module(mod) == once
    x = torch.randn(6)
    x_ref, x_got = x.clone(), x.clone()
    want, got = ref(x_ref), mod(x_got)
    assert torch.equal(x_got, x_ref), "the input's final state changed"
    for g_, w_ in zip(got, want):
        assert torch.equal(g_, w_)
