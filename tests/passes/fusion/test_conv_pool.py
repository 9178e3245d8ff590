"""``fuse-conv-pool``: forced and measured decisions, reasons, exact numerics, order, options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import sparsec
from sparsec.errors import PipelineError
from sparsec.ir import print_module
from sparsec.passes.fusion.conv_pool import RULES, site_key

from ..conftest import ints, run, run_twice_is_once
from .nets import ConvPool, integer_weights

X = (2, 8, 8, 8)
# the site of ConvPool() at X: conv 8->16 3x3 pad 1, relu, max_pool2d(3, 2, 1)
KEY = site_key(X, (16, 8, 3, 3), [1, 1], [1, 1], [1, 1], 1, "relu", "max", [3, 3], [2, 2], [1, 1], [1, 1],
               False, True, None, "f32")


def _traced(model, shape=X):
    model = integer_weights(model)
    return model, sparsec.trace(model, (ints(*shape),))


def _exact(mod, model, shape=X):
    for seed in (20, 21):
        x = ints(*shape, gen=torch.Generator().manual_seed(seed))
        want, got = model(x), mod(x)
        assert got.shape == want.shape and got.dtype == want.dtype
        assert torch.equal(got, want)


def _measurements(tmp_path, gain: float, key: str = KEY):
    path = tmp_path / "conv_pool_test.json"
    path.write_text(json.dumps({"kind": "conv_pool", "records": [{"key": key, "gain": gain}]}))
    return path


def test_without_measurement_declines_not_measured(filecheck):
    model, mod = _traced(ConvPool())
    rec = run(mod, "fuse-conv-pool")
    assert rec[0].stats == {"fused": 0, "declined": 1}
    filecheck(print_module(mod), r"""
        CHECK-LABEL: module @convpool(
        CHECK: aten.conv2d({{.*}})  {sparsec.declined = [fuse-conv-pool/conv2d-act-pool: not measured (give measurements=FILE from benchmarks/conv_pool.py, or force=true)]}
        CHECK: aten.max_pool2d
    """)
    _exact(mod, model)


@pytest.mark.parametrize("pool", ["max", "avg"])
@pytest.mark.parametrize("act", ["relu", "silu", None])
def test_force_fuses_exactly(filecheck, pool, act):
    model, mod = _traced(ConvPool(act=act, pool=pool))
    rec = run(mod, "fuse-conv-pool{force=true}")
    rule = "conv2d-act-pool" if act else "conv2d-pool"
    assert rec[0].stats == {rule: 1, "fused": 1, "declined": 0}
    filecheck(print_module(mod), rf"""
        CHECK-LABEL: module @convpool(
        CHECK-NOT: aten.conv2d
        CHECK: [[P:%conv2d_pool[_0-9]*]]: f32[{{{{.*}}}}] = sparsec.conv2d_pool(%x, @conv.weight, @conv.bias, padding=[1,1]
        CHECK-SAME: {{sparsec.fused = {rule}[conv2d,{{{{.*}}}}{pool}_pool2d]}}
        CHECK-NOT: aten.
        CHECK: return {{{{\[}}}}[[P]]{{{{\]}}}}
    """)
    _exact(mod, model)


def test_measured_gain_decides(tmp_path):
    good = _measurements(tmp_path, 1.3)
    model, mod = _traced(ConvPool())
    rec = run(mod, f"fuse-conv-pool{{measurements={good},min-gain=1.2}}")
    assert rec[0].stats == {"conv2d-act-pool": 1, "fused": 1, "declined": 0}
    _exact(mod, model)

    _, mod = _traced(ConvPool())
    rec = run(mod, f"fuse-conv-pool{{measurements={good},min-gain=1.5}}")
    assert rec[0].stats == {"fused": 0, "declined": 1}
    assert f"fuse-conv-pool/conv2d-act-pool: measured gain 1.300x < min-gain 1.5x ({good})" in print_module(mod)


def test_unmeasured_site_names_its_key(tmp_path):
    path = _measurements(tmp_path, 2.0, key=KEY.replace("dtype=f32", "dtype=f16"))
    _, mod = _traced(ConvPool())
    run(mod, f"fuse-conv-pool{{measurements={path}}}")
    assert f"not measured: no record for '{KEY}' in {path}" in print_module(mod)


def test_runs_after_fuse_epilogue_too():
    model, mod = _traced(ConvPool(act="hardswish"))
    rec = run(mod, "fuse-epilogue,fuse-conv-pool{force=true}")
    assert rec[0].stats["conv2d-act"] == 1 and rec[1].stats == {"conv2d-pool": 1, "fused": 1, "declined": 0}
    text = print_module(mod)
    assert 'act="hardswish", kernel_size=[3,3]' in text
    assert "sparsec.fused = conv2d-pool[conv2d,hardswish,max_pool2d]" in text
    _exact(mod, model)


def test_other_reader_and_adaptive_pool_decline():
    model, mod = _traced(ConvPool(extra=True))
    rec = run(mod, "fuse-conv-pool{force=true}")
    assert rec[0].stats == {"fused": 0, "declined": 1}
    assert "'relu' has 2 users (max_pool2d, output), so its value must stay in memory" in print_module(mod)
    _, mod = _traced(ConvPool(pool="adaptive"))
    run(mod, "fuse-conv-pool{force=true}")
    assert "aten.adaptive_avg_pool2d is not fused (only aten.max_pool2d and aten.avg_pool2d)" in print_module(mod)


def test_idempotent(tmp_path):
    _, mod = _traced(ConvPool())
    run_twice_is_once(mod, "fuse-conv-pool")
    _, mod = _traced(ConvPool())
    run_twice_is_once(mod, "fuse-conv-pool{force=true},fuse-epilogue")


@pytest.mark.parametrize("text, message", [
    ("fuse-conv-pool{min-gain=0}", "option 'min-gain' of pass 'fuse-conv-pool' must be positive"),
    ("fuse-conv-pool{measurements=/no/such/file.json}", "option 'measurements' of pass 'fuse-conv-pool' names no file"),
    ("fuse-conv-pool{force=yes}", "option 'force' of pass 'fuse-conv-pool' has a bad value"),
])
def test_bad_options(text, message):
    with pytest.raises(PipelineError, match=message.replace("(", r"\(")):
        sparsec.PassManager.parse(text)


def test_corrupt_measurements_fail_the_pass(tmp_path):
    from sparsec.errors import PipelineFailure

    path = tmp_path / "bad.json"
    path.write_text("{not json")
    _, mod = _traced(ConvPool())
    with pytest.raises(PipelineFailure, match="cannot read the conv\\+pool measurements"):
        run(mod, f"fuse-conv-pool{{measurements={path}}}")


@pytest.mark.slow
def test_resnet18_stem_forced():
    import torchvision

    model = integer_weights(torchvision.models.resnet18(), lo=-1, hi=2)
    x = ints(1, 3, 64, 64)
    mod = sparsec.trace(model, (x,))
    run(mod, "default")
    unfused = mod.clone()
    rec = run(mod, "fuse-conv-pool{force=true},fuse-epilogue")
    assert rec[0].stats == {"conv2d-act-pool": 1, "fused": 1, "declined": 0}
    assert "aten.max_pool2d" not in print_module(mod)
    assert torch.equal(mod(x), unfused(x))
    from sparsec.ir.analysis import Cost

    # fused ops count the MACs of the conv they contain (the stem's at full resolution, before pooling)
    assert mod.analysis(Cost).total_macs == unfused.analysis(Cost).total_macs > 0


def test_rules_are_named_and_prioritised():
    assert [(r.name, r.priority) for r in RULES] == [("conv2d-act-pool", 1), ("conv2d-pool", 0)]


def test_benchmark_keys_match_the_pass(tmp_path):
    """A record written by benchmarks/conv_pool.py for the ResNet stem is found for a traced ResNet stem."""
    import importlib.util

    root = Path(__file__).resolve().parents[3]
    spec = importlib.util.spec_from_file_location("bench_conv_pool", root / "benchmarks" / "conv_pool.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    stem_site = next(s for s in bench.SITES if s[0] == "resnet-stem")
    path = _measurements(tmp_path, 1.5, key=bench.key_for(stem_site, 32, torch.float16))
    stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
    mod = sparsec.trace(stem.eval().half(), (torch.randn(32, 3, 224, 224, dtype=torch.float16),))
    rec = run(mod, f"fold-bn,dce,fuse-conv-pool{{measurements={path}}}")
    assert rec[-1].stats == {"conv2d-act-pool": 1, "fused": 1, "declined": 0}


def test_measurements_from_another_gpu_do_not_apply(tmp_path):
    from sparsec.passes import PassContext

    path = tmp_path / "conv_pool_a100.json"
    path.write_text(json.dumps({"kind": "conv_pool", "device": "NVIDIA A100-SXM4-80GB", "capability": [8, 0],
                                "records": [{"key": KEY, "gain": 3.0}]}))
    pm = sparsec.PassManager.parse(f"fuse-conv-pool{{measurements={path}}}")
    _, mod = _traced(ConvPool())
    rec = pm.run(mod, PassContext(target=sparsec.registry().get("target", "h100")))
    assert rec[0].stats == {"fused": 0, "declined": 1}
    assert "measured on NVIDIA A100-SXM4-80GB (sm_80), but the target h100 is sm_90a" in print_module(mod)
    _, mod = _traced(ConvPool())
    rec = pm.run(mod, PassContext(target=sparsec.registry().get("target", "a100")))
    assert rec[0].stats == {"conv2d-act-pool": 1, "fused": 1, "declined": 0}


def _batched(tmp_path, gains: dict[int, float]):
    """Measurements of ConvPool's site at these batches (the traced one is batch 2)."""
    path = tmp_path / "conv_pool_batches.json"
    recs = [{"key": KEY.replace(f"x={X[0]}x", f"x={b}x", 1), "gain": g} for b, g in gains.items()]
    path.write_text(json.dumps({"kind": "conv_pool", "records": recs}))
    return path


def test_a_batch_between_two_measured_batches_fuses_when_both_gain(tmp_path):
    model, mod = _traced(ConvPool())
    rec = run(mod, f"fuse-conv-pool{{measurements={_batched(tmp_path, {1: 1.3, 4: 1.4, 8: 0.9})}}}")
    assert rec[0].stats == {"conv2d-act-pool": 1, "fused": 1, "declined": 0}
    _exact(mod, model)
    _, mod = _traced(ConvPool())
    path = _batched(tmp_path, {1: 1.3, 4: 1.02})
    run(mod, f"fuse-conv-pool{{measurements={path}}}")
    assert (f"fuse-conv-pool/conv2d-act-pool: batch 2, between measured batches 1, 4: gain 1.020x at batch 4 "
            f"< min-gain 1.05x ({path})") in print_module(mod)
    _, mod = _traced(ConvPool())
    path = _batched(tmp_path, {4: 1.3, 8: 1.4})
    run(mod, f"fuse-conv-pool{{measurements={path}}}")
    assert f"not measured at batch 2: {path} has this site at batches 4 to 8" in print_module(mod)


def test_a_dynamic_batch_fuses_only_when_every_measured_batch_gains(tmp_path):
    model = integer_weights(ConvPool())
    for gains, fused in (({1: 1.3, 8: 1.2}, True), ({1: 1.3, 8: 0.8}, False)):
        mod = sparsec.trace(model, (ints(*X),), dynamic_batch=True)
        rec = run(mod, f"fuse-conv-pool{{measurements={_batched(tmp_path, gains)}}}")
        assert rec[0].stats["fused"] == int(fused)
        if not fused:
            assert "a dynamic batch (s" in print_module(mod) and "gain 0.800x at batch 8" in print_module(mod)
