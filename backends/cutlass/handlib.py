"""Loading sparsec's hand-written CUDA kernels (depthwise conv, squeeze-excite, stem, conv+pool): build,
bind, cache, and what their ops check.

Each family is a config class (a :class:`HandWritten`: ``name``, ``symbol`` and ``to_source()``, built
through :mod:`.build`: its cache, parallel nvcc, ``kernels.json``) whose library exports one
``extern "C"`` launcher returning 0 on success, 1 for a shape it refuses, 4 for a failed launch. A
:class:`KernelLibrary` holds one family's loaded launchers, by config name.
"""

from __future__ import annotations

import ctypes
import functools
import threading
from pathlib import Path
from typing import Callable, Sequence

from sparsec.errors import KernelError


class HandWritten:
    """What the families' config classes share. A subclass defines ``name``, ``arch`` and ``_emit()``
    (the .cu source); the library and its launcher are named after ``name``."""

    @property
    def lib_name(self) -> str:
        return self.name

    @property
    def symbol(self) -> str:
        return "sparsec_" + self.name

    def to_source(self):
        """This kernel's translation unit, for :mod:`.build` (its cache, parallel nvcc, ``kernels.json``)."""
        from sparsec.backends.cutlass.build import Source

        return Source(self.name, self._emit(), self.arch)


def check_inputs(what: str, cfg, x, **weights):
    """The torch dtype ``cfg`` computes in; a KernelError unless ``x`` is a CUDA tensor of it and so are
    ``weights`` (name -> tensor)."""
    import torch

    want = {"fp16": torch.float16, "bf16": torch.bfloat16}[cfg.dtype]
    if x.dtype != want or not x.is_cuda or any(w.dtype != want for w in weights.values()):
        actual = ", ".join([f"x {x.dtype} on {x.device}", *(f"{k} {w.dtype}" for k, w in weights.items())])
        raise KernelError(f"{what} kernel {cfg.name} takes {cfg.dtype} CUDA tensors", actual=actual,
                          fix="cast the input, or compile for its dtype")
    return want


def check_rc(rc: int, what: str, cfg, where: str, fix: str = "check the shapes") -> None:
    """A KernelError for a launcher's non-zero return code."""
    if rc != 0:
        raise KernelError(f"{what} kernel {cfg.name} failed ({'shape refused' if rc == 1 else 'launch failed'})",
                          where=where, fix=fix)


@functools.lru_cache(maxsize=None)
def sm_count(device: int) -> int:
    import torch

    return torch.cuda.get_device_properties(device).multi_processor_count


class KernelLibrary:
    """``preload(configs)`` builds what the kernel cache lacks (in parallel) and binds each launcher;
    ``get(cfg)`` returns the bound launcher, loading it first if needed. Thread-safe."""

    def __init__(self, parse: Callable[[str], object], argtypes: Sequence[object]) -> None:
        self._parse = parse
        self._argtypes = list(argtypes)
        self._lock = threading.Lock()
        self._fns: dict[str, object] = {}

    def preload(self, configs) -> None:
        from sparsec.backends.cutlass import build

        configs = [self._parse(c) if isinstance(c, str) else c for c in configs]
        with self._lock:
            todo = list({c.name: c for c in configs if c.name not in self._fns}.values())
        if not todo:
            return
        paths = build.build(todo)
        for c in todo:
            self._bind(c, paths[c])

    def get(self, cfg):
        with self._lock:
            fn = self._fns.get(cfg.name)
        if fn is None:
            self.preload([cfg])
            with self._lock:
                fn = self._fns[cfg.name]
        return fn

    def _bind(self, cfg, path: Path) -> None:
        fn = getattr(ctypes.CDLL(str(path)), cfg.symbol)
        fn.restype = ctypes.c_int
        fn.argtypes = self._argtypes
        with self._lock:
            self._fns.setdefault(cfg.name, fn)
