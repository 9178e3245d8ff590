"""PrunePlan / ChannelPrunePlanner / the prune-channels pass: widths, importances,
protection, JSON round trip, printing, option validation and error messages."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import torch
from torch import nn

from sparsec.errors import PassFailedError, PipelineError, PipelineFailure, UsageError
from sparsec.ir.trace import trace
from sparsec.passes import PassManager
from sparsec.passes.prune import ChannelDepGraph, ChannelPrunePlanner, PruneChannels, PrunePlan, round_width
from sparsec.registry import registry

from .util import prune_and_compare, randomise


class Net(nn.Module):
    def __init__(self, width=32):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.c1 = nn.Conv2d(width, 48, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(48)
        self.c2 = nn.Conv2d(48, width, 1)
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = x + self.c2(torch.relu(self.bn1(self.c1(x))))
        return self.head(x.mean((2, 3)))


def _mod(width=32):
    torch.manual_seed(0)
    return trace(randomise(Net(width).eval()).double(), torch.randn(2, 3, 6, 6, dtype=torch.float64))


@pytest.mark.parametrize("n,ratio,round_to,min_ch,want", [
    (64, 0.5, 8, 1, 32),
    (48, 0.5, 8, 1, 24),
    (100, 0.5, 8, 1, 48),   # 50 -> nearest multiple of 8
    (12, 0.5, 8, 1, 8),     # never below one rounding unit
    (6, 0.5, 8, 1, 6),      # narrower than round_to: kept whole
    (32, 0.0, 8, 1, 32),
    (10, 0.9, 1, 1, 1),
    (10, 0.9, 1, 3, 3),     # min_channels
    (16, 0.99, 4, 1, 4),
])
def test_round_width(n, ratio, round_to, min_ch, want):
    assert round_width(n, ratio, round_to, min_ch) == want


def test_plan_is_immutable_printable_and_round_trips():
    mod = _mod()
    plan = ChannelPrunePlanner(0.5, round_to=8).plan(mod)
    assert len(plan.groups) == 2 and all(len(g.kept) == g.size // 2 for g in plan.groups)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.ratio = 0.1
    assert isinstance(plan.groups, tuple) and isinstance(plan.groups[0].kept, tuple)
    text = str(plan)
    assert "PrunePlan(ratio=0.5, importance=l2): 2 groups" in text
    assert "group  producer" in text and "conv2d:1" in text
    assert "not pruned: linear:1: model output 'linear'" in text
    assert PrunePlan.from_json(plan.to_json()) == plan
    with pytest.raises(UsageError, match="not a valid plan JSON"):
        PrunePlan.from_json('{"version": 99}')


def test_plan_file_option_applies_the_same_pruning(tmp_path):
    mod = _mod()
    plan = ChannelPrunePlanner(0.5, importance="random", seed=3).plan(mod)
    path = tmp_path / "plan.json"
    path.write_text(plan.to_json())
    err, macs0, macs1, records, used = prune_and_compare(mod, plan=str(path))
    assert used == plan and err < 1e-9 and macs1 < macs0
    assert records[0].stats["channels_removed"] == sum(g.removed for g in plan.groups)


def test_plan_for_another_graph_is_refused(tmp_path):
    plan = ChannelPrunePlanner(0.5).plan(_mod(width=32))
    path = tmp_path / "plan.json"
    path.write_text(plan.to_json())
    with pytest.raises(PipelineFailure) as info:
        PassManager([PruneChannels(plan=str(path))]).run(_mod(width=24))
    assert isinstance(info.value.__cause__, PassFailedError)
    assert "does not match this graph" in str(info.value.__cause__)


def test_missing_plan_file(tmp_path):
    with pytest.raises(PipelineFailure) as info:
        PassManager([PruneChannels(plan=str(tmp_path / "nope.json"))]).run(_mod())
    assert "pruning plan file" in str(info.value.__cause__) and "does not exist" in str(info.value.__cause__)


@pytest.mark.parametrize("importance", ["l1", "l2", "bn-scale", "taylor", "random"])
def test_each_importance_runs_and_is_exact(importance, caplog):
    mod = _mod()
    with caplog.at_level(logging.WARNING, logger="sparsec.passes.prune"):
        err, macs0, macs1, records, plan = prune_and_compare(mod, importance=importance)
    assert err < 1e-9 and macs1 < macs0 and records[0].modified
    if importance == "taylor":
        assert "taylor importance from random inputs is for testing only" in caplog.text


def test_importances_rank_differently_and_random_is_seeded():
    mod = _mod()
    kept = {imp: ChannelPrunePlanner(0.5, importance=imp, round_to=1).plan(mod).groups[0].kept
            for imp in ("l1", "l2", "bn-scale", "random")}
    assert len(set(kept.values())) > 1
    again = ChannelPrunePlanner(0.5, importance="random", round_to=1).plan(mod).groups[0].kept
    other = ChannelPrunePlanner(0.5, importance="random", round_to=1, seed=1).plan(mod).groups[0].kept
    assert again == kept["random"] and other != again


def test_l1_keeps_the_heaviest_channel():
    mod = _mod()
    with torch.no_grad():
        w = mod.get_param("c1.weight")
        w[7] *= 1000  # c1's out-channel 7 dominates its group's L1 norm
    plan = ChannelPrunePlanner(0.9, importance="l1", round_to=1).plan(mod)
    g = next(g for g in plan.groups if g.label == "conv2d_1:1")
    assert 7 in g.kept


def test_bn_scale_follows_gamma():
    mod = _mod()
    with torch.no_grad():
        gamma = mod.get_param("bn1.weight")
        gamma.copy_(torch.arange(48, dtype=gamma.dtype) + 1)
    g = next(g for g in ChannelPrunePlanner(0.5, importance="bn-scale", round_to=1).plan(mod).groups
             if g.label == "conv2d_1:1")
    assert g.kept == tuple(range(24, 48))


def test_taylor_with_a_callable_and_a_batch():
    mod = _mod()
    batch = (torch.randn(2, 3, 6, 6, dtype=torch.float64),)
    by_batch = ChannelPrunePlanner(0.5, importance="taylor", calibration=batch).plan(mod)
    by_loss = ChannelPrunePlanner(0.5, importance="taylor",
                                  calibration=lambda gm: gm(*batch).pow(2).mean()).plan(mod)
    assert by_batch == by_loss
    assert all(p.grad is None for p in mod.gm.parameters())  # gradients are not left behind
    with pytest.raises(UsageError, match="taylor importance needs a calibration batch"):
        ChannelPrunePlanner(0.5, importance="taylor")


def test_global_scope():
    mod = _mod()
    plan = ChannelPrunePlanner(0.5, scope="global", round_to=1).plan(mod)
    removed = sum(g.removed for g in plan.groups)
    total = sum(g.size for g in mod.analysis(ChannelDepGraph).prunable())
    assert 0.3 * total <= removed <= 0.7 * total
    err, *_ = prune_and_compare(mod, scope="global", round_to=1)
    assert err < 1e-9


def test_round_to_larger_than_a_group_keeps_it_whole():
    mod = _mod(width=6)
    plan = ChannelPrunePlanner(0.5, round_to=8).plan(mod)
    assert [g.label for g in plan.groups] == ["conv2d_1:1"]  # the 6-wide residual group stays whole
    assert any("kept whole" in why for _, why in plan.skipped)


def test_protected_names():
    mod = _mod()
    # a node name protects the node's output channels
    plan = ChannelPrunePlanner(0.5, protected=("conv2d_1",)).plan(mod)
    assert [g.label for g in plan.groups] == ["conv2d:1"]
    assert any("protected by the user (conv2d_1)" in why for _, why in plan.skipped)
    # a parameter keeps its whole shape: both groups it touches stay whole
    plan = ChannelPrunePlanner(0.5, protected=("c1.weight",)).plan(mod)
    assert plan.groups == ()
    plan = ChannelPrunePlanner(0.5, protected=("stem",)).plan(mod)  # a module path protects its weight
    assert [g.label for g in plan.groups] == ["conv2d_1:1"]
    with pytest.raises(PassFailedError) as info:
        ChannelPrunePlanner(0.5, protected=("c1.wieght",)).plan(mod)
    msg = str(info.value)
    assert "protected name 'c1.wieght' is neither a node nor a parameter" in msg and "c1.weight" in msg


@pytest.mark.parametrize("options,message", [
    ({"ratio": 1.0}, "option 'ratio' of pass 'prune-channels' is out of range"),
    ({"ratio": -0.1}, "option 'ratio' of pass 'prune-channels' is out of range"),
    ({"round_to": 0}, "option 'round_to' of pass 'prune-channels' is out of range"),
    ({"min_channels": 0}, "option 'min_channels' of pass 'prune-channels' is out of range"),
    ({"importance": "l3"}, "option 'importance' of pass 'prune-channels' has a bad value"),
])
def test_bad_pass_options(options, message):
    with pytest.raises(PipelineError, match=message):
        PruneChannels(**options)


def test_bad_options_in_pipeline_text_and_planner():
    with pytest.raises(PipelineError, match="out of range"):
        PassManager.parse("prune-channels{ratio=1.5}")
    with pytest.raises(UsageError, match="pruning ratio out of range"):
        ChannelPrunePlanner(1.0)
    with pytest.raises(UsageError, match="min_channels must be at least 1"):
        ChannelPrunePlanner(0.5, min_channels=0)
    with pytest.raises(UsageError, match="round_to must be at least 1"):
        ChannelPrunePlanner(0.5, round_to=0)


def test_registry_and_pipeline_text():
    cls = registry().get("pass", "prune-channels")
    assert cls is PruneChannels and cls.changes_numerics and not cls.idempotent
    pm = PassManager.parse("prune-channels{ratio=0.25,round-to=4,importance=l1,protected=[stem]}")
    p = pm.passes[0]
    assert (p.ratio, p.round_to, p.importance, p.protected) == (0.25, 4, "l1", ("stem",))
    assert str(PassManager.parse(str(pm))) == str(pm)


def test_pass_stats_and_reexport():
    mod = _mod()
    records = PassManager([PruneChannels(ratio=0.5)]).run(mod)
    s = records[0].stats
    assert s["groups_pruned"] == 2 and s["channels_removed"] == 16 + 24
    assert s["params_after"] < s["params_before"]
    assert tuple(mod.get_param("bn.running_mean").shape) == (16,)
    ep = mod.export()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(ep.module()(x), mod(x))
