"""Every environment variable sparsec reads, declared once and typed.

Nothing else in sparsec calls ``os.getenv``. Each knob has a CLI flag too
(``--cache-dir``, ``--debug``, ``--log-level``); a flag wins over the
environment. ``knobs.scope(debug=True)`` overrides knobs inside a ``with``
block, for tests.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path
from typing import Any, Callable, Iterator


@dataclasses.dataclass(frozen=True)
class Knob:
    env: str
    parse: Callable[[str], Any]
    default: Callable[[], Any]
    doc: str


def _bool(text: str) -> bool:
    return text.strip().lower() in {"1", "true", "yes", "on"}


def _default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sparsec"


KNOBS: dict[str, Knob] = {
    "cache_dir": Knob("SPARSEC_CACHE_DIR", Path, _default_cache, "where built kernels and tuning data are cached"),
    "debug": Knob("SPARSEC_DEBUG", _bool, lambda: False, "show full tracebacks on errors"),
    "log_level": Knob("SPARSEC_LOG_LEVEL", str.upper, lambda: "WARNING", "logging level of the sparsec logger"),
    "cutlass_dir": Knob("SPARSEC_CUTLASS_DIR", Path, lambda: None, "CUTLASS source root (has include/ and tools/util/include/); default: the nvidia-cutlass wheel"),
    "nvcc": Knob("SPARSEC_NVCC", str, lambda: None, "the nvcc to build kernels with; default: nvcc on PATH, then /usr/local/cuda/bin/nvcc"),
    "build_jobs": Knob("SPARSEC_BUILD_JOBS", int, lambda: None, "parallel nvcc jobs; default: the CPU count"),
    "tvm_runtime_dir": Knob("SPARSEC_TVM_RUNTIME_DIR", Path, lambda: None, "folder with libtvm_runtime.so (and libtvm_runtime_cuda.so) for running TVM artifacts without the tvm wheel"),
    "cutlass_build": Knob("SPARSEC_CUTLASS_BUILD", str.lower, lambda: "load", "when the cutlass backend builds its kernels: 'load' (default: on the GPU host at first load, from the kernel cache) or 'compile' (at compile time; needs nvcc and the CUTLASS headers)"),
    "cutlass_configs": Knob("SPARSEC_CUTLASS_CONFIGS", str.lower, lambda: "tuned", "kernel configs of lowered layers: 'tuned' (per layer, from the tuning DB) or 'compact' (two mainloops per dtype and sparsity: fewer kernels to build)"),
    "cutlass_kxk": Knob("SPARSEC_CUTLASS_KXK", str.lower, lambda: "none", "which kxk convs the cutlass backend lowers through an NHWC im2col + GEMM: 'none' (default: every kxk conv stays cuDNN, 2:4-masked or not; measured faster on an H100), 'sparse' (only 2:4 ones), or 'all'"),
    "cutlass_depthwise": Knob("SPARSEC_CUTLASS_DEPTHWISE", str.lower, lambda: "auto", "depthwise convs of the cutlass backend: 'auto' (default: sparsec's fused NHWC kernel, the variant the measured table backends/cutlass/tuned/dw_<arch>.json names per filter size and stride; without one, direct for 3x3 and tiled for 5x5 and up), 'tiled' (input tile in shared memory), 'direct' (every tap read from global memory), 'rows' (2 channels x a column strip per thread, sliding down the rows, weights in registers) or 'none' (they stay cuDNN, epilogue in PyTorch)"),
    "cutlass_pdl": Knob("SPARSEC_CUTLASS_PDL", _bool, lambda: True, "sm_90a GEMMs of the cutlass backend launched with programmatic dependent launch, so that a GEMM's prologue overlaps the end of the kernel before it (default on: kernels named ..._pdl, chosen at compile time; measured on an H100, ResNet-50 pruned + 2:4 at bs1 went from 0.291 to 0.256 ms; 0: plain launches; the tvm GPU targets always take the plain ones)"),
    "cudnn_fused": Knob("SPARSEC_CUDNN_FUSED", _bool, lambda: True, "fused convs left to PyTorch on CUDA: one whose epilogue is bias + ReLU (after a residual add or not) runs as one cuDNN call, cudnn_convolution_relu / cudnn_convolution_add_relu (0: the reference's conv, bias add, add and ReLU kernels)"),
    "tvm_gemm_direct": Knob("SPARSEC_TVM_GEMM_DIRECT", _bool, lambda: True, "tvm artifacts on sm_90a: CUTLASS GEMMs write straight into the VM's output buffer (0: run the torch op and copy its result in)"),
    "verify_each": Knob("SPARSEC_VERIFY_EACH", _bool, lambda: True, "run Module.verify() after every pass"),
}

_overrides: dict[str, Any] = {}


def get(name: str) -> Any:
    """The knob's value: a scope override, else the environment, else the default."""
    knob = KNOBS[name]
    if name in _overrides:
        return _overrides[name]
    raw = os.environ.get(knob.env)
    return knob.parse(raw) if raw not in (None, "") else knob.default()


def set_override(name: str, value: Any) -> None:
    """Set a knob for the rest of the process (the CLI's flags use this)."""
    if name not in KNOBS:
        raise KeyError(f"unknown knob {name!r}; known: {sorted(KNOBS)}")
    _overrides[name] = value


@contextlib.contextmanager
def scope(**values: Any) -> Iterator[None]:
    """Override knobs inside a ``with`` block; restores the previous values."""
    saved = dict(_overrides)
    try:
        for name, value in values.items():
            set_override(name, value)
        yield
    finally:
        _overrides.clear()
        _overrides.update(saved)
