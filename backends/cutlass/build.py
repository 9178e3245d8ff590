"""Building kernels: nvcc, the CUTLASS headers, and a content-hash cache.

Each :class:`KernelConfig` becomes one shared library with a plain extern "C"
ABI (see :mod:`codegen`), cached under ``<cache_dir>/kernels/<digest>/``. The
digest hashes the generated source, the nvcc flags, nvcc's release and the
CUTLASS version, so a change to any of them rebuilds. A directory lock
(``filelock``) makes concurrent builds of one kernel safe across processes; a
manifest records the library's sha256, and a library that no longer matches
it (a torn write, a disk error) is rebuilt. Many kernels build in parallel
(``SPARSEC_BUILD_JOBS`` nvcc processes) behind a rich progress bar.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Iterable, Sequence

from sparsec import knobs
from sparsec.backends.cutlass.codegen import emit, nvcc_arch_flags
from sparsec.backends.cutlass.config import KernelConfig
from sparsec.errors import BuildError

log = logging.getLogger("sparsec.backends.cutlass")

CXX_FLAGS = ("-O3", "-std=c++17", "--expt-relaxed-constexpr", "--expt-extended-lambda", "-DNDEBUG",
             "-Xcompiler", "-fPIC", "-shared")
NVCC_FALLBACKS = ("/usr/local/cuda/bin/nvcc",)
_INSTALL_HINT = "pip install 'sparsec[cuda]' (or: pip install nvidia-cutlass==4.2.0.0), or set SPARSEC_CUTLASS_DIR"


@dataclasses.dataclass(frozen=True)
class Toolchain:
    nvcc: str
    nvcc_release: str  # e.g. "13.0"
    include_dirs: tuple[str, ...]
    cutlass_version: str

    def key(self) -> str:
        return f"nvcc {self.nvcc_release}; cutlass {self.cutlass_version}"


def cutlass_root() -> Path:
    """The CUTLASS source root: ``SPARSEC_CUTLASS_DIR``, else the nvidia-cutlass wheel's copy."""
    configured = knobs.get("cutlass_dir")
    if configured is not None:
        root = Path(configured)
    else:
        import importlib.util

        spec = importlib.util.find_spec("cutlass_library")
        if spec is None or not spec.submodule_search_locations:
            raise BuildError("the CUTLASS headers are not installed",
                             expected="the nvidia-cutlass wheel (cutlass_library/source/include)",
                             actual="no cutlass_library package", fix=_INSTALL_HINT)
        root = Path(list(spec.submodule_search_locations)[0]) / "source"
    if not (root / "include" / "cutlass" / "cutlass.h").is_file():
        raise BuildError("the CUTLASS headers are missing", where=str(root),
                         expected=f"{root}/include/cutlass/cutlass.h", actual="not found", fix=_INSTALL_HINT)
    return root


def find_nvcc() -> str:
    configured = knobs.get("nvcc")
    for cand in ([configured] if configured else []) + [shutil.which("nvcc"), *NVCC_FALLBACKS]:
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return cand
    raise BuildError("nvcc (the CUDA compiler) was not found",
                     expected="nvcc on PATH, /usr/local/cuda/bin/nvcc or SPARSEC_NVCC", actual="none",
                     fix="install the CUDA toolkit (12.4 or newer; sm_90a needs it) and put its bin/ on PATH")


@functools.lru_cache(maxsize=None)
def _nvcc_release(nvcc: str) -> str:
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=False).stdout
    match = re.search(r"release (\d+\.\d+)", out)
    if not match:
        raise BuildError("could not read nvcc's version", where=nvcc, actual=out.strip()[-200:] or "no output",
                         fix="check that this nvcc runs: nvcc --version")
    return match.group(1)


def toolchain() -> Toolchain:
    root = cutlass_root()
    nvcc = find_nvcc()
    text = (root / "include" / "cutlass" / "version.h").read_text()
    version = ".".join(re.search(rf"#define CUTLASS_{p} (\d+)", text).group(1) for p in ("MAJOR", "MINOR", "PATCH"))
    return Toolchain(nvcc, _nvcc_release(nvcc), (str(root / "include"), str(root / "tools" / "util" / "include")), version)


@dataclasses.dataclass(frozen=True)
class Source:
    """One translation unit to build: a kernel config's source, or a helper (the sm_90 compressor)."""

    name: str
    text: str
    arch: str


def as_source(item) -> Source:
    """The translation unit of ``item``: a :class:`Source` as is; a config with its own ``to_source()`` (a
    depthwise kernel, :mod:`.depthwise`) gives it; a :class:`KernelConfig` is emitted by :mod:`.codegen`."""
    if isinstance(item, Source):
        return item
    to_source = getattr(item, "to_source", None)
    return to_source() if to_source is not None else Source(item.lib_name, emit(item), item.arch)


def compressor_source(dtype: str, tile_k: int) -> Source:
    from sparsec.backends.cutlass.codegen import compressor_symbol, emit_sm90_compressor

    return Source(compressor_symbol(dtype, tile_k), emit_sm90_compressor(dtype, tile_k), "sm_90a")


def kernel_flags(cfg: "KernelConfig | Source") -> list[str]:
    return [*CXX_FLAGS, *nvcc_arch_flags(cfg.arch)]


def digest(cfg: "KernelConfig | Source", tc: Toolchain) -> str:
    src = as_source(cfg)
    h = hashlib.sha256()
    for part in (src.text, " ".join(kernel_flags(src)), tc.key()):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:20]


