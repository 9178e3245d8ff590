"""ChannelDepGraph: coupling rules, index maps, protection, diagnostics, custom-op rules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsec.ir import Module
from sparsec.ir.trace import trace
from sparsec.passes.prune import ChannelDepGraph, ChannelPrunePlanner, channel_rule, unregister

from .util import prune_and_compare, randomise


def _mod(model: nn.Module, *shape: int) -> Module:
    torch.manual_seed(0)
    return trace(randomise(model.eval()).double(), torch.randn(*shape, dtype=torch.float64))


def _node(mod, target, k=0):
    return [n for n in mod.graph.nodes if n.target == target][k]


aten = torch.ops.aten


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.c1 = nn.Conv2d(16, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.se = nn.Conv2d(16, 16, 1)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = x + self.c2(torch.relu(self.c1(x)))  # residual: stem and c2 coupled
        y = self.dw(x)
        y = y * torch.sigmoid(self.se(y.mean((2, 3), keepdim=True)))  # SE couples through C
        return self.fc(torch.flatten(y, 1))


def test_residual_se_grouped_and_flatten_couplings():
    mod = _mod(Residual(), 1, 3, 4, 4)
    dg = mod.analysis(ChannelDepGraph)
    stem, c1, c2, dw, se = (_node(mod, aten.conv2d.default, k) for k in range(5))
    flat = _node(mod, aten.flatten.using_ints)
    g = dg.group_of(stem, 1)
    # the residual add couples the stem with c2's output, the depthwise conv its in and out
    # channels, SE's output scales them, and flatten->linear carries them with an index map
    assert g is dg.group_of(c2, 1) is dg.group_of(dw, 1) is dg.group_of(se, 1) is dg.group_of(flat, 1)
    assert g.prunable and g.size == 4  # the grouped conv c2 keeps its 4 groups whole: 4 units of 4 channels
    i = g.members.index((flat.name, 1))
    unit = g.unit_of[i]
    assert len(unit) == 16 * 16
    # feature j of the flatten belongs to the unit of channel j // (H*W)
    ch = g.unit_of[g.members.index((stem.name, 1))]
    assert (unit == ch[torch.arange(256).numpy() // 16]).all()
    # the grouped conv c2 couples its in-group k with its out-group k: c1's output joins the group
    assert dg.group_of(c1, 1) is g
    uc1 = g.unit_of[g.members.index((c1.name, 1))]
    assert list(uc1) == list(ch) and list(ch) == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3]
    # model input and output are protected
    lin = _node(mod, aten.linear.default)
    assert not dg.group_of(lin, 1).prunable and "output" in dg.group_of(lin, 1).why_not
    x = mod.placeholders()[0]
    assert "input" in dg.group_of(x, 1).why_not
    err, macs0, macs1, _, plan = prune_and_compare(mod, ratio=0.5, round_to=1)
    assert err < 1e-9 and macs1 < macs0


class CatSplit(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(3, 16, 1)
        self.c = nn.Conv2d(24, 24, 1)
        self.d = nn.Conv2d(12, 4, 1)
        self.e = nn.Conv2d(12, 4, 1)
        self.gn = nn.GroupNorm(4, 8)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], 1)  # cat: b's channel c is y's channel 8 + c
        y = torch.relu(self.c(y))
        p, q = torch.chunk(y, 2, dim=1)
        z = torch.cat([self.d(p), self.e(q)], 1)
        return self.gn(z) + y[:, 4:12]


def test_cat_and_split_offsets_and_group_norm():
    mod = _mod(CatSplit(), 1, 3, 5, 5)
    dg = mod.analysis(ChannelDepGraph)
    a, b, c, d, e = (_node(mod, aten.conv2d.default, k) for k in range(5))
    cat = _node(mod, aten.cat.default)
    g = dg.group_of(cat, 1)
    assert g is dg.group_of(a, 1) is dg.group_of(b, 1)
    ub = g.unit_of[g.members.index((b.name, 1))]
    ucat = g.unit_of[g.members.index((cat.name, 1))]
    assert (ucat[8:] == ub).all()
    # d and e feed a group norm with 2 channels per group and an add with a slice of c's output:
    # all of c, d, e end in one group; group-norm groups stay whole
    gc = dg.group_of(c, 1)
    assert gc is dg.group_of(d, 1) is dg.group_of(e, 1)
    ud = gc.unit_of[gc.members.index((d.name, 1))]
    assert ud[0] == ud[1] and ud[2] == ud[3]
    err, *_ = prune_and_compare(mod, ratio=0.5, round_to=1)
    assert err < 1e-9


def test_native_batch_norm_after_decomposition():
    torch.manual_seed(0)
    model = randomise(nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 4, 3)).eval()).double()
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    ep = torch.export.export(model, (x,)).run_decompositions({})
    mod = Module(ep.module(), (x,))
    targets = {n.target for n in mod.graph.nodes}
    assert aten._native_batch_norm_legit_no_training.default in targets
    dg = mod.analysis(ChannelDepGraph)
    assert len(dg.prunable()) == 1
    err, macs0, macs1, *_ = prune_and_compare(mod, ratio=0.5)
    assert err < 1e-9 and macs1 < macs0


class MatMuls(nn.Module):
    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(12, 16))
        self.w2 = nn.Parameter(torch.randn(16, 12))
        self.w3 = nn.Parameter(torch.randn(2, 16, 8))
        self.b = nn.Parameter(torch.randn(16))

    def forward(self, x):  # x: (4, 12)
        h = torch.relu(torch.addmm(self.b, x, self.w1))  # h: (4, 16), 16 prunable
        y = torch.mm(h, self.w2)
        z = torch.matmul(h.unsqueeze(0).expand(2, 4, 16), self.w3)  # bmm-like, same 16
        return y, z


def test_mm_addmm_matmul():
    mod = _mod(MatMuls(), 4, 12)
    dg = mod.analysis(ChannelDepGraph)
    addmm = _node(mod, aten.addmm.default)
    g = dg.group_of(addmm, 1)
    assert g.prunable and g.size == 16
    err, macs0, macs1, *_ = prune_and_compare(mod, ratio=0.5)
    assert err < 1e-9 and macs1 < macs0


# -- custom ops: a user rule, and the diagnostic for an op without one -----------------

_lib = torch.library.Library("sparsec_prune_test", "FRAGMENT")
_lib.define("chanscale(Tensor x, Tensor s) -> Tensor")
_lib.define("mystery(Tensor x) -> Tensor")
_lib.impl("chanscale", lambda x, s: x * s.view(1, -1, 1, 1), "CompositeExplicitAutograd")
_lib.impl("mystery", lambda x: x.flip(1), "CompositeExplicitAutograd")
torch.library.register_fake("sparsec_prune_test::chanscale", lambda x, s: torch.empty_like(x), lib=_lib)
torch.library.register_fake("sparsec_prune_test::mystery", lambda x: torch.empty_like(x), lib=_lib)


class Custom(nn.Module):
    def __init__(self, op):
        super().__init__()
        self.op = op
        self.c1 = nn.Conv2d(3, 16, 3)
        self.s = nn.Parameter(torch.rand(16) + 0.5)
        self.c2 = nn.Conv2d(16, 4, 3)

    def forward(self, x):
        y = self.c1(x)
        y = torch.ops.sparsec_prune_test.chanscale(y, self.s) if self.op == "chanscale" else \
            torch.ops.sparsec_prune_test.mystery(y)
        return self.c2(torch.relu(y))


def test_custom_op_rule_registration():
    op = torch.ops.sparsec_prune_test.chanscale.default

    @channel_rule(op)
    def _chanscale(node, g):  # out[:, c] = x[:, c] * s[c]
        x, s = node.args
        g.identity(x, node)
        g.same(s, 0, node, 1)

    try:
        mod = _mod(Custom("chanscale"), 1, 3, 8, 8)
        dg = mod.analysis(ChannelDepGraph)
        c1 = _node(mod, aten.conv2d.default)
        g = dg.group_of(c1, 1)
        assert g.prunable and any(t == "s" for _, t in g.params)  # the op's own parameter is sliced too
        err, macs0, macs1, *_ = prune_and_compare(mod, ratio=0.5)
        assert err < 1e-9 and macs1 < macs0
        assert tuple(mod.get_param("s").shape) == (8,)
    finally:
        unregister(op)


def test_op_without_rule_blocks_its_groups_with_a_diagnostic():
    mod = _mod(Custom("mystery"), 1, 3, 8, 8)
    dg = mod.analysis(ChannelDepGraph)
    c1 = _node(mod, aten.conv2d.default)
    g = dg.group_of(c1, 1)
    assert not g.prunable
    why = g.why_not
    assert "no channel rule for sparsec_prune_test.mystery" in why
    assert "node 'mystery'" in why and "test_depgraph.py:" in why  # the op, the node and its source line
    assert "register one with @channel_rule" in why
    plan = ChannelPrunePlanner(0.5).plan(mod)
    assert plan.groups == () and any("sparsec_prune_test.mystery" in w for _, w in plan.skipped)
    assert "sparsec_prune_test.mystery" in dg.summary()


def test_networkx_view():
    mod = _mod(Residual(), 1, 3, 4, 4)
    dg = mod.analysis(ChannelDepGraph)
    G = dg.to_networkx()
    stem = _node(mod, aten.conv2d.default)
    assert G.nodes[f"{stem.name}:1"]["prunable"]
    import networkx as nx

    comp = nx.node_connected_component(G, f"{stem.name}:1")
    assert f"{_node(mod, aten.flatten.using_ints).name}:1" in comp


def test_impossible_plans_name_the_group_and_constraint():
    import dataclasses

    from sparsec.errors import PassFailedError
    from sparsec.passes.prune import apply_plan

    mod = _mod(CatSplit(), 1, 3, 5, 5)
    dg = mod.analysis(ChannelDepGraph)
    plan = ChannelPrunePlanner(0.5, round_to=1).plan(mod)
    cat = _node(mod, aten.cat.default)
    g = dg.group_of(cat, 1)
    k = next(i for i, gp in enumerate(plan.groups) if gp.group == g.id)
    a_units = set(g.unit_of[g.members.index((_node(mod, aten.conv2d.default, 0).name, 1))].tolist())
    only_a = dataclasses.replace(plan.groups[k], kept=tuple(sorted(a_units)))  # b's branch would be emptied
    bad = dataclasses.replace(plan, groups=plan.groups[:k] + (only_a,) + plan.groups[k + 1:])
    with pytest.raises(PassFailedError, match=r"the plan empties '.*' dim \d in group \d+ \(conv2d:1\)") as info:
        apply_plan(mod, bad)
    assert "at least one kept channel in every member" in str(info.value)
    none = dataclasses.replace(plan.groups[k], kept=())
    bad = dataclasses.replace(plan, groups=plan.groups[:k] + (none,) + plan.groups[k + 1:])
    with pytest.raises(PassFailedError, match=r"keeps an impossible set of units") as info:
        apply_plan(mod, bad)
    assert f"1 to {g.size} distinct unit indices" in str(info.value)


def test_sdpa_heads_are_the_pruning_unit():
    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(32, 96)
            self.proj = nn.Linear(32, 32)

        def forward(self, x):  # x: (1, 10, 32), 4 heads of 8
            q, k, v = self.qkv(x).view(1, 10, 3, 4, 8).permute(2, 0, 3, 1, 4)
            o = nn.functional.scaled_dot_product_attention(q, k, v)
            return self.proj(o.transpose(1, 2).reshape(1, 10, 32))

    mod = _mod(Attn(), 1, 10, 32)
    dg = mod.analysis(ChannelDepGraph)
    g = dg.group_of(_node(mod, aten.linear.default), 2)
    assert g.prunable and g.size == 4  # qkv's 96 outputs: 4 heads, q, k and v of a head together
    err, macs0, macs1, _, plan = prune_and_compare(mod, ratio=0.5, round_to=1)
    assert err < 1e-9 and macs1 < macs0
    assert tuple(mod.get_param("qkv.weight").shape) == (48, 32)


def test_analysis_is_cached_and_dropped_after_pruning():
    from sparsec.passes import PassManager
    from sparsec.passes.prune import PruneChannels

    mod = _mod(Residual(), 1, 3, 4, 4)
    dg = mod.analysis(ChannelDepGraph)
    assert mod.analysis(ChannelDepGraph) is dg
    PassManager([PruneChannels(ratio=0.5, round_to=1)]).run(mod)
    fresh = mod.analysis(ChannelDepGraph)
    assert fresh is not dg
    assert fresh.group_of(_node(mod, aten.conv2d.default), 1).size == 2  # 4 groups of the grouped conv -> 2


def test_dot_picture():
    mod = _mod(Custom("mystery"), 1, 3, 8, 8)
    dot = mod.analysis(ChannelDepGraph).to_dot()
    assert dot.startswith("graph channels {") and dot.rstrip().endswith("}")
    assert 'subgraph cluster_' in dot and '"conv2d:1"' in dot and "no channel rule for sparsec_prune_test.mystery" in dot
    assert '"c1_weight:0" -- ' in dot or '-- "c1_weight:0"' in dot
