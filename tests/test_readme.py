"""The README stays true: its marked Python blocks run, its CLI lines name
real commands and options, its tables name real passes and targets, and the
example scripts run."""

from __future__ import annotations

import re
import runpy
import shlex
import sys
import types
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()

_MARKED = re.compile(r"<!-- test: (?P<name>[\w-]+) -->\s*```python\n(?P<code>.*?)```", re.S)
_FENCE = re.compile(r"```(?P<lang>\w*)\n(?P<body>.*?)```", re.S)


def marked_block(name: str) -> str:
    blocks = {m["name"]: m["code"] for m in _MARKED.finditer(README)}
    assert name in blocks, f"README has no python block marked <!-- test: {name} -->; it has {sorted(blocks)}"
    return blocks[name]


def exec_as_module(code: str, name: str, monkeypatch) -> dict:
    """Run ``code`` as the body of a fresh module ``name`` (dataclasses and
    the registry look classes' modules up in sys.modules)."""
    module = types.ModuleType(name)
    monkeypatch.setitem(sys.modules, name, module)
    exec(compile(code, f"README.md:{name}", "exec"), module.__dict__)
    return module.__dict__


def test_custom_pass_example_runs_and_holds(monkeypatch):
    from sparsec.passes import PassManager
    from sparsec.registry import registry

    ns = exec_as_module(marked_block("custom-pass"), "readme_custom_pass", monkeypatch)
    # What the example itself asserts, checked again from outside.
    assert ns["records"][0].stats == {"removed": 1}
    mod, model, MUL = ns["mod"], ns["model"], ns["MUL"]
    assert len(mod.nodes("call_function", MUL)) == 1
    x = torch.randn(4, 8)  # fresh inputs, not the example's own
    torch.testing.assert_close(mod(x), model(x), rtol=0, atol=0)
    # The example registered a pass that follows the conventions it describes.
    cls = registry().get("pass", "drop-mul-one")
    assert cls is ns["DropMulOne"]
    assert cls.summary and "Example:" in cls.__doc__
    assert registry().provider("pass", "drop-mul-one") == "readme_custom_pass"
    # Idempotent: a second run finds nothing to remove.
    (again,) = PassManager.parse("drop-mul-one").run(mod)
    assert again.stats == {"removed": 0} and not again.modified


def test_custom_pass_keeps_a_promoting_multiply(monkeypatch):
    """The dtype guard in the README's pass is real: ``int_tensor * 1.0`` makes
    a float tensor, so it is not a no-op and must stay."""
    ns = exec_as_module(marked_block("custom-pass"), "readme_custom_pass", monkeypatch)

    class Promote(torch.nn.Module):
        def forward(self, x):
            return x * 1.0  # int64 -> float32

    x = torch.randint(1, 9, (2, 4))
    mod = ns["sparsec"].trace(Promote(), (x,))
    assert len(mod.nodes("call_function", ns["MUL"])) == 1
    (rec,) = ns["sparsec"].PassManager.parse("drop-mul-one").run(mod)
    assert rec.stats == {"removed": 0}
    x = torch.randint(1, 9, (2, 4))
    out = mod(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, x.float(), rtol=0, atol=0)


def test_custom_pass_script_runs(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["custom_pass.py"])
    runpy.run_path(str(REPO / "examples" / "custom_pass.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "IR Dump Before drop-mul-one" in out and "IR Dump After drop-mul-one" in out
    assert "ok: 'drop-mul-one,dce' removed one multiplication" in out


@pytest.mark.slow
def test_python_api_example_runs(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # it writes out/r18.sparsec
    ns = exec_as_module(marked_block("python-api"), "readme_python_api", monkeypatch)
    assert (tmp_path / "out" / "r18.sparsec" / "program.pt2").is_file()
    assert ns["res"].pipeline == "canonicalize,fold-bn,dce"
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ref, got = ns["model"](x), ns["fast"](x)
    assert got.shape == ref.shape == (1, 1000)
    assert ((got - ref).abs().max() / ref.abs().max()).item() < 1e-4
    bn = torch.ops.aten.batch_norm.default
    assert not ns["mod"].nodes("call_function", bn)  # the last line folded every BatchNorm


def _cli_lines() -> list[list[str]]:
    lines = []
    for m in _FENCE.finditer(README):
        if m["lang"] not in ("sh", "bash", "console"):
            continue
        for line in m["body"].splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("sparsec "):
                lines.append(shlex.split(line))
    return lines


def test_readme_cli_lines_use_real_commands_and_options():
    from sparsec.cli.main import cli

    lines = _cli_lines()
    assert len(lines) >= 10
    global_opts = {o for p in cli.params for o in p.opts}
    seen = set()
    for argv in lines:
        name = argv[1]
        assert name in cli.commands, f"README uses `sparsec {name}`, which is not a command: {argv}"
        seen.add(name)
        known = global_opts | {o for p in cli.commands[name].params for o in (*p.opts, *p.secondary_opts)}
        for tok in argv[2:]:
            if tok.startswith("-"):
                assert tok.split("=")[0] in known, f"`sparsec {name}` has no option {tok} (README line {shlex.join(argv)})"
    assert seen == set(cli.commands), f"commands missing from the README: {sorted(set(cli.commands) - seen)}"


def test_readme_names_only_registered_passes_and_every_target():
    from sparsec.registry import registry

    reg = registry()
    status = next(line for line in README.splitlines() if line.startswith("| the passes"))
    named = re.findall(r"`([a-z0-9-]+)`", status)
    assert named and set(named) <= set(reg.names("pass")), named
    cells = re.findall(r"^\| (`[a-z0-9-]+`(?:, `[a-z0-9-]+`)*) \|", README, re.M)  # the targets table's first column
    in_table = {t for cell in cells for t in re.findall(r"`([a-z0-9-]+)`", cell)}
    assert in_table == set(reg.names("target"))
    assert "`default` (`canonicalize,fold-bn,dce`)" in README
    assert reg.get("pipeline", "default") == "canonicalize,fold-bn,dce"


def test_readme_make_targets_exist():
    makefile = (REPO / "Makefile").read_text()
    for target in ("venv", "test", "demo", "clean", "distclean"):
        assert re.search(rf"^{target}:", makefile, re.M), f"README mentions `make {target}`; the Makefile lacks it"
        assert f"make {target}" in README
