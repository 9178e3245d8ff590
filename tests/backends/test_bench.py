"""``sparsec bench``: its statistics on known numbers, and its refusal without a GPU."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from click.testing import CliRunner
from scipy import stats

from sparsec.backends import bench
from sparsec.cli.main import cli


def test_stats_median_p90_and_throughput():
    rounds = [[1.0, 2.0, 3.0, 4.0, 5.0], [6.0, 7.0, 8.0, 9.0, 10.0]]
    st = bench._stats(rounds, batch=4)
    assert st["latency_ms_median"] == 5.5
    assert st["latency_ms_p90"] == 9.0  # the 9th of 10 sorted times
    assert st["throughput_img_s"] == round(4 / 5.5 * 1e3, 1)
    assert st["round_medians"] == [3.0, 8.0]


def test_speedup_ci_and_paired_t_test_against_scipy():
    base = [10.0, 10.4, 9.8, 10.1, 10.3]  # inductor's per-round medians
    ours = [5.1, 5.0, 5.2, 4.9, 5.3]
    mean, ci, p = bench._vs(base, ours)
    ratios = [b / o for b, o in zip(base, ours)]
    half = stats.t.ppf(0.975, 4) * statistics.stdev(ratios) / math.sqrt(5)
    assert mean == round(statistics.mean(ratios), 4)
    assert ci == [round(statistics.mean(ratios) - half, 4), round(statistics.mean(ratios) + half, 4)]
    assert ci[0] < mean < ci[1]
    assert p == pytest.approx(stats.ttest_rel(base, ours).pvalue) and p < 1e-3


def test_one_round_has_no_interval():
    mean, ci, p = bench._vs([2.0], [1.0])
    assert mean == 2.0 and all(math.isnan(x) for x in ci) and p is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_bench_without_a_gpu_says_so():
    res = CliRunner().invoke(cli, ["bench", "--models", "resnet18", "--batches", "1"])
    assert res.exit_code == 1
    assert "sparsec bench needs a CUDA GPU" in res.stderr and "sparsec compile` works without one" in res.stderr


def test_unknown_variant_is_a_usage_error():
    res = CliRunner().invoke(cli, ["bench", "--variants", "eager,turbo"])
    assert res.exit_code == 2 and "unknown --variants turbo" in res.stderr
