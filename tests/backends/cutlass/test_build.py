"""The build machinery: clear errors, the content-hash cache, and one real nvcc compile per arch."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pytest

from sparsec import knobs
from sparsec.backends.cutlass import build
from sparsec.backends.cutlass.config import KernelConfig
from sparsec.errors import BuildError

FAKE_NVCC = """#!/bin/sh
# a stand-in nvcc: prints a version, or writes its -o file and counts the calls
if [ "$1" = "--version" ]; then echo "Cuda compilation tools, release 13.0, V13.0.0"; exit 0; fi
echo x >> "$(dirname "$0")/calls"
while [ $# -gt 0 ]; do if [ "$1" = "-o" ]; then shift; echo "library of $*" > "$1"; fi; shift; done
"""


@pytest.fixture
def fake_nvcc(tmp_path):
    nvcc = tmp_path / "bin" / "nvcc"
    nvcc.parent.mkdir()
    nvcc.write_text(FAKE_NVCC)
    nvcc.chmod(nvcc.stat().st_mode | stat.S_IXUSR)
    build._nvcc_release.cache_clear()
    return nvcc


def _calls(nvcc: Path) -> int:
    f = nvcc.parent / "calls"
    return len(f.read_text().splitlines()) if f.exists() else 0


def test_missing_nvcc_says_how_to_install(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(build, "NVCC_FALLBACKS", ("/nonexistent/nvcc",))
    with knobs.scope(nvcc=None), pytest.raises(BuildError, match="nvcc .*was not found") as err:
        build.find_nvcc()
    assert "install the CUDA toolkit" in str(err.value)


def test_missing_headers_say_how_to_install(tmp_path):
    with knobs.scope(cutlass_dir=tmp_path), pytest.raises(BuildError, match="CUTLASS headers are missing") as err:
        build.cutlass_root()
    assert "pip install 'sparsec[cuda]'" in str(err.value)


def test_cache_builds_once_rebuilds_when_corrupt_and_keys_on_the_source(tmp_path, fake_nvcc):
    pytest.importorskip("cutlass_library")
    cfg = KernelConfig()
    with knobs.scope(nvcc=str(fake_nvcc), cache_dir=tmp_path / "cache"):
        lib = build.build_one(cfg)
        assert lib.read_text().startswith("library of") and _calls(fake_nvcc) == 1
        assert build.build_one(cfg) == lib and _calls(fake_nvcc) == 1  # cached
        # the same library serves every run-time swizzle
        assert build.build([cfg, KernelConfig(swizzle=4)])[KernelConfig(swizzle=4)] == lib and _calls(fake_nvcc) == 1
        lib.write_text("torn write")  # no longer matches its manifest
        assert build.cached_library(cfg) is None
        assert build.build_one(cfg).read_text().startswith("library of") and _calls(fake_nvcc) == 2
        other = build.build_one(cfg.with_epilogue("relu"))
        assert other.parent != lib.parent and _calls(fake_nvcc) == 3
        assert (lib.parent / "kernel.cu").read_text().count(cfg.symbol) == 2


def test_a_failed_compile_names_the_kernel_and_its_log(tmp_path, fake_nvcc):
    pytest.importorskip("cutlass_library")
    fake_nvcc.write_text(FAKE_NVCC.replace('echo x >>', 'echo "kernel.cu(3): error: boom" >&2; exit 2; echo x >>'))
    with knobs.scope(nvcc=str(fake_nvcc), cache_dir=tmp_path), pytest.raises(BuildError, match="1 of 1 kernels failed") as err:
        build.build([KernelConfig()])
    assert "error: boom" in str(err.value) and "build.log" in str(err.value)


def _real_toolchain():
    try:
        return build.toolchain()
    except BuildError as exc:
        pytest.skip(f"no CUDA toolchain or CUTLASS headers here: {exc.what}")


@pytest.mark.slow
@pytest.mark.parametrize("cfg", [
    KernelConfig("sm_80", "fp16", True, (128, 128, 64), (1, 1)),
    KernelConfig("sm_90a", "fp16", True, (128, 128, 128), (1, 2)),
], ids=lambda c: c.arch)
def test_nvcc_compiles_one_kernel_per_arch(cfg):
    """A real compile, cached in the user cache dir: slow once (minutes for sm_90a on 2 cores), then instant."""
    _real_toolchain()
    lib = build.build_one(cfg)
    assert lib.stat().st_size > 100_000
    assert cfg.symbol.encode() in lib.read_bytes()


def test_a_failure_is_cached_so_it_is_not_recompiled(tmp_path, fake_nvcc):
    pytest.importorskip("cutlass_library")
    fake_nvcc.write_text(FAKE_NVCC.replace('echo x >>', 'echo x >> "$(dirname "$0")/calls"; echo "error: boom" >&2; exit 2; echo x >>'))
    with knobs.scope(nvcc=str(fake_nvcc), cache_dir=tmp_path):
        for _ in range(2):
            with pytest.raises(BuildError, match="error: boom"):
                build.build_one(KernelConfig())
    assert _calls(fake_nvcc) == 1
