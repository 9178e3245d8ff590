"""The Cost analysis: published figures for torchvision models, and exact small counts."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

import sparsec
from sparsec.ir import Cost, NodeCost

tv = pytest.importorskip("torchvision")


@pytest.mark.parametrize(
    "name, gmacs, gmacs_tol, mparams",
    [
        ("resnet50", 4.09, 0.01, 25.56),  # torchvision's published 4.09 GFLOPS (MACs), 25.6M params
        ("mobilenet_v2", 0.30, 0.03, 3.50),
    ],
)
def test_torchvision_models_match_published_figures(name, gmacs, gmacs_tol, mparams) -> None:
    model = getattr(tv.models, name)().eval()
    t0 = time.perf_counter()
    mod = sparsec.trace(model, torch.randn(1, 3, 224, 224))
    cost = mod.analysis(Cost)
    elapsed = time.perf_counter() - t0
    assert cost.total_macs / 1e9 == pytest.approx(gmacs, rel=gmacs_tol)
    assert cost.total_params / 1e6 == pytest.approx(mparams, rel=0.005)
    assert cost.total_params == sum(p.numel() for p in model.parameters())  # exactly, buffers excluded
    assert cost.total_flops == 2 * cost.total_macs
    assert elapsed < 60, f"tracing + cost took {elapsed:.1f}s: fake-tensor propagation should not compute"


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)  # bias too
        self.bn = nn.BatchNorm2d(8)
        self.grouped = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=4, bias=False)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        y = self.grouped(y)
        return self.fc(y.flatten(1))


def test_small_net_counts_by_hand() -> None:
    mod = sparsec.trace(Tiny().eval(), torch.randn(2, 3, 8, 8))
    cost = mod.analysis(Cost)
    conv = 2 * 8 * 8 * 8 * (3 * 3 * 3)  # output elements x (Cin/groups * k*k) = 27648
    grouped = 2 * 8 * 4 * 4 * (2 * 3 * 3)  # Cin/groups = 2, stride 2 -> 4x4 = 4608
    fc = 2 * 10 * 128  # batch x out x in = 2560
    assert cost.of("conv2d") == NodeCost(macs=conv, params=8 * 27 + 8)
    assert cost.of("batch_norm") == NodeCost(macs=0, params=16)  # weight + bias; running stats are buffers
    assert cost.of("conv2d_1") == NodeCost(macs=grouped, params=8 * 2 * 9)
    assert cost.of("linear") == NodeCost(macs=fc, params=1280 + 10)
    assert cost.of("relu") == NodeCost()  # elementwise ops count zero
    assert cost.total_macs == conv + grouped + fc == 34816
    assert cost.total_params == sum(p.numel() for p in Tiny().parameters()) == 224 + 16 + 144 + 1290
    assert cost.total_flops == 2 * 34816
    assert cost.of(next(n for n in mod.graph.nodes if n.name == "linear")).flops == 2 * fc


def test_matmuls_and_transposed_convs() -> None:
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(6, 7))
            self.up = nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2)

        def forward(self, x, img):
            a = x @ self.w  # [5,6] @ [6,7]
            b = torch.bmm(x.unsqueeze(0), x.unsqueeze(0).transpose(1, 2))  # [1,5,6] @ [1,6,5]
            c = torch.addmm(torch.ones(7), x, self.w)
            return a, b, c, self.up(img)

    mod = sparsec.trace(M(), (torch.randn(5, 6), torch.randn(2, 4, 5, 5)))
    cost = mod.analysis(Cost)
    assert cost.of("matmul").macs == 5 * 7 * 6
    assert cost.of("bmm").macs == 5 * 5 * 6
    assert cost.of("addmm").macs == 5 * 7 * 6
    # every input element scatters into Cout/groups * k*k outputs
    assert cost.of("conv_transpose2d").macs == (2 * 4 * 5 * 5) * 3 * 9
    assert cost.total_params == 42 + 4 * 3 * 9 + 6


def test_shared_parameter_counts_once() -> None:
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(self.fc(x))

    cost = sparsec.trace(Shared(), torch.randn(3, 4)).analysis(Cost)
    assert cost.total_params == 20
    assert cost.total_macs == 2 * 3 * 4 * 4


def test_dynamic_batch_counts_the_example_batch() -> None:
    static = sparsec.trace(Tiny().eval(), torch.randn(2, 3, 8, 8)).analysis(Cost)
    dynamic_mod = sparsec.trace(Tiny().eval(), torch.randn(2, 3, 8, 8), dynamic_batch=True)
    dynamic = dynamic_mod.analysis(Cost)
    assert dynamic.total_macs == static.total_macs and dynamic.total_params == static.total_params
    assert isinstance(dynamic_mod.placeholders()[0].meta["val"].shape[0], torch.SymInt)  # not specialised by counting
