"""Apply a :class:`PrunePlan`: slice parameters, rewrite shape constants.

Every parameter is a ``get_attr`` node with channel spaces of its own, so
applying a plan is generic: index-select each parameter (weights, biases, BN
and norm statistics, positional embeddings...) along each pruned dim with
the kept indices, then let each op's ``resize`` hook rewrite its shape
constants (view/reshape sizes, split sizes, conv ``groups``, norm groups).
Producers get ``sparsec.pruned = before->after``.

:func:`masked_reference` builds the consumer-side masked reference the
pruned model must equal: the original graph where every use of a tensor
with a pruned dim sees those channels as zero (so each consumer ignores
them: a conv's ``weight[:, pruned]`` is zeroed in effect), and a layer norm
over a pruned dim normalises over the kept channels only.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
from torch import fx

from sparsec.errors import PassFailedError, PipelineError, UsageError
from sparsec.ir import meta as M
from sparsec.passes.base import Pass, PassResult
from sparsec.passes.prune import rules as R
from sparsec.passes.prune.depgraph import ChannelDepGraph
from sparsec.passes.prune.planner import ChannelPrunePlanner, PrunePlan, random_calibration

log = logging.getLogger("sparsec.passes.prune")

aten = torch.ops.aten


def kept_indices(mod, plan: PrunePlan) -> dict[tuple[str, int], torch.Tensor]:
    """(node name, dim) -> kept indices (sorted LongTensor), for every pruned space."""
    dg = mod.analysis(ChannelDepGraph)
    out: dict[tuple[str, int], torch.Tensor] = {}
    for gp in plan.groups:
        if gp.group >= len(dg.groups):
            raise PassFailedError(f"the plan names group {gp.group} ({gp.label}), which this graph does not have",
                                  fix="make the plan from this very graph (same model, same trace)")
        g = dg.groups[gp.group]
        members = tuple(f"{n}:{d}" for n, d in g.members)
        if members != gp.members or g.size != gp.size:
            raise PassFailedError(
                f"the plan's group {gp.group} ({gp.label}) does not match this graph",
                expected=f"{gp.size} units over {len(gp.members)} members starting {gp.members[:3]}",
                actual=f"{g.size} units over {len(members)} members starting {members[:3]}",
                fix="make the plan from this very graph (same model, same trace)",
            )
        if not g.prunable:
            raise PassFailedError(f"the plan prunes group {gp.group} ({gp.label}), which is not prunable",
                                  actual=g.why_not, fix="drop this group from the plan")
        kept = np.asarray(gp.kept, dtype=np.int64)
        if len(kept) == 0 or len(set(gp.kept)) != len(kept) or kept.min() < 0 or kept.max() >= g.size:
            raise PassFailedError(
                f"the plan's group {gp.group} ({gp.label}) keeps an impossible set of units",
                expected=f"1 to {g.size} distinct unit indices in [0, {g.size})", actual=f"{len(kept)} indices",
            )
        mask = np.zeros(g.size, dtype=bool)
        mask[kept] = True
        for (n, d), unit in zip(g.members, g.unit_of):
            idx = np.nonzero(mask[unit])[0]
            if len(idx) == 0:
                raise PassFailedError(
                    f"the plan empties '{n}' dim {d} in group {gp.group} ({gp.label})",
                    expected="at least one kept channel in every member of the group",
                    fix="keep at least one unit of each part (each cat input / split output)",
                )
            if len(idx) < len(unit):
                out[(n, d)] = torch.from_numpy(idx)
    return out


def apply_plan(mod, plan: PrunePlan) -> dict[str, int]:
    """Prune ``mod`` in place by ``plan``; the caller (or the PassManager) recompiles."""
    kept = kept_indices(mod, plan)
    if not kept:
        return {"groups_pruned": 0, "channels_removed": 0}
    dg = mod.analysis(ChannelDepGraph)
    by_name = {n.name: n for n in mod.graph.nodes}
    pruned_dims: dict[str, dict[int, torch.Tensor]] = {}
    for (n, d), idx in kept.items():
        pruned_dims.setdefault(n, {})[d] = idx

    def old_shape(n: fx.Node) -> tuple[int, ...]:
        return tuple(int(s) for s in n.meta["val"].shape)

    def new_shape(n: fx.Node) -> tuple[int, ...]:
        s = list(old_shape(n))
        for d, idx in pruned_dims.get(n.name, {}).items():
            s[d] = len(idx)
        return tuple(s)

    def kept_of(n: fx.Node, d: int):
        return pruned_dims.get(n.name, {}).get(d)

    done: set[str] = set()
    for node in list(mod.graph.nodes):
        if node.op == "get_attr" and node.name in pruned_dims and node.target not in done:
            t = mod.get_param(node.target)
            for d, idx in sorted(pruned_dims[node.name].items()):
                t = t.index_select(d, idx.to(t.device))
            mod.set_param(node.target, t.contiguous())
            done.add(node.target)
    for node in list(mod.graph.nodes):
        if node.op != "call_function":
            continue
        rule = R.rule_for(node.target)
        if rule is not None and rule.resize is not None:
            rule.resize(node, new_shape, kept_of)
    removed = 0
    for gp in plan.groups:
        g = dg.groups[gp.group]
        removed += gp.removed
        for i in g.roots:
            n, d = g.members[i]
            node = by_name[n]
            before, after = old_shape(node)[d], new_shape(node)[d]
            if after < before:
                M.put(node, M.Pruned(before, after))
    mod.invalidate()
    return {"groups_pruned": len(plan.groups), "channels_removed": removed}


def masked_reference(mod, plan: PrunePlan) -> fx.GraphModule:
    """The original model with every pruned channel zeroed where it is consumed.

    Returns a new GraphModule (``mod`` is not changed). Run it on the same
    inputs as the pruned model: the outputs agree to rounding.
    """
    kept = kept_indices(mod, plan)
    gm = copy.deepcopy(mod.gm)
    by_name = {n.name: n for n in gm.graph.nodes}
    pruned_dims: dict[str, dict[int, torch.Tensor]] = {}
    for (n, d), idx in kept.items():
        pruned_dims.setdefault(n, {})[d] = idx
    counter = [0]

    def buffer(t: torch.Tensor, hint: str) -> str:
        counter[0] += 1
        name = f"_sparsec_mask_{counter[0]}"
        gm.register_buffer(name, t)
        return name

    for name, dims in pruned_dims.items():
        node = by_name[name]
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor) or not val.is_floating_point():
            continue
        mask = torch.ones([1] * val.dim(), dtype=torch.bool)
        for d, idx in dims.items():
            md = torch.zeros(int(val.shape[d]), dtype=torch.bool)
            md[idx] = True
            shape = [1] * val.dim()
            shape[d] = -1
            mask = mask & md.reshape(shape)
        with gm.graph.inserting_after(node):
            mnode = gm.graph.get_attr(buffer(mask, name))
        with gm.graph.inserting_after(mnode):  # where, not a multiply: a pruned inf/nan must not leak
            masked = gm.graph.call_function(aten.where.ScalarOther, (mnode, node, 0.0))
        node.replace_all_uses_with(masked, delete_user_cb=lambda u: u is not masked)
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        rule = R.rule_for(node.target)
        if rule is None or rule.reference is None:
            continue
        x = node.args[0]
        src = x.args[1] if x.op == "call_function" and x.target is aten.where.ScalarOther \
            and str(x.args[0].target).startswith("_sparsec_mask_") else x
        nd = src.meta["val"].dim()
        idx = pruned_dims.get(src.name, {}).get(nd - 1)
        if idx is None:
            continue
        with gm.graph.inserting_before(node):
            keep = gm.graph.get_attr(buffer(idx.clone(), src.name))
        node.target = rule.reference(node, idx)
        node.kwargs = {**node.kwargs, "keep": keep}
    gm.graph.lint()
    gm.recompile()
    return gm


@dataclasses.dataclass(frozen=True)
class PruneChannels(Pass):
    """Structured channel pruning: remove whole channels, coupled across layers.

    Builds the channel dependency graph (residual adds, concatenations,
    splits, depthwise and grouped convs, flatten->linear, squeeze-excite...),
    plans which channels of each prunable group to keep by ``importance``
    (or reads a JSON ``plan``), and slices every weight, bias, norm
    statistic and shape constant to match. Groups touching an op without a
    channel rule, and the model's inputs and outputs, are left whole.
    ``taylor`` from the pipeline uses random inputs: for testing only.

    ``objective=latency`` (HALP-style) ignores ``ratio`` and ``scope``: with a
    latency table from ``sparsec profile`` (``lut``), it picks each group's
    width so that the predicted latency of the conv/linear layers at
    ``batch`` is at most ``budget`` times the dense one, keeping the most
    importance; ``max_ratio`` caps what any one group loses. The stats give
    the predicted and dense latencies (ms).

    Example: sparsec opt m.pt2 --pipeline 'prune-channels{ratio=0.5,round-to=8}'
    Example: sparsec opt m.pt2 --pipeline 'prune-channels{objective=latency,budget=0.5,lut=lut.json,round-to=16}'
    """

    name: ClassVar[str] = "prune-channels"
    summary: ClassVar[str] = "remove whole channels (coupled across layers) by importance"
    changes_numerics: ClassVar[bool] = True
    idempotent: ClassVar[bool] = False

    ratio: float = 0.5
    importance: Literal["l1", "l2", "bn-scale", "taylor", "random"] = "l2"
    round_to: int = 8
    min_channels: int = 1
    scope: Literal["uniform", "global"] = "uniform"
    protected: tuple[str, ...] = ()
    plan: str | None = None
    seed: int = 0
    objective: Literal["ratio", "latency"] = "ratio"
    budget: float | None = None
    lut: str | None = None
    batch: int = 256
    max_ratio: float = 1.0

    def validate(self) -> None:
        if not 0 <= self.ratio < 1:
            raise PipelineError(f"option 'ratio' of pass '{self.name}' is out of range",
                                expected="0 <= ratio < 1", actual=repr(self.ratio),
                                fix="a ratio of 1 would empty every layer; use e.g. ratio=0.5")
        if self.round_to < 1:
            raise PipelineError(f"option 'round_to' of pass '{self.name}' is out of range",
                                expected="round_to >= 1", actual=repr(self.round_to))
        if self.min_channels < 1:
            raise PipelineError(f"option 'min_channels' of pass '{self.name}' is out of range",
                                expected="min_channels >= 1 (a layer may never be emptied)",
                                actual=repr(self.min_channels))
        if self.objective == "latency":
            if self.lut is None or self.budget is None:
                raise PipelineError(f"objective=latency of pass '{self.name}' needs both budget= and lut=",
                                    actual=f"budget={self.budget!r}, lut={self.lut!r}",
                                    fix="e.g. prune-channels{objective=latency,budget=0.5,lut=lut.json}; "
                                        "make the table with `sparsec profile --target h100 --model SPEC -o lut.json`")
            if not 0 < self.max_ratio <= 1:
                raise PipelineError(f"option 'max_ratio' of pass '{self.name}' is out of range",
                                    expected="0 < max_ratio <= 1 (the most of any group removed)",
                                    actual=repr(self.max_ratio))
            if not 0 < self.budget <= 1:
                raise PipelineError(f"option 'budget' of pass '{self.name}' is out of range",
                                    expected="0 < budget <= 1 (a fraction of the dense latency)",
                                    actual=repr(self.budget))
        elif self.budget is not None or self.lut is not None or self.max_ratio != 1.0:
            raise PipelineError(f"options 'budget', 'lut' and 'max_ratio' of pass '{self.name}' need objective=latency",
                                fix="add objective=latency, or drop budget=, lut= and max-ratio=")
        if self.batch < 1:
            raise PipelineError(f"option 'batch' of pass '{self.name}' is out of range",
                                expected="batch >= 1", actual=repr(self.batch))

    def make_plan(self, mod) -> PrunePlan:
        if self.plan is not None:
            path = Path(self.plan)
            if not path.is_file():
                raise UsageError(f"pruning plan file '{self.plan}' does not exist",
                                 fix="write one with PrunePlan.to_json(), or drop plan=")
            return PrunePlan.from_json(path.read_text())
        calibration = None
        if self.importance == "taylor":
            log.warning("prune-channels: taylor importance from random inputs is for testing only; "
                        "use ChannelPrunePlanner(calibration=...) with real data")
            calibration = random_calibration(mod, self.seed)
        planner = ChannelPrunePlanner(
            self.ratio, self.importance, self.round_to, self.min_channels, self.protected or None,
            self.scope, self.seed, calibration, self.objective, self.budget, self.lut, self.batch, self.max_ratio,
        )
        return planner.plan(mod)

    def run(self, mod, ctx) -> PassResult:
        plan = self.make_plan(mod)
        before = _param_count(mod)
        stats = apply_plan(mod, plan)
        log.info("prune-channels:\n%s", plan)
        if plan.latency is not None:
            stats = {**stats, "dense_latency_ms": round(plan.latency.dense_ms, 6),
                     "predicted_latency_ms": round(plan.latency.predicted_ms, 6),
                     "predicted_latency_frac": round(plan.latency.predicted_ms / plan.latency.dense_ms, 6)}
        return PassResult(modified=stats["groups_pruned"] > 0, stats={
            **stats, "params_before": before, "params_after": _param_count(mod)})


def _param_count(mod) -> int:
    return sum(p.numel() for p in mod.gm.parameters())
