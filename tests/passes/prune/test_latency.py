"""Latency-aware pruning (prune-channels{objective=latency}): the lookup table,
its fingerprint, interpolation and JSON, the budget solver, and its errors.

The solver tests use a SYNTHETIC table made here from a cost formula (MACs
with a tensor-core staircase of 16 channels), never a measured one: they pin
the solver's logic, not any GPU's numbers. The measured table is made by
``sparsec profile`` on a GPU (the gpu-marked test at the end).
"""

from __future__ import annotations

import inspect
import itertools
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from sparsec.errors import PassFailedError, PipelineError, PipelineFailure, SparsecError, UsageError
from sparsec.ir.trace import trace
from sparsec.passes import PassManager
from sparsec.passes.prune import ChannelDepGraph, ChannelPrunePlanner, PruneChannels, PrunePlan
from sparsec.passes.prune import latency as L

from .util import prune_and_compare, randomise


class Net(nn.Module):
    """Three prunable groups at three resolutions: a wide early layer costs the most per channel."""

    def __init__(self, w=(64, 64, 128)):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.a = nn.Conv2d(32, w[0], 3, padding=1)  # 16x16
        self.a2 = nn.Conv2d(w[0], 32, 1)
        self.b = nn.Conv2d(32, w[1], 3, stride=2, padding=1)  # 8x8
        self.b2 = nn.Conv2d(w[1], 48, 1)
        self.c = nn.Conv2d(48, w[2], 3, stride=2, padding=1)  # 4x4
        self.fc = nn.Linear(w[2], 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = self.a2(torch.relu(self.a(x)))
        x = self.b2(torch.relu(self.b(x)))
        x = torch.relu(self.c(x))
        return self.fc(x.mean((2, 3)))


def _mod(net=None, size=16, name="net"):
    torch.manual_seed(0)
    return trace(randomise((net or Net()).eval()).double(), torch.randn(1, 3, size, size, dtype=torch.float64),
                 name=name)


def synthetic_ms(s: L.LayerSpec, cin: int, cout: int, batch: int) -> float:
    """SYNTHETIC cost (not a measurement): a launch floor plus MACs, widths padded to 16."""
    hw = math.prod(s.spatial) if s.kind == "conv" else max(1, math.prod(s.spatial))
    if s.kind == "conv":
        hw //= math.prod(s.stride)
    k = math.prod(s.kernel) if s.kind == "conv" else 1
    pad = lambda c: math.ceil(c / 16) * 16  # noqa: E731
    return 0.002 + batch * hw * k * pad(cin) * pad(cout) / s.groups_at(cin) * 1e-9


def _lut(mod, tmp_path=None, round_to=16, points=5, timer=synthetic_ms):
    lut = L.build_lut(mod, "h100", round_to, (1, 256), timer, points=points,
                      info={"method": "synthetic: a cost formula in the test, not measured"})
    if tmp_path is None:
        return lut
    path = tmp_path / "lut.json"
    path.write_text(lut.to_json())
    return path


# -- the table ----------------------------------------------------------------------------


def test_layer_specs_and_fingerprint():
    mod = _mod()
    specs = L.layer_specs(mod)
    assert [s.kind for s in specs] == ["conv"] * 6 + ["linear"]
    a = specs[1]
    assert (a.cin, a.cout, a.kernel, a.stride, a.spatial, a.groups) == (32, 64, (3, 3), (1, 1), (16, 16), 1)
    assert a.in_space == ("relu", 1) and a.out_space == (a.node, 1)
    assert specs[-1].in_space == ("mean", 1)
    fp = L.fingerprint(specs)
    assert fp == L.fingerprint(L.layer_specs(_mod())) and len(fp) == 16  # names and weights do not matter
    assert fp != L.fingerprint(L.layer_specs(_mod(Net((64, 64, 96)))))  # shapes do
    assert fp != L.fingerprint(L.layer_specs(_mod(size=32)))  # and so does the input size


def test_sweep_widths():
    assert L.sweep(64, 16, 5, True) == (16, 32, 48, 64)
    assert L.sweep(256, 16, 5, True) == (16, 80, 144, 192, 256)  # evenly spread over the 16 multiples
    assert L.sweep(24, 16, 5, True) == (16, 24)
    assert L.sweep(16, 16, 5, True) == (16,) and L.sweep(64, 16, 5, False) == (64,)


def test_table_grid_interpolation_and_json_round_trip(tmp_path):
    mod = _mod()
    lut = _lut(mod)
    specs = L.layer_specs(mod)
    a = specs[1]
    t = lut.tables[a.key]
    assert t.in_widths == (16, 32) and t.out_widths == (16, 32, 48, 64) and not t.coupled
    assert tuple(lut.tables[specs[0].key].in_widths) == (3,)  # the model input is not prunable: one width
    for ci, co in itertools.product(t.in_widths, t.out_widths):  # exact at grid points
        assert lut.layer_ms(a, ci, co, 256) == pytest.approx(synthetic_ms(a, ci, co, 256), rel=1e-9)
    lo, hi = lut.layer_ms(a, 32, 32, 256), lut.layer_ms(a, 32, 48, 256)
    assert lut.layer_ms(a, 32, 40, 256) == pytest.approx((lo + hi) / 2)  # linear between points
    dense = sum(synthetic_ms(s, s.cin, s.cout, 1) for s in specs)
    assert lut.predict(mod, 1) == pytest.approx(dense, rel=1e-6)
    back = L.LatencyLUT.from_json(lut.to_json())
    assert back.fingerprint == lut.fingerprint and back.batches == (1, 256) and back.round_to == 16
    assert back.predict(mod, 256) == pytest.approx(lut.predict(mod, 256), rel=1e-6)
    doc = json.loads(lut.to_json())
    assert doc["model"] == {"name": "net", "fingerprint": lut.fingerprint, "layers": 7}
    assert doc["method"].startswith("synthetic") and doc["target"] == "h100"


def test_grouped_and_depthwise_convs_get_coupled_tables():
    class DW(nn.Module):
        def __init__(self):
            super().__init__()
            self.pw = nn.Conv2d(3, 64, 1)
            self.dw = nn.Conv2d(64, 64, 3, padding=1, groups=64)
            self.g = nn.Conv2d(64, 64, 3, padding=1, groups=4)
            self.out = nn.Conv2d(64, 8, 1)

        def forward(self, x):
            return self.out(self.g(torch.relu(self.dw(self.pw(x)))))

    mod = _mod(DW(), size=8)
    lut = _lut(mod)
    dw, g = L.layer_specs(mod)[1:3]
    assert dw.coupled and lut.tables[dw.key].coupled
    t = lut.tables[g.key]  # 4 groups of 16: widths step over whole groups (16 units of round_to x 16 channels)
    assert t.coupled and all(w % 16 == 0 for w in t.in_widths) and t.out_widths == t.in_widths


# -- the solver --------------------------------------------------------------------------------


def _latency_pass(path, **kw):
    opts = {"objective": "latency", "budget": 0.5, "lut": str(path), "round_to": 16, "batch": 256}
    return PruneChannels(**{**opts, **kw})


def test_budget_met_exactly_and_widths_on_round_to(tmp_path):
    mod = _mod()
    path = _lut(mod, tmp_path)
    dense_ms = L.LatencyLUT.load(path).predict(mod, 256)
    err, macs0, macs1, records, plan = prune_and_compare(mod, **{k: v for k, v in vars(_latency_pass(path)).items()
                                                                  if k != "ratio"})
    assert err < 1e-9 and macs1 < macs0  # still the consumer-side masked reference, exactly
    stats = records[0].stats
    assert stats["dense_latency_ms"] == pytest.approx(dense_ms, rel=1e-5)
    assert stats["predicted_latency_ms"] <= 0.5 * stats["dense_latency_ms"] + 1e-12
    assert stats["predicted_latency_frac"] == pytest.approx(stats["predicted_latency_ms"] / stats["dense_latency_ms"],
                                                            rel=1e-4)
    assert plan.latency is not None and plan.latency.budget == 0.5 and plan.latency.batch == 256
    assert all(len(g.kept) % 16 == 0 for g in plan.groups)
    # the prediction is of the pruned widths: the table on the pruned model's shapes agrees
    lut = L.LatencyLUT.load(path)
    widths = {s.node: (s.cin, s.cout) for s in L.layer_specs(mod)}
    pruned = sum(lut.tables[key].at(*widths[node], 256) for node, key in lut.layers)
    assert pruned == pytest.approx(stats["predicted_latency_ms"], rel=1e-6)
    assert "objective=latency, budget=0.5, batch=256: predicted" in str(plan)
    assert PrunePlan.from_json(plan.to_json()) == plan


def test_solver_spends_the_budget_where_latency_is_cheapest_to_cut(tmp_path):
    mod = _mod()
    plan = _latency_pass(_lut(mod, tmp_path)).make_plan(mod)
    kept = {g.label: len(g.kept) / g.size for g in plan.groups}
    full = {g.label() for g in mod.analysis(ChannelDepGraph).prunable()} - set(kept)
    frac = {**kept, **{label: 1.0 for label in full}}
    # a (16x16, 3x3 and 1x1 consumers) costs most per channel, c (4x4) least: a is cut harder than c
    assert frac["conv2d_1:1"] < frac["conv2d_5:1"]


def test_refill_leaves_no_affordable_width_unused(tmp_path):
    mod = _mod()
    path = _lut(mod, tmp_path)
    lut = L.LatencyLUT.load(path)
    dg = mod.analysis(ChannelDepGraph)
    plan = _latency_pass(path, round_to=8).make_plan(mod)
    kept = {g.group: len(g.kept) for g in plan.groups}
    widths = L.plan_widths(mod, plan)
    budget_ms = 0.5 * lut.predict(mod, 256)
    assert lut.predict(mod, 256, widths) <= budget_ms
    # widening any pruned group by one round_to step would break the budget
    for g in dg.prunable():
        if g.id not in kept or kept[g.id] + 8 > g.size:
            continue
        wider = PrunePlan(tuple(gp if gp.group != g.id else type(gp)(gp.group, gp.label, gp.members, gp.size,
                                                                      tuple(range(kept[g.id] + 8)))
                                for gp in plan.groups), 0.0, "l2")
        assert lut.predict(mod, 256, L.plan_widths(mod, wider)) > budget_ms, g.label()


def test_greedy_is_close_to_the_best_by_brute_force(tmp_path):
    mod = _mod()
    path = _lut(mod, tmp_path)
    lut = L.LatencyLUT.load(path)
    dg = mod.analysis(ChannelDepGraph)
    groups = [g for g in dg.prunable() if g.label() != "linear:1"]
    planner = ChannelPrunePlanner(0.0, objective="latency", budget=0.5, lut=lut, round_to=16)
    scores = planner._scores(mod, groups)
    sol = L.solve(mod, lut, groups, scores, budget=0.5, batch=256, round_to=16, min_channels=1)
    norm = {g.id: np.sort(scores[g.id] / scores[g.id].mean())[::-1] for g in groups}

    def value(keep):
        return sum(norm[g.id][:k].sum() for g, k in zip(groups, keep))

    def predicted(keep):
        widths = {}
        for g, k in zip(groups, keep):
            for i, (n, d) in enumerate(g.members):
                widths[(n, d)] = int(np.isin(g.unit_of[i], np.arange(k)).sum())
        return lut.predict(mod, 256, widths)

    options = [list(range(16, g.size + 1, 16)) for g in groups]
    best = max((value(k), k) for k in itertools.product(*options) if predicted(k) <= sol.budget_ms)
    got = value([len(sol.keep[g.id]) for g in groups])
    assert sol.predicted_ms <= sol.budget_ms
    assert got >= 0.95 * best[0], (got, best)


def odd_width_ms(s: L.LayerSpec, cin: int, cout: int, batch: int) -> float:
    """SYNTHETIC (not measured): like synthetic_ms, but a width of 16 or 48 takes 3x as long,
    the shape of a library that has no good kernel for some widths (the table need not be monotone)."""
    slow = 3.0 if (cout in (16, 48) or cin in (16, 48)) and s.kind == "conv" else 1.0
    return synthetic_ms(s, cin, cout, batch) * slow


def test_a_non_monotone_table_is_solved_around_slow_widths(tmp_path):
    mod = _mod()
    path = _lut(mod, tmp_path, timer=odd_width_ms, points=8)
    plan = _latency_pass(path, budget=0.6).make_plan(mod)
    widths = L.plan_widths(mod, plan)
    lut = L.LatencyLUT.load(path)
    assert lut.predict(mod, 256, widths) <= 0.6 * lut.predict(mod, 256)
    assert not {16, 48} & {len(g.kept) for g in plan.groups}  # it keeps clear of the slow widths


def test_min_channels_max_ratio_and_protected_are_honoured(tmp_path):
    mod = _mod()
    path = _lut(mod, tmp_path)
    plan = _latency_pass(path, round_to=8, budget=0.6, min_channels=24).make_plan(mod)
    assert plan.groups and all(len(g.kept) >= 24 for g in plan.groups)
    plan = _latency_pass(path, round_to=8, budget=0.6, max_ratio=0.5).make_plan(mod)
    assert plan.groups and all(len(g.kept) >= g.size / 2 for g in plan.groups)
    plan = _latency_pass(path, budget=0.8, protected=("a",)).make_plan(mod)  # a.weight: its in and out groups
    assert "conv2d_1:1" not in {g.label for g in plan.groups}
    assert ("conv2d_1:1", "protected by the user (a)") in plan.skipped


# -- errors -----------------------------------------------------------------------------------


def test_a_table_for_another_model_names_both(tmp_path):
    other = _mod(Net((64, 64, 96)), name="other")
    path = _lut(other, tmp_path)
    mod = _mod()
    with pytest.raises(PipelineFailure) as info:
        PassManager([_latency_pass(path)]).run(mod)
    err = info.value.__cause__
    assert isinstance(err, PassFailedError)
    msg = str(err)
    assert f"the latency table '{path}' was made for another model" in msg
    assert f"this model 'net' (fingerprint {L.fingerprint(L.layer_specs(mod))}" in msg
    assert f"a table for model 'other' (fingerprint {L.LatencyLUT.load(path).fingerprint}" in msg
    assert "sparsec profile --target h100" in msg


def test_unreachable_budget_names_the_best_reachable(tmp_path):
    mod = _mod()
    path = _lut(mod, tmp_path)
    with pytest.raises(PassFailedError, match=r"latency budget 0\.01 is unreachable for model 'net' at batch 256") as info:
        _latency_pass(path, budget=0.01).make_plan(mod)
    msg = str(info.value)
    best = float(msg.split("the best reachable is ")[1].split(" x dense")[0])
    assert 0.01 < best < 0.5 and f"raise budget to at least {math.ceil(best * 1000) / 1000:g}" in msg
    _latency_pass(path, budget=math.ceil(best * 1000) / 1000).make_plan(mod)  # and that budget works


def test_table_batch_file_and_option_errors(tmp_path):
    mod = _mod()
    path = _lut(mod, tmp_path)
    with pytest.raises(UsageError, match="the latency table has no batch size 64") as info:
        _latency_pass(path, batch=64).make_plan(mod)
    assert "one of 1, 256" in str(info.value)
    with pytest.raises(UsageError, match="latency table 'nope.json' does not exist"):
        _latency_pass("nope.json").make_plan(mod)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"kind": "something else"}))
    with pytest.raises(UsageError, match="is not a sparsec latency table"):
        _latency_pass(bad).make_plan(mod)
    with pytest.raises(PipelineError, match="objective=latency of pass 'prune-channels' needs both budget= and lut="):
        PassManager.parse("prune-channels{objective=latency,budget=0.5}")
    with pytest.raises(PipelineError, match="option 'budget' of pass 'prune-channels' is out of range"):
        PruneChannels(objective="latency", budget=1.5, lut="x.json")
    with pytest.raises(PipelineError, match="option 'max_ratio' of pass 'prune-channels' is out of range"):
        PruneChannels(objective="latency", budget=0.5, lut="x.json", max_ratio=0.0)
    with pytest.raises(PipelineError, match="options 'budget', 'lut' and 'max_ratio' .* need objective=latency"):
        PruneChannels(budget=0.5)
    with pytest.raises(UsageError, match="objective=latency needs a latency table"):
        ChannelPrunePlanner(0.5, objective="latency", budget=0.5)
    with pytest.raises(UsageError, match="unknown objective 'speed'"):
        ChannelPrunePlanner(0.5, objective="speed")


