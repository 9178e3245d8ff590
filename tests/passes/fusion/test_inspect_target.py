"""``sparsec inspect --target`` on fused programs, and fused artifacts loaded in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys

import torch
from click.testing import CliRunner
from torch import nn

import sparsec
from sparsec.cli.main import cli

from ..conftest import ints, run
from .nets import integer_weights


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.c1 = nn.Conv2d(16, 16, 1)
        self.fc = nn.Linear(16, 8)

    def forward(self, x):
        y = torch.relu(self.bn(self.stem(x)))
        y = torch.relu(self.c1(y) + y)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


def _save(tmp_path, pipeline: str):
    mod = sparsec.trace(integer_weights(Small()), (ints(2, 3, 8, 8),))
    run(mod, pipeline)
    path = tmp_path / "m.pt2"
    torch.export.save(mod.export(), path)
    return path


def _invoke(*args):
    res = CliRunner().invoke(cli, [str(a) for a in args])
    assert res.exit_code == 0, res.stderr + res.stdout
    return res


def test_inspect_target_h100_shows_support_per_node(tmp_path):
    path = _save(tmp_path, "fusion,to-dtype{dtype=fp16}")
    # --dtype fp16: the loader casts the whole program to --dtype (fp32 by default), which would undo to-dtype
    data = json.loads(_invoke("inspect", path, "--dtype", "fp16", "--target", "h100", "-f", "json").stdout)
    assert data["backend"] == "cutlass" and data["backend_declared"] is False  # the backend is registered
    support = {n["name"]: n["support"] for n in data["nodes"] if n["kind"] == "op"}
    ops = {n["name"]: n["op"] for n in data["nodes"]}
    fused = sorted(k for k, v in ops.items() if v == "sparsec.fused_conv2d")
    assert len(fused) == 2
    stem, c1 = fused
    assert support[stem] == {"supported": True, "reason": "yes (cutlass: direct conv of 3 input channels (the stem), "
                             "fused epilogue (act=relu))"}
    assert support[c1] == {"supported": True,
                           "reason": "yes (cutlass: 1x1 conv as a GEMM (NHWC), fused epilogue (residual, act2=relu))"}
    pool = next(k for k, v in ops.items() if v == "aten.adaptive_avg_pool2d")
    assert support[pool]["reason"].startswith("no: aten.adaptive_avg_pool2d: pooling is not a CUTLASS kernel")
    assert data["totals"]["supported"] == sum(v["supported"] for v in support.values())

    table = _invoke("inspect", path, "--dtype", "fp16", "--target", "h100", "--show", "name,op,support").stdout
    assert "support declared by cutlass's support table" not in table
    assert "yes (cutlass: GEMM (linear), identity epilogue)" in table


def test_inspect_target_cpu_is_unchanged_by_fusion(tmp_path):
    path = _save(tmp_path, "fusion")
    data = json.loads(_invoke("inspect", path, "--target", "cpu", "-f", "json").stdout)
    assert data["backend"] == "eager" and data["backend_declared"] is False
    assert all(n["support"]["supported"] for n in data["nodes"] if n["kind"] == "op")


def test_fused_artifact_loads_in_a_fresh_process(tmp_path):
    model = integer_weights(Small())
    x = ints(2, 3, 8, 8)
    out = tmp_path / "small.sparsec"
    sparsec.compile(model, (x,), target="cpu", pipeline="fusion", output=out)
    torch.save(x, tmp_path / "x.pt")
    torch.save(model(x), tmp_path / "want.pt")
    code = (
        "import sys, torch, sparsec\n"
        f"m = sparsec.load({str(out)!r})\n"
        "assert 'sparsec.fused_conv2d' in str(m.graph)\n"
        f"x, want = torch.load({str(tmp_path / 'x.pt')!r}), torch.load({str(tmp_path / 'want.pt')!r})\n"
        "torch.testing.assert_close(m(x), want, rtol=1e-6, atol=1e-3)\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_inspect_pipeline_shows_fusions_declines_and_partitions(tmp_path):
    path = _save(tmp_path, "default")
    data = json.loads(_invoke("inspect", path, "--dtype", "fp16", "-p", "fusion,partition{target=h100}",
                              "--target", "h100", "-f", "json").stdout)
    meta = {n["name"]: n["meta"] for n in data["nodes"]}
    fused = [m for m in meta.values() if "sparsec.fused" in m]
    assert sorted(m["sparsec.fused"].split("[")[0] for m in fused) == ["conv2d-act", "conv2d-residual-act"]
    declined = [m["sparsec.declined"] for m in meta.values() if "sparsec.declined" in m]
    # the stem's relu also feeds the residual add of the next block, so its chain stops at the relu
    # and the pool after the residual block cannot join a conv that already ends in a residual add
    assert declined == ["[fuse-epilogue/conv2d-act-residual: 'relu' has 2 users (conv2d_1, add), "
                        "so its value must stay in memory]",
                        "[fuse-conv-pool/conv2d-pool: the conv already has a residual epilogue]"]
    assert sum(m.get("sparsec.backend") == "cutlass" for m in meta.values()) == 3  # the stem, 1x1 conv and fc
    assert all(n["support"]["supported"] for n in data["nodes"] if "sparsec.backend" in n["meta"])


def test_opt_pass_statistics_count_per_rule(tmp_path):
    path = _save(tmp_path, "default")
    res = _invoke("opt", path, "--pipeline", "fuse-epilogue,fuse-conv-pool", "--pass-statistics")
    stats = res.stderr
    assert "fuse-epilogue" in stats and "conv2d-act" in stats and "conv2d-residual-act" in stats
    assert "sparsec.fused_conv2d" in res.stdout  # the IR goes to stdout
