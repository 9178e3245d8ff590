"""``sparsec inspect SPEC --show groups``: the channel groups of the pruning analysis.

One row per group that holds a producer's output channels (a conv or linear
output; the other groups are batch and spatial dims): its members (channel
spaces ``node:dim``: the values, i.e. op outputs, and the parameters sliced
with them), its size in units (a channel, or a whole conv/norm
group or attention head), its parameters, and whether it can be pruned and,
if not, why. The reason of an unprunable group names the op, the node and its
source line. Rendered as a table, text, JSON or DOT (networkx clusters,
:func:`sparsec.passes.prune.depgraph.to_dot`).
"""

from __future__ import annotations

import dataclasses
import io
import json
from typing import Any

JSON_VERSION = 1


@dataclasses.dataclass(frozen=True)
class GroupRow:
    id: int
    producer: str  # "node:dim" of the first producer output
    size: int  # units
    members: tuple[str, ...]  # "node:dim", every channel space (op outputs and parameters)
    values: tuple[str, ...]  # the members that are op outputs or inputs (not parameters)
    params: tuple[str, ...]  # parameter targets sliced with the group
    prunable: bool
    why_not: str  # "" when prunable

    @property
    def status(self) -> str:
        return "prunable" if self.prunable else f"unprunable: {self.why_not}"


@dataclasses.dataclass(frozen=True)
class GroupsReport:
    module: str
    total_groups: int  # every channel group, producers or not
    rows: tuple[GroupRow, ...]


def build(mod) -> tuple[GroupsReport, Any]:
    """The report and the ChannelDepGraph it was read from."""
    from sparsec.passes.prune.depgraph import ChannelDepGraph

    dg = mod.analysis(ChannelDepGraph)
    rows = []
    for g in dg.groups:
        if not g.roots:
            continue
        param_idx = {i for i, _ in g.params}
        members = tuple(f"{n}:{d}" for n, d in g.members)
        rows.append(GroupRow(g.id, g.label(), g.size, members,
                             tuple(m for i, m in enumerate(members) if i not in param_idx),
                             tuple(t for _, t in g.params), g.prunable, g.why_not))
    rows = tuple(rows)
    return GroupsReport(mod.name, len(dg.groups), rows), dg


def _members_text(row: GroupRow, limit: int = 4) -> str:
    shown = ", ".join(row.values[:limit])
    return f"{len(row.values)}: {shown}" + (", ..." if len(row.values) > limit else "")


def _title(report: GroupsReport) -> str:
    n = sum(r.prunable for r in report.rows)
    return (f"module @{report.module}: {len(report.rows)} channel groups with a producer, {n} prunable "
            f"({report.total_groups} groups in all)")


def make_table(report: GroupsReport):
    from rich.table import Table
    from rich.text import Text

    table = Table(title=_title(report), title_justify="left", header_style="bold")
    for c, just in (("group", "right"), ("producer", "left"), ("units", "right"), ("values", "left"),
                    ("params", "right"), ("prunable", "left")):
        table.add_column(c, justify=just, no_wrap=c in ("group", "producer"))
    for r in report.rows:
        table.add_row(str(r.id), r.producer, str(r.size), _members_text(r), str(len(r.params)),
                      Text(r.status, style="green" if r.prunable else "red"))
    return table


def table_text(report: GroupsReport) -> str:
    from sparsec.cli._rich import Out

    buf = io.StringIO()
    Out(file=buf).print(make_table(report))
    return buf.getvalue()


def to_text(report: GroupsReport) -> str:
    """Plain, deterministic text: one block per group, every member listed."""
    lines = [_title(report)]
    for r in report.rows:
        lines.append(f"group {r.id} {r.producer}: {r.size} units, {r.status}")
        lines.append(f"  values:  {', '.join(r.values)}")
        if r.params:
            lines.append(f"  params:  {', '.join(r.params)}")
    return "\n".join(lines) + "\n"


def to_json(report: GroupsReport) -> str:
    return json.dumps({
        "version": JSON_VERSION,
        "module": report.module,
        "total_groups": report.total_groups,
        "groups": [{"id": r.id, "producer": r.producer, "units": r.size, "members": list(r.members), "values": list(r.values),
                    "params": list(r.params), "prunable": r.prunable, "why_not": r.why_not or None}
                   for r in report.rows],
        "totals": {"groups": len(report.rows), "prunable": sum(r.prunable for r in report.rows)},
    }, indent=2) + "\n"


def to_dot(dg) -> str:
    from sparsec.passes.prune.depgraph import to_dot as dot

    return dot(dg) + "\n"
