"""One registry for passes, pipelines, targets and backends.

Entries are lazy: a factory is either an object or a ``"module:attr"`` string,
imported only on first lookup, so ``sparsec --help`` imports neither CUTLASS
nor TVM. Plugins come in through the ``sparsec.plugins`` entry-point group:
each entry point names a callable ``register(registry)``.

A duplicate name is an error naming both providers; a failed lookup lists
close matches and everything that exists. ``reset_registry()`` gives tests a
fresh registry.
"""

from __future__ import annotations

import difflib
import importlib
import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from sparsec.errors import RegistryError

log = logging.getLogger("sparsec.registry")

KINDS = ("pass", "pipeline", "target", "backend")
ENTRY_POINT_GROUP = "sparsec.plugins"


@dataclass
class _Entry:
    factory: Any  # an object, or "module:attr" to import lazily
    provider: str
    loaded: Any = None
    is_loaded: bool = False


def _import(spec: str) -> Any:
    module, _, attr = spec.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


class Registry:
    def __init__(self, *, load_plugins: bool = True) -> None:
        self._tables: dict[str, dict[str, _Entry]] = {k: {} for k in KINDS}
        self._plugins_pending = load_plugins
        from sparsec import _builtins

        _builtins.register(self)

    # -- adding ---------------------------------------------------------------
    def add(self, kind: str, name: str, factory: Any, *, provider: str = "sparsec") -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown registry kind {kind!r}; kinds: {KINDS}")
        table = self._tables[kind]
        if name in table:
            raise RegistryError(
                f"duplicate {kind} name '{name}'",
                where=f"registered by '{table[name].provider}' and again by '{provider}'",
                fix="rename one of them, or uninstall one of the two providers",
            )
        table[name] = _Entry(factory, provider)

    def register_pass(self, cls: Any = None, *, provider: str = "sparsec") -> Any:
        """Register a Pass class under its ``name``; usable as a decorator."""

        def deco(c: Any) -> Any:
            self.add("pass", c.name, c, provider=provider)
            return c

        return deco(cls) if cls is not None else deco

    # -- looking up -----------------------------------------------------------
    def get(self, kind: str, name: str) -> Any:
        self._ensure_plugins()
        table = self._tables[kind]
        entry = table.get(name)
        if entry is None:
            close = difflib.get_close_matches(name, list(table), n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
            raise RegistryError(
                f"unknown {kind} '{name}'",
                fix=f"{hint}known {'passes' if kind == 'pass' else kind + 's'}: {', '.join(sorted(table)) or '(none)'}",
            )
        if not entry.is_loaded:
            # a pipeline's factory is its text, never an import path
            lazy = isinstance(entry.factory, str) and kind != "pipeline"
            entry.loaded = _import(entry.factory) if lazy else entry.factory
            entry.is_loaded = True
        return entry.loaded

    def names(self, kind: str) -> list[str]:
        self._ensure_plugins()
        return sorted(self._tables[kind])

    def provider(self, kind: str, name: str) -> str:
        self.get(kind, name)
        return self._tables[kind][name].provider

    def items(self, kind: str) -> Iterable[tuple[str, Any]]:
        for name in self.names(kind):
            yield name, self.get(kind, name)

    # -- plugins --------------------------------------------------------------
    def _ensure_plugins(self) -> None:
        if not self._plugins_pending:
            return
        self._plugins_pending = False
        from importlib.metadata import entry_points

        for ep in entry_points(group=ENTRY_POINT_GROUP):
            provider = f"{ep.dist.name} ({ep.value})" if ep.dist else ep.value
            try:
                hook: Callable[[Registry], None] = ep.load()
            except Exception as exc:  # a broken plugin must not break sparsec
                log.warning("plugin %s failed to load: %s", provider, exc)
                continue
            self._with_provider(provider, hook)

    def _with_provider(self, provider: str, hook: Callable[["Registry"], None]) -> None:
        view = _ProviderView(self, provider)
        hook(view)  # type: ignore[arg-type]


class _ProviderView:
    """What a plugin's ``register(registry)`` receives: adds carry its name."""

    def __init__(self, reg: Registry, provider: str) -> None:
        self._reg = reg
        self._provider = provider

    def add(self, kind: str, name: str, factory: Any) -> None:
        self._reg.add(kind, name, factory, provider=self._provider)

    def register_pass(self, cls: Any = None) -> Any:
        return self._reg.register_pass(cls, provider=self._provider)


_REGISTRY: Registry | None = None


def registry() -> Registry:
    """The process-wide registry, created (with plugins) on first use."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = Registry()
    return _REGISTRY


def reset_registry(*, load_plugins: bool = True) -> Registry:
    """A fresh process-wide registry (for tests)."""
    global _REGISTRY
    _REGISTRY = Registry(load_plugins=load_plugins)
    return _REGISTRY


def register_pass(cls: Any = None) -> Any:
    """Decorator: register a user Pass class in the process-wide registry."""
    return registry().register_pass(cls, provider=getattr(cls, "__module__", "user") if cls else "user")