def test_pipeline_text_round_trips(tmp_path):
    text = "prune-channels{objective=latency,budget=0.5,lut=out/lut.json,batch=1,max-ratio=0.8}"
    pm = PassManager.parse(text)
    p = pm.passes[0]
    assert (p.objective, p.budget, p.lut, p.batch, p.max_ratio) == ("latency", 0.5, "out/lut.json", 1, 0.8)
    assert str(PassManager.parse(str(pm))) == str(pm)


def test_profile_needs_cuda():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the no-CUDA error cannot show")
    from sparsec.backends.targets import H100

    with pytest.raises(SparsecError, match="profiling latency needs a CUDA GPU, and torch sees none here"):
        L.profile(_mod(), H100)


def test_profile_cli_without_cuda(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the no-CUDA error cannot show")
    from click.testing import CliRunner

    from sparsec.cli.main import cli

    res = CliRunner().invoke(cli, ["profile", "--target", "h100", "--model", "zoo:torchvision/resnet18",
                                   "-o", str(tmp_path / "lut.json")])
    assert res.exit_code == 1 and "profiling latency needs a CUDA GPU" in res.stderr
    assert not (tmp_path / "lut.json").exists()
    res = CliRunner().invoke(cli, ["profile", "--target", "nope", "--model", "x.pt2", "-o", str(tmp_path / "l.json")])
    assert res.exit_code == 2 and "nope" in res.stderr


# -- measured, on a GPU ---------------------------------------------------------------------------


@pytest.mark.gpu
def test_profile_measures_a_table_on_the_gpu(tmp_path):
    from sparsec.backends.targets import H100

    mod = _mod(size=64)  # big enough that the layers at batch 64 are well above the launch floor
    torch.backends.cudnn.benchmark = True
    lut = L.profile(mod, H100, batches=(1, 64), points=3, warmup=2, iters=5)
    assert torch.backends.cudnn.benchmark  # measured with it off, then the caller's setting is back
    assert lut.info["device"] == torch.cuda.get_device_name() and "measured" in lut.info["method"]
    assert lut.fingerprint == L.fingerprint(L.layer_specs(mod)) and lut.batches == (1, 64)
    for t in lut.tables.values():
        for b in (1, 64):
            assert np.all(np.isfinite(t.ms[b])) and np.all(t.ms[b] > 0)
    a = L.layer_specs(mod)[1]
    assert lut.layer_ms(a, 32, 64, 64) > lut.layer_ms(a, 32, 64, 1)  # 64 images cost more than one
    path = tmp_path / "lut.json"
    path.write_text(lut.to_json())
    records = PassManager([_latency_pass(path, batch=64, round_to=16, budget=0.7)]).run(mod)
    assert records[0].stats["predicted_latency_ms"] <= 0.7 * records[0].stats["dense_latency_ms"] + 1e-12


def test_opt_reports_the_predicted_latency(tmp_path):
    """End to end through the CLI: `sparsec opt --pass-statistics` shows the predicted latency."""
    from click.testing import CliRunner

    from sparsec.cli.main import cli

    src = tmp_path / "latnet.py"
    src.write_text("import torch\nfrom torch import nn\n\n\n" + inspect.getsource(Net)
                   + "\n\ndef build():\n    torch.manual_seed(0)\n    return Net().eval()\n")
    torch.manual_seed(0)
    mod = trace(Net().eval(), torch.randn(1, 3, 16, 16), name="build")
    path = _lut(mod, tmp_path)
    res = CliRunner().invoke(cli, ["opt", f"{src}:build", "--input-shape", "1,3,16,16", "--pass-statistics",
                                   "--pipeline", f"prune-channels{{objective=latency,budget=0.5,lut={path}}}",
                                   "-o", str(tmp_path / "pruned.pt2")])
    assert res.exit_code == 0, res.stderr
    stats = res.stderr
    assert "dense_latency_ms" in stats and "predicted_latency_ms" in stats and "predicted_latency_frac" in stats
    values = {w[1]: float(w[0]) for w in map(str.split, stats.splitlines()) if len(w) == 2 and "latency_" in w[1]}
    assert 0 < values["predicted_latency_frac"] <= 0.5  # "<value>  <counter>" lines
    assert values["predicted_latency_ms"] == pytest.approx(values["predicted_latency_frac"] * values["dense_latency_ms"],
                                                           rel=1e-4)
