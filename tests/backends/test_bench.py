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


# ---------------------------------------------------------------- options

def _plan(*argv):
    return bench.plan(bench_args(*argv))


def bench_args(*argv):
    """The namespace main() parses, without running it (its parser is built inside main)."""
    import argparse

    ns = argparse.Namespace(models="resnet50", batches="1,32,256", dtypes="fp16", variants=",".join(bench.VARIANTS),
                            inductor_modes="default", baseline=None, prune_ratio="0.3", artifacts=None)
    for key, value in zip(argv[::2], argv[1::2]):
        setattr(ns, key.lstrip("-").replace("-", "_"), value)
    return ns


def test_inductor_expands_to_one_variant_per_mode_and_max_autotune_is_the_default_baseline():
    p = _plan("--inductor-modes", "default,max-autotune", "--dtypes", "fp16,bf16")
    assert p.variants == ("eager", "inductor-default", "inductor-max-autotune", "sparsec-dense", "sparsec-24",
                          "sparsec-pruned", "sparsec-pruned-24")
    assert p.baseline == "inductor-max-autotune"
    assert p.dtypes == ("fp16", "bf16") and p.batches == (1, 32, 256)


def test_baseline_falls_back_to_the_first_inductor_then_eager_and_a_named_one_must_be_measured():
    assert _plan().baseline == "inductor-default"
    assert _plan("--variants", "sparsec-pruned,eager").baseline == "eager"
    assert _plan("--baseline", "sparsec-dense").baseline == "sparsec-dense"
    with pytest.raises(bench.UsageError, match="--baseline inductor-max-autotune is not among the variants measured"):
        _plan("--baseline", "inductor-max-autotune")


@pytest.mark.parametrize("argv, message", [
    (("--dtypes", "fp16,fp32"), "unknown --dtypes fp32"),
    (("--inductor-modes", "turbo"), "unknown --inductor-modes turbo"),
    (("--batches", "1,0"), "--batches entry '0' is not a positive integer"),
    (("--batches", ""), "--batches is empty"),
    (("--variants", "eager,eager"), "--variants repeats eager"),
])
def test_bad_lists_are_usage_errors_naming_the_option(argv, message):
    with pytest.raises(bench.UsageError, match=message.replace("(", r"\(")):
        _plan(*argv)


def test_tvm_variants_pass_to_their_own_branch():
    assert _plan("--variants", "eager,tvm,tvm-24-graph").variants == ("eager", "tvm", "tvm-24-graph")


def test_sparsec_variants_take_a_pdl_suffix_and_others_do_not():
    assert _plan("--variants", "sparsec-pruned-24,sparsec-pruned-24+nopdl,sparsec-dense+pdl").variants == (
        "sparsec-pruned-24", "sparsec-pruned-24+nopdl", "sparsec-dense+pdl")
    assert bench.sparsec_spec("sparsec-pruned-24+nopdl") == ("h100-sparse", True, False)
    assert bench.sparsec_spec("sparsec-dense+pdl") == ("h100", False, True)
    assert bench.sparsec_spec("sparsec-24") == ("h100-sparse", False, None)
    with pytest.raises(bench.UsageError, match=r"unknown --variants eager\+pdl"):
        _plan("--variants", "eager+pdl")


def test_cli_rejects_a_bad_dtype_before_looking_for_a_gpu():
    res = CliRunner().invoke(cli, ["bench", "--dtypes", "fp8"])
    assert res.exit_code == 2 and "unknown --dtypes fp8" in res.stderr and "some of fp16,bf16" in res.stderr


# ---------------------------------------------------------------- pipeline, speedups

def test_sparsec_pipeline_sets_dtype_io_prune_and_cost_model():
    base = "canonicalize,fold-bn,dce,sparsify-2-4,fuse-epilogue,dce,to-dtype{dtype=fp16},partition"
    assert bench.sparsec_pipeline(base, dtype="bf16", prune_ratio=0.3, cost_model="shape") == (
        "canonicalize,fold-bn,dce,prune-channels{ratio=0.3,round-to=8},dce,sparsify-2-4{cost-model=shape},"
        "fuse-epilogue,dce,to-dtype{dtype=bf16,keep-io=false},partition")
    with pytest.raises(bench.UsageError, match="no single to-dtype pass"):
        bench.sparsec_pipeline("canonicalize,partition", dtype="bf16")


