"""A cpu-tvm artifact runs with apache-tvm-ffi and libtvm_runtime.so alone: no TVM compiler in the process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

import sparsec
from sparsec.errors import ArtifactError

from .conftest import rel_err

# Run first in each subprocess: `import tvm` fails, as on a host with only the runtime.
BLOCK_TVM = textwrap.dedent("""
    import sys
    sys.modules["tvm"] = None  # `import tvm` raises ImportError and find_spec("tvm") is None: as if not installed
""")

CHECK = BLOCK_TVM + textwrap.dedent("""
    import torch, sparsec
    art, x_path, y_path = sys.argv[1:4]
    model = sparsec.load(art)
    torch.save(model(torch.load(x_path)), y_path)
    maps = open("/proc/self/maps").read()
    assert "libtvm_compiler" not in maps, "the TVM compiler library was loaded"
    assert "libtvm_runtime.so" in maps
    assert sys.modules["tvm"] is None and not [m for m in sys.modules if m.startswith("tvm.")], "tvm was imported"
    print("runtime:", [l.split()[-1] for l in maps.splitlines() if l.endswith("libtvm_runtime.so")][0])
""")


@pytest.fixture
def artifact(tvm, small_net, tmp_path):
    x = torch.randn(2, 3, 32, 32)
    res = sparsec.compile(small_net, (x,), target="cpu-tvm", output=str(tmp_path / "m.sparsec"))
    return res.artifact, small_net


@pytest.fixture
def runtime_dir(tvm, tmp_path):
    """A folder holding a copy of libtvm_runtime.so and nothing else of TVM."""
    from sparsec.backends.tvm.runtime import RUNTIME, wheel_lib_dir

    d = tmp_path / "tvm-runtime"
    d.mkdir()
    shutil.copy2(wheel_lib_dir() / RUNTIME, d / RUNTIME)
    return d


def _env(runtime_dir) -> dict:
    env = dict(os.environ)
    env["SPARSEC_TVM_RUNTIME_DIR"] = str(runtime_dir) if runtime_dir else ""
    return env


def test_runs_without_the_tvm_compiler(artifact, runtime_dir, tmp_path):
    art, net = artifact
    x = torch.randn(2, 3, 32, 32)
    torch.save(x, tmp_path / "x.pt")
    proc = subprocess.run([sys.executable, "-c", CHECK, str(art), str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
                          env=_env(runtime_dir), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"runtime: {runtime_dir}/libtvm_runtime.so" in proc.stdout
    y = torch.load(tmp_path / "y.pt")
    assert y.shape == (2, 10) and rel_err(y, net(x)) < 1e-4


def test_sparsec_run_cli_without_the_tvm_compiler(artifact, runtime_dir, tmp_path):
    art, net = artifact
    x = torch.randn(2, 3, 32, 32)
    torch.save(x, tmp_path / "x.pt")
    script = BLOCK_TVM + "from sparsec.cli.main import main\nmain(sys.argv[1:])\n"
    proc = subprocess.run([sys.executable, "-c", script, "run", str(art), "--input", str(tmp_path / "x.pt"),
                           "--output", str(tmp_path / "y.pt")], env=_env(runtime_dir), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    y = torch.load(tmp_path / "y.pt")
    y = y[0] if isinstance(y, (tuple, list)) else y
    assert rel_err(y, net(x)) < 1e-4


def test_missing_runtime_library_says_where_it_looked(artifact, tmp_path):
    art, _ = artifact
    empty = tmp_path / "empty"
    empty.mkdir()
    script = BLOCK_TVM + textwrap.dedent("""
        import sparsec
        from sparsec.errors import ArtifactError
        try:
            sparsec.load(sys.argv[1])
        except ArtifactError as e:
            print(e)
            sys.exit(3)
    """)
    proc = subprocess.run([sys.executable, "-c", script, str(art)], env=_env(empty), capture_output=True, text=True)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "the TVM runtime library libtvm_runtime.so could not be loaded" in proc.stdout
    assert f"{empty}/libtvm_runtime.so (missing)" in proc.stdout
    assert "SPARSEC_TVM_RUNTIME_DIR" in proc.stdout and "pip install 'sparsec[tvm]'" in proc.stdout


def test_weights_of_another_model_are_refused(artifact, tmp_path):
    art, _ = artifact
    from sparsec.backends.artifact import read_manifest
    from sparsec.backends.tvm.backend import TvmBackend

    manifest = read_manifest(art)
    saved = torch.load(art / "params.pt", weights_only=True)
    torch.save({"names": saved["names"][::-1], "tensors": saved["tensors"][::-1]}, art / "params.pt")
    with pytest.raises(ArtifactError, match="are not the ones the library takes"):
        TvmBackend().load_artifact(art, manifest)
