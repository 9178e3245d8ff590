"""The ``sparsec`` command line: every command's happy path, exit codes and messages.

Models are tiny (a 2x3x8x8 conv-BN-linear net; resnet18 only at 32x32), and
every numeric check runs fresh random inputs against the eager reference.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import sys

import pytest
import torch

from sparsec import knobs
from sparsec.errors import PassFailedError, node_location
from sparsec.passes.base import Pass
from sparsec.registry import registry

IR_DUMP = "// -----// IR Dump After {} //----- //"


def _randn(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(1234))


# -- compile and run ------------------------------------------------------------------


def test_compile_then_run_round_trip(run, tiny, tmp_path):
    out = tmp_path / "out" / "net.sparsec"
    res = run("compile", tiny.path, "--target", "cpu", "-o", out)
    assert "compiled net for cpu" in res.stderr and f"wrote {out}" in res.stderr
    assert res.stdout == ""  # stdout is reserved for IR and results
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["pipeline"] == "canonicalize,fold-bn,dce"

    x = _randn(2, 3, 8, 8)
    torch.save(x, tmp_path / "x.pt")
    res = run("run", out, "--input", tmp_path / "x.pt", "--output", tmp_path / "y.pt")
    assert "[2,5]" in res.stdout and "f32" in res.stdout
    y = torch.load(tmp_path / "y.pt", weights_only=True)
    ref = tiny.reference(x)
    assert y.shape == ref.shape
    assert y.dtype == ref.dtype
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-6)
    # the printed stats are those of the output
    assert f"{y.max().item():.6g}" in res.stdout


def test_compile_with_explicit_pipeline_and_instruments(run, tiny, tmp_path):
    out = tmp_path / "a.sparsec"
    res = run("compile", tiny.path, "-o", out, "--pipeline", "canonicalize,fold-bn", "--time-passes",
              "--print-ir-after", "fold-bn")
    assert "Pass execution timing report" in res.stderr
    assert IR_DUMP.format("fold-bn") in res.stdout
    assert IR_DUMP.format("canonicalize") not in res.stdout
    assert json.loads((out / "manifest.json").read_text())["pipeline"] == "canonicalize,fold-bn"


def test_run_random_inputs(run, tiny, tmp_path):
    out = tmp_path / "net.sparsec"
    run("compile", tiny.path, "-o", out)
    res = run("run", out, "--random", "--seed", "3", "-o", tmp_path / "y.pt")
    y = torch.load(tmp_path / "y.pt", weights_only=True)
    assert y.shape == (2, 5) and torch.isfinite(y).all() and y.abs().sum() > 0
    # --random draws like the check-numerics instrument: normal floats, seeded
    from sparsec.passes.instruments import random_like

    x = random_like(torch.empty(2, 3, 8, 8), torch.Generator().manual_seed(3))
    torch.testing.assert_close(y, tiny.reference(x), rtol=1e-5, atol=1e-6)


def test_run_needs_exactly_one_input_source(run, tiny, tmp_path):
    out = tmp_path / "net.sparsec"
    run("compile", tiny.path, "-o", out)
    res = run("run", out, code=2)
    assert "error: give exactly one of --input FILE or --random" in res.stderr
    torch.save(_randn(2, 3, 8, 8), tmp_path / "x.pt")
    res = run("run", out, "--input", tmp_path / "x.pt", "--random", code=2)
    assert "give exactly one of" in res.stderr
    res = run("run", out, "--input", tmp_path / "x.pt", "--batch", "4", code=2)
    assert "--batch sizes --random inputs only" in res.stderr


def test_run_rejects_wrong_input_shape_and_non_tensor_files(run, tiny, tmp_path):
    out = tmp_path / "net.sparsec"
    run("compile", tiny.path, "-o", out)
    torch.save(_randn(2, 3, 9, 9), tmp_path / "bad.pt")
    res = run("run", out, "--input", tmp_path / "bad.pt", code=2)
    assert "input 0 has the wrong shape" in res.stderr
    assert "expected: f32[2,3,8,8]" in res.stderr and "actual:   f32[2,3,9,9]" in res.stderr

    torch.save({"lr": 0.1}, tmp_path / "dict.pt")
    res = run("run", out, "--input", tmp_path / "dict.pt", code=1)
    assert "holds dict, not input tensors" in res.stderr

    res = run("run", out, "--input", tmp_path / "missing.pt", code=1)
    assert "input file" in res.stderr and "not found" in res.stderr


def test_run_rejects_wrong_dtype_and_input_count(run, tiny, tmp_path):
    out = tmp_path / "net.sparsec"
    run("compile", tiny.path, "-o", out)
    torch.save(_randn(2, 3, 8, 8).double(), tmp_path / "f64.pt")
    res = run("run", out, "--input", tmp_path / "f64.pt", code=2)
    assert "input 0 has the wrong dtype" in res.stderr and "x.to(torch.float32)" in res.stderr
    torch.save((_randn(2, 3, 8, 8), _randn(2, 3, 8, 8)), tmp_path / "two.pt")
    res = run("run", out, "--input", tmp_path / "two.pt", code=2)
    assert "the artifact takes 1 inputs, got 2" in res.stderr


def test_run_missing_artifact(run, tmp_path):
    res = run("run", tmp_path / "nope.sparsec", "--random", code=1)
    assert "error: artifact" in res.stderr and "not found" in res.stderr


# -- compile errors ----------------------------------------------------------------------


def test_existing_output_needs_force(run, tiny, tmp_path):
    out = tmp_path / "net.sparsec"
    run("compile", tiny.path, "-o", out)
    before = (out / "manifest.json").read_text()
    res = run("compile", tiny.path, "-o", out, code=1)
    assert "already exists" in res.stderr and "--force" in res.stderr
    assert (out / "manifest.json").read_text() == before
    run("compile", tiny.path, "-o", out, "--force")


def test_unwritable_output_directory(run, tiny, tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a directory")
    res = run("compile", tiny.path, "-o", blocker / "net.sparsec", code=1)
    assert "cannot write the artifact" in res.stderr and "is not a directory" in res.stderr
    if os.geteuid() != 0:  # root writes anywhere; the permission check only means something for users
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
        try:
            res = run("compile", tiny.path, "-o", ro / "net.sparsec", code=1)
            assert "is not writable" in res.stderr
        finally:
            ro.chmod(stat.S_IRWXU)


@pytest.mark.parametrize(
    "args, code, messages",
    [
        (["--pipeline", "fold-bm"], 2, ["unknown pass 'fold-bm'", "did you mean 'fold-bn'?"]),
        (["--pipeline", "fold-bn{"], 2, ["malformed pipeline text", "column 9"]),
        (["--pipeline", "to-dtype{dtype=fp8}"], 2, ["option 'dtype' of pass 'to-dtype' has a bad value"]),
        (["--target", "gpu"], 2, ["unknown target 'gpu'", "did you mean 'cpu'?"]),
        (["--input-shape", "1,3,a"], 2, ["bad input shape '1,3,a'"]),
        (["--disable-pass", "fold-b"], 2, ["unknown pass 'fold-b'", "--disable-pass fold-b"]),
        (["--print-ir-after", "dcee"], 2, ["unknown pass 'dcee'", "did you mean 'dce'?"]),
    ],
)
def test_compile_errors(run, tiny, tmp_path, args, code, messages):
    out = tmp_path / "net.sparsec"
    res = run("compile", tiny.path, "-o", out, *args, code=code)
    assert res.stderr.startswith("error: ")
    for m in messages:
        assert m in res.stderr
    assert "Traceback" not in res.output
    assert not out.exists()


def test_missing_model_file(run, tmp_path):
    res = run("compile", tmp_path / "nope.pt2", "-o", tmp_path / "x.sparsec", code=1)
    assert "error: model file" in res.stderr and "not found" in res.stderr


def test_click_usage_errors_exit_2(run, tiny):
    res = run("compile", tiny.path, code=2)  # -o is required
    assert "Missing option '-o'" in res.stderr
    res = run("compil", code=2)
    assert "No such command 'compil'" in res.stderr


# -- tracebacks ---------------------------------------------------------------------------


def test_no_traceback_without_debug_and_one_with_it(run, tmp_path):
    args = ("compile", tmp_path / "nope.pt2", "-o", tmp_path / "x.sparsec")
    res = run(*args, code=1)
    assert "Traceback" not in res.output
    res = run("--debug", *args, code=1)
    assert "Traceback (most recent call last)" in res.stderr
    assert "LoadError" in res.stderr and "error: model file" in res.stderr


def test_debug_from_the_environment(run, tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSEC_DEBUG", "1")
    res = run("compile", tmp_path / "nope.pt2", "-o", tmp_path / "x.sparsec", code=1)
    assert "Traceback (most recent call last)" in res.stderr


def test_internal_error_hints_at_debug(run, monkeypatch):
    from sparsec.cli import listing

    def boom(out):
        raise RuntimeError("boom")

    monkeypatch.setattr(listing, "print_targets", boom)
    res = run("targets", code=1)
    assert "internal error: RuntimeError: boom" in res.stderr
    assert "rerun with --debug" in res.stderr
    assert "Traceback" not in res.stderr
    res = run("--debug", "targets", code=1)
    assert "Traceback (most recent call last)" in res.stderr and "RuntimeError: boom" in res.stderr


def test_global_flags_set_knobs_for_one_invocation(run, monkeypatch, tmp_path):
    from sparsec.cli import listing

    seen = {}

    def record(out):
        seen.update({k: knobs.get(k) for k in ("debug", "log_level", "cache_dir")})

    monkeypatch.setattr(listing, "print_targets", record)
    run("--debug", "--log-level", "info", "--cache-dir", tmp_path / "cache", "targets")
    assert seen == {"debug": True, "log_level": "INFO", "cache_dir": tmp_path / "cache"}
    # ... and only for that invocation
    assert knobs.get("debug") is False and knobs.get("log_level") == "WARNING"


def test_bad_log_level_in_the_environment(run, monkeypatch):
    monkeypatch.setenv("SPARSEC_LOG_LEVEL", "loud")
    res = run("targets", code=2)
    assert "error: bad log level 'LOUD' in SPARSEC_LOG_LEVEL" in res.stderr


def test_log_level_shows_library_logs_on_stderr(run, tiny):
    res = run("--log-level", "info", "opt", tiny.path)
    assert "sparsec: INFO: tracing net" in res.stderr
    assert "sparsec: INFO" not in res.stdout
    res = run("opt", tiny.path)
    assert "INFO" not in res.stderr


# -- opt ------------------------------------------------------------------------------------


def test_opt_prints_final_ir_to_stdout(run, tiny):
    res = run("opt", tiny.path, "--pipeline", "canonicalize,fold-bn,dce")
    out = res.stdout
    assert out.startswith("module @net(%x: f32[2,3,8,8]) {")
    assert "sparsec.folded = [batch_norm]" in out
    assert "aten.batch_norm" not in out and "@bn.running_mean" not in out
    assert res.stderr == ""


def test_opt_without_pipeline_prints_the_input(run, tiny):
    res = run("opt", tiny.path)
    assert "aten.batch_norm" in res.stdout and "sparsec.folded" not in res.stdout


def test_opt_output_is_a_loadable_program(run, tiny, tmp_path):
    dest = tmp_path / "sub" / "transformed.pt2"
    res = run("opt", tiny.path, "--pipeline", "canonicalize,fold-bn,dce", "-o", dest)
    assert res.stdout == "" and f"wrote {dest}" in res.stderr
    assert [p.name for p in dest.parent.iterdir()] == ["transformed.pt2"]  # no temp file left behind
    ep = torch.export.load(dest)
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert not any("batch_norm" in t for t in targets)
    x = _randn(2, 3, 8, 8)
    with torch.no_grad():
        y = ep.module()(x)
    torch.testing.assert_close(y, tiny.reference(x), rtol=1e-5, atol=1e-6)


def test_opt_unwritable_output(run, tiny, tmp_path):
    blocker = tmp_path / "f"
    blocker.write_text("")
    res = run("opt", tiny.path, "-p", "dce", "-o", blocker / "t.pt2", code=1)
    assert "cannot write the output" in res.stderr


def test_opt_output_that_is_a_directory(run, tiny, tmp_path):
    res = run("opt", tiny.path, "-o", tmp_path, code=2)  # click's own check on -o
    assert "is a directory" in res.stderr


def test_print_ir_after_all(run, tiny, filecheck):
    res = run("opt", tiny.path, "--pipeline", "canonicalize,fold-bn,dce", "--print-ir-after-all")
    filecheck(res.stdout, r"""
        CHECK-LABEL: // -----// IR Dump After canonicalize //----- //
        CHECK:       aten.batch_norm
        CHECK-LABEL: // -----// IR Dump After fold-bn //----- //
        CHECK:       @bn.running_mean
        CHECK-NOT:   aten.batch_norm
        CHECK:       %[[CONV:[a-z0-9_]+]]: f32[2,8,8,8] = aten.conv2d(%x, @conv.weight, @conv.bias, padding=[1,1])  {sparsec.folded = [batch_norm]}
        CHECK-NEXT:  aten.relu(%[[CONV]])
        CHECK-LABEL: // -----// IR Dump After dce //----- //
        CHECK-NOT:   @bn.
        CHECK:       return
        """)
    # the dumps replace the final print: one module per pass
    assert res.stdout.count("module @net(") == 3


def test_print_ir_before_and_after_change(run, tiny):
    res = run("opt", tiny.path, "-p", "canonicalize,fold-bn", "--print-ir-before", "fold-bn", "--print-ir-after-change")
    assert "// -----// IR Dump Before fold-bn //----- //" in res.stdout
    assert IR_DUMP.format("fold-bn") in res.stdout  # fold-bn changed the module
    assert IR_DUMP.format("canonicalize") not in res.stdout  # canonicalize did not: nothing to canonicalize
    res = run("opt", tiny.path, "-p", "canonicalize,fold-bn", "--print-ir-before-all")
    assert res.stdout.count("// -----// IR Dump Before ") == 2 and res.stdout.count("module @net(") == 2


def test_time_passes_and_statistics_go_to_stderr(run, tiny):
    res = run("opt", tiny.path, "-p", "canonicalize,fold-bn,dce", "--time-passes", "--pass-statistics")
    assert "===-- Pass execution timing report --===" in res.stderr
    assert "===-- Pass statistics --===" in res.stderr
    for name in ("canonicalize", "fold-bn", "dce"):
        assert name in res.stderr.split("timing report")[1]
    assert "timing report" not in res.stdout and res.stdout.startswith("module @net(")


def test_dump_ir_writes_one_file_per_pass(run, tiny, tmp_path):
    d = tmp_path / "dumps"
    run("opt", tiny.path, "-p", "canonicalize,fold-bn,dce", "--dump-ir", d)
    assert sorted(p.name for p in d.iterdir()) == ["00-input.txt", "01-canonicalize.txt", "02-fold-bn.txt", "03-dce.txt"]
    assert "aten.batch_norm" in (d / "00-input.txt").read_text()
    folded = (d / "02-fold-bn.txt").read_text()
    assert "aten.batch_norm" not in folded and "sparsec.folded" in folded


def test_check_numerics_passes_on_fold_bn(run, tiny):
    res = run("opt", tiny.path, "-p", "fold-bn,dce", "--check-numerics")
    line = next(l for l in res.stderr.splitlines() if l.startswith("check-numerics: fold-bn"))
    err = float(line.split("max rel error")[1])
    assert err < 1e-5


def test_disable_pass_skips_it(run, tiny):
    res = run("opt", tiny.path, "-p", "fold-bn,dce", "--disable-pass", "fold-bn")
    assert "aten.batch_norm" in res.stdout and "sparsec.folded" not in res.stdout


def test_no_verify_is_accepted(run, tiny):
    res = run("opt", tiny.path, "-p", "fold-bn", "--no-verify")
    assert "sparsec.folded = [batch_norm]" in res.stdout


@dataclasses.dataclass(frozen=True)
class Explode(Pass):
    """A pass that always fails, to exercise failure reporting."""

    name = "explode"
    summary = "always fails (tests only)"

    def run(self, mod, ctx):
        node = next(n for n in mod.graph.nodes if n.op == "call_function")
        raise PassFailedError("explode cannot handle this node", where=node_location(node), fix="do not run explode")


def test_failing_pass_reports_and_writes_a_reproducer(run, tiny, tmp_path):
    registry().register_pass(Explode, provider="tests")
    repro = tmp_path / "repro"
    res = run("opt", tiny.path, "-p", "fold-bn,explode", "--reproducer", repro, "--print-ir-after-failure", code=1)
    assert "error: pass 'explode' (#2 of 2) failed: explode cannot handle this node" in res.stderr
    assert "after [fold-bn]" in res.stderr
    assert "Traceback" not in res.output
    assert "// -----// IR Dump After explode Failed //----- //" in res.stdout
    assert (repro / "pipeline.txt").read_text().strip() == "explode"
    assert "sparsec opt" in (repro / "repro.sh").read_text()
    # the reproducer's input is the module explode saw: BN already folded
    ep = torch.export.load(repro / "input.pt2")
    assert not any("batch_norm" in str(n.target) for n in ep.graph.nodes)


# -- inspect ---------------------------------------------------------------------------------

# TinyNet at 2x3x8x8: conv 8*(3*3*3)+8 = 224 params, 2*8*8*8 outputs x 27 MACs = 27,648 MACs;
# BN affine 16 params (running stats are buffers); linear 5*8+5 = 45 params, 2*5 x 8 = 80 MACs.
TINY_PARAMS = 224 + 16 + 45
TINY_MACS = 2 * 8 * 8 * 8 * 27 + 2 * 5 * 8


def test_inspect_table(run, tiny):
    res = run("inspect", tiny.path)
    out = res.stdout
    header = next(l for l in out.splitlines() if "name" in l and "op" in l)
    for col in ("name", "op", "shape", "dtype", "params", "flops", "meta"):
        assert col in header
    assert "support" not in header
    conv = next(l for l in out.splitlines() if "aten.conv2d" in l)
    assert "[2,8,8,8]" in conv and "224" in conv and "55.30K" in conv  # 2 x 27,648 MACs
    total = next(l for l in out.splitlines() if "total" in l)
    assert f"{TINY_PARAMS:,}" in total and "GFLOPs" in total
    assert any(l.split("│")[1].strip() == "x" for l in out.splitlines() if l.startswith("│"))  # placeholders shown
    assert "get_attr" not in out and "_guards_fn" not in out


def test_inspect_json_totals_and_stable_keys(run, tiny):
    data = json.loads(run("inspect", tiny.path, "--format", "json").stdout)
    assert data["module"] == "net" and data["target"] is None
    assert data["totals"]["params"] == TINY_PARAMS
    assert data["totals"]["macs"] == TINY_MACS and data["totals"]["flops"] == 2 * TINY_MACS
    assert sum(n["params"] for n in data["nodes"]) == TINY_PARAMS
    keys = {"name", "kind", "op", "outputs", "inputs", "params", "macs", "flops", "meta", "param_meta", "support",
            "sparsity"}
    assert all(set(n) == keys for n in data["nodes"])
    by_name = {n["name"]: n for n in data["nodes"]}
    assert by_name["x"]["kind"] == "input" and by_name["x"]["outputs"] == [{"shape": [2, 3, 8, 8], "dtype": "f32"}]
    assert by_name["linear"]["inputs"] == ["mean"] and data["outputs"] == ["linear"]


def test_inspect_transformed_program(run, tiny, tmp_path):
    dest = tmp_path / "t.pt2"
    run("opt", tiny.path, "-p", "fold-bn,dce", "-o", dest)
    data = json.loads(run("inspect", dest, "-f", "json").stdout)
    assert data["totals"]["params"] == 224 + 45  # BN folded away
    assert not any("batch_norm" in n["op"] for n in data["nodes"])


def test_inspect_compiled_artifact_directory(run, tiny, tmp_path):
    out = tmp_path / "net.sparsec"
    run("compile", tiny.path, "--target", "cpu", "-o", out)
    data = json.loads(run("inspect", out, "-f", "json").stdout)
    assert data["totals"]["params"] == 224 + 45  # the compiled (BN-folded) program, not the input
    assert not any("batch_norm" in n["op"] for n in data["nodes"])


def test_inspect_target_support_column(run, tiny):
    res = run("inspect", tiny.path, "--target", "cpu")
    header = next(l for l in res.stdout.splitlines() if "name" in l and "support" in l)
    assert "support" in header
    total = next(l for l in res.stdout.splitlines() if "total" in l)
    assert "5/5 supported" in total
    data = json.loads(run("inspect", tiny.path, "--target", "cpu", "-f", "json").stdout)
    ops = [n for n in data["nodes"] if n["kind"] == "op"]
    assert all(n["support"] == {"supported": True, "reason": "yes"} for n in ops)
    assert data["totals"]["supported"] == len(ops) == 5 and data["backend"] == "eager"


def test_inspect_show_columns(run, tiny):
    res = run("inspect", tiny.path, "--show", "name,params")
    header = next(l for l in res.stdout.splitlines() if "name" in l)
    assert "params" in header and "dtype" not in header and "flops" not in header


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["--show", "name,flop"], 2, "unknown --show column 'flop'"),
        (["--show", ","], 2, "--show names no columns"),
        (["--show", "name,support"], 2, "the support column needs a target"),
        (["--target", "nope"], 2, "unknown target 'nope'"),
        (["--format", "yaml"], 2, "Invalid value for '-f' / '--format'"),
    ],
)
def test_inspect_errors(run, tiny, args, code, message):
    res = run("inspect", tiny.path, *args, code=code)
    assert message in res.stderr


def test_inspect_text_is_the_canonical_printer(run, tiny):
    from sparsec.ir.loader import load_model
    from sparsec.ir.printer import print_module

    res = run("inspect", tiny.path, "--format", "text")
    assert res.stdout == print_module(load_model(str(tiny.path)))
    assert "@conv.weight: f32[8,3,3,3]" in res.stdout


def test_inspect_dot(run, tiny):
    text = run("inspect", tiny.path, "-f", "dot").stdout
    assert text.startswith("// ") and 'digraph "net" {' in text and text.rstrip().endswith("}")
    edges = [l.strip() for l in text.splitlines() if "->" in l]
    assert edges == ['"x" -> "conv2d";', '"conv2d" -> "batch_norm";', '"batch_norm" -> "relu";',
                     '"relu" -> "mean";', '"mean" -> "linear";', '"linear" -> "output";']
    assert '"conv2d" [label="conv2d\\naten.conv2d\\nf32[2,8,8,8]\\nparams 224' in text


def test_inspect_outputs_to_files(run, tiny, tmp_path):
    run("inspect", tiny.path, "-f", "json", "-o", tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text())["totals"]["params"] == TINY_PARAMS
    run("inspect", tiny.path, "-f", "dot", "-o", tmp_path / "g.dot")
    assert (tmp_path / "g.dot").read_text().startswith("// ")
    run("inspect", tiny.path, "-o", tmp_path / "t.txt")
    table = (tmp_path / "t.txt").read_text()
    assert "aten.conv2d" in table and "\x1b[" not in table  # no colour codes in files
    assert all(l == l.rstrip() for l in table.splitlines())


def test_inspect_svg_without_graphviz_says_so(run, tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no `dot` here
    res = run("inspect", tiny.path, "-f", "dot", "-o", tmp_path / "g.svg", code=1)
    assert "graphviz's 'dot' program is not installed" in res.stderr and "apt-get install graphviz" in res.stderr
    assert not (tmp_path / "g.svg").exists()


def test_inspect_svg_renders_with_dot(run, tiny, tmp_path, monkeypatch):
    # a stand-in for graphviz's dot: records its arguments and writes the DOT it was given
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "dot"
    fake.write_text(
        f"#!{sys.executable}\nimport sys\nargs = sys.argv[1:]\nsrc = sys.stdin.read()\n"
        "out = args[args.index('-o') + 1]\nopen(out, 'w').write('<svg>' + ' '.join(args[:1]) + src + '</svg>')\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    run("inspect", tiny.path, "-f", "dot", "-o", tmp_path / "g.svg")
    svg = (tmp_path / "g.svg").read_text()
    assert svg.startswith("<svg>-Tsvg") and 'digraph "net"' in svg


def test_inspect_svg_reports_a_failing_dot(run, tiny, tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "dot"
    fake.write_text("#!/bin/sh\necho 'syntax error in line 1' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    res = run("inspect", tiny.path, "-f", "dot", "-o", tmp_path / "g.svg", code=1)
    assert "graphviz's 'dot' failed to render" in res.stderr and "exit 3: syntax error in line 1" in res.stderr
    assert list(tmp_path.glob("*.svg*")) == [] and list(tmp_path.glob(".g*")) == []  # nothing half-written


@pytest.mark.slow
def test_inspect_zoo_resnet18(run):
    torchvision = pytest.importorskip("torchvision")
    data = json.loads(run("inspect", "zoo:torchvision/resnet18", "--input-shape", "1,3,32,32", "-f", "json").stdout)
    expected = sum(p.numel() for p in torchvision.models.resnet18().parameters())
    assert data["totals"]["params"] == expected == 11_689_512
    assert sum(1 for n in data["nodes"] if n["op"] == "aten.conv2d") == 20
    assert data["nodes"][-1]["outputs"] == [{"shape": [1, 1000], "dtype": "f32"}]


# -- passes and targets ---------------------------------------------------------------------------


def test_passes_table(run):
    out = run("passes").stdout
    reg = registry()
    for name in ("canonicalize", "dce", "fold-bn", "to-dtype", "to-channels-last"):
        row = next(l for l in out.splitlines() if f" {name} " in l)
        assert reg.get("pass", name).summary[:30] in row
    assert "dtype=fp16" in out  # options with their defaults
    assert "canonicalize,fold-bn,dce" in out  # the named pipelines


def test_passes_name(run):
    out = run("passes", "to-dtype").stdout
    assert out.startswith("to-dtype")
    cls = registry().get("pass", "to-dtype")
    assert cls.__doc__.strip().splitlines()[0] in out
    row = next(l for l in out.splitlines() if l.startswith("│ keep-io"))
    assert "bool" in row and "true" in row
    assert "changes numerics  yes" in out


def test_passes_named_pipeline(run):
    out = run("passes", "default").stdout
    assert out.splitlines() == ["pipeline default", "  canonicalize,fold-bn,dce"]


def test_passes_unknown_name(run):
    res = run("passes", "fold-b", code=2)
    assert "error: unknown pass 'fold-b'" in res.stderr and "did you mean 'fold-bn'?" in res.stderr


def test_targets_table(run):
    out = run("targets").stdout
    cpu = next(l for l in out.splitlines() if l.startswith("│ cpu "))
    assert "eager" in cpu and "yes" in cpu
    h100s = next(l for l in out.splitlines() if "h100-sparse" in l)
    assert "sm_90a" in h100s and "cutlass" in h100s and "yes" in h100s and "k%8" in h100s


def test_targets_table_says_what_a_backend_lacks(run, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tvm" else real(name, *a))
    out = run("targets").stdout
    line = next(l for l in out.splitlines() if l.startswith("│ cpu-tvm "))
    assert "no: apache-tvm is not installed" in line


# -- help and version ----------------------------------------------------------------------------------


def test_help_lists_commands(run):
    out = run("--help").stdout
    for cmd in ("compile", "run", "opt", "inspect", "passes", "targets"):
        assert f" {cmd} " in out
    assert "\x1b[" not in out  # no colour when not a terminal
    out = run("compile", "--help").stdout
    for flag in ("--print-ir-after-all", "--time-passes", "--check-numerics", "--dump-ir", "--force", "--input-shape"):
        assert flag in out


def test_version(run):
    out = run("--version").stdout
    assert out.startswith("sparsec 0.1.0 (torch ")
