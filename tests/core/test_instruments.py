"""Stock instruments: timing, IR printing and dumps, statistics, numerics checks, reproducer."""

from __future__ import annotations

import dataclasses
import io
import re
import shlex
from typing import ClassVar

import pytest
import torch

import sparsec
from sparsec.errors import PipelineFailure
from sparsec.ir.module import Module
from sparsec.ir.printer import print_module
from sparsec.passes.base import Pass, PassResult, function_pass
from sparsec.passes.instruments import (
    CheckNumerics,
    DumpIR,
    NumericsError,
    PassStatistics,
    PrintIR,
    Reproducer,
    TimePasses,
    max_rel_error,
    random_like,
)
from sparsec.passes.manager import PassContext, PassManager

from .nets import small_net


def _node(mod: Module, name: str):
    return next(n for n in mod.graph.nodes if n.name == name)


@function_pass("noop", summary="changes nothing")
def noop(mod, ctx):
    """Example: noop"""
    return PassResult(False, {"looked": 3})


@function_pass("relu-to-gelu", summary="turns the first relu into a gelu", changes_numerics=True)
def relu_to_gelu(mod, ctx):
    """Example: relu-to-gelu"""
    node = _node(mod, "relu")
    node.target = torch.ops.aten.gelu.default
    return PassResult(True, {"rewritten": 1})


@dataclasses.dataclass(frozen=True)
class Perturb(Pass):
    """Silently scale a weight (a bug: it does not declare changes_numerics).

    Example: perturb{param=fc.weight}
    """

    name: ClassVar[str] = "perturb"
    summary: ClassVar[str] = "scales a weight"

    param: str = "conv2.weight"
    scale: float = 1.5

    def run(self, mod, ctx) -> PassResult:
        mod.set_param(self.param, mod.get_param(self.param) * self.scale)
        return PassResult(True)


@dataclasses.dataclass(frozen=True)
class Tiny(Perturb):
    """Perturb within float rounding.

    Example: tiny
    """

    name: ClassVar[str] = "tiny"
    scale: float = 1.0 + 1e-7


@dataclasses.dataclass(frozen=True)
class Flagged(Perturb):
    """Scale a weight, and say so.

    Example: flagged
    """

    name: ClassVar[str] = "flagged"
    changes_numerics: ClassVar[bool] = True


@function_pass("break-conv", summary="wrong in-channels for conv2's weight")
def break_conv(mod, ctx):
    """Example: break-conv"""
    mod.set_param("conv2.weight", torch.randn(8, 5, 3, 3))
    return True


# -- TimePasses -------------------------------------------------------------------------


def test_time_passes_report(mod) -> None:
    out = io.StringIO()
    tp = TimePasses(out)
    PassManager([noop(), Perturb(scale=2.0), noop()]).run(mod, PassContext(instruments=[tp]))
    text = out.getvalue()
    assert text == tp.report()
    lines = text.splitlines()
    assert lines[0] == "===-- Pass execution timing report --==="
    assert re.fullmatch(r"  total: \d+\.\d{4} s", lines[1])
    assert [re.fullmatch(r"\s+\d+\.\d{4} s\s+\d+\.\d% {2}(.*)", l).group(1) for l in lines[2:]] == [
        "noop",
        "perturb{scale=2.0}",
        "noop",
    ]
    assert [name for name, _ in tp.times] == ["noop", "perturb{scale=2.0}", "noop"]
    assert all(t >= 0 for _, t in tp.times)


def test_time_passes_leaves_out_disabled_passes(mod) -> None:
    tp = TimePasses()
    PassManager([noop(), Perturb()]).run(mod, PassContext(instruments=[tp], disabled={"noop"}))
    assert [name for name, _ in tp.times] == ["perturb"]


# -- PrintIR ---------------------------------------------------------------------------------


def _dumps(text: str) -> list[str]:
    return re.findall(r"^// -----// IR Dump (.*) //----- //$", text, flags=re.M)


def test_print_ir_after_all(mod) -> None:
    out = io.StringIO()
    PassManager([noop(), relu_to_gelu()]).run(mod, PassContext(instruments=[PrintIR(out, after={"*"})]))
    text = out.getvalue()
    assert _dumps(text) == ["After noop", "After relu-to-gelu"]
    first, second = text.split("// -----// IR Dump After relu-to-gelu //----- //\n")
    assert "aten.relu(%batch_norm)" in first and "aten.gelu(%batch_norm)" not in first
    assert second == print_module(mod) + "\n"


def test_print_ir_before_named_pass(mod) -> None:
    out = io.StringIO()
    before = print_module(mod)
    PassManager([noop(), relu_to_gelu()]).run(mod, PassContext(instruments=[PrintIR(out, before={"relu-to-gelu"})]))
    assert out.getvalue() == "// -----// IR Dump Before relu-to-gelu //----- //\n" + before + "\n"


