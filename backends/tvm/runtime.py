"""Running a TVM artifact with the runtime alone: ``apache-tvm-ffi`` and two shared libraries.

Nothing here imports ``tvm``. The GPU host needs:

* ``apache-tvm-ffi`` (``import tvm_ffi``, which loads ``libtvm_ffi.so``);
* ``libtvm_runtime.so`` (loaded with ``RTLD_GLOBAL``: the exported library's
  VM executable loader lives there) and, for CUDA, ``libtvm_runtime_cuda.so``.

The libraries are looked up, in order, in ``SPARSEC_TVM_RUNTIME_DIR``, in the
artifact's ``runtime/`` folder (when it was bundled), and in the ``tvm``
wheel's ``lib/`` folder (found without importing ``tvm``). A library already
mapped into the process (because ``tvm`` was imported, say) is reused: two
copies of the runtime in one process would register every global twice.

Then ``tvm_ffi.load_module(model.so)["vm_load_executable"]()`` and
``vm_initialization(device, 0, POOLED, CPU, 0, POOLED)`` start the VM; torch
tensors go in and come out through DLPack, and on CUDA the VM runs on torch's
current stream (``tvm_ffi.use_torch_stream``).
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import logging
import threading
from pathlib import Path
from typing import Sequence

import torch

from sparsec.errors import ArtifactError, KernelError, UsageError

log = logging.getLogger("sparsec.backends.tvm")

RUNTIME = "libtvm_runtime.so"
RUNTIME_CUDA = "libtvm_runtime_cuda.so"
BUNDLE_DIR = "runtime"
_KDL = {"cpu": 1, "cuda": 2}
_POOLED = 2
_lock = threading.Lock()
_loaded: dict[str, str] = {}  # library name -> the path it was loaded (or found mapped) from


def wheel_lib_dir() -> Path | None:
    """The ``tvm`` wheel's ``lib/`` folder, found without importing ``tvm``; None if not installed."""
    try:
        spec = importlib.util.find_spec("tvm")
    except (ImportError, ValueError):
        return None
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        lib = Path(loc) / "lib"
        if (lib / RUNTIME).is_file():
            return lib
    return None


def candidate_dirs(artifact: Path | None = None) -> list[Path]:
    from sparsec import knobs

    dirs = []
    env = knobs.get("tvm_runtime_dir")
    if env:
        dirs.append(Path(env))
    if artifact is not None:
        dirs.append(artifact / BUNDLE_DIR)
    wheel = wheel_lib_dir()
    if wheel is not None:
        dirs.append(wheel)
    return dirs


def _mapped(name: str) -> str | None:
    """The path of an already-mapped shared library called ``name`` (Linux), else None."""
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.rstrip("\n").split(maxsplit=5)[-1]
                if path.endswith("/" + name):
                    return path
    except OSError:
        pass
    return None


def load_runtime(device: str, artifact: Path | None = None) -> dict[str, str]:
    """Load the TVM runtime libraries for ``device`` ("cpu" or "cuda"); returns name -> path."""
    names = [RUNTIME] + ([RUNTIME_CUDA] if device == "cuda" else [])
    with _lock:
        try:
            import tvm_ffi  # noqa: F401 - loads libtvm_ffi.so, which the runtime links against
        except ImportError as exc:
            raise ArtifactError(
                "running a TVM artifact needs the apache-tvm-ffi package", actual=f"ImportError: {exc}",
                fix="pip install apache-tvm-ffi (or pip install 'sparsec[tvm]' for the full compiler)",
            ) from exc
        if device == "cuda":
            torch.cuda.init()  # maps libcudart, which libtvm_runtime_cuda.so links against
        for name in names:
            if name in _loaded:
                continue
            mapped = _mapped(name)
            if mapped:
                _loaded[name] = mapped
                continue
            _loaded[name] = _load_one(name, candidate_dirs(artifact))
    return {n: _loaded[n] for n in names}


