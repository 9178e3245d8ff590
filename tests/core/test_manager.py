"""The pass manager: hook order, disabling, analyses, verification and failure reports."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import pytest
import torch

from sparsec.errors import PassFailedError, PipelineError, PipelineFailure, VerificationError, node_location
from sparsec.ir import Cost, ShapeInfo
from sparsec.ir.module import Module
from sparsec.passes.base import Pass, PassResult, function_pass
from sparsec.passes.instruments import Instrument
from sparsec.passes.manager import CONFIG_KEYS, PassContext, PassManager, register_config, run_pipeline
from sparsec.registry import Registry, reset_registry


# -- fixtures and test passes -----------------------------------------------------------


class Log(list):
    """Where test passes, analyses and instruments record what happened, in order."""


LOG = Log()


@pytest.fixture(autouse=True)
def _clear_log():
    LOG.clear()
    yield
    LOG.clear()


class Counted:
    """An analysis that records each time it is computed."""

    @classmethod
    def run(cls, mod) -> "Counted":
        LOG.append("analysis:Counted")
        return cls()


@dataclasses.dataclass(frozen=True)
class Touch(Pass):
    """Record the run; optionally claim a modification.

    Example: touch{modify=true}
    """

    name: ClassVar[str] = "touch"
    summary: ClassVar[str] = "records that it ran"
    requires: ClassVar[tuple] = (Counted,)

    modify: bool = False
    label: str = ""

    def run(self, mod, ctx) -> PassResult:
        LOG.append(f"run:{self}")
        return PassResult(modified=self.modify, stats={"touched": 1})


@dataclasses.dataclass(frozen=True)
class KeepShapes(Pass):
    """Modify, preserving ShapeInfo only.

    Example: keep-shapes
    """

    name: ClassVar[str] = "keep-shapes"
    summary: ClassVar[str] = "modifies; preserves ShapeInfo"
    preserves: ClassVar[tuple] = (ShapeInfo,)

    def run(self, mod, ctx) -> PassResult:
        return PassResult(modified=True)


@function_pass("break-conv", summary="give conv2 a weight with the wrong number of input channels")
def break_conv(mod, ctx):
    """Example: break-conv"""
    mod.set_param("conv2.weight", torch.randn(8, 5, 3, 3))
    return True


@function_pass("drop-val", summary="delete a node's shape metadata and claim nothing changed")
def drop_val(mod, ctx):
    """Example: drop-val"""
    del next(n for n in mod.graph.nodes if n.name == "relu").meta["val"]
    return False


@function_pass("fail-cleanly", summary="raise PassFailedError")
def fail_cleanly(mod, ctx):
    """Example: fail-cleanly"""
    node = next(n for n in mod.graph.nodes if n.name == "conv2d_1")
    raise PassFailedError("cannot handle this conv", where=node_location(node), expected="groups=1", actual="groups=3", fix="do X")


@function_pass("crash", summary="raise an internal error")
def crash(mod, ctx):
    """Example: crash"""
    raise ZeroDivisionError("oops")


@dataclasses.dataclass(frozen=True)
class ReturnsNone(Pass):
    """Forget to return a PassResult.

    Example: returns-none
    """

    name: ClassVar[str] = "returns-none"
    summary: ClassVar[str] = "returns None"

    def run(self, mod, ctx):
        return None


@pytest.fixture
def reg() -> Registry:
    r = Registry(load_plugins=False)
    for cls in (Touch, KeepShapes, break_conv, drop_val, fail_cleanly, crash, ReturnsNone):
        r.register_pass(cls, provider="tests")
    return r


class Recorder(Instrument):
    def before_pipeline(self, mod, pm, ctx):
        LOG.append(f"before_pipeline:{pm}")

    def before_pass(self, p, mod, ctx, index):
        LOG.append(f"before:{index}:{p}")

    def after_pass(self, p, mod, result, ctx, index):
        LOG.append(f"after:{index}:{p}:{result.modified}")

    def after_failure(self, p, mod, exc, ctx, index):
        LOG.append(f"failure:{index}:{p}:{type(exc).__name__}")

    def after_pipeline(self, mod, records, ctx):
        LOG.append(f"after_pipeline:{len(records)}")


def _spy(mod: Module, monkeypatch) -> None:
    """Record the manager's recompile and verify calls on ``mod``."""
    recompile, verify = mod.recompile, mod.verify

    def spy_recompile():
        LOG.append("recompile")
        recompile()

    def spy_verify():
        LOG.append("verify")
        verify()

    monkeypatch.setattr(mod, "recompile", spy_recompile)
    monkeypatch.setattr(mod, "verify", spy_verify)


# -- ordering -----------------------------------------------------------------------------


