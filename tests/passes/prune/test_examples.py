"""The custom-op channel rule example (examples/custom_channel_rule.py) runs and holds."""

from __future__ import annotations

import runpy
from pathlib import Path

import torch

from sparsec.passes.prune import RULES

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "custom_channel_rule.py"


def test_custom_channel_rule_example(capsys):
    ns = runpy.run_path(str(EXAMPLE), run_name="custom_channel_rule_example")
    out = ns["main"]()
    # without the rule: unprunable, and the diagnostic names the op, the node and the source line
    assert "no channel rule for example.channel_scale" in out["before"]
    assert "node 'channel_scale'" in out["before"] and "custom_channel_rule.py:" in out["before"]
    # with it: pruned through the op, its own parameter sliced, exact against the masked reference
    assert out["prunable"] and out["s_shape"] == (16,)
    assert out["err"] < 1e-5  # float32
    assert [g.label for g in out["plan"].groups] == ["conv2d:1", "conv2d_1:1"]
    assert torch.ops.example.channel_scale.default not in RULES  # the example unregisters its rule
    printed = capsys.readouterr().out
    assert "with the rule:  group conv2d:1 prunable=True, 32 channels" in printed
