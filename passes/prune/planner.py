"""``ChannelPrunePlanner`` -> ``PrunePlan``: which units of each group to keep.

Width of a part (the units held by the same members: each cat input, each
split output, or the whole group) of ``n`` units::

    kept = min(n, max(min_channels, round_to * round(n * (1 - ratio) / round_to), round_to))

so it is a multiple of ``round_to`` (counted in units: a channel, or a whole
conv group / norm group), never zero and never more than ``n``. A part of
``n <= round_to`` units is kept whole: a layer narrower than the rounding
unit is not worth pruning, and rounding would only ever keep all of it.

Importance (higher is kept), summed over every parameter of the group on
the pruned dim (producer out-channel weights, BN/LN scales and shifts,
consumer in-channel weights):

- ``l1``/``l2``: the weights' L1 norm / L2 norm;
- ``bn-scale``: ``|gamma|`` of the group's normalisation layers (``l2`` where it has none);
- ``taylor``: first-order ``|w * dL/dw|``, from a calibration batch or a loss callable;
- ``random``: a seeded random baseline.

``protected`` names nodes (their output channels stay whole) or parameters
and module paths (``"layer1.0.conv1"`` means its weight; the parameter keeps
its whole shape, so every group it touches stays whole). The model's inputs
and outputs are always protected.

``scope="uniform"`` prunes every part by ``ratio``; ``scope="global"`` ranks
units across groups (importance divided by its group's mean) and removes the
lowest ``ratio`` of them all, each part then rounded as above.

``objective="latency"`` ignores ``ratio`` and ``scope``: given a latency
table (``lut``, see :mod:`sparsec.passes.prune.latency`) it picks each
group's width so that the predicted latency at ``batch`` is at most
``budget`` times the dense one, keeping the most importance.

An impossible plan is an error naming the group and the constraint: a
``round_to`` larger than every prunable group (nothing could be pruned), a
protected name the model does not have, a latency table made for another
model, or a latency budget that no widths reach.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
from typing import Any, Callable, Sequence

import numpy as np
import torch

from sparsec.errors import PassFailedError, UsageError
from sparsec.passes.prune.depgraph import ChannelDepGraph, ChannelGroup

log = logging.getLogger("sparsec.passes.prune")

IMPORTANCES = ("l1", "l2", "bn-scale", "taylor", "random")
SCOPES = ("uniform", "global")
OBJECTIVES = ("ratio", "latency")
PLAN_VERSION = 1


@dataclasses.dataclass(frozen=True)
class GroupPlan:
    """Keep ``kept`` (unit indices, sorted) of the group ``group``'s ``size`` units."""

    group: int
    label: str
    members: tuple[str, ...]
    size: int
    kept: tuple[int, ...]

    @property
    def removed(self) -> int:
        return self.size - len(self.kept)