def test_print_ir_after_change_only(mod) -> None:
    out = io.StringIO()
    PassManager([noop(), relu_to_gelu(), noop()]).run(
        mod, PassContext(instruments=[PrintIR(out, after={"*"}, only_change=True)])
    )
    assert _dumps(out.getvalue()) == ["After relu-to-gelu"]


def test_print_ir_header_shows_options(mod) -> None:
    out = io.StringIO()
    PassManager([Perturb(scale=2.0)]).run(mod, PassContext(instruments=[PrintIR(out, before={"perturb"}, after={"perturb"})]))
    assert _dumps(out.getvalue()) == ["Before perturb{scale=2.0}", "After perturb{scale=2.0}"]


def test_print_ir_on_failure(mod) -> None:
    out = io.StringIO()
    with pytest.raises(PipelineFailure):
        PassManager([noop(), break_conv()]).run(mod, PassContext(instruments=[PrintIR(out, on_failure=True)]))
    text = out.getvalue()
    assert _dumps(text) == ["After break-conv Failed"]
    # the module as the failing pass left it: the broken weight is visible
    assert "    @conv2.weight: f32[8,5,3,3]\n" in text
    assert text.endswith("  return [%linear]\n}\n\n")


def test_print_ir_off_by_default_prints_nothing(mod) -> None:
    out = io.StringIO()
    with pytest.raises(PipelineFailure):
        PassManager([noop(), break_conv()]).run(mod, PassContext(instruments=[PrintIR(out)]))
    assert out.getvalue() == ""


# -- DumpIR ----------------------------------------------------------------------------------


def test_dump_ir_writes_one_file_per_pass(mod, tmp_path) -> None:
    before = print_module(mod)
    d = tmp_path / "dumps" / "nested"
    PassManager([noop(), relu_to_gelu()]).run(mod, PassContext(instruments=[DumpIR(d)]))
    assert sorted(p.name for p in d.iterdir()) == ["00-input.txt", "01-noop.txt", "02-relu-to-gelu.txt"]
    assert (d / "00-input.txt").read_text() == before
    assert (d / "01-noop.txt").read_text() == before
    assert (d / "02-relu-to-gelu.txt").read_text() == print_module(mod)
    assert "aten.gelu(%batch_norm)" in (d / "02-relu-to-gelu.txt").read_text()