def test_speedups_of_a_group_are_against_the_baseline_whatever_its_position():
    group = [{"variant": "sparsec-pruned", "round_medians": [5.0, 5.2, 4.9]},
             {"variant": "inductor-max-autotune", "round_medians": [8.0, 8.1, 7.9]}]
    bench.attach_speedups(group, "inductor-max-autotune")
    sp, ci, p = bench._vs([8.0, 8.1, 7.9], [5.0, 5.2, 4.9])
    assert group[0]["speedup_vs_baseline"] == sp and group[0]["ci95"] == ci and group[0]["p_value_vs_baseline"] == p
    assert group[1]["speedup_vs_baseline"] == 1.0 and group[0]["baseline"] == "inductor-max-autotune"
    lone = [{"variant": "eager", "round_medians": [1.0]}]
    bench.attach_speedups(lone, "inductor-default")  # baseline failed: no speedup, not a wrong one
    assert lone[0]["speedup_vs_baseline"] is None and lone[0]["ci95"] is None


# ---------------------------------------------------------------- figures from a results file (no GPU)

def _record(model, variant, batch, ms, dtype="fp16", prune=None):
    return {"model": model, "variant": variant, "batch": batch, "dtype": dtype, "latency_ms_median": ms,
            "latency_ms_p90": ms * 1.1, "throughput_img_s": round(batch / ms * 1e3, 1), "round_medians": [ms, ms * 1.01],
            "peak_mem_mb": 10.0, "compile_s": 1.0, "prune_ratio": prune, "max_rel_err_vs_reference": 1e-3,
            "top1_agreement_vs_reference": 1.0}


def test_stage_rows_pair_accuracy_stages_with_the_variant_that_runs_them():
    records = [_record("resnet50", "sparsec-dense", 256, 11.0), _record("resnet50", "sparsec-pruned", 256, 8.0, prune=0.3),
               _record("resnet50", "sparsec-pruned-24", 256, 7.0, prune=0.3),
               _record("resnet50", "sparsec-pruned", 1, 0.5, prune=0.3),
               _record("resnet50", "sparsec-pruned", 256, 9.0, dtype="bf16", prune=0.3)]
    acc = {"summary": [{"model": "resnet50", "stage": s, "top1_mean": t, "top1_std": 0.002, "flops_removed_frac": f}
                       for s, t, f in (("dense", 0.92, 0.0), ("pruned-ft", 0.91, 0.5), ("pruned-24-ft", 0.90, 0.5))]}
    rows, key = bench.stage_rows(records, acc, "resnet50")
    assert (key["dtype"], key["batch"]) == ("fp16", 256)  # the largest batch, fp16 first
    assert [(r["stage"], r["variant"], r["latency_ms"]) for r in rows] == [
        ("dense", "sparsec-dense", 11.0), ("pruned-ft", "sparsec-pruned", 8.0), ("pruned-24-ft", "sparsec-pruned-24", 7.0)]
    assert [r["top1"] for r in rows] == [0.92, 0.91, 0.90]
    assert bench.stage_rows(records, acc, "mobilenet_v2") == ([], None)


def test_stage_rows_take_the_accuracy_of_the_ratio_the_bench_pruned_at():
    records = [_record("resnet50", "sparsec-dense", 256, 11.0), _record("resnet50", "sparsec-pruned", 256, 6.0, prune=0.5),
               _record("resnet50", "sparsec-pruned-24", 256, 5.9, prune=0.5)]
    acc = {"records": [{"model": "resnet50", "stage": "pruned", "channel_ratio": 0.3}],
           "summary": [{"model": "resnet50", "stage": s, "top1_mean": t, "top1_std": 0.0, "flops_removed_frac": f}
                       for s, t, f in (("dense", 0.92, 0.0), ("pruned-ft", 0.915, 0.5), ("pruned-24-ft", 0.916, 0.5),
                                       ("pruned-ft@0.5", 0.90, 0.74), ("pruned-24-ft@0.5", 0.905, 0.74))]}
    rows, _ = bench.stage_rows(records, acc, "resnet50")
    assert [(r["stage"], r["top1"], r["flops_removed_frac"]) for r in rows] == [
        ("dense", 0.92, 0.0), ("pruned-ft", 0.90, 0.74), ("pruned-24-ft", 0.905, 0.74)]
    acc["summary"] = [s for s in acc["summary"] if "@" not in s["stage"]]  # no accuracy at 0.5: no mislabelled bars
    assert [r["stage"] for r in bench.stage_rows(records, acc, "resnet50")[0]] == ["dense"]


