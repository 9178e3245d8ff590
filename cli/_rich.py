"""click commands whose ``--help`` is rendered with rich, and the CLI's consoles.

rich-click is not a dependency, so this is the small part of it we need:
:class:`RichCommand` and :class:`RichGroup` override ``format_help`` to lay
out usage, the docstring, options and subcommands with rich, then hand the
text back to click, which prints it (and strips the colour when stdout is not
a terminal). rich itself is imported only when help or a report is drawn.
"""

from __future__ import annotations

import inspect
import io
import re
import shutil
import sys
from typing import Any

import click

_HELP_WIDTH = 100  # help reads badly wider than this, even on a wide terminal
_PIPE_WIDTH = 200  # tables written to a pipe or a file: wide, so rows never wrap


class Out:
    """Prints rich renderables to stdout or stderr, resolved at print time.

    Each ``print`` renders into a buffer first, so the padding rich adds to
    every table cell can be stripped from line ends: piped output and files
    carry no trailing blanks. Colour only when the stream is a terminal
    (rich also honours NO_COLOR).
    """

    def __init__(self, *, stderr: bool = False, file: Any = None) -> None:
        self._stderr, self._file = stderr, file

    @property
    def stream(self) -> Any:
        return self._file if self._file is not None else (sys.stderr if self._stderr else sys.stdout)

    @property
    def is_terminal(self) -> bool:
        return bool(getattr(self.stream, "isatty", lambda: False)())

    def print(self, *renderables: Any) -> None:
        from rich.console import Console

        tty = self.is_terminal
        buf = io.StringIO()
        # markup=False: model names, shapes like [s0,3] and summaries are data, never rich markup.
        con = Console(
            file=buf, force_terminal=tty, color_system="auto" if tty else None,
            width=shutil.get_terminal_size((_HELP_WIDTH, 24)).columns if tty else _PIPE_WIDTH,
            highlight=False, markup=False,
        )
        con.print(*renderables)
        self.stream.write(strip_trailing(buf.getvalue()))
        self.stream.flush()


def console(*, stderr: bool = False, file: Any = None) -> Out:
    """An :class:`Out` on the current stdout/stderr (CliRunner swaps them per run)."""
    return Out(stderr=stderr, file=file)


_TRAILING = re.compile(r" +((?:\x1b\[[0-9;]*m)*)$")


def strip_trailing(text: str) -> str:
    """Drop the blanks rich pads lines with (they may sit before a colour reset)."""
    return "".join(_TRAILING.sub(r"\1", line) + "\n" for line in text.splitlines())


def render_help(cmd: click.Command, ctx: click.Context) -> str:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    width = min(shutil.get_terminal_size((_HELP_WIDTH, 24)).columns, _HELP_WIDTH)
    buf = io.StringIO()
    # Always render colour; click.echo strips it when the output is not a terminal.
    out = Console(file=buf, force_terminal=True, width=width, highlight=False, markup=False, color_system="standard")

    usage = Text("Usage: ", style="bold yellow")
    usage.append(f"{ctx.command_path} {' '.join(cmd.collect_usage_pieces(ctx))}", style="bold")
    out.print(usage)
    if cmd.help:
        out.print()
        out.print(Text(_doc(cmd.help)))

    records = [rec for p in cmd.get_params(ctx) if isinstance(p, click.Option) and (rec := p.get_help_record(ctx))]
    if records:
        out.print()
        out.print(Text("Options", style="bold yellow"))
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="cyan", no_wrap=True)
        grid.add_column()
        for names, text in records:
            grid.add_row(" " + names, Text(text))
        out.print(grid)

    if isinstance(cmd, click.Group):
        names = cmd.list_commands(ctx)
        if names:
            out.print()
            out.print(Text("Commands", style="bold yellow"))
            grid = Table.grid(padding=(0, 2))
            grid.add_column(style="bold green", no_wrap=True)
            grid.add_column()
            for name in names:
                sub = cmd.get_command(ctx, name)
                if sub is not None and not sub.hidden:
                    grid.add_row(" " + name, sub.get_short_help_str(limit=width - 20))
            out.print(grid)

    if cmd.epilog:
        out.print()
        out.print(Text(_doc(cmd.epilog), style="dim"))
    return strip_trailing(buf.getvalue())


def _doc(text: str) -> str:
    """A docstring as shown: dedented, cut at click's ``\\f``, without ``\\b`` markers."""
    text = inspect.cleandoc(text.split("\f")[0])
    return "\n".join(line for line in text.splitlines() if line.strip() != "\b")


class RichHelpMixin:
    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write(render_help(self, ctx))  # type: ignore[arg-type]


class RichCommand(RichHelpMixin, click.Command):
    """A click command with rich help."""


class RichGroup(RichHelpMixin, click.Group):
    """A click group with rich help; its subcommands are RichCommands."""

    command_class = RichCommand