def test_dump_ir_unwritable_directory_is_an_error(mod, tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(sparsec.SparsecError, match="cannot create the IR dump directory"):
        PassManager([noop()]).run(mod, PassContext(instruments=[DumpIR(blocker / "sub")]))


# -- PassStatistics ---------------------------------------------------------------------------


def test_pass_statistics(mod) -> None:
    out = io.StringIO()
    ps = PassStatistics(out)
    PassManager([noop(), relu_to_gelu()]).run(mod, PassContext(instruments=[ps]))
    assert ps.stats == [("noop", {"looked": 3}), ("relu-to-gelu", {"rewritten": 1})]
    assert out.getvalue() == (
        "===-- Pass statistics --===\n"
        "  noop\n"
        "             3  looked\n"
        "  relu-to-gelu\n"
        "             1  rewritten\n"
    )


# -- CheckNumerics ---------------------------------------------------------------------------


def test_check_numerics_names_the_first_offender(mod) -> None:
    out = io.StringIO()
    check = CheckNumerics(stream=out)
    pm = PassManager([noop(), Tiny(), Perturb(), Perturb(param="fc.weight")])
    with pytest.raises(PipelineFailure) as info:
        pm.run(mod, PassContext(instruments=[check]))
    msg = str(info.value)
    assert msg.startswith("pass 'perturb' (#3 of 4) failed: pass 'perturb' changed the model's outputs")
    assert "after [noop, tiny] in pipeline" in msg
    assert re.search(r"actual:   \d\.\d{3}e[+-]\d\d on random inputs \(seed 0\)", msg)
    assert "expected: max relative error <= 0.0001" in msg
    assert isinstance(info.value.__cause__, NumericsError)
    assert check.first_offender == "perturb"
    assert [name for name, _ in check.errors] == ["tiny", "perturb"]  # noop did not modify
    assert check.errors[0][1] < 1e-5 < check.errors[1][1]
    assert "check-numerics: tiny: max rel error" in out.getvalue()


def test_check_numerics_failure_gets_a_reproducer(mod, tmp_path) -> None:
    repro = Reproducer(tmp_path / "r")
    with pytest.raises(PipelineFailure, match="changed the model's outputs") as info:
        PassManager([noop(), Perturb(), noop()]).run(mod, PassContext(instruments=[CheckNumerics(), repro]))
    assert f"reproducer written to {tmp_path / 'r'}" in str(info.value)
    assert (tmp_path / "r" / "pipeline.txt").read_text() == "perturb,noop\n"


def test_check_numerics_non_strict_records_and_continues(mod) -> None:
    check = CheckNumerics(strict=False)
    records = PassManager([Perturb(), Perturb(param="fc.weight")]).run(mod, PassContext(instruments=[check]))
    assert len(records) == 2
    assert check.first_offender == "perturb"
    assert len(check.errors) == 2 and all(err > 1e-3 for _, err in check.errors)


def test_check_numerics_accepts_declared_changes(mod) -> None:
    out = io.StringIO()
    check = CheckNumerics(stream=out)
    PassManager([Flagged(), relu_to_gelu(), noop(), Tiny()]).run(mod, PassContext(instruments=[check]))
    assert check.first_offender is None
    assert [name for name, _ in check.errors] == ["flagged", "relu-to-gelu", "tiny"]
    assert check.errors[0][1] > 1e-3 and check.errors[2][1] < 1e-5  # tiny is measured against the new reference
    assert "(changes numerics)" in out.getvalue()


def test_check_numerics_uses_config_rtol_and_seed(mod) -> None:
    check = CheckNumerics(strict=False)
    ctx = PassContext(instruments=[check], config={"numerics.rtol": 10.0, "numerics.seed": 5})
    PassManager([Perturb()]).run(mod, ctx)
    assert check.rtol == 10.0 and check.first_offender is None
    gen = torch.Generator().manual_seed(5)
    assert torch.equal(check.inputs[0], random_like(mod.example_inputs[0], gen))


def test_random_like_is_never_zero() -> None:
    gen = torch.Generator().manual_seed(0)
    f = random_like(torch.zeros(4, 5), gen)
    i = random_like(torch.zeros(100, dtype=torch.int64), gen)
    assert f.dtype == torch.float32 and f.shape == (4, 5) and f.abs().sum() > 0 and f.std() > 0.3
    assert i.dtype == torch.int64 and bool((i >= 1).all()) and bool((i < 8).all())
    h = random_like(torch.zeros(3, dtype=torch.float16), gen)
    assert h.dtype == torch.float16


def test_max_rel_error() -> None:
    ref = torch.tensor([1.0, -4.0])
    assert max_rel_error(ref.clone(), ref) == 0.0
    assert max_rel_error(torch.tensor([1.0, -3.0]), ref) == pytest.approx(0.25)
    assert max_rel_error((torch.tensor([1.0, -4.0]), torch.tensor([2.0])), (ref, torch.tensor([1.0]))) == pytest.approx(1.0)
    assert max_rel_error(torch.zeros(3), torch.zeros(2)) == float("inf")


# -- Reproducer -------------------------------------------------------------------------------


def test_reproducer_writes_a_runnable_reproducer(mod, tmp_path) -> None:
    d = tmp_path / "repro"
    repro = Reproducer(d)
    x = torch.randn(2, 3, 8, 8)
    pm = PassManager([relu_to_gelu(), break_conv(), noop()])
    with pytest.raises(PipelineFailure) as info:
        pm.run(mod, PassContext(instruments=[repro]))
    msg = str(info.value)
    assert f"reproducer written to {d} (run its repro.sh)" in msg
    assert repro.written_to == d
    assert sorted(p.name for p in d.iterdir()) == ["error.txt", "input.ir.txt", "input.pt2", "pipeline.txt", "repro.sh"]
    # the pipeline starts at the failing pass
    assert (d / "pipeline.txt").read_text() == "break-conv,noop\n"
    # the input is the module the failing pass received: after relu-to-gelu
    ep = torch.export.load(d / "input.pt2")
    ref = small_net()
    with torch.no_grad():
        h = torch.nn.functional.gelu(ref.bn(ref.conv(x)))
        expected = ref.fc(ref.pool(h + ref.conv2(h)).flatten(1))
        got = ep.module()(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert "aten.gelu" in (d / "input.ir.txt").read_text()
    assert (d / "error.txt").read_text().startswith("VerificationError: shape propagation failed")
    script = (d / "repro.sh").read_text()
    assert script.startswith("#!/bin/sh\n")
    cmd = script.strip().splitlines()[-1]
    assert shlex.split(cmd) == [
        "sparsec", "opt", str(d / "input.pt2"), "--pipeline", "break-conv,noop", "--print-ir-after-failure", "--debug",
    ]
    assert (d / "repro.sh").stat().st_mode & 0o111


def test_reproducer_writes_nothing_on_success(mod, tmp_path) -> None:
    d = tmp_path / "repro"
    repro = Reproducer(d)
    PassManager([noop()]).run(mod, PassContext(instruments=[repro]))
    assert repro.written_to is None and not d.exists()


def test_a_failing_instrument_does_not_hide_the_failure(mod, caplog) -> None:
    class Broken(PrintIR):
        def after_failure(self, p, mod, exc, ctx, index):
            raise RuntimeError("instrument bug")

    with pytest.raises(PipelineFailure, match="pass 'break-conv'"):
        PassManager([break_conv()]).run(mod, PassContext(instruments=[Broken(io.StringIO())]))
    assert any("instrument bug" in r.getMessage() for r in caplog.records)
