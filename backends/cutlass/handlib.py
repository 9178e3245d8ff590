"""Loading sparsec's hand-written CUDA kernels (depthwise conv, squeeze-excite): build, bind, cache.

Each family is a config class with ``name``, ``symbol`` and ``to_source()`` (built through :mod:`.build`:
its cache, parallel nvcc, ``kernels.json``) whose library exports one ``extern "C"`` launcher returning
0 on success. A :class:`KernelLibrary` holds one family's loaded launchers, by config name.
"""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path
from typing import Callable, Sequence


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
