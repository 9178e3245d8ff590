"""Channel permutation for 2:4 (Pool & Yu, NeurIPS 2021), folded through the channel groups.

Which 4 input channels share a 2:4 group decides how much magnitude the mask
keeps. Reordering a layer's input channels changes the groups; to keep the
model's function, the producers of those channels (and every other tensor
coupled with them) must be reordered the same way. The
:class:`~sparsec.passes.prune.ChannelDepGraph` already knows that coupling:
a permutation is a pruning plan that keeps every unit, in another order.

Per channel group that feeds a sparse layer:

1. units that are interchangeable -- held by the same members, the same
   number of times (so a cat input's channels stay in that input, a grouped
   conv's groups move whole) -- form swap classes;
2. a greedy channel-swap search over unit pairs (seeded, a fixed number of
   rounds: bounded time, deterministic) maximises the magnitude the 2:4
   masks keep, summed over the group's sparse layers that read it channel by
   channel; a swap is taken only if it gains, so the result never loses;
3. every parameter in the group is index-selected along its coupled dim:
   element ``r`` of unit ``u`` takes the value of element ``r`` of unit
   ``sigma(u)``.

Groups that are not safe to reorder (the model's inputs or outputs, ops
without a channel rule, a parameter read through several nodes) are left
as they are, and said so.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch

from sparsec.passes.prune.depgraph import ChannelDepGraph, ChannelGroup
from sparsec.passes.sparsify.mask import as_rows

log = logging.getLogger("sparsec.passes.sparsify")

MAX_ROUNDS = 80  # rounds of batched swap proposals per group
PATIENCE = 8  # stop after this many rounds without a gain
CELLS_PER_ROUND = 300_000  # channel rows x proposals scored per round (bounds memory and time)


@dataclasses.dataclass(frozen=True)
class GroupResult:
    group: str  # the group's label
    layers: tuple[str, ...]  # the weight targets that drove the search
    before: float  # retained |w| summed over those layers, identity order
    after: float
    swaps: int
    skipped: str = ""  # why the group was not searched


@dataclasses.dataclass
class _Consumer:
    target: str
    at: np.ndarray  # |w| as (positions, rows): one input channel per row, float64
    slot_pos: np.ndarray  # unit -> position in this consumer (-1: absent)
    cur: np.ndarray  # position -> original column now there
    gscore: np.ndarray  # retained |w| of each group of 4

    def score(self, cols: np.ndarray) -> np.ndarray:
        """Retained |w| of the 4-channel groups ``cols`` (B, 4): top 2 of 4 per row, summed over rows."""
        v = self.at[cols]  # (B, 4, rows)
        hi1, lo1 = np.maximum(v[:, 0], v[:, 1]), np.minimum(v[:, 0], v[:, 1])
        hi2, lo2 = np.maximum(v[:, 2], v[:, 3]), np.minimum(v[:, 2], v[:, 3])
        # largest = max(hi1, hi2); second = max(min(hi1, hi2), max(lo1, lo2))
        top2 = np.maximum(hi1, hi2) + np.maximum(np.minimum(hi1, hi2), np.maximum(lo1, lo2))
        return top2.sum(axis=-1)


def _unit_counts(g: ChannelGroup) -> np.ndarray:
    """(members, units): how many elements of each unit each member holds."""
    return np.stack([np.bincount(u, minlength=g.size) for u in g.unit_of])


def swap_classes(g: ChannelGroup) -> list[np.ndarray]:
    """Units that may trade places: the same count in every member."""
    _, inverse = np.unique(_unit_counts(g).T, axis=0, return_inverse=True)
    inverse = np.asarray(inverse).reshape(-1)
    return [np.nonzero(inverse == c)[0] for c in range(inverse.max() + 1) if (inverse == c).sum() > 1]


def member_index(unit_of: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Index map of one member: element r of unit u takes element r of unit sigma[u]."""
    order = np.argsort(unit_of, kind="stable")
    counts = np.bincount(unit_of, minlength=len(sigma))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(len(unit_of), dtype=np.int64)
    rank[order] = np.arange(len(unit_of)) - starts[unit_of[order]]
    return order[starts[sigma[unit_of]] + rank]


def why_not(g: ChannelGroup) -> str:
    """'' if the group may be reordered, else why not: what keeps it from being pruned keeps it in order too."""
    if g.why_not:
        return g.why_not
    targets = [t for _, t in g.params]
    if len(targets) != len(set(targets)):
        return "a parameter is read through several nodes"
    return ""