def _load_one(name: str, dirs: Sequence[Path]) -> str:
    tried = []
    for d in dirs:
        path = d / name
        if not path.is_file():
            tried.append(f"{path} (missing)")
            continue
        try:
            ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
        except OSError as exc:
            if "libcudart" not in str(exc) or not _preload_cudart():
                tried.append(f"{path} ({exc})")
                continue
            ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)  # libcudart is mapped now
        log.info("loaded %s", path)
        return str(path)
    raise ArtifactError(
        f"the TVM runtime library {name} could not be loaded", where="; ".join(tried) or "no folder to search",
        expected=f"{name} in SPARSEC_TVM_RUNTIME_DIR, the artifact's {BUNDLE_DIR}/ folder or the tvm wheel",
        fix=f"pip install 'sparsec[tvm]', or copy {name} from the apache-tvm wheel (tvm/lib/) into a folder "
            "and set SPARSEC_TVM_RUNTIME_DIR to it",
    )


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _preload_cudart() -> bool:
    """Map the CUDA runtime that libtvm_runtime_cuda.so links against (torch's pip wheels ship it)."""
    import glob
    import os

    site = os.path.dirname(os.path.dirname(torch.__file__))
    patterns = [os.path.join(site, "nvidia", "*", "lib", "libcudart.so.*"), "/usr/local/cuda/lib64/libcudart.so.*"]
    for pattern in patterns:
        for path in sorted(glob.glob(pattern)):
            try:
                ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
                return True
            except OSError:
                continue
    return False


class TvmModule(torch.nn.Module):
    """A TVM artifact as a callable module: ``forward(*inputs)`` like the eager artifact.

    Inputs are checked against the artifact's input spec; CPU inputs of a
    CUDA artifact are moved to the GPU. Outputs are torch tensors (zero-copy
    through DLPack) on the artifact's device.

    Example:
        >>> m = TvmModule(Path("r18.sparsec/model.so"), params, device="cuda", inputs=spec, single_output=True)
        >>> y = m(torch.randn(1, 3, 64, 64, device="cuda", dtype=torch.float16))
    """

    def __init__(self, library: Path, params: Sequence[torch.Tensor], *, device: str, inputs: Sequence,
                 single_output: bool, providers: Sequence[str] = (), artifact: Path | None = None) -> None:
        super().__init__()
        import tvm_ffi

        self.device_kind = device
        self._device = torch.device("cuda", torch.cuda.current_device()) if device == "cuda" else torch.device("cpu")
        self._inputs = tuple(inputs)  # sparsec.cli.running.InputSpec
        self._single = single_output
        load_runtime(device, artifact)
        for provider in providers:  # modules that register the packed kernels the graph calls
            importlib.import_module(provider)
        self._params = [p.to(self._device) for p in params]
        self._ffi_params = [tvm_ffi.from_dlpack(p) for p in self._params]
        try:
            lib = tvm_ffi.load_module(str(library))
            self._exe = lib["vm_load_executable"]()
            kdl = _KDL[device]
            self._exe["vm_initialization"](kdl, self._device.index or 0, _POOLED, _KDL["cpu"], 0, _POOLED)
            self._main = self._exe["main"]
        except Exception as exc:
            raise ArtifactError(
                f"the TVM library '{library}' could not be started", where=str(library),
                actual=f"{type(exc).__name__}: {first_line(exc)}",
                fix="the runtime libraries must come from the apache-tvm version that built it (see the manifest)",
            ) from exc

    def forward(self, *inputs: torch.Tensor):
        import tvm_ffi

        xs = [self._check(i, x) for i, x in enumerate(inputs)]
        args = [tvm_ffi.from_dlpack(x) for x in xs] + self._ffi_params
        try:
            if self.device_kind == "cuda":
                with tvm_ffi.use_torch_stream():
                    out = self._main(*args)
            else:
                out = self._main(*args)
        except Exception as exc:
            raise KernelError(
                "the TVM module failed at run time", where="model.so main()",
                actual=f"{type(exc).__name__}: {first_line(exc)}",
                fix="rerun with --debug for the full TVM error",
            ) from exc
        outs = [torch.from_dlpack(o) for o in (out if isinstance(out, tvm_ffi.Array) else [out])]
        return outs[0] if self._single and len(outs) == 1 else tuple(outs)

    def _check(self, i: int, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise UsageError(f"input {i} is a {type(x).__name__}, not a tensor")
        if len(self._inputs) and len(self._inputs) > i:
            spec = self._inputs[i]
            if tuple(x.shape) != tuple(spec.shape) or x.dtype != spec.dtype:
                raise UsageError(
                    f"input {i} does not match the TVM artifact, which is built for static shapes",
                    expected=f"{spec.dtype} {list(spec.shape)}", actual=f"{x.dtype} {list(x.shape)}",
                    fix="give inputs of the compiled shape and dtype, or compile again for this shape",
                )
        return x.to(self._device).contiguous()