@dataclasses.dataclass(frozen=True)
class PrunePlan:
    """An immutable, printable, JSON-serialisable pruning plan.

    A plan belongs to the graph it was made for: ``apply_plan`` checks that
    each group's members still match.
    """

    groups: tuple[GroupPlan, ...]
    ratio: float
    importance: str
    skipped: tuple[tuple[str, str], ...] = ()  # (group label, why it is not pruned)
    latency: LatencyPlan | None = None  # objective=latency: the budget and the predictions

    def __str__(self) -> str:
        rows = [("group", "producer", "members", "units", "kept", "removed")]
        for g in self.groups:
            rows.append((str(g.group), g.label, str(len(g.members)), str(g.size), str(len(g.kept)), str(g.removed)))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        head = f"ratio={self.ratio}" if self.latency is None else str(self.latency)
        lines = [f"PrunePlan({head}, importance={self.importance}): "
                 f"{len(self.groups)} groups, {sum(g.removed for g in self.groups)} units removed"]
        for r in rows:
            lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        for label, why in self.skipped:
            lines.append(f"  not pruned: {label}: {why}")
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps({"version": PLAN_VERSION, "ratio": self.ratio, "importance": self.importance,
                           "groups": [dataclasses.asdict(g) for g in self.groups],
                           "skipped": [list(s) for s in self.skipped],
                           "latency": dataclasses.asdict(self.latency) if self.latency else None}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "PrunePlan":
        try:
            data = json.loads(text)
            if data.get("version") != PLAN_VERSION:
                raise ValueError(f"plan version {data.get('version')!r}, expected {PLAN_VERSION}")
            groups = tuple(
                GroupPlan(int(g["group"]), str(g["label"]), tuple(g["members"]), int(g["size"]), tuple(int(k) for k in g["kept"]))
                for g in data["groups"]
            )
            lat = data.get("latency")
            return cls(groups, float(data["ratio"]), str(data["importance"]),
                       tuple((str(a), str(b)) for a, b in data.get("skipped", ())),
                       LatencyPlan(**lat) if lat else None)
        except (ValueError, KeyError, TypeError) as exc:
            raise UsageError("the pruning plan is not a valid plan JSON", actual=f"{type(exc).__name__}: {exc}",
                             fix="write plans with PrunePlan.to_json()") from exc


@dataclasses.dataclass(frozen=True)
class LatencyPlan:
    """What a latency-objective plan promised: predicted ms of the conv/linear layers at ``batch``."""

    budget: float
    batch: int
    lut_fingerprint: str
    dense_ms: float
    predicted_ms: float

    def __str__(self) -> str:
        return (f"objective=latency, budget={self.budget:g}, batch={self.batch}: predicted "
                f"{self.predicted_ms:.4f} of {self.dense_ms:.4f} ms dense ({self.predicted_ms / self.dense_ms:.3f}x)")


def round_width(n: int, ratio: float, round_to: int, min_channels: int) -> int:
    """Units to keep of a part of ``n`` (see the module docstring)."""
    if n <= round_to:
        return n
    k = round_to * int(np.floor(n * (1 - ratio) / round_to + 0.5))
    return int(min(n, max(min_channels, k, round_to)))


@dataclasses.dataclass(frozen=True)
class ChannelPrunePlanner:
    ratio: float
    importance: str = "l2"
    round_to: int = 8
    min_channels: int = 1
    protected: tuple[str, ...] | None = None
    scope: str = "uniform"
    seed: int = 0
    calibration: Any = None  # a batch of inputs (tuple) or a callable gm -> scalar loss, for taylor
    objective: str = "ratio"
    budget: float | None = None  # objective=latency: predicted latency <= budget * dense
    lut: Any = None  # objective=latency: a LatencyLUT, or the path of one
    batch: int = 256  # objective=latency: the batch size of the table to plan for
    max_ratio: float = 1.0  # objective=latency: no group loses more than this fraction of its units

    def __post_init__(self) -> None:
        if not 0 <= self.ratio < 1:
            raise UsageError("pruning ratio out of range", expected="0 <= ratio < 1", actual=str(self.ratio),
                             fix="a ratio of 1 would empty every layer; use e.g. 0.5")
        if self.round_to < 1:
            raise UsageError("round_to must be at least 1", actual=str(self.round_to))
        if self.min_channels < 1:
            raise UsageError("min_channels must be at least 1 (a layer may never be emptied)",
                             actual=str(self.min_channels))
        if self.importance not in IMPORTANCES:
            raise UsageError(f"unknown importance '{self.importance}'", fix=f"use one of {', '.join(IMPORTANCES)}")
        if self.scope not in SCOPES:
            raise UsageError(f"unknown scope '{self.scope}'", fix=f"use one of {', '.join(SCOPES)}")
        if self.objective not in OBJECTIVES:
            raise UsageError(f"unknown objective '{self.objective}'", fix=f"use one of {', '.join(OBJECTIVES)}")
        if self.objective == "latency":
            if self.lut is None:
                raise UsageError("objective=latency needs a latency table (lut)",
                                 fix="make one with `sparsec profile --target h100 --model SPEC -o lut.json`, "
                                     "then pass lut=lut.json")
            if not 0 < self.max_ratio <= 1:
                raise UsageError("max_ratio must be in (0, 1]", actual=repr(self.max_ratio))
            if self.budget is None or not 0 < self.budget <= 1:
                raise UsageError("objective=latency needs a budget in (0, 1]", actual=repr(self.budget),
                                 fix="e.g. budget=0.5: at most half the dense latency")
        elif self.budget is not None or self.lut is not None or self.max_ratio != 1.0:
            raise UsageError("budget, lut and max_ratio apply to objective=latency only",
                             fix="add objective=latency, or drop budget/lut/max_ratio")
        if self.importance == "taylor" and self.calibration is None:
            raise UsageError("taylor importance needs a calibration batch or a loss callable",
                             fix="pass calibration=(inputs...) or calibration=lambda gm: loss")

    # -- planning ----------------------------------------------------------------------
    def plan(self, mod) -> PrunePlan:
        dg = mod.analysis(ChannelDepGraph)
        protected_groups = self._protected_groups(mod, dg)
        candidates, skipped = [], []
        for g in dg.groups:
            if not g.roots:
                continue
            if not g.prunable:
                skipped.append((g.label(), g.why_not))
            elif g.id in protected_groups:
                skipped.append((g.label(), f"protected by the user ({protected_groups[g.id]})"))
            else:
                candidates.append(g)
        self._check_round_to(candidates)
        scores = self._scores(mod, candidates)
        latency = None
        if self.objective == "latency":
            keep, latency = self._latency(mod, candidates, scores)
        elif self.scope == "global" and candidates:
            keep = self._global(candidates, scores)
        else:
            keep = {g.id: self._uniform(g, scores[g.id], self.ratio) for g in candidates}
        plans = []
        for g in candidates:
            kept = tuple(int(k) for k in sorted(keep[g.id]))
            if len(kept) < g.size:
                plans.append(GroupPlan(g.id, g.label(), tuple(f"{n}:{d}" for n, d in g.members), g.size, kept))
            elif g.size <= self.round_to:
                skipped.append((g.label(), f"kept whole: {g.size} units round to all of them (round_to={self.round_to})"))
            elif self.objective == "latency":
                skipped.append((g.label(), "kept whole: the latency budget is met without it"))
            elif self.ratio > 0:
                skipped.append((g.label(), f"kept whole: {g.size} units round to all of them (round_to={self.round_to})"))
        return PrunePlan(tuple(plans), self.ratio if latency is None else 0.0, self.importance, tuple(skipped), latency)

    def _check_round_to(self, candidates: list[ChannelGroup]) -> None:
        """A round_to wider than every prunable group would prune nothing: say so, naming the widest."""
        if not candidates or (self.objective == "ratio" and self.ratio == 0):
            return
        widest = max(candidates, key=lambda g: g.size)
        if widest.size <= self.round_to:
            raise PassFailedError(
                f"round_to={self.round_to} is larger than every prunable group: nothing can be pruned",
                where=f"the widest prunable group, {widest.id} ({widest.label()}), has {widest.size} units",
                expected=f"round_to < {widest.size} (round_to counts units: channels, or whole conv/norm groups)",
                actual=f"round_to={self.round_to}",
                fix=f"lower round_to (e.g. round_to={max(1, widest.size // 4)})",
            )

    def _latency(self, mod, candidates: list[ChannelGroup], scores) -> tuple[dict[int, np.ndarray], LatencyPlan]:
        from sparsec.passes.prune.latency import LatencyLUT, solve

        lut = self.lut if isinstance(self.lut, LatencyLUT) else LatencyLUT.load(self.lut)
        sol = solve(mod, lut, candidates, scores, budget=float(self.budget), batch=self.batch,
                    round_to=self.round_to, min_channels=self.min_channels, max_ratio=self.max_ratio)
        return dict(sol.keep), LatencyPlan(float(self.budget), self.batch, lut.fingerprint, sol.dense_ms, sol.predicted_ms)

    def _uniform(self, g: ChannelGroup, score: np.ndarray, ratio: float) -> np.ndarray:
        out = []
        for part in g.partitions():
            k = round_width(len(part), ratio, self.round_to, self.min_channels)
            order = np.argsort(-score[part], kind="stable")
            out.append(part[order[:k]])
        return np.concatenate(out)

    def _global(self, groups: list[ChannelGroup], scores: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
        norm = {g.id: scores[g.id] / max(float(scores[g.id].mean()), 1e-30) for g in groups}
        allv = np.concatenate(list(norm.values()))
        threshold = np.quantile(allv, self.ratio) if len(allv) else 0.0
        out = {}
        for g in groups:
            kept = []
            for part in g.partitions():
                frac_removed = float((norm[g.id][part] < threshold).mean())
                frac_removed = min(frac_removed, 1 - 1 / max(len(part), 1))
                k = round_width(len(part), frac_removed, self.round_to, self.min_channels)
                order = np.argsort(-norm[g.id][part], kind="stable")
                kept.append(part[order[:k]])
            out[g.id] = np.concatenate(kept)
        return out

    # -- protection -------------------------------------------------------------------
    def _protected_groups(self, mod, dg: ChannelDepGraph) -> dict[int, str]:
        out: dict[int, str] = {}
        if not self.protected:
            return out
        nodes = {n.name: n for n in mod.graph.nodes}
        params = {n.target: n for n in mod.graph.nodes if n.op == "get_attr"}
        for name in self.protected:
            node = nodes.get(name) or params.get(name)
            if node is None:
                # a module path like "layer1.0.conv1" protects its weight
                node = params.get(name + ".weight")
            if node is None:
                close = difflib.get_close_matches(name, list(nodes) + list(params), n=5, cutoff=0.5)
                raise PassFailedError(
                    f"protected name '{name}' is neither a node nor a parameter of the model",
                    expected="a node name (as printed by `sparsec inspect`) or a parameter like 'layer1.0.conv1.weight'",
                    actual=f"close matches: {', '.join(close)}" if close else "no close matches",
                    fix="correct the name in protected=(...)",
                )
            for (n, d), (gid, _) in dg.space_group.items():
                if n == node.name:
                    out.setdefault(gid, name)
        return out

    # -- importance --------------------------------------------------------------------
    def _scores(self, mod, groups: Sequence[ChannelGroup]) -> dict[int, np.ndarray]:
        if self.importance == "random":
            rng = np.random.default_rng(self.seed)
            return {g.id: rng.random(g.size) for g in groups}
        grads = self._taylor_grads(mod) if self.importance == "taylor" else None
        out = {}
        for g in groups:
            params, kind = g.params, self.importance
            if kind == "bn-scale":
                norm_params = [(i, t) for i, t in params if _is_norm_weight(mod, t)]
                if norm_params:
                    params = tuple(norm_params)
                else:
                    log.info("bn-scale: group %s has no norm layer; using l2", g.label())
                    kind = "l2"
            score = np.zeros(g.size)
            for i, target in params:
                w = mod.get_param(target).detach().double()
                if w.dim() == 0:
                    continue
                dim = g.members[i][1]
                if kind in ("l1", "bn-scale"):
                    v = w.abs()
                elif kind == "taylor":
                    gw = grads.get(target)
                    if gw is None:
                        continue
                    v = (w * gw.double()).abs()
                else:
                    v = w * w
                other = [d for d in range(w.dim()) if d != dim]
                per = (v.sum(dim=other) if other else v).numpy()
                np.add.at(score, g.unit_of[i], per)
            out[g.id] = np.sqrt(score) if kind == "l2" else score
        return out

    def _taylor_grads(self, mod) -> dict[str, torch.Tensor]:
        gm = mod.gm
        params = dict(gm.named_parameters())
        saved = {k: p.requires_grad for k, p in params.items()}
        for p in params.values():
            p.requires_grad_(True)
            p.grad = None
        try:
            with torch.enable_grad():
                if callable(self.calibration):
                    loss = self.calibration(gm)
                else:
                    batch = self.calibration if isinstance(self.calibration, (tuple, list)) else (self.calibration,)
                    out = gm(*batch)
                    outs = [o for o in (out if isinstance(out, (tuple, list)) else (out,)) if isinstance(o, torch.Tensor)]
                    loss = sum(o.double().pow(2).mean() for o in outs)
                loss.backward()
            return {k: p.grad.detach().clone() for k, p in params.items() if p.grad is not None}
        finally:
            for k, p in params.items():
                p.grad = None
                p.requires_grad_(saved[k])


def _is_norm_weight(mod, target: str) -> bool:
    """True when the parameter is the scale (``weight``) of a batch/layer/group norm."""
    from sparsec.ir import ops

    for n in mod.graph.nodes:
        if n.op == "get_attr" and n.target == target:
            for u in n.users:
                if ops.is_aten(u) and "norm" in u.target._schema.name and ops.args_of(u).get("weight") is n:
                    return True
    return False


def random_calibration(mod, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random inputs shaped like the module's example inputs (for testing taylor only)."""
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(x.shape, generator=gen, dtype=x.dtype) if x.is_floating_point() else x
                 for x in mod.example_inputs)