def search(consumers: list[_Consumer], classes: list[np.ndarray], size: int, seed: int,
           rounds: int = MAX_ROUNDS) -> tuple[np.ndarray, int]:
    """Greedy batched channel swaps; returns (sigma, swaps taken)."""
    rng = np.random.default_rng(seed)
    sigma = np.arange(size)
    rows = max(c.at.shape[1] for c in consumers)
    batch = int(np.clip(CELLS_PER_ROUND // max(rows * len(consumers), 1), 8, 512))
    weights = np.array([len(c) for c in classes], dtype=float)
    weights /= weights.sum()
    swaps, idle = 0, 0
    for _ in range(rounds):
        pick = rng.choice(len(classes), size=batch, p=weights)
        ua = np.empty(batch, dtype=np.int64)
        ub = np.empty(batch, dtype=np.int64)
        for ci in np.unique(pick):
            at = np.nonzero(pick == ci)[0]
            cls = classes[ci]
            i = rng.integers(0, len(cls), size=len(at))
            j = (i + rng.integers(1, len(cls), size=len(at))) % len(cls)  # j != i
            ua[at], ub[at] = cls[i], cls[j]
        delta = np.zeros(batch)
        touched = []  # per consumer: the groups of 4 each proposal touches (-1: absent)
        for c in consumers:
            pa, pb = c.slot_pos[ua], c.slot_pos[ub]
            ga, gb = np.where(pa >= 0, pa // 4, -1), np.where(pb >= 0, pb // 4, -1)
            touched.append((ga, gb))
            live = (pa >= 0) & (ga != gb)
            if not live.any():
                continue
            idx = np.nonzero(live)[0]
            cols_a = c.cur.reshape(-1, 4)[ga[idx]].copy()
            cols_b = c.cur.reshape(-1, 4)[gb[idx]].copy()
            ra, rb = pa[idx] % 4, pb[idx] % 4
            k = np.arange(len(idx))
            va, vb = cols_a[k, ra].copy(), cols_b[k, rb].copy()
            cols_a[k, ra], cols_b[k, rb] = vb, va
            delta[idx] += c.score(cols_a) + c.score(cols_b) - c.gscore[ga[idx]] - c.gscore[gb[idx]]
        taken = 0
        used_units: set[int] = set()
        used_groups: set[tuple[int, int]] = set()
        for t in np.argsort(-delta, kind="stable"):
            if delta[t] <= 1e-12 * max(1.0, abs(float(delta[t]))):
                break
            # a group touched by an accepted swap (even one inside it) was scored on its old order
            keys = {(ci, int(gr[t])) for ci, pair in enumerate(touched) for gr in pair if gr[t] >= 0}
            if ua[t] in used_units or ub[t] in used_units or keys & used_groups:
                continue
            used_units |= {int(ua[t]), int(ub[t])}
            used_groups |= keys
            sigma[[ua[t], ub[t]]] = sigma[[ub[t], ua[t]]]
            for c in consumers:
                pa, pb = c.slot_pos[ua[t]], c.slot_pos[ub[t]]
                if pa < 0:
                    continue
                c.cur[[pa, pb]] = c.cur[[pb, pa]]
                for gi in {pa // 4, pb // 4}:
                    c.gscore[gi] = c.score(c.cur[4 * gi: 4 * gi + 4][None, :])[0]
            taken += 1
        swaps += taken
        idle = 0 if taken else idle + 1
        if idle >= PATIENCE:
            break
    return sigma, swaps


def permute_for_24(mod, weight_targets: list[str], seed: int = 0, rounds: int = MAX_ROUNDS) -> list[GroupResult]:
    """Reorder channels so the 2:4 masks of ``weight_targets`` keep more magnitude.

    Mutates ``mod``'s parameters in place (the caller recompiles); the
    model's function is unchanged. Each target must be a conv/linear weight
    read through exactly one ``get_attr`` node, with Cin a multiple of 4.
    ``rounds`` bounds the search (see :func:`search`).
    """
    dg = mod.analysis(ChannelDepGraph)
    nodes = {n.target: n for n in mod.graph.nodes if n.op == "get_attr"}
    by_group: dict[int, list[str]] = {}
    for t in weight_targets:
        g = dg.group_of(nodes[t], 1)
        if g is not None:
            by_group.setdefault(g.id, []).append(t)
    results = []
    for gid in sorted(by_group):
        g = dg.groups[gid]
        targets = tuple(by_group[gid])
        why = why_not(g)
        classes = swap_classes(g) if not why else []
        if not why and not classes:
            why = "no two channels may trade places"
        consumers = [] if why else _consumers(mod, g, targets, nodes)
        if not why and not consumers:
            why = "no sparse layer reads the group channel by channel"
        if why:
            results.append(GroupResult(g.label(), targets, 0.0, 0.0, 0, why))
            continue
        before = float(sum(c.gscore.sum() for c in consumers))
        sigma, swaps = search(consumers, classes, g.size, seed + gid, rounds)
        after = float(sum(c.gscore.sum() for c in consumers))
        if swaps:
            _apply(mod, g, sigma)
        results.append(GroupResult(g.label(), tuple(c.target for c in consumers), before, after, swaps))
    mod.invalidate()
    return results


def _consumers(mod, g: ChannelGroup, targets, nodes) -> list[_Consumer]:
    out = []
    index = {m: i for i, m in enumerate(g.members)}
    for t in targets:
        i = index.get((nodes[t].name, 1))
        if i is None:
            continue
        unit_of = g.unit_of[i]
        if len(np.unique(unit_of)) != len(unit_of):  # several elements per unit (e.g. flatten -> linear)
            continue
        at = np.ascontiguousarray(as_rows(mod.get_param(t).detach().double().abs(), 1).numpy().T)
        slot_pos = np.full(g.size, -1, dtype=np.int64)
        slot_pos[unit_of] = np.arange(len(unit_of))
        cur = np.arange(at.shape[0])
        c = _Consumer(t, at, slot_pos, cur, np.zeros(at.shape[0] // 4))
        c.gscore = c.score(cur.reshape(-1, 4))
        out.append(c)
    return out


def _apply(mod, g: ChannelGroup, sigma: np.ndarray) -> None:
    for i, target in g.params:
        dim = g.members[i][1]
        idx = torch.from_numpy(member_index(g.unit_of[i], sigma))
        t = mod.get_param(target)
        mod.set_param(target, t.index_select(dim, idx.to(t.device)).contiguous())
