"""Structured channel pruning: the channel dependency graph, planner and pass.

- :class:`ChannelDepGraph` (an analysis) groups coupled (node, dim) channel
  spaces using one rule per ATen op (:func:`channel_rule`);
- :class:`ChannelPrunePlanner` makes an immutable :class:`PrunePlan`;
- :func:`apply_plan` / the ``prune-channels`` pass apply it, and
  :func:`masked_reference` builds the model the pruned one must equal;
- :mod:`~sparsec.passes.prune.latency`: the per-layer latency table
  (:class:`LatencyLUT`, measured by :func:`profile`) and the budget solver
  behind ``prune-channels{objective=latency}``.
"""

from sparsec.passes.prune.apply import PruneChannels, apply_plan, kept_indices, masked_reference
from sparsec.passes.prune.depgraph import ChannelDepGraph, ChannelGroup, Diagnostic, RuleContext
from sparsec.passes.prune.latency import LatencyLUT, fingerprint, layer_specs
from sparsec.passes.prune.planner import ChannelPrunePlanner, GroupPlan, LatencyPlan, PrunePlan, round_width
from sparsec.passes.prune.rules import RULES, Unsupported, channel_rule, unregister

__all__ = [
    "ChannelDepGraph", "ChannelGroup", "ChannelPrunePlanner", "Diagnostic", "GroupPlan", "LatencyLUT",
    "LatencyPlan", "PruneChannels", "PrunePlan", "RULES", "RuleContext", "Unsupported", "apply_plan",
    "channel_rule", "fingerprint", "kept_indices", "layer_specs", "masked_reference", "round_width", "unregister",
]
