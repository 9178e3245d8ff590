"""Eligibility: every exclusion names its reason; shape limits come from the target or the options."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsec
from sparsec.errors import PassFailedError
from sparsec.passes.sparsify import Sparsify24

from .nets import conv_net


def _by_layer(decisions):
    return {d.layer: d for d in decisions}


@pytest.fixture(scope="module")
def mod():
    return sparsec.trace(conv_net(), (torch.randn(2, 3, 8, 8),))


def test_structural_exclusions(mod):
    d = _by_layer(Sparsify24(cost_model="off").decide(mod))
    assert set(d) == {"stem", "conv", "dw", "grouped", "pw", "fc"}
    assert not d["stem"].sparse and d["stem"].reason == (
        "Cin=3 is not a multiple of 4: 2:4 groups along Cin would straddle the (kh, kw) taps of K=27 "
        "(a stem conv stays dense)")
    assert not d["dw"].sparse and d["dw"].reason.startswith("depthwise conv (groups=32)")
    assert not d["grouped"].sparse and d["grouped"].reason.startswith("grouped conv (groups=2)")
    assert [k for k, v in d.items() if v.sparse] == ["conv", "pw", "fc"]
    # GEMM convention: M = Cout, K = kh*kw*Cin, N = batch*H*W (a linear: its leading dims)
    g = d["conv"].gemm
    assert (g.m, g.k, g.n, g.dtype) == (32, 144, 2 * 8 * 8, "fp16")
    assert (d["fc"].gemm.m, d["fc"].gemm.k, d["fc"].gemm.n) == (10, 64, 2)


def test_target_limits(mod):
    """h100-sparse fp16: K % 8, M % 8, K >= 32, M >= 16 (cost-model=shape: the limits alone; the kernels pad)."""
    d = _by_layer(Sparsify24(cost_model="shape", target="h100-sparse").decide(mod))
    assert d["conv"].sparse and d["conv"].reason == ("shape: M=32 K=144 N=128 fp16 meets the h100-sparse fp16 limits "
                                                     "(k%8, m%8, k>=32, m>=16); no timing consulted")
    assert d["fc"].reason == "M=Cout=10 is not a multiple of 8 (h100-sparse fp16)"
    assert d["pw"].sparse
    d = _by_layer(Sparsify24(cost_model="shape", target="h100-sparse", k_multiple=16, m_multiple=2, min_m=32).decide(mod))
    src = "h100-sparse fp16 with pass options"
    assert d["conv"].sparse and d["conv"].reason == (
        f"shape: M=32 K=144 N=128 fp16 meets the {src} limits (k%16, m%2, k>=32, m>=32); no timing consulted")
    assert d["pw"].sparse  # K=32: the target's min-k
    assert d["fc"].reason == f"M=Cout=10 < min-m 32 ({src}): too small to gain"


def test_option_limits_on_cpu(mod):
    d = _by_layer(Sparsify24(cost_model="shape", target="cpu", min_k=100, min_m=16).decide(mod))
    assert d["conv"].sparse and d["conv"].reason == (
        "shape: M=32 K=144 N=128 fp16 meets the pass options limits (k%4, m%1, k>=100, m>=16); no timing consulted")
    assert d["pw"].reason == "K=32 < min-k 100 (pass options): too small to gain"
    assert d["fc"].reason == "K=64 < min-k 100 (pass options): too small to gain"
    d = _by_layer(Sparsify24(cost_model="shape", min_m=64).decide(mod))  # no target at all (sparsec opt)
    assert d["pw"].sparse and d["conv"].reason == "M=Cout=32 < min-m 64 (pass options): too small to gain"


def test_layers_patterns(mod):
    d = _by_layer(Sparsify24(cost_model="off", layers=("conv", "p*")).decide(mod))
    assert d["conv"].sparse and d["pw"].sparse
    assert d["fc"].reason == "matches none of the layers patterns ['conv', 'p*']"
    d = _by_layer(Sparsify24(cost_model="off", layers=("!fc",)).decide(mod))
    assert d["conv"].sparse and d["fc"].reason == "excluded by layers pattern '!fc'"


class _Odd(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Conv2d(8, 8, 1)
        self.w = nn.Parameter(torch.randn(8, 8, 1, 1))
        self.lin = nn.Linear(10, 8)
        self.up = nn.ConvTranspose2d(8, 8, 2, stride=2)

    def forward(self, x):
        y = self.shared(self.shared(x))
        y = self.up(torch.nn.functional.conv2d(y, self.w * 2.0))
        return self.lin(torch.cat([y.mean((2, 3)), x[:, :2, 0, 0]], 1))


def test_shared_computed_transposed_and_unaligned_k():
    mod = sparsec.trace(_Odd().eval(), (torch.randn(1, 8, 4, 4),))
    d = {x.node: x for x in Sparsify24(cost_model="off").decide(mod)}
    reasons = sorted(x.reason for x in d.values())
    assert reasons == [
        "K=10 is not a multiple of 4: it cannot be cut into groups of 4",
        "its weight is computed, not a parameter",
        "its weight is shared with another node; masking it would change that one too",
        "its weight is shared with another node; masking it would change that one too",
        "transposed conv: not a GEMM with the weight as its A operand",
    ]
    assert not any(x.sparse for x in d.values())


def test_conflicting_target():
    from sparsec.registry import registry

    mod = sparsec.trace(conv_net(), (torch.randn(1, 3, 8, 8),))
    with pytest.raises(PassFailedError, match="names target 'h100-sparse', but the pipeline is compiled for 'a100-sparse'"):
        Sparsify24(cost_model="shape", target="h100-sparse").decide(mod, registry().get("target", "a100-sparse"))
