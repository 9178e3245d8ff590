"""Packaging: the top-level ``ir/ passes/ backends/ cli/`` directories ship
inside the ``sparsec`` namespace, never as bare top-level packages.

The wheel is built from a copy of the sources (so the repo gets no ``build/``)
and installed with ``--no-deps`` into a fresh venv that sees this venv's
site-packages only *after* its own, through a ``.pth`` line; that gives it
torch without reinstalling it, while the wheel's ``sparsec`` wins.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "sparsec", "ir", "passes", "backends", "cli")
SUBPACKAGES = ("ir", "passes", "backends", "cli")

pytestmark = pytest.mark.slow


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, **kw)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    dist = tmp / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
          "--wheel-dir", str(dist), str(src)])
    (whl,) = dist.glob("sparsec-*.whl")
    return whl


def test_wheel_has_only_the_sparsec_namespace(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    dist_info = {t for t in tops if t.endswith(".dist-info")}
    assert len(dist_info) == 1
    assert tops - dist_info == {"sparsec"}, f"unexpected top-level names: {sorted(tops - dist_info - {'sparsec'})}"
    # Every source module of each top-level directory, subpackages included, is in
    # the wheel under sparsec/ (a subpackage missing from pyproject's list fails here).
    for sub in SUBPACKAGES:
        for py in (REPO / sub).rglob("*.py"):
            rel = py.relative_to(REPO).as_posix()
            assert f"sparsec/{rel}" in names, f"{rel} is missing from the wheel: add its package to pyproject.toml"
    assert "sparsec/registry.py" in names
    (ep_file,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    entry_points = zipfile.ZipFile(wheel).read(ep_file).decode()
    assert "sparsec = sparsec.cli.main:main" in entry_points


def test_wheel_installs_and_imports_only_as_sparsec(wheel, tmp_path):
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    py = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", str(wheel)])
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    # This venv's site-packages (torch, numpy, click, rich...) comes after the wheel's own.
    # Plain path lines in a .pth do not run that directory's own .pth files, so the
    # editable install of sparsec there stays invisible.
    (site / "zz_parent_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    probe = r"""
import importlib, json, sys
import sparsec, sparsec.ir, sparsec.passes, sparsec.backends, sparsec.cli
import torch
from sparsec.ir.trace import trace
from sparsec.passes import PassManager
from sparsec.registry import registry
mod = trace(torch.nn.Linear(4, 3), (torch.randn(2, 4),))
bare = {}
for name in ("ir", "passes", "backends", "cli"):
    try:
        importlib.import_module(name)
        bare[name] = "imported"
    except ModuleNotFoundError:
        bare[name] = "missing"
print(json.dumps({"sparsec": sparsec.__file__, "ir": sparsec.ir.__file__, "bare": bare,
                  "passes": registry().names("pass"), "nodes": len(list(mod.graph.nodes))}))
"""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}  # no PYTHONPATH
    out = json.loads(_run([str(py), "-c", probe], cwd=tmp_path, env=env).stdout.strip().splitlines()[-1])
    assert Path(out["sparsec"]).is_relative_to(site)
    assert Path(out["ir"]) == site / "sparsec" / "ir" / "__init__.py"
    assert out["bare"] == {"ir": "missing", "passes": "missing", "backends": "missing", "cli": "missing"}
    assert "dce" in out["passes"]
    assert out["nodes"] >= 4  # input, weight, bias, linear, output
    # The console script is installed and runs.
    help_text = _run([str(venv / "bin" / "sparsec"), "--help"], cwd=tmp_path, env=env).stdout
    assert "compile" in help_text and "inspect" in help_text


def test_editable_install_points_at_the_repo():
    # Not metadata.distribution(): with `python -m pytest` the repo root is on
    # sys.path, and its sparsec.egg-info (no direct_url.json) would be found first.
    installed = [json.loads(d.read_text("direct_url.json") or "{}") for d in metadata.distributions(name="sparsec")]
    direct = next((d for d in installed if d), {})
    if not direct.get("dir_info", {}).get("editable"):
        pytest.skip("sparsec is not installed in editable mode here (`make venv` installs it with pip install -e)")
    installed_from = Path(direct["url"].removeprefix("file://")).resolve()
    if installed_from != REPO:
        pytest.skip(f"the editable install is of {installed_from}, not of this checkout {REPO}")
    import sparsec.cli
    import sparsec.ir
    import sparsec.passes

    assert Path(sparsec.ir.__file__).resolve() == REPO / "ir" / "__init__.py"
    assert Path(sparsec.passes.__file__).resolve() == REPO / "passes" / "__init__.py"
    assert Path(sparsec.cli.__file__).resolve() == REPO / "cli" / "__init__.py"