def test_hooks_run_in_order_per_pass(mod, reg, monkeypatch) -> None:
    _spy(mod, monkeypatch)
    pm = PassManager.parse("touch{modify=true},touch{label=b}", reg)
    records = pm.run(mod, PassContext(instruments=[Recorder()], verify_each=True))
    assert LOG == [
        "before_pipeline:touch{modify=true},touch{label=b}",
        "analysis:Counted",  # required analysis first
        "before:0:touch{modify=true}",
        "run:touch{modify=true}",
        "recompile",  # only after a modifying pass
        "verify",
        "after:0:touch{modify=true}:True",
        "analysis:Counted",  # recomputed: the first pass modified and did not preserve it
        "before:1:touch{label=b}",
        "run:touch{label=b}",
        "verify",
        "after:1:touch{label=b}:False",
        "after_pipeline:2",
    ]
    assert [(r.name, r.text, r.skipped, r.modified, r.stats) for r in records] == [
        ("touch", "touch{modify=true}", False, True, {"touched": 1}),
        ("touch", "touch{label=b}", False, False, {"touched": 1}),
    ]
    assert all(r.seconds >= 0 for r in records)


def test_verify_each_off_skips_verification(mod, reg, monkeypatch) -> None:
    _spy(mod, monkeypatch)
    PassManager.parse("touch{modify=true}", reg).run(mod, PassContext(verify_each=False))
    assert "verify" not in LOG and "recompile" in LOG


def test_verify_each_defaults_from_the_knob() -> None:
    from sparsec import knobs

    assert PassContext().verify_each is True
    with knobs.scope(verify_each=False):
        assert PassContext().verify_each is False


def test_disabled_passes_are_skipped(mod, reg) -> None:
    pm = PassManager.parse("touch{label=a},keep-shapes,touch{label=c}", reg)
    records = pm.run(mod, PassContext(disabled={"keep-shapes"}, instruments=[Recorder()]))
    assert [r.skipped for r in records] == [False, True, False]
    assert "before:1:keep-shapes" not in LOG and "after:1:keep-shapes:True" not in LOG
    assert [e for e in LOG if e.startswith("run:")] == ["run:touch{label=a}", "run:touch{label=c}"]
    records = pm.run(mod, PassContext(disabled=["touch"]))
    assert [r.skipped for r in records] == [True, False, True]


def test_analyses_invalidated_unless_preserved(mod, reg) -> None:
    shapes, cost = mod.analysis(ShapeInfo), mod.analysis(Cost)
    assert mod.analysis(ShapeInfo) is shapes  # cached
    PassManager.parse("touch", reg).run(mod)  # no modification: everything stays
    assert mod.analysis(ShapeInfo) is shapes and mod.analysis(Cost) is cost
    PassManager.parse("keep-shapes", reg).run(mod)  # modified, preserves ShapeInfo only
    assert mod.analysis(ShapeInfo) is shapes
    new_cost = mod.analysis(Cost)
    assert new_cost is not cost and new_cost == cost
    PassManager.parse("touch{modify=true}", reg).run(mod)  # modified, preserves nothing
    assert mod.analysis(ShapeInfo) is not shapes and mod.analysis(Cost) is not new_cost


def test_required_analysis_is_computed_once_when_cached(mod, reg) -> None:
    PassManager.parse("touch,touch{label=x}", reg).run(mod)
    assert LOG.count("analysis:Counted") == 1


# -- failures ------------------------------------------------------------------------------


def test_broken_pass_is_caught_by_verification(mod, reg) -> None:
    pm = PassManager.parse("touch,break-conv,touch{label=z}", reg)
    with pytest.raises(PipelineFailure) as info:
        pm.run(mod, PassContext(instruments=[Recorder()]))
    err = info.value
    msg = str(err)
    assert msg.startswith("pass 'break-conv' (#2 of 3) failed: shape propagation failed")
    assert "node 'conv2d_1' (aten.conv2d.default)" in msg
    assert "tests/core/nets.py:" in msg  # the user's source line, not torch's
    assert "where:    after [touch] in pipeline 'touch,break-conv,touch{label=z}'" in msg
    assert "weight of size [8, 5, 3, 3]" in msg
    assert "--reproducer DIR" in msg
    assert isinstance(err.__cause__, VerificationError)
    assert "conv2d_1" in str(err.__cause__)
    assert LOG[-1] == "failure:1:break-conv:VerificationError"
    assert not any(e.startswith("after:1") or e.startswith("before:2") for e in LOG)


def test_verifier_catches_a_pass_that_claims_no_change(mod, reg) -> None:
    with pytest.raises(PipelineFailure, match=r"pass 'drop-val' \(#1 of 1\) failed: a node has no shape metadata") as info:
        PassManager.parse("drop-val", reg).run(mod)
    assert "node 'relu' (aten.relu.default)" in str(info.value)
    assert isinstance(info.value.__cause__, VerificationError)


def test_without_verify_each_the_broken_pass_goes_through(mod, reg) -> None:
    PassManager.parse("drop-val", reg).run(mod, PassContext(verify_each=False))
    with pytest.raises(VerificationError, match="a node has no shape metadata"):
        mod.verify()


