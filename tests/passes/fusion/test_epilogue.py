"""``fuse-epilogue``: every rule exact against the unfused graph, structure, declines, idempotence, zoo."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsec
from sparsec.ir import print_module
from sparsec.passes.fusion import ops as F
from sparsec.passes.fusion.epilogue import RULES

from ..conftest import ints, run, run_twice_is_once
from .nets import ACTS, Chain, integer_weights

SHAPE = {"conv2d": (2, 8, 6, 6), "linear": (3, 8)}
FUSED = {"conv2d": "sparsec.fused_conv2d", "linear": "sparsec.fused_linear"}


def _traced(model: nn.Module, kind: str, dtype=torch.float32):
    model = integer_weights(model, dtype=dtype)
    return model, sparsec.trace(model, (ints(*SHAPE[kind], dtype=dtype),))


def _assert_exact(mod, ref, kind: str, dtype=torch.float32, seeds=(10, 11)):
    for seed in seeds:
        x = ints(*SHAPE[kind], dtype=dtype, gen=torch.Generator().manual_seed(seed))
        want, got = ref(x), mod(x)
        assert got.shape == want.shape
        assert got.dtype == want.dtype == dtype
        assert torch.equal(got, want), f"max abs diff {(got - want).abs().max().item()}"


CASES = [
    # (chain options, the rule that must fire)
    (dict(act="relu", residual=True, act2="relu"), "act-residual-act"),
    (dict(residual=True, act2="relu"), "residual-act"),
    (dict(act="silu", residual=True), "act-residual"),
    (dict(residual=True), "residual"),
    (dict(act="relu"), "act"),
    (dict(bias_add=True), "bias"),
    (dict(bias_add=True, act="hardswish", residual=True, act2="sigmoid"), "act-residual-act"),
]


@pytest.mark.parametrize("kind", ["conv2d", "linear"])
@pytest.mark.parametrize("opts, rule", CASES, ids=[r + ("+bias" if o.get("bias_add") else "") for o, r in CASES])
def test_each_rule_fuses_exactly(kind, opts, rule):
    model, mod = _traced(Chain(kind, **opts), kind)
    rec = run(mod, "fuse-epilogue,dce")
    assert rec[0].stats == {f"{kind}-{rule}": 1, "fused": 1, "declined": 0}
    text = print_module(mod)
    assert text.count(FUSED[kind]) == 1
    for op in ("aten.conv2d", "aten.linear", "aten.add", "aten.relu", "aten.silu", "aten.sigmoid", "aten.hardswish"):
        assert op not in text, f"{op} left after fusion:\n{text}"
    _assert_exact(mod, model, kind)


@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("kind", ["conv2d", "linear"])
def test_every_activation_fuses_exactly(kind, act):
    model, mod = _traced(Chain(kind, act=act, residual=True, act2=act), kind)
    rec = run(mod, "fuse-epilogue")
    assert rec[0].stats == {f"{kind}-act-residual-act": 1, "fused": 1, "declined": 0}
    assert f'act="{act}", act2="{act}"' in print_module(mod)
    _assert_exact(mod, model, kind)


@pytest.mark.parametrize("act", ["relu", "relu6", "hardswish"])
@pytest.mark.parametrize("kind", ["conv2d", "linear"])
def test_fp16_is_exact_on_small_integers(kind, act):
    model, mod = _traced(Chain(kind, act=act, residual=True, act2="relu", c=8), kind, dtype=torch.float16)
    run(mod, "fuse-epilogue")
    assert "f16" in print_module(mod) and FUSED[kind] in print_module(mod)
    _assert_exact(mod, model, kind, dtype=torch.float16)


def test_structure_of_the_longest_rule(filecheck):
    model, mod = _traced(Chain("conv2d", act="relu", residual=True, act2="sigmoid"), "conv2d")
    run(mod, "fuse-epilogue")
    filecheck(print_module(mod), r"""
        CHECK-LABEL: module @chain(%x: f32[2,8,6,6])
        CHECK-NOT: aten.conv2d
        CHECK: [[F:%fused_conv2d[_0-9]*]]: f32[2,8,6,6] = sparsec.fused_conv2d(%x, @op.weight, @op.bias, %x, padding=[1,1], act="relu", act2="sigmoid")  {sparsec.fused = conv2d-act-residual-act[conv2d,relu,add,sigmoid]}
        CHECK-NOT: aten.
        CHECK: return {{\[}}[[F]]{{\]}}
    """)


def test_bias_add_becomes_the_bias(filecheck):
    model, mod = _traced(Chain("conv2d", bias_add=True, act="relu"), "conv2d")
    run(mod, "fuse-epilogue,dce")
    filecheck(print_module(mod), r"""
        CHECK-LABEL: module @chain(
        CHECK: params {
        CHECK: [[B:@b_vec]]: f32[8]
        CHECK-NOT: @b:
        CHECK: }
        CHECK: sparsec.fused_conv2d(%x, @op.weight, [[B]], padding=[1,1], act="relu")  {sparsec.fused = conv2d-act[conv2d,add,relu]}
        CHECK-NOT: aten.add
    """)
    _assert_exact(mod, model, "conv2d")


def test_fold_bn_metadata_is_kept(filecheck):
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
    model, mod = integer_weights(model), None
    mod = sparsec.trace(model, (ints(1, 3, 6, 6),))
    run(mod, "fold-bn,dce,fuse-epilogue")
    filecheck(print_module(mod), r"""
        CHECK-LABEL: module @sequential(
        CHECK: sparsec.fused_conv2d({{.*}}act="relu")  {sparsec.folded = [batch_norm], sparsec.fused = conv2d-act[conv2d,relu]}
    """)


# -- declines ------------------------------------------------------------------------------------


class TwoUsers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = self.conv(x)
        return torch.relu(y), y


class ActThen(nn.Module):
    def __init__(self, act: nn.Module, conv: nn.Module | None = None) -> None:
        super().__init__()
        self.conv, self.act = conv or nn.Conv2d(4, 4, 1), act

    def forward(self, x):
        return self.act(self.conv(x))


class AddThen(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.conv, self.how = nn.Conv2d(4, 4, 1), how
        self.p = nn.Parameter(torch.ones(1, 4, 1, 1))

    def forward(self, x):
        y = torch.relu(self.conv(x))
        if self.how == "broadcast":
            return y + self.p
        if self.how == "alpha":
            return torch.add(y, x, alpha=2)
        return y + 1.0


DECLINES = [
    (TwoUsers(), "conv2d-act", "'conv2d' has 2 users (relu, output), so its value must stay in memory", 0),
    (ActThen(nn.LeakyReLU()), "conv2d-act", "unsupported activation aten.leaky_relu", 0),
    (ActThen(nn.Hardtanh(-1.0, 1.0)), "conv2d-act", "unsupported activation hardtanh(min=-1, max=1)", 0),
    (ActThen(nn.ReLU(), nn.Conv1d(4, 4, 1)), "conv2d-act", "only 2-D convs (4-D NCHW input) have a fused op; this one has input [2,4,5]", 0),
    (AddThen("broadcast"), "conv2d-act-residual", "'add' broadcasts 'p' [1,4,1,1] to [2,4,5,5]", 1),
    (AddThen("alpha"), "conv2d-act-residual", "'add' scales its operand (alpha=2)", 1),
    (AddThen("scalar"), "conv2d-act-residual", "'add' adds a scalar (1.0), not a tensor", 1),
]


@pytest.mark.parametrize("model, rule, reason, fused", DECLINES,
                         ids=["two-users", "leaky-relu", "hardtanh", "conv1d", "broadcast", "alpha", "scalar"])
def test_declines_give_reasons(model, rule, reason, fused, caplog):
    shape = (2, 4, 5) if isinstance(getattr(model, "conv", None), nn.Conv1d) else (2, 4, 5, 5)
    model = integer_weights(model)
    mod = sparsec.trace(model, (ints(*shape),))
    with caplog.at_level("INFO", logger="sparsec.passes.fusion"):
        rec = run(mod, "fuse-epilogue")
    assert rec[0].stats["fused"] == fused and rec[0].stats["declined"] >= 1
    text = print_module(mod)
    line = next(l for l in text.splitlines() if "sparsec.declined" in l)
    assert f"fuse-epilogue/{rule}: {reason}" in line, line
    assert any(reason in r.getMessage() for r in caplog.records)
    x = ints(*shape, gen=torch.Generator().manual_seed(5))
    want, got = model(x), mod(x)
    for g, w in zip(got if isinstance(got, (tuple, list)) else [got], want if isinstance(want, tuple) else [want]):
        assert torch.equal(g, w)


class Mixed(nn.Module):
    """A fusable block, a broadcasting add after conv+relu, and a leaky relu."""

    def __init__(self) -> None:
        super().__init__()
        self.block = Chain("conv2d", act="relu", residual=True, act2="relu", c=4)
        self.tail = AddThen("broadcast")
        self.leaky = ActThen(nn.LeakyReLU())

    def forward(self, x):
        return self.leaky(self.tail(self.block(x)))


def test_idempotent_with_fusions_and_declines():
    model = integer_weights(Mixed())
    mod = sparsec.trace(model, (ints(2, 4, 5, 5),))
    run_twice_is_once(mod, "fuse-epilogue")
    text = print_module(mod)
    assert text.count("sparsec.fused_conv2d") == 2 and text.count("fuse-epilogue/") == 2
    x = ints(2, 4, 5, 5, gen=torch.Generator().manual_seed(4))
    assert torch.equal(mod(x), model(x))


def test_rule_table_is_named_and_prioritised():
    names = [r.name for r in RULES]
    assert len(set(names)) == len(names) == 12
    for kind in ("conv2d", "linear"):
        prios = [r.priority for r in RULES if r.anchor == kind]
        assert prios == sorted(prios, reverse=True) and len(set(prios)) == len(prios)
    assert all(r.algebra and "->" in r.algebra for r in RULES)


# -- torchvision models ----------------------------------------------------------------------------

ZOO = {
    "resnet18": {"conv2d-residual-act": 8, "conv2d-act": 9},
    "mobilenet_v2": {"conv2d-residual": 10, "conv2d-act": 35},
    "efficientnet_b0": {"conv2d-residual": 9, "conv2d-act": 65},
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_models_fuse_exactly(name):
    import torchvision

    torch.manual_seed(0)
    model = integer_weights(getattr(torchvision.models, name)(), lo=-1, hi=2)
    x = ints(1, 3, 64, 64)
    mod = sparsec.trace(model, (x,))
    run(mod, "default")
    unfused = mod.clone()
    rec = run(mod, "fuse-epilogue,dce")
    assert rec[0].stats == {**ZOO[name], "fused": sum(ZOO[name].values()), "declined": 0}
    text = print_module(mod)
    for act in ("aten.relu(", "aten.hardtanh(", "aten.silu("):
        assert act not in text, f"{act} left in {name}"
    for seed in (1, 2):
        x = ints(1, 3, 64, 64, gen=torch.Generator().manual_seed(seed))
        assert torch.equal(mod(x), unfused(x))
    from sparsec.ir.analysis import Cost

    assert mod.analysis(Cost).total_macs == unfused.analysis(Cost).total_macs > 0


# -- re-export ----------------------------------------------------------------------------------------


def test_fused_graph_reexports_and_loads(tmp_path):
    model = integer_weights(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                          nn.Flatten(), nn.Linear(8 * 16, 4), nn.SiLU()))
    mod = sparsec.trace(model, (ints(2, 3, 4, 4),))
    run(mod, "fusion")
    path = tmp_path / "fused.pt2"
    torch.export.save(mod.export(), path)
    loaded = sparsec.load_model(str(path))
    targets = {n.target for n in loaded.graph.nodes if n.op == "call_function"}
    assert {F.fused_conv2d, F.fused_linear} <= targets
    x = ints(2, 3, 4, 4, gen=torch.Generator().manual_seed(3))
    assert torch.equal(loaded(x), mod(x))
