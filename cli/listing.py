"""``sparsec passes`` and ``sparsec targets``: what the registry holds, as rich tables."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from sparsec.registry import registry


def _load(kind: str, name: str) -> tuple[Any, str | None]:
    """(the entry, None) or (None, why it failed): a broken plugin must not hide the others."""
    try:
        return registry().get(kind, name), None
    except Exception as exc:  # noqa: BLE001 - shown to the user in the table
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _flags(cls: Any) -> list[str]:
    out = []
    if cls.changes_numerics:
        out.append("changes-numerics")
    if not cls.idempotent:
        out.append("not-idempotent")
    return out


def _option_summary(cls: Any) -> str:
    from sparsec.passes.pipeline import _format_value

    defaults = cls.option_defaults()
    parts = []
    for key in cls.option_types():
        shown = key.replace("_", "-")
        parts.append(f"{shown}={_format_value(defaults[key])}" if key in defaults else shown)
    return ", ".join(parts)


def print_passes(out: Console) -> None:
    reg = registry()
    table = Table(title="passes", title_justify="left", header_style="bold")
    table.add_column("name", style="bold green", no_wrap=True)
    table.add_column("summary")
    table.add_column("options", style="cyan")
    table.add_column("flags", style="yellow")
    for name in reg.names("pass"):
        cls, problem = _load("pass", name)
        if cls is None:
            table.add_row(name, Text(f"unavailable: {problem}", style="red"), "", "")
            continue
        table.add_row(name, cls.summary, _option_summary(cls), ", ".join(_flags(cls)))
    out.print(table)

    pipes = Table(title="pipelines", title_justify="left", header_style="bold")
    pipes.add_column("name", style="bold green", no_wrap=True)
    pipes.add_column("passes", style="cyan")
    for name in reg.names("pipeline"):
        text, problem = _load("pipeline", name)
        pipes.add_row(name, str(text) if problem is None else Text(f"unavailable: {problem}", style="red"))
    out.print(pipes)
    out.print(Text("`sparsec passes NAME` describes one pass.", style="dim"))


def print_pass(name: str, out: Console) -> None:
    from sparsec.passes.base import describe_type
    from sparsec.passes.pipeline import _format_value

    reg = registry()
    if name not in reg.names("pass") and name in reg.names("pipeline"):
        out.print(Text(f"pipeline {name}", style="bold green"))
        out.print(f"  {reg.get('pipeline', name)}")
        return
    cls = reg.get("pass", name)  # RegistryError (exit 2) with close matches
    out.print(Text(name, style="bold green") + Text(f"  (from {reg.provider('pass', name)})", style="dim"))
    if cls.summary:
        out.print(cls.summary)
    doc = _own_doc(cls)
    if doc:
        out.print()
        out.print(Text(doc))

    out.print()
    types, defaults = cls.option_types(), cls.option_defaults()
    if types:
        table = Table(title="options", title_justify="left", header_style="bold")
        table.add_column("option", style="cyan", no_wrap=True)
        table.add_column("type")
        table.add_column("default")
        for key, tp in types.items():
            default = _format_value(defaults[key]) if key in defaults else "(required)"
            table.add_row(key.replace("_", "-"), describe_type(tp), default)
        out.print(table)
    else:
        out.print(Text("options: none", style="dim"))

    names = lambda xs: ", ".join(getattr(x, "__name__", str(x)) for x in xs) or "-"  # noqa: E731
    flags = Table.grid(padding=(0, 2))
    flags.add_column(style="bold")
    flags.add_column()
    flags.add_row("changes numerics", "yes" if cls.changes_numerics else "no")
    flags.add_row("idempotent", "yes" if cls.idempotent else "no")
    flags.add_row("requires", names(cls.requires))
    flags.add_row("preserves", names(cls.preserves))
    out.print(flags)


def _own_doc(cls: Any) -> str:
    """The class docstring, unless it is the signature dataclasses made up."""
    doc = cls.__dict__.get("__doc__")
    if not doc:
        return ""
    doc = inspect.cleandoc(doc)
    if dataclasses.is_dataclass(cls) and doc.startswith(f"{cls.__name__}("):
        return ""
    return doc


def _availability(backend: str, registered: set[str]) -> Text:
    if backend not in registered:
        return Text(f"no: backend '{backend}' is not registered", style="red")
    factory, problem = _load("backend", backend)
    if problem:
        return Text(f"no: backend '{backend}' failed to load ({problem})", style="red")
    lacks = (factory() if isinstance(factory, type) else factory).missing()
    return Text(f"no: {lacks}", style="red") if lacks else Text("yes", style="green")


def print_targets(out: Console) -> None:
    reg = registry()
    backends = set(reg.names("backend"))
    table = Table(title="targets", title_justify="left", header_style="bold")
    table.add_column("name", style="bold green", no_wrap=True)
    table.add_column("backend")
    table.add_column("arch")
    table.add_column("dtypes")
    table.add_column("sparse (2:4)")
    table.add_column("available")
    table.add_column("description")
    for name in reg.names("target"):
        target, problem = _load("target", name)
        if target is None:
            table.add_row(name, "", "", "", "", Text("no", style="red"), Text(f"unavailable: {problem}", style="red"))
            continue
        s = target.summary()
        sparse = ", ".join(
            f"{dt} (k%{lim['k_multiple']}, n%{lim['n_multiple']})" for dt, lim in sorted(s["sparse"].items())
        ) or "-"
        avail = _availability(target.backend, backends)
        table.add_row(name, s["backend"], s["arch"] or "-", ", ".join(s["dtypes"]), sparse, avail, s["description"])
    out.print(table)

