"""Channel permutation: exact before masking (float64), never loses magnitude, folded through the groups."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st

import sparsec
from sparsec.passes import PassManager
from sparsec.passes.sparsify import Sparsify24, permute_for_24
from sparsec.passes.sparsify.permute import member_index

from ..conftest import rel_err
from ..prune.test_properties import BLOCKS, Net
from ..prune.util import randomise
from .nets import MLP, Encoder


def _permute_only(mod, rounds):
    """Permute for every layer that can be 2:4 (cost-model=off), without masking; return the group results."""
    targets = [d.target for d in Sparsify24(cost_model="off").decide(mod) if d.sparse]
    results = permute_for_24(mod, targets, seed=0, rounds=rounds)
    mod.recompile()
    mod.verify()
    return results


def _check_same_function(mod, model, n=2):
    gen = torch.Generator().manual_seed(99)
    for _ in range(n):
        x = torch.randn(mod.example_inputs[0].shape, generator=gen, dtype=torch.float64)
        with torch.no_grad():
            out, want = mod(x), model(x)
        assert out.shape == want.shape and out.dtype == want.dtype == torch.float64
        assert want.abs().max() > 0
        assert rel_err(out, want) < 1e-12


def test_member_index_moves_whole_units():
    # a flatten member: unit c holds features 2c, 2c+1; sigma swaps units 0 and 2
    unit_of = np.array([0, 0, 1, 1, 2, 2])
    assert member_index(unit_of, np.array([2, 1, 0])).tolist() == [4, 5, 2, 3, 0, 1]
    # a cat output: units 0-1 from one input, 2-3 from the other; sigma swaps within each
    assert member_index(np.array([0, 1, 2, 3]), np.array([1, 0, 3, 2])).tolist() == [1, 0, 3, 2]


@pytest.mark.slow
def test_resnet18_permutation_is_exact():
    torch.manual_seed(0)
    model = randomise(torchvision.models.resnet18().eval()).double()
    mod = sparsec.trace(model, (torch.randn(2, 3, 32, 32, dtype=torch.float64),))
    results = _permute_only(mod, rounds=3)
    searched = [r for r in results if not r.skipped]
    assert len(searched) == 12 and sum(r.swaps for r in searched) > 100
    assert all(r.after >= r.before for r in searched)
    residual = next(r for r in searched if "layer2.0.downsample.0.weight" in r.layers)
    assert set(residual.layers) == {"layer1.0.conv1.weight", "layer1.1.conv1.weight",
                                    "layer2.0.conv1.weight", "layer2.0.downsample.0.weight"}
    _check_same_function(mod, model)


@pytest.mark.slow
@settings(max_examples=8)
@given(kinds=st.lists(st.sampled_from(BLOCKS), min_size=1, max_size=4),
       widths=st.lists(st.sampled_from([8, 16, 24]), min_size=4, max_size=4))
def test_generated_nets_permute_exactly(kinds, widths):
    torch.manual_seed(0)
    model = randomise(Net(kinds, widths).eval()).double()
    mod = sparsec.trace(model, (torch.randn(1, 3, 4, 4, dtype=torch.float64),))
    results = _permute_only(mod, rounds=6)
    assert all(r.after >= r.before for r in results if not r.skipped)
    _check_same_function(mod, model)


@pytest.mark.slow
def test_permutation_never_keeps_less_and_reports_per_layer_gains():
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    x = torch.randn(1, 3, 32, 32)
    base = sparsec.trace(model, (x,))
    plain, permuted = base.clone(), base.clone()
    opts = "cost-model=shape,min-k=1024,layers=[layer3.*]"
    (r0,) = PassManager.parse(f"sparsify-2-4{{{opts}}}").run(plain)
    (r1,) = PassManager.parse(f"sparsify-2-4{{{opts},permute=true}}").run(permuted)
    gains = {k[len("gain."):]: v for k, v in r1.stats.items() if k.startswith("gain.")}
    assert sorted(gains) == ["layer3.0.conv1", "layer3.0.conv2", "layer3.1.conv1", "layer3.1.conv2"]
    assert r1.stats["permute_swaps"] > 0 and r1.stats["permute_groups"] == 4
    assert r1.stats["retained_mean"] > r0.stats["retained_mean"]
    from sparsec.ir import meta as M

    for n in permuted.nodes("get_attr"):
        mark = M.get(n, M.Sparsity24)
        if mark is not None:
            layer = n.target[: -len(".weight")]
            assert mark.gain == pytest.approx(gains[layer], abs=1e-6) and mark.gain >= 0  # one consumer per group here
            ref = next(p for p in plain.nodes("get_attr") if p.target == n.target)
            assert mark.retained == pytest.approx(M.get(ref, M.Sparsity24).retained + mark.gain, abs=2e-6)
    # the masked, permuted model is still a valid 2:4 module that runs
    assert permuted(x).shape == (1, 1000)


def test_transformer_residual_stream_permutes_exactly():
    """The stream through both layer norms, the attention's in-projection, the MLP and the head is one group."""
    torch.manual_seed(0)
    model = Encoder().eval().double()
    mod = sparsec.trace(model, (torch.randn(2, 10, 16, dtype=torch.float64),))
    results = {r.layers: r for r in _permute_only(mod, rounds=20)}
    stream = results[("enc.self_attn.in_proj_weight", "enc.linear1.weight", "head.weight")]
    assert stream.swaps > 0 and stream.after > stream.before
    assert results[("enc.linear2.weight",)].swaps > 0
    assert results[("enc.self_attn.out_proj.weight",)].skipped.startswith("view_3:1: dim 1 is a factor of a reshape")
    _check_same_function(mod, model)


