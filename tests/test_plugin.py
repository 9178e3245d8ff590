"""The plugin path: the example plugin in ``examples/plugin`` (installed by
``make venv``) and the registry's handling of plugin entry points."""

from __future__ import annotations

import importlib.metadata as md
import logging
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from sparsec.errors import PipelineError, RegistryError
from sparsec.registry import ENTRY_POINT_GROUP, Registry, registry

PLUGIN_DIST = "sparsec-example-plugin"
PLUGIN_PROVIDER = f"{PLUGIN_DIST} (sparsec_example_plugin:register)"


def _plugin_installed() -> bool:
    try:
        md.distribution(PLUGIN_DIST)
    except md.PackageNotFoundError:
        return False
    return True


needs_plugin = pytest.mark.skipif(
    not _plugin_installed(),
    reason=f"{PLUGIN_DIST} is not installed here; `make venv` installs it (pip install ./examples/plugin)",
)


class TwoRelus(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        y = torch.relu(self.conv(x))          # aten.relu.default
        y = nn.functional.relu(y, inplace=True)  # aten.relu_.default
        return self.fc(y.mean((2, 3)))


@pytest.fixture(scope="module")
def tiny_pt2(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("plugin") / "tiny.pt2"
    torch.export.save(torch.export.export(TwoRelus().eval(), (torch.randn(1, 3, 8, 8),)), str(path))
    return path


def _sparsec(*args: str) -> subprocess.CompletedProcess:
    """Run the installed ``sparsec`` console script in a fresh process, so
    plugin discovery goes through the real entry-point machinery."""
    script = Path(sys.executable).with_name("sparsec")
    cmd = [str(script)] if script.exists() else [sys.executable, "-c", "from sparsec.cli.main import main; main()"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=300)


# -- the installed example plugin ----------------------------------------------------


@needs_plugin
def test_registry_lists_plugin_pass_with_its_provider():
    reg = registry()
    assert "count-ops" in reg.names("pass")
    assert reg.provider("pass", "count-ops") == PLUGIN_PROVIDER
    cls = reg.get("pass", "count-ops")
    assert cls.__module__ == "sparsec_example_plugin"
    assert cls.name == "count-ops"
    assert cls.summary
    assert "Example:" in (cls.__doc__ or "")
    # The built-ins are still provided by sparsec itself.
    assert reg.provider("pass", "dce") == "sparsec"


@needs_plugin
def test_count_ops_counts_and_changes_nothing():
    from sparsec.ir.printer import print_module
    from sparsec.ir.trace import trace
    from sparsec.passes import PassManager

    model = TwoRelus().eval()
    x = torch.randn(2, 3, 8, 8)
    mod = trace(model, (x,))
    before = print_module(mod)
    records = PassManager.parse("count-ops,count-ops{op=aten.relu},count-ops{op=aten.relu_.default}").run(mod)

    all_ops, relus, inplace = (r.stats for r in records)
    called = [n for n in mod.graph.nodes if n.op == "call_function"]
    assert all_ops["total"] == len(called) > 0
    assert all_ops["aten.conv2d.default"] == 1
    assert all_ops["aten.relu.default"] == 1 and all_ops["aten.relu_.default"] == 1
    assert sum(v for k, v in all_ops.items() if k != "total") == all_ops["total"]
    assert relus["aten.relu"] == 2  # the packet counts the in-place form too
    assert inplace["aten.relu_.default"] == 1  # an overload counts only itself
    assert not any(r.modified for r in records)
    assert print_module(mod) == before
    torch.testing.assert_close(mod(x), model(x))


@needs_plugin
def test_count_ops_rejects_an_unqualified_op():
    from sparsec.passes import PassManager

    with pytest.raises(PipelineError, match=r"option 'op' of pass 'count-ops' must be a qualified op name") as info:
        PassManager.parse("count-ops{op=relu}")
    assert "aten.relu" in str(info.value)  # the message shows the expected form


@needs_plugin
def test_cli_opt_runs_the_plugin_pass(tiny_pt2):
    proc = _sparsec("opt", str(tiny_pt2), "--pipeline", "count-ops{op=aten.relu}", "--pass-statistics")
    assert proc.returncode == 0, proc.stderr
    report = proc.stderr
    assert "Pass statistics" in report
    assert "count-ops{op=aten.relu}" in report
    lines = [line.split() for line in report.splitlines()]
    assert ["2", "aten.relu"] in lines
    assert any(len(words) == 2 and words[1] == "total" and int(words[0]) > 2 for words in lines)


@needs_plugin
def test_cli_passes_shows_the_plugin():
    proc = _sparsec("passes", "count-ops")
    assert proc.returncode == 0, proc.stderr
    assert "count-ops" in proc.stdout
    assert PLUGIN_DIST in proc.stdout


# -- the registry's plugin loading, with fake entry points ------------------------


def _fake_plugin(monkeypatch, module: str, hook, *, keep_real: bool = False) -> None:
    """Make ``entry_points(group='sparsec.plugins')`` also return ``module:register``."""
    fake_mod = types.ModuleType(module)
    if hook is not None:
        fake_mod.register = hook
        monkeypatch.setitem(sys.modules, module, fake_mod)
    ep = md.EntryPoint(name="fake", value=f"{module}:register", group=ENTRY_POINT_GROUP)
    real = md.entry_points

    def entry_points(**kw):
        found = list(real(**kw)) if keep_real else []
        return [*found, ep] if kw.get("group") == ENTRY_POINT_GROUP else found

    monkeypatch.setattr(md, "entry_points", entry_points)


def test_plugin_reusing_a_builtin_name_names_both_providers(monkeypatch):
    def register(reg):
        reg.add("pass", "dce", "fake_sparsec_plugin:Nothing")

    _fake_plugin(monkeypatch, "fake_sparsec_plugin", register)
    reg = Registry()
    with pytest.raises(RegistryError, match=r"duplicate pass name 'dce'") as info:
        reg.names("pass")
    msg = str(info.value)
    assert "registered by 'sparsec' and again by 'fake_sparsec_plugin:register" in msg
    assert "fix:" in msg


@needs_plugin
def test_two_plugins_with_one_name_name_both_providers(monkeypatch):
    def register(reg):
        reg.add("pass", "count-ops", "other_plugin:CountOps")

    _fake_plugin(monkeypatch, "other_plugin", register, keep_real=True)
    reg = Registry()
    with pytest.raises(RegistryError, match=r"duplicate pass name 'count-ops'") as info:
        reg.get("pass", "count-ops")
    assert f"registered by '{PLUGIN_PROVIDER}' and again by 'other_plugin:register" in str(info.value)


def test_a_plugin_that_fails_to_import_is_skipped_with_a_warning(monkeypatch, caplog):
    _fake_plugin(monkeypatch, "sparsec_no_such_plugin_module", None)
    reg = Registry()
    with caplog.at_level(logging.WARNING, logger="sparsec.registry"):
        names = reg.names("pass")
    assert "dce" in names  # the built-ins still work
    assert any("sparsec_no_such_plugin_module:register" in r.getMessage() and "failed to load" in r.getMessage()
               for r in caplog.records)
