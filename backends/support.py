"""Who answers ``support(node)`` for a target: its backend, or a declared support table.

A backend that is registered answers for itself. A backend that is declared
but not built yet (``cutlass`` while its kernels are being written) may have
a *support table*: an object with ``name`` and ``support(node)`` that says
what the backend is designed to take. ``sparsec inspect --target`` and the
``partition`` pass use it, and say that the answer is a declaration
(``declared=True``); compiling for the target still fails until the backend
itself is registered. A registered backend always wins over its table.

:class:`BackendOperatorSupport` adapts either to fx's ``OperatorSupportBase``
for ``CapabilityBasedPartitioner``.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

from torch import fx
from torch.fx.passes.operator_support import OperatorSupportBase

# backend name -> its support table, imported on first use
DECLARED_TABLES = {
    "cutlass": "sparsec.backends.cutlass_support:CutlassSupport",
}


@dataclasses.dataclass(frozen=True)
class Checker:
    """``support(node)`` of a backend (``declared=False``) or of its declared table."""

    name: str
    impl: Any
    declared: bool

    def support(self, node: fx.Node):
        return self.impl.support(node)


def _table(name: str):
    module, _, attr = DECLARED_TABLES[name].partition(":")
    obj = getattr(importlib.import_module(module), attr)
    return obj() if isinstance(obj, type) else obj


def checker_for_backend(name: str) -> Checker:
    """The registered backend ``name``, else its declared table; RegistryError if neither exists."""
    from sparsec.errors import RegistryError
    from sparsec.registry import registry

    try:
        backend = registry().get("backend", name)
    except RegistryError:
        if name in DECLARED_TABLES:
            return Checker(name, _table(name), True)
        raise
    return Checker(name, backend() if isinstance(backend, type) else backend, False)


def checker_for_target(target) -> Checker:
    """The support checker of a target (a name or a Target).

    Its backend if that is available (the same checks as compile), else the
    declared table of its backend; else the TargetError compile would raise.
    """
    from sparsec.api import resolve_backend, resolve_target
    from sparsec.errors import TargetError
    from sparsec.registry import registry

    tgt = resolve_target(target)
    try:
        backend = resolve_backend(tgt)
    except TargetError:
        if tgt.backend in DECLARED_TABLES and tgt.backend not in registry().names("backend"):
            return Checker(tgt.backend, _table(tgt.backend), True)
        raise
    return Checker(backend.name, backend, False)


class BackendOperatorSupport(OperatorSupportBase):
    """fx's operator support from a backend's ``support(node)``: compute nodes only.

    Placeholders, parameters and the output are never put in a partition.
    The verdicts are kept in ``verdicts`` (node -> Supported/Unsupported).
    """

    def __init__(self, checker) -> None:
        self.checker = checker
        self.verdicts: dict[fx.Node, Any] = {}

    def is_node_supported(self, submodules, node: fx.Node) -> bool:
        if node.op != "call_function":
            return False
        if node not in self.verdicts:
            self.verdicts[node] = self.checker.support(node)
        return bool(self.verdicts[node])
