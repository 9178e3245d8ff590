"""The impossible plans of issue 3, each a clear error naming the group or the
name and the constraint: a ratio that would empty a layer, a round_to larger
than a layer, a protected layer the model does not have, a latency table made
for another model (tested with the solver, in test_latency.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsec.errors import PassFailedError, PipelineError, PipelineFailure, UsageError
from sparsec.ir.trace import trace
from sparsec.passes import PassManager
from sparsec.passes.prune import ChannelPrunePlanner, PruneChannels

from .util import randomise


class Net(nn.Module):
    def __init__(self, width=16):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.body = nn.Conv2d(width, 24, 3, padding=1)
        self.head = nn.Linear(24, 4)

    def forward(self, x):
        return self.head(torch.relu(self.body(torch.relu(self.stem(x)))).mean((2, 3)))


def _mod(width=16):
    torch.manual_seed(0)
    return trace(randomise(Net(width).eval()), torch.randn(1, 3, 6, 6))


@pytest.mark.parametrize("ratio", [1.0, 1.5])
def test_a_ratio_that_would_empty_a_layer(ratio):
    with pytest.raises(PipelineError, match=r"option 'ratio' of pass 'prune-channels' is out of range") as info:
        PassManager.parse(f"prune-channels{{ratio={ratio}}}")
    msg = str(info.value)
    assert "expected: 0 <= ratio < 1" in msg and "a ratio of 1 would empty every layer" in msg
    with pytest.raises(UsageError, match="pruning ratio out of range"):
        ChannelPrunePlanner(ratio)


def test_a_high_ratio_never_empties_a_layer():
    mod = _mod()
    plan = ChannelPrunePlanner(0.99, round_to=1).plan(mod)
    assert plan.groups and all(len(g.kept) >= 1 for g in plan.groups)


def test_round_to_larger_than_every_layer():
    mod = _mod()
    with pytest.raises(PassFailedError, match=r"round_to=32 is larger than every prunable group: nothing can be pruned") as info:
        PruneChannels(ratio=0.5, round_to=32).make_plan(mod)
    msg = str(info.value)
    assert "the widest prunable group, 2 (conv2d_1:1), has 24 units" in msg  # names the group
    assert "expected: round_to < 24" in msg and "fix:      lower round_to" in msg
    # through the pass manager, the failure names the pass and chains the cause
    with pytest.raises(PipelineFailure) as info:
        PassManager.parse("prune-channels{ratio=0.5,round-to=32}").run(mod)
    assert isinstance(info.value.__cause__, PassFailedError) and "prune-channels" in str(info.value)


def test_round_to_larger_than_one_layer_keeps_that_one_whole():
    plan = ChannelPrunePlanner(0.5, round_to=16).plan(_mod())
    assert [g.label for g in plan.groups] == ["conv2d_1:1"]  # 24 -> 16
    assert ("conv2d:1", "kept whole: 16 units round to all of them (round_to=16)") in plan.skipped


def test_a_protected_layer_that_does_not_exist():
    mod = _mod()
    with pytest.raises(PipelineFailure) as info:
        PassManager.parse("prune-channels{ratio=0.5,protected=[stem,bodyy]}").run(mod)
    err = info.value.__cause__
    assert isinstance(err, PassFailedError)
    msg = str(err)
    assert "protected name 'bodyy' is neither a node nor a parameter of the model" in msg
    assert "close matches: body.weight" in msg or "body" in msg.split("close matches:")[1]
