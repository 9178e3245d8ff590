"""A channel rule for your own op, so that structured pruning can see through it.

    python examples/custom_channel_rule.py

sparsec's pruner (``prune-channels``) knows which channels of which layers
must be removed together from one rule per ATen op. An op it has no rule for
makes every channel group it touches unprunable, with a diagnostic naming
the op, the node and the source line: it never guesses. This script defines
a custom op, ``example::channel_scale`` (``out[:, c] = x[:, c] * s[c]``, a
learned per-channel scale), shows the diagnostic, then registers a rule with
``@channel_rule`` and prunes through the op. The op's own parameter ``s`` is
sliced with the channels (it is coupled to them by the rule), and the pruned
model equals the consumer-side masked reference: the original model with the
removed channels zeroed where they are consumed.

A rule receives the fx node and a ``RuleContext`` ``g``:

- ``g.identity(a, b)``: every dim of ``a`` couples with the same dim of ``b``;
- ``g.same(a, da, b, db)``: ``a[da]`` couples with ``b[db]`` index for index;
- ``g.couple(a, da, ia, b, db, ib)``: an explicit index map;
- ``g.block(n, d, reason)``: this dim may not be pruned, and why;
- ``g.root(n, d)``: ``n[d]`` is a producer's output (a group worth pruning).

Ship such rules in the module that defines the op (or a sparsec plugin, see
``examples/plugin``), so they are registered whenever the op is.
"""

from __future__ import annotations

import torch
from torch import nn

import sparsec
from sparsec.passes import PassManager
from sparsec.passes.prune import ChannelDepGraph, PruneChannels, channel_rule, masked_reference, unregister


@torch.library.custom_op("example::channel_scale", mutates_args=())
def channel_scale(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return x * s.view(1, -1, 1, 1)


@channel_scale.register_fake
def _(x, s):
    return torch.empty_like(x)


OP = torch.ops.example.channel_scale.default


def channel_scale_rule(node, g):
    """out[:, c] = x[:, c] * s[c]: out couples with x dim by dim, and s with the channels."""
    x, s = node.args
    g.identity(x, node)
    g.same(s, 0, node, 1)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 32, 3, padding=1)
        self.s = nn.Parameter(torch.rand(32) + 0.5)
        self.c2 = nn.Conv2d(32, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        y = torch.ops.example.channel_scale(torch.relu(self.c1(x)), self.s)
        return self.fc(torch.relu(self.c2(y)).mean((2, 3)))


def main() -> dict:
    torch.manual_seed(0)
    model, x = Net().eval(), torch.randn(2, 3, 8, 8)
    mod = sparsec.trace(model, (x,), name="net")
    c1 = next(n for n in mod.graph.nodes if n.target == torch.ops.aten.conv2d.default)

    group = mod.analysis(ChannelDepGraph).group_of(c1, 1)
    print(f"without a rule: group {group.label()} prunable={group.prunable}\n  {group.why_not}\n")
    before = group.why_not

    channel_rule(OP)(channel_scale_rule)  # the same as decorating channel_scale_rule with @channel_rule(OP)
    try:
        mod = sparsec.trace(model, (x,), name="net")  # a fresh module: analyses are per module
        group = mod.analysis(ChannelDepGraph).group_of(c1.name, 1)
        print(f"with the rule:  group {group.label()} prunable={group.prunable}, {group.size} channels, "
              f"params {[t for _, t in group.params]}")
        prune = PruneChannels(ratio=0.5, round_to=8)
        plan = prune.make_plan(mod)
        reference = masked_reference(mod, plan)
        PassManager([prune]).run(mod)  # recompiles and verifies
        print(plan)
        x2 = torch.randn(2, 3, 8, 8)
        with torch.no_grad():
            out, want = mod(x2), reference(x2)
        err = float((out - want).abs().max() / want.abs().max())
        print(f"\ns: {tuple(model.s.shape)} -> {tuple(mod.get_param('s').shape)}; "
              f"pruned vs masked reference: max rel err {err:.2e}")
        return {"before": before, "prunable": group.prunable, "s_shape": tuple(mod.get_param("s").shape),
                "err": err, "plan": plan}
    finally:
        unregister(OP)  # leave the registry as we found it


if __name__ == "__main__":
    main()
