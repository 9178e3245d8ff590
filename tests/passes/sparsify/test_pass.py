"""The pass as users meet it: pipeline text, printed metadata (FileCheck), idempotence, and the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

import sparsec
from sparsec.cli.main import cli
from sparsec.errors import PipelineError
from sparsec.ir import print_module
from sparsec.passes import PassManager
from sparsec.passes.pipeline import format_pipeline, parse_pipeline
from sparsec.passes.sparsify import Sparsify24

from ..conftest import rel_err, run_twice_is_once
from .nets import conv_net


def test_pipeline_text_round_trips():
    text = ('fold-bn,sparsify-2-4{permute=true,dtype=bf16,cost-model=shape,target=h100-sparse,'
            'layers=[layer1.*,"!fc"],min-k=128,k-multiple=16,seed=3}')
    passes = parse_pipeline(text)
    assert passes[1] == Sparsify24(permute=True, dtype="bf16", cost_model="shape", target="h100-sparse",
                                   layers=("layer1.*", "!fc"), min_k=128, k_multiple=16, seed=3)
    again = format_pipeline(passes)
    assert parse_pipeline(again) == passes
    assert again == 'fold-bn,sparsify-2-4{permute=true,dtype=bf16,cost-model=shape,target=h100-sparse,' \
                    'layers=[layer1.*,!fc],min-k=128,k-multiple=16,seed=3}'
    assert str(Sparsify24()) == "sparsify-2-4"
    assert "sparse-24" in sparsec.registry().names("pipeline")
    assert [p.name for p in parse_pipeline("sparse-24")] == ["canonicalize", "fold-bn", "sparsify-2-4", "dce"]


@pytest.mark.parametrize("text, message", [
    ("sparsify-2-4{cost-model=fast}", "option 'cost-model' of pass 'sparsify-2-4' has a bad value"),
    ("sparsify-2-4{dtype=fp8}", "option 'dtype' of pass 'sparsify-2-4' has a bad value"),
    ("sparsify-2-4{mask=random}", "option 'mask' of pass 'sparsify-2-4' has a bad value"),
    ("sparsify-2-4{min-k=-1}", "option 'min-k' of pass 'sparsify-2-4' has a bad value"),
    ("sparsify-2-4{k-multiple=6}", "expected: a multiple of 4 (K is cut into groups of 4)"),
    ("sparsify-2-4{m-multiple=0}", "option 'm-multiple' of pass 'sparsify-2-4' has a bad value"),
    ("sparsify-2-4{layers=[\"!\"]}", "option 'layers' of pass 'sparsify-2-4' has a bad value"),
    ("sparsify-2-4{cost-model=off,min-k=64}", "option 'min-k' of pass 'sparsify-2-4' has no effect with cost-model=off"),
    ("sparsify-2-4{cost-model=shape,tuning-db=x.json}", "option 'tuning-db' of pass 'sparsify-2-4' is read only by cost-model=measured"),
    ("sparsify-2-4{permute=maybe}", "option 'permute' of pass 'sparsify-2-4' has a bad value"),
])
def test_bad_options(text, message):
    with pytest.raises(PipelineError) as info:
        parse_pipeline(text)
    assert message in str(info.value)


def test_printed_metadata(filecheck):
    mod = sparsec.trace(conv_net(), (torch.randn(2, 3, 8, 8),))
    PassManager.parse("fold-bn,sparsify-2-4{cost-model=shape,min-k=100}").run(mod)
    filecheck(print_module(mod), r"""
        CHECK-LABEL: module @convnet
        CHECK: @conv.weight: f32[32,16,3,3]  {sparsec.sparsity = 2:4(dim=1, retained=0.{{[0-9]+}}, "shape: M=32 K=144 N=128 fp16 meets the pass options limits (k%4, m%1, k>=100, m>=0); no timing consulted")}
        CHECK-NOT: @fc.weight: {{.*}}sparsec.sparsity
        CHECK: %[[STEM:[a-z0-9_]+]]: f32[2,16,8,8] = aten.conv2d(%x, @stem.weight, {{.*}}sparsec.dense24 = dense("Cin=3 is not a multiple of 4
        CHECK: aten.conv2d(%{{[a-z0-9_]+}}, @conv.weight, @conv.bias, padding=[1,1]){{$}}
        CHECK: aten.conv2d({{.*}}groups=32){{.*}}sparsec.dense24 = dense("depthwise conv (groups=32): no reduction over channels to sparsify")
        CHECK: aten.conv2d({{.*}}groups=2){{.*}}sparsec.dense24 = dense("grouped conv (groups=2): the 2:4 kernels take dense GEMMs only")
        CHECK: aten.conv2d({{.*}}@pw.weight{{.*}}sparsec.dense24 = dense("K=32 < min-k 100 (pass options): too small to gain")
        CHECK: aten.linear({{.*}}@fc.weight{{.*}}sparsec.dense24 = dense("K=64 < min-k 100 (pass options): too small to gain")
    """)


def test_idempotent():
    mod = sparsec.trace(conv_net(), (torch.randn(2, 3, 8, 8),))
    run_twice_is_once(mod, "fold-bn,sparsify-2-4{cost-model=off,permute=true},dce")


# -- the command line ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def net_pt2(tmp_path_factory):
    net = conv_net()
    path = tmp_path_factory.mktemp("sp") / "net.pt2"
    torch.export.save(torch.export.export(net, (torch.randn(2, 3, 8, 8),)), path)
    return path, net


def _cli(*args, code=0):
    res = CliRunner().invoke(cli, [str(a) for a in args])
    assert res.exit_code == code, f"exit {res.exit_code}\n{res.stdout}\n{res.stderr}"
    return res


def test_opt_pipeline(net_pt2, tmp_path):
    path, net = net_pt2
    out = tmp_path / "sparse.pt2"
    res = _cli("opt", path, "--pipeline", "fold-bn,sparsify-2-4{cost-model=shape,min-k=100,permute=true},dce",
               "--pass-statistics", "-o", out)
    assert "gain.conv" in res.stderr and "permute_swaps" in res.stderr and "retained_mean" in res.stderr
    w = dict(torch.export.load(out).module().named_parameters())["conv.weight"]
    assert sparsec.ir.verify.is_24_sparse(w.detach(), 1)
    x = torch.randn(2, 3, 8, 8)
    y = torch.export.load(out).module()(x)
    assert y.shape == (2, 10) and 0 < rel_err(y, net(x)) < 1.0


def test_compile_for_cpu_with_the_pass(net_pt2, tmp_path):
    path, net = net_pt2
    out = tmp_path / "net.sparsec"
    _cli("compile", path, "--target", "cpu", "-o", out, "--pipeline", "default,sparsify-2-4{cost-model=off}")
    model = sparsec.load(out)
    conv = dict(model.named_parameters())
    assert sum(sparsec.ir.verify.is_24_sparse(p.detach(), 1) for n, p in conv.items() if n.endswith("weight")
               and p.dim() >= 2 and p.shape[1] % 4 == 0 and p.shape[1] > 1) >= 3


@pytest.mark.parametrize("args, code, message", [
    (["--pipeline", "sparsify-2-4{target=h100-sparse,tuning-db=/nonexistent/db.json}"], 2,
     "tuning DB file '/nonexistent/db.json' does not exist"),
    (["--pipeline", "sparsify-2-4"], 1, "cost-model=measured needs a target with 2:4 kernels"),
    (["--pipeline", "sparsify-2-4{target=h200}"], 2, "unknown target 'h200'"),
    (["--pipeline", "sparsify-2-4{cost-model=sometimes}"], 2, "expected: one of measured, shape, off"),
])
def test_opt_errors(net_pt2, args, code, message):
    res = _cli("opt", net_pt2[0], *args, code=code)
    assert res.stderr.startswith("error: ") and message in res.stderr
    assert "fix:" in res.stderr or "expected:" in res.stderr
    assert "Traceback" not in res.output


def test_compile_for_h100_sparse_lowers_on_the_cutlass_backend(net_pt2, tmp_path):
    out = tmp_path / "x.sparsec"
    _cli("compile", net_pt2[0], "--target", "h100-sparse", "-o", out, "--pipeline",
         "canonicalize,fold-bn,sparsify-2-4{cost-model=shape},fuse-epilogue,dce,to-dtype{dtype=fp16},partition")
    layers = json.loads((out / "manifest.json").read_text())["payload"]["layers"]
    assert any(r["sparse"] for r in layers)  # 2:4 layers became sparsec::gemm24 calls


def test_inspect_sparsity_column(net_pt2, tmp_path):
    path, _ = net_pt2
    res = _cli("inspect", path, "--show", "name,op,sparsity", "--target", "h100-sparse", "--sparsify", "cost-model=shape")
    assert "M=Cout=10 is not a multiple of 8 (h100-sparse fp16)" in res.stdout
    assert "depthwise conv (groups=32)" in res.stdout and "2/6 sparse" in res.stdout
    res = _cli("inspect", path, "--format", "json", "--show", "name,sparsity", "--sparsify", "cost-model=shape,min-k=100")
    nodes = {n["name"]: n for n in json.loads(res.stdout)["nodes"]}
    conv = next(n for n in nodes.values() if n["sparsity"] and n["sparsity"]["layer"] == "conv")
    assert conv["sparsity"] == {"sparse": True, "layer": "conv", "gemm": {"m": 32, "k": 144, "n": 128, "dtype": "fp16"},
                                "reason": "shape: M=32 K=144 N=128 fp16 meets the pass options limits "
                                          "(k%4, m%1, k>=100, m>=0); no timing consulted"}
    assert nodes["x"]["sparsity"] is None
    assert sum(1 for n in nodes.values() if n["sparsity"]) == 6


def test_inspect_cpu_support_and_sparsity(net_pt2):
    res = _cli("inspect", net_pt2[0], "--target", "cpu", "--sparsify", "cost-model=shape,min-k=100")
    header = next(line for line in res.stdout.splitlines() if "name" in line and "op" in line)
    assert "support" in header and "sparsity" in header
    assert "1/6 sparse" in res.stdout and "K=32 < min-k 100 (pass options)" in res.stdout
    dot = _cli("inspect", net_pt2[0], "-f", "dot", "--sparsify", "cost-model=off").stdout
    assert "2:4 sparse: cost model off" in dot and "dense: depthwise conv (groups=32)" in dot


def test_inspect_with_a_tuning_db(net_pt2, tmp_path):
    db = tmp_path / "db.json"
    db.write_text(json.dumps({"schema": "sparsec.tuning/1", "arch": "sm_90a", "entries": [
        {"m": 64, "n": 128, "k": 32, "dtype": "fp16", "dense": {"config": "d", "us": 3.0}, "sparse": {"config": "s", "us": 2.0}}]}))
    res = _cli("inspect", net_pt2[0], "--show", "name,sparsity", "--target", "h100-sparse",
               "--sparsify", f"tuning-db={db},k-multiple=32,min-k=32")
    assert "sparse: measured: sparse 2us < dense 3us at n=128" in res.stdout and "1/6 sparse" in res.stdout


@pytest.mark.parametrize("args, code, message", [
    (["--show", "name,sparsity"], 2, "the sparsity column needs a target or --sparsify OPTIONS"),
    (["--show", "name,sparsity", "--target", "h100-sparse"], 1, "no tuning DB for sm_90a"),
    (["--sparsify", "cost-model=nope"], 2, "option 'cost-model' of pass 'sparsify-2-4' has a bad value"),
])
def test_inspect_errors(net_pt2, tmp_path, monkeypatch, args, code, message):
    from sparsec import knobs
    from sparsec.passes.sparsify import costmodel

    monkeypatch.setattr(costmodel, "shipped_db", lambda arch: tmp_path / "nothing-shipped" / f"{arch}.json")
    with knobs.scope(cache_dir=tmp_path):  # no tuning DB in the cache, none shipped
        res = _cli("inspect", net_pt2[0], *args, code=code)
    assert message in res.stderr