def test_pass_failed_error_keeps_its_details(mod, reg) -> None:
    with pytest.raises(PipelineFailure) as info:
        PassManager.parse("touch{modify=true},touch,fail-cleanly", reg).run(mod)
    msg = str(info.value)
    assert "pass 'fail-cleanly' (#3 of 3) failed: cannot handle this conv (node 'conv2d_1'" in msg
    assert "after [touch{modify=true}, touch]" in msg
    assert "expected: groups=1" in msg and "actual:   groups=3" in msg
    assert "fix:      do X; add --reproducer DIR" in msg
    assert isinstance(info.value.__cause__, PassFailedError)


def test_skipped_passes_are_not_listed_as_ran(mod) -> None:
    pm = PassManager([Touch(label="b"), KeepShapes(), crash()])
    with pytest.raises(PipelineFailure, match=r"'crash' \(#3 of 3\)[\s\S]*after \[touch\{label=b\}\] in pipeline 'touch\{label=b\},keep-shapes,crash'"):
        pm.run(mod, PassContext(disabled={"keep-shapes"}))


def test_internal_error_is_reported_as_a_bug(mod, reg) -> None:
    with pytest.raises(PipelineFailure) as info:
        PassManager.parse("crash", reg).run(mod)
    msg = str(info.value)
    assert "pass 'crash' (#1 of 1) failed: internal error in the pass: ZeroDivisionError: oops" in msg
    assert "after [nothing] in pipeline 'crash'" in msg
    assert "this is a bug in the pass" in msg
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_non_pass_result_fails_clearly(mod, reg) -> None:
    with pytest.raises(PipelineFailure, match="pass 'returns-none' returned NoneType, not PassResult") as info:
        PassManager.parse("returns-none", reg).run(mod)
    assert isinstance(info.value.__cause__, TypeError)


def test_function_pass_turns_a_bool_into_a_result(mod, reg) -> None:
    assert isinstance(break_conv(), Pass) and break_conv.name == "break-conv"
    assert break_conv.__doc__ == "Example: break-conv"
    assert break_conv().run(mod, PassContext()) == PassResult(modified=True)
    assert drop_val().run(mod.clone(), PassContext()) == PassResult(modified=False)


# -- PassManager and PassContext API ---------------------------------------------------------


def test_pass_manager_rejects_non_passes() -> None:
    with pytest.raises(TypeError, match="'dce' is not a Pass"):
        PassManager(["dce"])


def test_pass_manager_text_and_len(reg) -> None:
    pm = PassManager.parse("touch,keep-shapes", reg).add(Touch(modify=True))
    assert len(pm) == 3
    assert str(pm) == "touch,keep-shapes,touch{modify=true}"
    assert repr(pm) == "PassManager('touch,keep-shapes,touch{modify=true}')"
    assert PassManager.parse(str(pm), reg).passes == pm.passes


def test_run_pipeline_accepts_text_manager_or_list(mod) -> None:
    reg = reset_registry(load_plugins=False)
    reg.register_pass(Touch)
    assert [r.text for r in run_pipeline(mod, "touch{label=t}")] == ["touch{label=t}"]
    assert [r.text for r in run_pipeline(mod, [Touch()])] == ["touch"]
    assert [r.text for r in run_pipeline(mod, PassManager([Touch(modify=True)]))] == ["touch{modify=true}"]


def test_pass_context_rejects_unknown_config_keys() -> None:
    with pytest.raises(PipelineError, match="unknown config key 'numerics.rtoll'") as info:
        PassContext(config={"numerics.rtoll": 1e-3})
    assert "known keys: " in str(info.value) and "numerics.rtol" in str(info.value)


def test_pass_context_checks_config_types() -> None:
    with pytest.raises(PipelineError, match="config key 'numerics.seed' has a bad value") as info:
        PassContext(config={"numerics.seed": "3"})
    assert "expected: int" in str(info.value) and "actual:   '3'" in str(info.value)
    with pytest.raises(PipelineError, match="config key 'numerics.seed' has a bad value"):
        PassContext(config={"numerics.seed": True})
    assert PassContext(config={"numerics.rtol": 1}).get("numerics.rtol") == 1  # an int is a fine float


def test_pass_context_get_defaults_and_overrides() -> None:
    ctx = PassContext(config={"numerics.seed": 7})
    assert ctx.get("numerics.seed") == 7
    assert ctx.get("numerics.rtol") == CONFIG_KEYS["numerics.rtol"].default
    with pytest.raises(KeyError, match="unknown config key 'nope.nope'"):
        ctx.get("nope.nope")
    assert ctx.disabled == frozenset()


def test_register_config_requires_a_namespace() -> None:
    with pytest.raises(ValueError, match="must be namespaced"):
        register_config("rtol", float, 1.0, "x")
    key = register_config("tests.core_flag", bool, False, "a test key")
    assert register_config("tests.core_flag", bool, False, "a test key") == key  # the same declaration again is fine
    with pytest.raises(ValueError, match="registered twice"):
        register_config("tests.core_flag", int, 0, "another meaning")
    assert PassContext(config={"tests.core_flag": True}).get("tests.core_flag") is True
