"""The 2:4 mask: exactness, the (Cout, kh, kw, Cin) grouping, the masked model, and the verifier."""

from __future__ import annotations

import pytest
import torch

import sparsec
from sparsec.errors import PipelineFailure, VerificationError
from sparsec.ir import meta as M
from sparsec.ir.verify import count_24_violations, first_24_violation, is_24_sparse
from sparsec.passes import PassManager, PassResult
from sparsec.passes.sparsify import Sparsify24, apply_mask, magnitude_mask

from ..conftest import rel_err
from .nets import conv_net, hand_mask


@pytest.mark.parametrize("shape", [(8, 16), (6, 8, 3, 3), (4, 12, 1, 1), (5, 4, 2, 3)])
def test_mask_keeps_the_two_largest_of_every_four(shape):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mask = magnitude_mask(w)
    assert mask.shape == w.shape and mask.dtype == torch.bool
    groups = w.movedim(1, -1).reshape(-1, 4).abs()
    kept = mask.movedim(1, -1).reshape(-1, 4)
    assert (kept.sum(-1) == 2).all()
    # every kept |w| is >= every dropped |w| of its group
    low_kept = torch.where(kept, groups, torch.inf).amin(-1)
    high_dropped = torch.where(kept, -torch.inf, groups).amax(-1)
    assert (low_kept >= high_dropped).all()
    masked, retained = apply_mask(w)
    assert torch.equal(masked, hand_mask(w))
    assert is_24_sparse(masked, 1)
    assert retained == pytest.approx(float(masked.abs().sum() / w.abs().sum()), rel=1e-12)
    assert 0.5 <= retained <= 1.0


def test_ties_are_deterministic():
    w = torch.ones(2, 8)
    assert torch.equal(magnitude_mask(w), torch.tensor([[True, True, False, False] * 2] * 2))


def test_conv_groups_run_along_cin_inside_each_tap():
    """2:4 along Cin inside each (kh, kw) tap is not 2:4 along the flattened NCHW K, and the other way round."""
    w = torch.zeros(2, 4, 1, 4)
    w[0, 0, 0, :] = w[0, 1, 0, :] = 1.0  # each tap's run of 4 channels holds 2 non-zeros
    assert is_24_sparse(w, 1)
    assert count_24_violations(w.reshape(2, -1), 1) == 2  # NCHW K groups (one channel's 4 taps) hold 4
    v = torch.zeros(2, 4, 1, 4)
    v[1, :, 0, 2] = 1.0  # one tap, all 4 channels: fine along flattened K, not along Cin
    assert is_24_sparse(v.reshape(2, -1), 1)
    assert not is_24_sparse(v, 1)
    assert first_24_violation(v, 1) == "weight[1, 0:4, 0, 2] with 4 non-zeros"


def test_masked_model_equals_hand_masked_reference():
    net = conv_net(dtype=torch.float64)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    mod = sparsec.trace(net, (x,))
    PassManager.parse("fold-bn").run(mod)
    ref = mod.clone()
    records = PassManager.parse("sparsify-2-4{cost-model=off}").run(mod)  # verify() runs after the pass
    assert records[0].stats["sparse"] == 3 and records[0].stats["dense"] == 3  # conv, pw, fc; stem, dw, grouped
    marked = [n for n in mod.graph.nodes if M.get(n, M.Sparsity24) is not None]
    assert sorted(n.target for n in marked) == ["conv.weight", "fc.weight", "pw.weight"]
    for n in marked:
        w = ref.get_param(n.target).detach()
        ref.set_param(n.target, hand_mask(w))
        assert torch.equal(mod.get_param(n.target), hand_mask(w))
        assert M.get(n, M.Sparsity24).retained == pytest.approx(float(hand_mask(w).abs().sum() / w.abs().sum()), abs=1e-6)
    ref.recompile()
    xs = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    out, want = mod(xs), ref(xs)
    assert out.shape == want.shape == (2, 10) and out.dtype == want.dtype == torch.float64
    assert want.abs().max() > 0
    assert rel_err(out, want) < 1e-12
    assert rel_err(out, net(xs)) > 1e-3  # numerics change by design


class _ForgetsOneMask(Sparsify24):
    """A broken pass: marks every sparse weight but puts one back dense."""

    def run(self, mod, ctx) -> PassResult:
        before = {n.target: mod.get_param(n.target).clone() for n in mod.nodes("get_attr")}
        result = super().run(mod, ctx)
        mod.set_param("conv.weight", before["conv.weight"])
        return result


def test_verifier_catches_a_broken_pattern():
    mod = sparsec.trace(conv_net(), (torch.randn(1, 3, 8, 8),))
    broken = _ForgetsOneMask(cost_model="off")
    with pytest.raises(PipelineFailure, match="a weight marked 2:4 is not 2:4 sparse") as info:
        PassManager([broken]).run(mod)
    assert "node 'conv_weight'" in str(info.value.__cause__)
    assert "groups with more than 2 non-zeros; the first is weight[0, 0:4, 0, 0]" in str(info.value.__cause__)


def test_verifier_catches_one_bad_group_after_the_pass():
    mod = sparsec.trace(conv_net(), (torch.randn(1, 3, 8, 8),))
    PassManager.parse("sparsify-2-4{cost-model=off}").run(mod)
    mod.verify()
    w = mod.get_param("conv.weight").clone()
    w[5, 8:12, 2, 1] = torch.tensor([1.0, 2.0, 3.0, 0.0])  # one group of one tap: 3 non-zeros
    mod.set_param("conv.weight", w)
    with pytest.raises(VerificationError, match="a weight marked 2:4 is not 2:4 sparse") as info:
        mod.verify()
    assert "actual:   1 groups with more than 2 non-zeros; the first is weight[5, 8:12, 2, 1] with 3 non-zeros" in str(info.value)


def test_verifier_rejects_a_mark_along_the_wrong_dim():
    mod = sparsec.trace(conv_net(), (torch.randn(1, 3, 8, 8),))
    w = mod.get_param("fc.weight")  # (10, 64)
    mod.set_param("fc.weight", torch.zeros_like(w))  # trivially 2:4 along any dim of size % 4
    node = next(n for n in mod.nodes("get_attr") if n.target == "conv.weight")
    mod.set_param("conv.weight", torch.zeros(32, 16, 3, 3))  # 2:4 along dim 0 (32) and dim 1 (16)
    M.put(node, M.Sparsity24(dim=0))
    with pytest.raises(VerificationError, match="grouped along a dim its layer does not reduce over") as info:
        mod.verify()
    assert "expected: dim 1 (the input channels that aten.conv2d 'conv2d_1' reduces over)" in str(info.value)
