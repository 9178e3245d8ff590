"""benchmarks/accuracy/run.py's bookkeeping: summary, paired tests, the ratio search, merging runs.

The records here are made up (top-1 per seed chosen by hand) to pin the arithmetic; the
script's training path is smoke-tested by running it with --train-limit (see its docstring).
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

stats = pytest.importorskip("scipy.stats")

RUN = Path(__file__).resolve().parents[3] / "benchmarks" / "accuracy" / "run.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("accuracy_run", RUN)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


DENSE = [0.925, 0.921, 0.928]
# final-stage top-1 per seed: ratio 0.3 loses 0.1 pt on average, 0.4 0.2 pt, 0.5 0.9 pt; the latency variant 0.5 pt
FINAL = {"pruned-24-ft": ([0.924, 0.921, 0.926], 0.3, 0.50), "pruned-24-ft@0.4": ([0.922, 0.920, 0.926], 0.4, 0.64),
         "pruned-24-ft@0.5": ([0.915, 0.913, 0.919], 0.5, 0.74), "lat-pruned-24-ft": ([0.920, 0.917, 0.922], None, 0.55)}


def rec(model, stage, seed, top1, ratio=None, removed=0.0, **kw):
    return {"model": model, "stage": stage, "seed": seed, "top1": top1, "top5": 0.99, "flops": 1e9 * (1 - removed),
            "params": 1e6, "flops_removed_frac": removed, "channel_ratio": ratio, **kw}


def records():
    out = [rec("m", "dense", s, t) for s, t in enumerate(DENSE)]
    for stage, (tops, ratio, removed) in FINAL.items():
        ft = stage.replace("pruned-24-ft", "pruned-ft")
        out += [rec("m", ft, s, t + 0.001 * (s + 1), ratio, removed) for s, t in enumerate(tops)]
        out += [rec("m", stage, s, t, ratio, removed, **({"lat_budget": 0.5} if ratio is None else {}))
                for s, t in enumerate(tops)]
    return out


def test_summary_orders_stages_and_tests_each_against_dense_and_its_own_ft(bench):
    summary = bench.summarize(records())
    assert [r["stage"] for r in summary] == [
        "dense", "pruned-ft", "pruned-24-ft", "lat-pruned-ft", "lat-pruned-24-ft",
        "pruned-ft@0.4", "pruned-24-ft@0.4", "pruned-ft@0.5", "pruned-24-ft@0.5"]
    row = next(r for r in summary if r["stage"] == "pruned-24-ft@0.4")
    tops = FINAL["pruned-24-ft@0.4"][0]
    assert row["drop_vs_dense_pt"] == pytest.approx(100 * (sum(DENSE) - sum(tops)) / 3)
    assert row["p_vs_dense"] == pytest.approx(stats.ttest_rel(DENSE, tops).pvalue)
    assert row["drop_vs_pruned-ft@0.4_pt"] == pytest.approx(0.2)  # against its own pruned-ft, not the base one
    assert "drop_vs_pruned-ft_pt" not in row
    lo, hi = row["drop_vs_dense_ci95_pt"]
    diffs = [100 * (a - b) for a, b in zip(DENSE, tops)]
    half = stats.t.ppf(0.975, 2) * stats.tstd(diffs) / math.sqrt(3)
    assert (lo, hi) == pytest.approx((row["drop_vs_dense_pt"] - half, row["drop_vs_dense_pt"] + half))
    assert row["channel_ratio"] == 0.4
    assert next(r for r in summary if r["stage"] == "lat-pruned-24-ft")["lat_budget"] == 0.5


def test_ratio_search_finds_the_largest_ratio_within_the_bar(bench):
    [m] = bench.ratio_search(records())
    best = m["largest_ratio_meeting_bar"]
    assert best["stage"] == "pruned-24-ft@0.4" and best["channel_ratio"] == 0.4
    assert best["drop_vs_dense_pt"] == pytest.approx(0.2)
    assert m["meets_goal"] and m["largest_ratio_tested"] == 0.5
    by = {t["stage"]: t for t in m["tested"]}
    assert not by["pruned-24-ft@0.5"]["meets_bar"] and by["pruned-24-ft@0.5"]["drop_vs_dense_pt"] == pytest.approx(0.9)
    assert by["lat-pruned-24-ft"]["objective"] == "latency" and not by["lat-pruned-24-ft"]["meets_bar"]
    # no ratio within the bar: none, and the goal is not met
    recs = [r for r in records() if r["stage"] in ("dense", "pruned-24-ft@0.5")]
    [m] = bench.ratio_search(recs)
    assert m["largest_ratio_meeting_bar"] is None and not m["meets_goal"]
    # within the bar but under 50% of the FLOPs removed: a ratio, but not the goal
    recs = [dict(r, flops_removed_frac=0.3) if r["stage"] == "pruned-24-ft" else r
            for r in records() if r["stage"] in ("dense", "pruned-24-ft")]
    [m] = bench.ratio_search(recs)
    assert m["largest_ratio_meeting_bar"]["channel_ratio"] == 0.3 and not m["meets_goal"]


def run_doc(date, recs, not_run=(), command="run.py"):
    return {"kind": "accuracy", "device": "NVIDIA H100 80GB HBM3", "capability": [9, 0], "versions": {},
            "date": date, "command": command, "git_commit": "abc", "method": "m", "recipe": {},
            "train_test_sizes": [60000, 10000], "seconds_per_seed": {"m": 100.0}, "not_run": list(not_run),
            "records": recs}


def test_report_merges_old_results_with_new_runs(bench, tmp_path):
    base = [r for r in records() if "@" not in r["stage"] and not r["stage"].startswith("lat-")]
    old_run = run_doc("2026-11-26T11:00:00Z", base, [{"model": "m", "seed": 3, "why": "budget"}])
    # an earlier results file (it holds runs, not run fields) made from that run
    results = {**{k: old_run[k] for k in ("kind", "device", "capability", "versions", "date", "command",
                                           "git_commit", "method")},
               "runs": [{k: old_run[k] for k in bench.RUN_KEYS}], "records": base}
    # a later run re-does seed 0 with the opt-in stages, and skips one stage group of seed 1
    new = [dict(r, top1=r["top1"] + 0.002) for r in records() if r["seed"] == 0]
    new_run = run_doc("2026-11-26T13:00:00Z", new, [{"model": "m", "seed": 1, "stage": "lat-pruned-24-ft",
                                                      "why": "budget"},
                                                     {"model": "m", "seed": 0, "stage": "pruned-24-ft@0.4",
                                                      "why": "budget"}],
                      command="run.py --extra-ratios 0.4,0.5 --stages lat")
    paths = []
    for i, d in enumerate((new_run, results, old_run)):  # any order: runs are taken oldest first
        paths.append(tmp_path / f"{i}.json")
        paths[-1].write_text(json.dumps(d))
    path = bench.report(paths, tmp_path / "out")
    doc = json.loads(path.read_text())
    assert path.name == "accuracy_h100.json" and path.with_suffix(".png").stat().st_size > 10_000
    assert [r["command"] for r in doc["runs"]] == ["run.py", "run.py --extra-ratios 0.4,0.5 --stages lat"]
    keys = [(r["model"], r["stage"], r["seed"]) for r in doc["records"]]
    assert len(keys) == len(set(keys)) == len(base) + len(new) - 3  # seed 0's three base stages replaced
    dense0 = next(r for r in doc["records"] if r["stage"] == "dense" and r["seed"] == 0)
    assert dense0["top1"] == pytest.approx(DENSE[0] + 0.002)  # the later run wins
    assert {(x["stage"], x["seed"]) for x in doc["replaced_records"]} == {
        ("dense", 0), ("pruned-ft", 0), ("pruned-24-ft", 0)}
    # not_run: the whole seed 3 (never ran) and seed 1's latency stages stay; seed 0's @0.4 ran, so it goes
    assert sorted((x["seed"], x.get("stage")) for x in doc["scope"]["not_run"]) == [(1, "lat-pruned-24-ft"),
                                                                                     (3, None)]
    assert doc["scope"]["seeds_run"]["m"]["pruned-24-ft@0.5"] == [0]
    assert "the latency-budget pruning variant" not in doc["scope"]["not_in_this_experiment"]
    assert doc["ratio_search"][0]["model"] == "m"


def test_option_parsing(bench):
    assert bench.parse_extra_ratios("0.4,0.5") == {None: [0.4, 0.5]}
    table = bench.parse_extra_ratios("resnet50=0.4,0.5; mobilenet_v2=0.2")
    assert table == {"resnet50": [0.4, 0.5], "mobilenet_v2": [0.2]}
    with pytest.raises(SystemExit, match="must be in"):
        bench.parse_extra_ratios("1.5")
    with pytest.raises(SystemExit, match="unknown stage group"):
        bench.parse_groups("lat,nope")
    assert bench.parse_expect("resnet50=330, mobilenet_v2=200") == {"resnet50": 330.0, "mobilenet_v2": 200.0}
    assert [bench.stage_kind(s) for s in ("lat-pruned-24-ft", "pruned-ft@0.5", "dense")] == [
        "pruned-24-ft", "pruned-ft", "dense"]


def test_latency_variant_table_is_cached_reloaded_and_an_unreachable_budget_raised(bench, tmp_path):
    import argparse

    import torch
    from torch import nn

    import sparsec

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1),
                        nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).eval()
    mod = sparsec.trace(net, torch.randn(2, 3, 16, 16), name="tiny", dynamic_batch=True)
    args = argparse.Namespace(size=16, batch=4, lut_points=3, out=tmp_path / "out", lut_dir=tmp_path / "none",
                              lat_max_ratio=0.5, lat_round_to=4)
    lut, how = bench.latency_table("tiny", mod, args, {})
    assert "NOT a latency" in how  # no CUDA here: the labelled MACs proxy
    path = tmp_path / "out" / "luts" / f"lut_tiny_{bench.gpu_short_name()}_16px_b4.json"
    again, how = bench.latency_table("tiny", mod, argparse.Namespace(**{**vars(args), "lut_dir": path.parent}), {})
    assert how.startswith("loaded") and again.fingerprint == lut.fingerprint
    g = torch.Generator().manual_seed(1)
    calib = [(torch.randint(0, 256, (8, 16, 16), dtype=torch.uint8, generator=g), torch.randint(0, 10, (8,), generator=g))]
    # max-ratio 0.5 keeps half of each group at least: a 0.1 budget cannot be met, so it is raised
    plan, stats, extra = bench.prune_latency(mod.clone(), lut, 0.1, calib, torch.device("cpu"), args)
    assert extra["lat_budget_asked"] == 0.1 and 0.1 < extra["lat_budget"] < 1
    assert plan.latency.predicted_ms <= extra["lat_budget"] * plan.latency.dense_ms + 1e-12
    assert stats["groups_pruned"] >= 1
