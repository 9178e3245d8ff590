"""``fold-bn``: structure (FileCheck), exact float64 folding, resnet18 in fp32, skips, errors."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

import sparsec
from sparsec.errors import PassFailedError, PipelineFailure
from sparsec.ir import Module, print_module

from .conftest import ints, randomise_bn, rel_err, run, run_twice_is_once

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_SHAPE = {1: (2, 3, 8), 2: (2, 3, 6, 6), 3: (1, 3, 4, 4, 4)}


class ConvBN(nn.Module):
    def __init__(self, dim: int = 2, bias: bool = True, affine: bool = True, cin: int = 3, groups: int = 1) -> None:
        super().__init__()
        self.conv = _CONV[dim](cin, 4, 3, padding=1, bias=bias, groups=groups)
        self.bn = _BN[dim](4, eps=0.0, affine=affine)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


class LinearBN(nn.Module):
    def __init__(self, bias: bool = True) -> None:
        super().__init__()
        self.lin, self.bn = nn.Linear(6, 4, bias=bias), nn.BatchNorm1d(4, eps=0.0)

    def forward(self, x):
        return self.bn(self.lin(x))


@torch.no_grad()
def exact_f64(model: nn.Module, seed: int = 0) -> nn.Module:
    """float64 with small-integer weights, gamma, beta and mean, and running_var = 4 (eps = 0).

    Then s = gamma / sqrt(4) is a half-integer, and both the BatchNorm and the
    folded conv compute exactly.
    """
    gen = torch.Generator().manual_seed(seed)
    model = model.double().eval()
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if not t.is_floating_point():
            continue
        if name.endswith("running_var"):
            t.fill_(4.0)
        elif name.startswith("bn.weight"):
            t.copy_(ints(*t.shape, lo=1, hi=4, dtype=t.dtype, gen=gen) * torch.where(torch.rand(t.shape, generator=gen) < 0.5, -1, 1))
        else:
            t.copy_(ints(*t.shape, dtype=t.dtype, gen=gen))
    return model


def _eps_is_zero(mod) -> None:
    assert "eps=0.0" in print_module(mod)


@pytest.mark.parametrize(
    "model, shape",
    [
        pytest.param(ConvBN(1), _SHAPE[1], id="conv1d"),
        pytest.param(ConvBN(2), _SHAPE[2], id="conv2d"),
        pytest.param(ConvBN(3), _SHAPE[3], id="conv3d"),
        pytest.param(ConvBN(2, bias=False), _SHAPE[2], id="conv2d-nobias"),
        pytest.param(ConvBN(2, affine=False), _SHAPE[2], id="conv2d-noaffine"),
        pytest.param(ConvBN(2, cin=4, groups=4), (2, 4, 6, 6), id="conv2d-depthwise"),
        pytest.param(LinearBN(), (5, 6), id="linear"),
        pytest.param(LinearBN(bias=False), (5, 6), id="linear-nobias"),
    ],
)
def test_fold_is_exact_in_float64(model, shape):
    model = exact_f64(model)
    mod = sparsec.trace(model, ints(*shape, dtype=torch.float64))
    _eps_is_zero(mod)
    rec = run(mod, "fold-bn,dce")
    assert rec[0].stats == {"folded": 1, "skipped": 0}
    assert "batch_norm" not in print_module(mod).replace("{sparsec.folded = [batch_norm]}", "")
    for seed in range(3):
        x = ints(*shape, dtype=torch.float64, gen=torch.Generator().manual_seed(100 + seed))
        want = model(x)
        got = mod(x)
        assert got.shape == want.shape and got.dtype == torch.float64
        assert torch.equal(got, want), f"max abs diff {(got - want).abs().max().item()}"


def test_fold_structure_adds_a_bias(filecheck):
    model = exact_f64(ConvBN(2, bias=False))
    mod = sparsec.trace(model, ints(*_SHAPE[2], dtype=torch.float64))
    run(mod, "fold-bn,dce")
    filecheck(print_module(mod), r"""
        CHECK-LABEL: module @convbn(%x: f64[2,3,6,6])
        CHECK-NEXT: params {
        CHECK-NEXT: [[B:@conv.bias[_0-9]*]]: f64[4]
        CHECK-NEXT: @conv.weight: f64[4,3,3,3]
        CHECK-NEXT: }
        CHECK-NOT: aten.batch_norm
        CHECK: [[C:%[a-z_0-9]+]]: f64[2,4,6,6] = aten.conv2d(%x, @conv.weight, [[B]], padding=[1,1])  {sparsec.folded = [batch_norm]}
        CHECK-NEXT: [[R:%[a-z_0-9]+]]: f64[2,4,6,6] = aten.relu([[C]])
        CHECK-NEXT: return {{\[}}[[R]]{{\]}}
    """)


def test_fold_is_idempotent():
    mod = sparsec.trace(exact_f64(ConvBN(2)), ints(*_SHAPE[2], dtype=torch.float64))
    run_twice_is_once(mod, "fold-bn")


def test_fold_decomposed_batch_norm(filecheck):
    # run_decompositions() gives aten.convolution + _native_batch_norm_legit_no_training + getitem.
    model = exact_f64(ConvBN(2))
    x = ints(*_SHAPE[2], dtype=torch.float64)
    ep = torch.export.export(model, (x,)).run_decompositions()
    mod = Module(ep.module(), (x,), name="decomposed")
    assert "_native_batch_norm_legit_no_training" in print_module(mod)
    (rec,) = run(mod, "fold-bn")
    assert rec.stats == {"folded": 1, "skipped": 0}
    filecheck(print_module(mod), r"""
        CHECK-LABEL: module @decomposed(
        CHECK-NOT: batch_norm(
        CHECK-NOT: getitem
        CHECK: [[C:%[a-z_0-9]+]]: f64[2,4,6,6] = aten.convolution({{.*}}  {sparsec.folded = [_native_batch_norm_legit_no_training]}
        CHECK-NEXT: aten.relu([[C]])
    """)
    x = ints(*_SHAPE[2], dtype=torch.float64)
    assert torch.equal(mod(x), model(x))


class SharedConv(nn.Module):
    """One conv weight read by two conv nodes, each followed by its own BN."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn1, self.bn2 = nn.BatchNorm2d(4, eps=0.0), nn.BatchNorm2d(4, eps=0.0)

    def forward(self, x):
        return self.bn1(self.conv(x)) - self.bn2(self.conv(x))


def test_shared_weight_is_written_to_a_new_parameter(filecheck):
    model = exact_f64(SharedConv(), seed=3)
    original = model.conv.weight.detach().clone()
    mod = sparsec.trace(model, ints(*_SHAPE[2], dtype=torch.float64))
    (rec,) = run(mod, "fold-bn")
    assert rec.stats == {"folded": 2, "skipped": 0}
    filecheck(print_module(mod, params=False), r"""
        CHECK-LABEL: module @sharedconv(
        CHECK: aten.conv2d(%x, [[W1:@[a-z_.0-9]+]], [[B1:@[a-z_.0-9]+]], padding=[1,1])  {sparsec.folded = [batch_norm]}
        CHECK: aten.conv2d(%x, [[W2:@[a-z_.0-9]+]], [[B2:@[a-z_.0-9]+]], padding=[1,1])  {sparsec.folded = [batch_norm_1]}
    """)
    weights = {n.args[1].target for n in mod.graph.nodes if n.target is torch.ops.aten.conv2d.default}
    assert weights == {"conv.weight", "conv.weight_folded"}
    assert torch.equal(model.conv.weight, original), "folding must not touch the eager model's tensors"
    x = ints(*_SHAPE[2], dtype=torch.float64)
    assert torch.equal(mod(x), model(x))


def test_resnet18_fold_within_fp32_tolerance():
    torchvision = pytest.importorskip("torchvision")
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = randomise_bn(torchvision.models.resnet18(num_classes=10), gen).eval()
    mod = sparsec.trace(model, torch.randn(1, 3, 32, 32))
    fold, dce = run(mod, "fold-bn,dce")
    assert fold.stats == {"folded": 20, "skipped": 0}
    assert "aten.batch_norm" not in print_module(mod)
    x = torch.randn(1, 3, 32, 32, generator=gen)
    with torch.no_grad():
        assert rel_err(mod(x), model(x)) <= 1e-5


class ConvReadTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4, eps=0.0)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


class Linear3D(nn.Module):
    """BatchNorm1d over (N, C, L): its channel dim is not the linear's feature dim."""

    def __init__(self) -> None:
        super().__init__()
        self.lin, self.bn = nn.Linear(6, 6), nn.BatchNorm1d(4, eps=0.0)

    def forward(self, x):
        return self.bn(self.lin(x))


class AfterRelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4, eps=0.0)

    def forward(self, x):
        return self.bn(torch.relu(self.conv(x)))


@pytest.mark.parametrize(
    "model, shape",
    [
        pytest.param(ConvReadTwice(), _SHAPE[2], id="conv-read-twice"),
        pytest.param(Linear3D(), (2, 4, 6), id="linear-3d"),
        pytest.param(AfterRelu(), _SHAPE[2], id="not-after-conv"),
    ],
)
def test_fold_skips_sites_that_do_not_apply(model, shape):
    model = exact_f64(model)
    mod = sparsec.trace(model, ints(*shape, dtype=torch.float64))
    before = print_module(mod)
    (rec,) = run(mod, "fold-bn")
    assert not rec.modified and rec.stats == {"folded": 0, "skipped": 1}
    assert print_module(mod) == before
    x = ints(*shape, dtype=torch.float64)
    assert torch.equal(mod(x), model(x))


def test_fold_skips_training_mode_and_warns(caplog):
    model = ConvBN(2).train()
    model.bn.eps = 1e-5  # training mode rejects eps = 0
    mod = sparsec.trace(model, torch.randn(*_SHAPE[2]))
    with caplog.at_level(logging.WARNING, logger="sparsec.passes.fold_bn"):
        (rec,) = run(mod, "fold-bn")
    assert rec.stats == {"folded": 0, "skipped": 1}
    assert "training=true" in print_module(mod)
    assert any("training mode" in r.getMessage() and "model.eval()" in r.getMessage() for r in caplog.records)


def test_fold_fails_on_corrupt_statistics_before_changing_anything():
    model = exact_f64(SharedConv())
    with torch.no_grad():
        model.bn2.running_var[2] = -1.0
    mod = sparsec.trace(model, ints(*_SHAPE[2], dtype=torch.float64))
    before = print_module(mod)
    with pytest.raises(PipelineFailure, match=r"pass 'fold-bn' \(#1 of 1\) failed: cannot fold a batch norm "
                       r"whose running_var \+ eps is not positive and finite") as info:
        run(mod, "fold-bn")
    cause = info.value.__cause__
    assert isinstance(cause, PassFailedError)
    assert "node 'batch_norm_1' (aten.batch_norm.default)" in cause.where
    assert "channel 2: running_var=-1" in cause.actual and "bn2.running_var" in cause.actual
    assert "re-calibrate" in cause.fix
    assert print_module(mod) == before, "the healthy bn1 must not be folded when the pass fails"