def test_from_json_redraws_both_figures_and_the_table_without_a_gpu(tmp_path):
    import json

    records = [_record("resnet50", v, 256, ms, prune=0.3 if "pruned" in v else None)
               for v, ms in (("eager", 18.0), ("inductor-max-autotune", 9.0), ("sparsec-dense", 11.0),
                             ("sparsec-pruned", 8.0), ("sparsec-pruned-24", 7.5))]
    doc = {"kind": "e2e", "device": "NVIDIA H100 80GB HBM3", "baseline": "inductor-max-autotune", "records": records}
    (tmp_path / "e2e_h100_x.json").write_text(json.dumps(doc))
    acc = {"records": [{"model": "resnet50", "dataset": "fashion-mnist"}],
           "summary": [{"model": "resnet50", "stage": s, "top1_mean": 0.9, "top1_std": 0.01} for s in bench.STAGE_VARIANT]}
    (tmp_path / "acc.json").write_text(json.dumps(acc))
    res = CliRunner().invoke(cli, ["bench", "--from-json", str(tmp_path / "e2e_h100_x.json"), "--accuracy",
                                   str(tmp_path / "acc.json")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "e2e_h100_x.png").stat().st_size > 10_000
    assert (tmp_path / "e2e_h100_x_stages.png").stat().st_size > 10_000
    assert "speedup vs inductor-max-autotune" in res.stdout and "sparsec-pruned-24" in res.stdout
    rows = {line.split("│")[4].strip(): line for line in res.stdout.splitlines() if line.count("│") > 8}
    assert "│ 0.50 " in rows["eager"] and "│ 1.20 " in rows["sparsec-pruned-24"]  # 9 / 18 and 9 / 7.5 ms
    png_before = (tmp_path / "e2e_h100_x_stages.png").stat().st_mtime_ns
    res = CliRunner().invoke(cli, ["bench", "--from-json", str(tmp_path / "acc.json")])
    assert res.exit_code == 2 and "is not an e2e results file" in res.stderr
    assert (tmp_path / "e2e_h100_x_stages.png").stat().st_mtime_ns == png_before


def test_bench_compiles_sparsec_variants_in_bf16_end_to_end_on_the_cpu(tmp_path):
    """h100-sparse lowers without a GPU: every kernel, weight and the input are bf16 (keep-io=false)."""
    import json

    import sparsec
    from sparsec.api import resolve_backend, resolve_target

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(64, 128, 1),
                              torch.nn.ReLU(), torch.nn.Conv2d(128, 128, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(128, 64)).eval()
    tgt = resolve_target("h100-sparse")
    pipeline = bench.sparsec_pipeline(resolve_backend(tgt).pipeline(tgt), dtype="bf16", cost_model="shape")
    res = sparsec.compile(net, (torch.randn(2, 3, 16, 16),), target=tgt, pipeline=pipeline, output=tmp_path / "m.sparsec")
    manifest = json.loads((res.artifact / "manifest.json").read_text())
    payload = manifest["payload"]
    assert len(payload["layers"]) >= 2 and any(r["sparse"] for r in payload["layers"])  # 1x1 conv + linear
    assert payload["kernels"] and all("_bf16_" in k for k in payload["kernels"])
    assert all("_bf16_" in r["config"] for r in payload["layers"])
    assert [t["dtype"] for t in manifest["inputs"]["tensors"]] == ["bf16"]
    ep = torch.export.load(str(res.artifact / "program.pt2"))
    assert {t.dtype for t in ep.state_dict.values() if t.is_floating_point()} == {torch.bfloat16}


def test_heartbeat_prints_while_a_long_step_runs_and_stops_after(capsys):
    import time

    t0 = time.perf_counter()
    with bench._heartbeat("resnet50 fp16 bs256 inductor-max-autotune: compiling", t0, every_s=0.05):
        time.sleep(0.18)
    n = capsys.readouterr().out.count("inductor-max-autotune: compiling")
    time.sleep(0.12)
    assert 1 <= n <= 4 and capsys.readouterr().out == ""  # loose count: 2 shared CPU cores


def test_dense_cost_is_flops_per_image_and_the_model_parameters():
    import torchvision

    flops, params = bench.dense_cost("resnet18")
    assert params == sum(p.numel() for p in torchvision.models.resnet18().parameters())
    assert 1.75e9 < flops / 2 < 1.85e9  # ResNet-18 at 224x224: 1.8 GMACs per image


def test_prune_ratio_is_one_for_all_models_or_one_per_model():
    assert bench.prune_ratios("0.3", ["resnet50", "mobilenet_v2"]) == {"resnet50": 0.3, "mobilenet_v2": 0.3}
    assert bench.prune_ratios("resnet50=0.5,mobilenet_v2=0.32", ["resnet50"]) == {"resnet50": 0.5, "mobilenet_v2": 0.32}
    for bad in ("resnet50=0.5", "1.5", "x", "resnet50=,mobilenet_v2=0.3"):
        with pytest.raises(bench.UsageError, match="--prune-ratio"):
            bench.prune_ratios(bad, ["resnet50", "mobilenet_v2"])
    with pytest.raises(bench.UsageError, match="--prune-ratio"):
        _plan("--models", "resnet50,mobilenet_v2", "--prune-ratio", "resnet50=0.5")


# ---------------------------------------------------------------- compiled artifacts as variants

@pytest.fixture(scope="module")
def r18_artifact(tmp_path_factory):
    """What `sparsec compile zoo:torchvision/resnet18 --target h100 --input-shape 1,3,224,224` writes (no GPU)."""
    out = tmp_path_factory.mktemp("art") / "r18.sparsec"
    res = CliRunner().invoke(cli, ["compile", "zoo:torchvision/resnet18", "--target", "h100", "--input-shape",
                                   "1,3,224,224", "-o", str(out)])
    assert res.exit_code == 0, res.output
    return out


def test_an_artifact_becomes_a_variant_of_its_model_batch_and_dtype(r18_artifact):
    p = _plan("--models", "resnet18", "--artifacts", str(r18_artifact), "--variants", "eager,inductor")
    assert p.variants == ("eager", "inductor-default", "artifact:r18.sparsec")
    (a,) = p.artifacts
    assert (a.model, a.batch, a.dtype, a.input_dtype, a.path) == ("resnet18", 1, "fp16", "f32", str(r18_artifact))
    assert a.flops == bench.dense_cost("resnet18")[0]  # not pruned: the dense FLOPs per image
    assert p.baseline == "inductor-default"


def test_an_artifact_outside_the_run_is_a_usage_error_naming_the_fix(r18_artifact, tmp_path):
    with pytest.raises(bench.UsageError, match="is resnet18 at batch 1, which this run does not measure") as e:
        _plan("--artifacts", str(r18_artifact))  # --models resnet50
    assert "add resnet18 to --models" in str(e.value)
    with pytest.raises(bench.UsageError, match="computes in fp16, which this run does not measure"):
        _plan("--models", "resnet18", "--dtypes", "bf16", "--artifacts", str(r18_artifact))
    with pytest.raises(bench.UsageError, match="is not a sparsec artifact"):
        _plan("--artifacts", str(tmp_path))
    fake = tmp_path / "small.sparsec"
    fake.mkdir()
    (fake / "manifest.json").write_text('{"name": "resnet18", "inputs": {"tensors": [{"shape": [1, 3, 64, 64], '
                                        '"dtype": "f32"}]}, "nodes": []}')
    with pytest.raises(bench.UsageError, match="--input-shape B,3,224,224"):
        _plan("--models", "resnet18", "--artifacts", str(fake))


def test_cli_checks_the_artifacts_before_looking_for_a_gpu(tmp_path):
    res = CliRunner().invoke(cli, ["bench", "--models", "resnet18", "--artifacts", str(tmp_path / "missing.sparsec")])
    assert res.exit_code == 2 and "is not a sparsec artifact" in res.stderr


@pytest.mark.gpu
def test_running_peaks_count_a_cuda_graph_recording(tmp_path):
    """reduce-overhead records its CUDA graph on the call after compiling; that pool must count in the running
    peak, as sparsec's own capture does. It once came out as the outputs alone (16 MB for ResNet-50 bs256
    under max-autotune) or below zero. The bound: MobileNetV2's 96-channel expand conv output at 112x112,
    which any execution of it writes (73.5 MB at bs32 fp16)."""
    import json

    bench.main(["--models", "mobilenet_v2", "--batches", "32", "--dtypes", "fp16", "--variants", "eager,inductor",
                "--inductor-modes", "default,reduce-overhead", "--repeats", "2", "--iters", "3",
                "--out-dir", str(tmp_path)])
    recs = {r["variant"]: r for r in json.loads(next(tmp_path.glob("e2e_*.json")).read_text())["records"]}
    assert set(recs) == {"eager", "inductor-default", "inductor-reduce-overhead"}
    largest = 32 * 96 * 112 * 112 * 2 / 2**20
    for v, r in recs.items():
        assert r["peak_mem_mb"] >= largest, (v, r["peak_mem_mb"])
