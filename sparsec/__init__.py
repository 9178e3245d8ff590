"""sparsec: a sparsity compiler for PyTorch models on NVIDIA tensor cores.

The public API:

- ``sparsec.trace(model, example_inputs)`` -> ``ir.Module``
- ``sparsec.compile(model_or_module, example_inputs, target="cpu", pipeline=None, output=None)``
- ``sparsec.load(path)`` -> a callable ``nn.Module``
- ``Pass``, ``PassResult``, ``PassManager``, ``PassContext``, ``function_pass``, ``register_pass``
- ``finetune(model_or_module, train_data, val_data, teacher=..., config=FinetuneConfig(...))``,
  ``evaluate(model, data)``: accuracy recovery (:mod:`sparsec.passes.finetune`)

Heavy modules (torch, the backends) load on first use, so ``import sparsec``
and ``sparsec --help`` stay fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sparsec.errors import SparsecError
from sparsec.registry import register_pass, registry

__version__ = "0.1.0"

_LAZY = {
    "trace": "sparsec.ir.trace:trace",
    "Module": "sparsec.ir.module:Module",
    "Pass": "sparsec.passes.base:Pass",
    "PassResult": "sparsec.passes.base:PassResult",
    "function_pass": "sparsec.passes.base:function_pass",
    "PassManager": "sparsec.passes.manager:PassManager",
    "PassContext": "sparsec.passes.manager:PassContext",
    "compile": "sparsec.api:compile",
    "load": "sparsec.api:load",
    "load_model": "sparsec.api:load_model",
    "finetune": "sparsec.passes.finetune.loop:finetune",
    "evaluate": "sparsec.passes.finetune.loop:evaluate",
    "FinetuneConfig": "sparsec.passes.finetune.config:FinetuneConfig",
}

__all__ = ["SparsecError", "__version__", "register_pass", "registry", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, _, attr = _LAZY[name].partition(":")
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sparsec' has no attribute {name!r}")


if TYPE_CHECKING:  # pragma: no cover
    from sparsec.api import compile, load, load_model
    from sparsec.ir.module import Module
    from sparsec.ir.trace import trace
    from sparsec.passes.base import Pass, PassResult, function_pass
    from sparsec.passes.manager import PassContext, PassManager