def kernel_dir(cfg: "KernelConfig | Source", tc: Toolchain) -> Path:
    return Path(knobs.get("cache_dir")) / "kernels" / f"{as_source(cfg).name}-{digest(cfg, tc)}"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _valid(d: Path) -> bool:
    lib, manifest = d / "kernel.so", d / "manifest.json"
    if not (lib.is_file() and manifest.is_file()):
        return False
    try:
        return json.loads(manifest.read_text()).get("sha256") == _sha256(lib)
    except (OSError, ValueError):
        return False


def cached_library(cfg: "KernelConfig | Source", tc: Toolchain | None = None) -> Path | None:
    """The cached library of ``cfg`` if built and intact, else None (builds nothing)."""
    d = kernel_dir(cfg, tc or toolchain())
    return d / "kernel.so" if _valid(d) else None


def _compile(cfg: "KernelConfig | Source", tc: Toolchain) -> Path:
    from filelock import FileLock

    cfg = as_source(cfg)
    d = kernel_dir(cfg, tc)
    d.mkdir(parents=True, exist_ok=True)
    with FileLock(str(d) + ".lock"):
        if _valid(d):
            return d / "kernel.so"
        if (d / "FAILED").is_file():  # the same source failed before: do not spend minutes again
            raise BuildError(f"nvcc failed to build kernel {cfg.name} (cached failure)", where=str(d / "kernel.cu"),
                             actual=(d / "FAILED").read_text()[-800:],
                             fix=f"see {d / 'build.log'}; delete {d} to retry")
        src = d / "kernel.cu"
        src.write_text(cfg.text)
        tmp = d / f"kernel.so.tmp{os.getpid()}"
        cmd = [tc.nvcc, *kernel_flags(cfg), *(f"-I{i}" for i in tc.include_dirs), str(src), "-o", str(tmp)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        (d / "build.log").write_text(" ".join(cmd) + "\n" + proc.stdout + proc.stderr)
        if proc.returncode != 0:
            tmp.unlink(missing_ok=True)
            errors = [ln for ln in proc.stderr.splitlines() if "error" in ln][:5]
            (d / "FAILED").write_text("\n".join(errors) or proc.stderr[-800:])
            raise BuildError(f"nvcc failed to build kernel {cfg.name}", where=str(src),
                             actual="\n            ".join(errors) or proc.stderr[-800:],
                             fix=f"see the full log in {d / 'build.log'}; the command is its first line")
        os.replace(tmp, d / "kernel.so")
        (d / "manifest.json").write_text(json.dumps({
            "config": cfg.name, "sha256": _sha256(d / "kernel.so"), "toolchain": tc.key(),
            "seconds": round(time.perf_counter() - t0, 1)}, indent=1))
        log.info("built %s in %.0f s", cfg.name, time.perf_counter() - t0)
        return d / "kernel.so"


def build(configs: Iterable["KernelConfig | Source"], *, jobs: int | None = None, progress: bool = False) -> dict:
    """Build (or find in the cache) every config; returns config -> library path.

    Raises :class:`BuildError` naming every kernel that failed.
    """
    configs = list(dict.fromkeys(configs))
    tc = toolchain()
    by_lib: dict = {}  # configs that differ only in run-time arguments share one library
    for cfg in configs:
        by_lib.setdefault(as_source(cfg).name, []).append(cfg)
    done: dict = {}
    todo: list = []
    for group in by_lib.values():
        lib = cached_library(group[0], tc)
        if lib is not None:
            done.update({c: lib for c in group})
        else:
            todo.append(group[0])
    if not todo:
        return done
    jobs = jobs or knobs.get("build_jobs") or os.cpu_count() or 1
    failures: list[str] = []
    bar = None
    if progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        bar = Progress(TextColumn("building kernels"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                       TextColumn("{task.description}"), transient=False)
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(jobs, len(todo)))) as pool:
        futures = {pool.submit(_compile, cfg, tc): cfg for cfg in todo}
        task = bar.add_task("", total=len(todo)) if bar else None
        if bar:
            bar.start()
        try:
            for fut in concurrent.futures.as_completed(futures):
                cfg = futures[fut]
                try:
                    lib = fut.result()
                    done.update({c: lib for c in by_lib[as_source(cfg).name]})
                except BuildError as err:
                    failures.append(f"{cfg.name}: {err.actual}")
                if bar:
                    bar.update(task, advance=1, description=cfg.name)
        finally:
            if bar:
                bar.stop()
    if failures:
        raise BuildError(f"{len(failures)} of {len(todo)} kernels failed to build",
                         actual="\n  ".join(failures), fix="see build.log in each kernel's cache directory")
    return done


def build_one(cfg: "KernelConfig | Source") -> Path:
    return build([cfg])[cfg]


def compile_only(cfg: KernelConfig, out_dir: Path, extra: Sequence[str] = ()) -> Path:
    """Compile ``cfg`` to an object file in ``out_dir`` (no cache): the CI compile test."""
    tc = toolchain()
    item = as_source(cfg)
    src = Path(out_dir) / f"{item.name}.cu"
    src.write_text(item.text)
    obj = src.with_suffix(".o")
    flags = [f for f in kernel_flags(cfg) if f != "-shared"]
    cmd = [tc.nvcc, *flags, *extra, "-c", *(f"-I{i}" for i in tc.include_dirs), str(src), "-o", str(obj)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BuildError(f"nvcc failed to compile {cfg.name}", where=str(src), actual=proc.stderr[-1500:])
    return obj
