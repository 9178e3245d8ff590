"""The stub ``libcuda.so.1`` for GPU-less CUDA builds (see ``cuda_stub.c`` for why).

Built once from the C file shipped in this package with the system C compiler
into ``<cache dir>/tvm/cuda-stub-<hash of the source>/``, under a file lock,
written to a temporary name and renamed into place.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from importlib import resources
from pathlib import Path

from sparsec.errors import BuildError

SONAME = "libcuda.so.1"


def source() -> str:
    return resources.files("sparsec.backends.tvm").joinpath("cuda_stub.c").read_text()


def stub_dir(cache_dir: Path | None = None) -> Path:
    """The directory holding the stub ``libcuda.so.1`` (built on first use); put it on LD_LIBRARY_PATH."""
    from filelock import FileLock

    from sparsec import knobs

    text = source()
    root = Path(cache_dir or knobs.get("cache_dir")) / "tvm"
    out = root / f"cuda-stub-{hashlib.sha256(text.encode()).hexdigest()[:12]}"
    lib = out / SONAME
    if lib.is_file():
        return out
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        raise BuildError(
            "building for a CUDA target on a machine without a GPU driver needs a C compiler for the stub libcuda",
            where="sparsec.backends.tvm.stub", expected="cc, gcc or clang on PATH", actual="none found",
            fix="install a C compiler (apt-get install gcc), or build on a machine with the CUDA driver",
        )
    out.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out / ".lock")):
        if lib.is_file():
            return out
        src = out / "cuda_stub.c"
        src.write_text(text)
        tmp = out / f".{SONAME}.tmp"
        cmd = [cc, "-shared", "-fPIC", "-O2", f"-Wl,-soname,{SONAME}", "-o", str(tmp), str(src)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise BuildError(
                "compiling the stub libcuda failed", where=" ".join(cmd),
                actual=(proc.stderr or proc.stdout).strip()[-2000:],
                fix="check that the C compiler works (cc --version)",
            )
        tmp.replace(lib)
    return out