def test_groups_reaching_the_model_input_are_left_alone():
    torch.manual_seed(0)
    mod = sparsec.trace(MLP().eval().double(), (torch.randn(4, 256, dtype=torch.float64),))
    results = {r.layers: r for r in _permute_only(mod, rounds=2)}
    assert results[("up.weight",)].skipped == "model input 'x'"
    assert results[("down.weight",)].swaps > 0 and results[("out.weight",)].swaps > 0


@pytest.mark.slow
@settings(max_examples=5)
@given(kinds=st.lists(st.sampled_from(BLOCKS), min_size=1, max_size=3),
       widths=st.lists(st.sampled_from([8, 16]), min_size=3, max_size=3))
def test_generated_nets_pass_is_permute_then_mask(kinds, widths):
    """The pass with permute=true equals: the same (deterministic) permutation, then the hand-written 2:4
    mask; it verifies, is idempotent, and its pipeline text and printed IR are stable."""
    from sparsec.ir import meta as M
    from sparsec.ir import print_module

    from ..conftest import run_twice_is_once
    from .nets import hand_mask

    torch.manual_seed(0)
    model = randomise(Net(kinds, widths).eval()).double()
    base = sparsec.trace(model, (torch.randn(1, 3, 4, 4, dtype=torch.float64),))
    mod, ref = base.clone(), base.clone()
    p = Sparsify24(cost_model="off", permute=True, seed=5)
    assert PassManager.parse(str(PassManager([p]))).passes == [p]
    PassManager([p]).run(mod)  # verify() runs after the pass
    permute_for_24(ref, [d.target for d in p.decide(ref) if d.sparse], seed=5)
    marked = [n.target for n in mod.nodes("get_attr") if M.get(n, M.Sparsity24) is not None]
    assert marked, f"{kinds}: nothing went sparse"
    for t in marked:
        ref.set_param(t, hand_mask(ref.get_param(t)))
        assert torch.equal(mod.get_param(t), ref.get_param(t))
    ref.recompile()
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    assert rel_err(mod(x), ref(x)) < 1e-12 and ref(x).abs().max() > 0
    text = print_module(mod)
    run_twice_is_once(mod, str(p))
    assert print_module(mod) == text


def test_search_finds_structure_in_channel_magnitudes():
    """Input channels in runs of 4 alike (4 large, 4 small, ...): identity groups waste 2 large weights per
    row, a good order pairs 2 large with 2 small. The search must recover most of that."""
    torch.manual_seed(0)
    model = MLP().eval().double()
    with torch.no_grad():
        scale = torch.tensor([10.0] * 4 + [1.0] * 4).repeat(512 // 8)
        model.down.weight.mul_(scale)
    mod = sparsec.trace(model, (torch.randn(4, 256, dtype=torch.float64),))
    (res,) = [r for r in permute_for_24(mod, ["down.weight"]) if not r.skipped]
    w = model.down.weight.detach().abs()
    total = float(w.sum())
    best = float(w[:, scale == 10.0].sum())  # every large weight kept, every small one dropped
    assert res.before / total < 0.8 * best / total
    assert res.after / total > 0.97 * best / total
    mod.recompile()
    _check_same_function(mod, model)
