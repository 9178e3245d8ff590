"""``sparsec inspect``: one report of a module, drawn as a table, JSON or DOT.

:func:`build` collects a :class:`Report` (one :class:`NodeRow` per value node;
``get_attr`` parameters are folded into the node that reads them, export's
input guard is left out), and the renderers only format it, so the four
formats always agree.
"""

from __future__ import annotations

import dataclasses
import difflib
import io
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from sparsec.errors import SparsecError, UsageError

COLUMNS = ("name", "op", "shape", "dtype", "params", "flops", "meta", "support", "sparsity")
# --show values that pick another view instead of table columns: view -> its module (lazy)
VIEWS = {"groups": "sparsec.cli.groups_view"}
DEFAULT_COLUMNS = ("name", "op", "shape", "dtype", "params", "flops", "meta")
RENDERED = {".svg", ".png", ".pdf"}  # -o suffixes graphviz renders; anything else gets the DOT text
JSON_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Output:
    shape: tuple | None  # ints, or strings for symbolic dims
    dtype: str | None


@dataclasses.dataclass(frozen=True)
class NodeRow:
    name: str
    kind: str  # "input" or "op"
    op: str
    outputs: tuple[Output, ...]
    inputs: tuple[str, ...]  # names of the value nodes it reads (parameters excluded)
    params: int
    macs: int
    meta: tuple[tuple[str, str], ...]  # sparsec.* metadata of the node, sorted by key
    param_meta: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]  # (param, its metadata)
    supported: bool | None = None  # None: no --target, or not an op
    reason: str = ""
    sparsity: Any = None  # the sparsify-2-4 Decision of a conv/linear, when asked for

    @property
    def flops(self) -> int:
        return 2 * self.macs


@dataclasses.dataclass(frozen=True)
class Report:
    module: str
    target: str | None
    backend: str | None
    rows: tuple[NodeRow, ...]
    outputs: tuple[str, ...]  # names of the returned nodes
    total_params: int
    total_macs: int
    declared: bool = False  # the support column comes from a declared table, not a built backend

    @property
    def total_flops(self) -> int:
        return 2 * self.total_macs


# -- options ----------------------------------------------------------------------


def parse_show(text: str | None, *, with_target: bool, sparse_target: bool = False,
               sparsify: bool = False) -> tuple[str, ...]:
    """The table columns. A target adds ``support``; a target with 2:4 kernels,
    or ``--sparsify OPTIONS``, adds ``sparsity`` (the decision of sparsify-2-4)."""
    if text is None:
        return (DEFAULT_COLUMNS + (("support",) if with_target else ())
                + (("sparsity",) if sparse_target or sparsify else ()))
    cols = tuple(c.strip() for c in text.split(",") if c.strip())
    if not cols:
        raise UsageError("--show names no columns", fix=f"choose from: {','.join(COLUMNS)}")
    for c in cols:
        if c not in COLUMNS:
            close = difflib.get_close_matches(c, COLUMNS, n=1)
            raise UsageError(
                f"unknown --show column '{c}'",
                fix=(f"did you mean '{close[0]}'? " if close else "") + f"columns: {','.join(COLUMNS)}",
            )
    if "support" in cols and not with_target:
        raise UsageError("the support column needs a target", fix="add --target NAME (see `sparsec targets`)")
    if "sparsity" in cols and not (with_target or sparsify):
        raise UsageError("the sparsity column needs a target or --sparsify OPTIONS",
                         fix="add --target a100-sparse/h100-sparse, or e.g. --sparsify cost-model=shape,min-k=64")
    return cols


def sparsity_decisions(mod, target: str | None, options: str | None) -> dict[str, Any]:
    """node name -> the Decision sparsify-2-4 (with ``options``, e.g. ``cost-model=shape``) would make."""
    from sparsec.api import resolve_target
    from sparsec.passes.pipeline import parse_pipeline

    (p,) = parse_pipeline("sparsify-2-4" + (f"{{{options}}}" if options else ""))
    return {d.node: d for d in p.decide(mod, resolve_target(target) if target else None)}


def backend_for(target_name: str):
    """The support checker of a target: its backend, or the declared support table of a
    backend not built yet (``declared`` is then True; see backends/support.py).
    RegistryError for an unknown name, TargetError if there is neither."""
    from sparsec.backends.support import checker_for_target

    return checker_for_target(target_name)


# -- the report ---------------------------------------------------------------------


def build(mod, *, backend=None, target: str | None = None, sparsity: dict | None = None) -> Report:
    from sparsec.ir import meta as M
    from sparsec.ir import ops
    from sparsec.ir.analysis import Cost
    from sparsec.ir.module import is_valueless

    cost = mod.analysis(Cost)
    rows: list[NodeRow] = []
    returned: tuple[str, ...] = ()
    for n in mod.graph.nodes:
        if n.op == "output":
            returned = tuple(a.name for a in _flat_nodes(n.args[0]))
            continue
        if n.op == "get_attr" or is_valueless(n):
            continue
        if n.op == "placeholder":
            kind, op = "input", "input"
        elif n.op == "call_function":
            kind, op = "op", ops.op_name(n.target)
        elif n.op == "call_module":
            kind, op = "op", f"module {n.target}"
        else:
            kind, op = "op", f"{n.op} {n.target}"
        m = M.node_meta(n)
        metas = m if isinstance(m, tuple) else (m,)
        outputs = tuple(Output(x.shape, M.dtype_name(x.dtype)) if x is not None else Output(None, None) for x in metas)
        params = [a for a in n.all_input_nodes if a.op == "get_attr"]
        param_meta = tuple(
            (p.target, tuple((k, str(v)) for k, v in M.items(p))) for p in params if M.items(p)
        )
        supported, reason = None, ""
        if backend is not None and kind == "op":
            verdict = backend.support(n)
            supported = bool(verdict)
            reason = str(verdict)
        c = cost.of(n)
        rows.append(NodeRow(
            name=n.name, kind=kind, op=op, outputs=outputs,
            inputs=tuple(a.name for a in n.all_input_nodes if a.op != "get_attr" and not is_valueless(a)),
            params=c.params, macs=c.macs,
            meta=tuple((k, str(v)) for k, v in M.items(n)), param_meta=param_meta,
            supported=supported, reason=reason, sparsity=(sparsity or {}).get(n.name),
        ))
    return Report(
        module=mod.name, target=target, backend=getattr(backend, "name", None) if backend is not None else None,
        rows=tuple(rows), outputs=returned, total_params=cost.total_params, total_macs=cost.total_macs,
        declared=bool(getattr(backend, "declared", False)),
    )


def _flat_nodes(value: Any) -> list:
    from torch import fx

    if isinstance(value, fx.Node):
        return [value]
    if isinstance(value, (tuple, list)):
        return [n for v in value for n in _flat_nodes(v)]
    if isinstance(value, dict):
        return [n for v in value.values() for n in _flat_nodes(v)]
    return []


# -- formatting helpers -----------------------------------------------------------------


def _shape_text(o: Output) -> str:
    return "?" if o.shape is None else "[" + ",".join(str(d) for d in o.shape) + "]"


def _shapes(row: NodeRow) -> str:
    parts = [_shape_text(o) for o in row.outputs]
    return parts[0] if len(parts) == 1 else "(" + ", ".join(parts) + ")"


def _dtypes(row: NodeRow) -> str:
    parts = [o.dtype or "?" for o in row.outputs]
    return parts[0] if len(parts) == 1 else "(" + ", ".join(parts) + ")"


def _si(n: int) -> str:
    """1234567 -> '1.23M'; 0 -> '' (blank cells read better than a column of zeros)."""
    if not n:
        return ""
    for div, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def _meta_text(row: NodeRow) -> str:
    parts = [f"{k}={v}" for k, v in row.meta]
    parts += [f"@{p}: {k}={v}" for p, items in row.param_meta for k, v in items]
    return "; ".join(parts)


# -- table ------------------------------------------------------------------------------


def make_table(report: Report, columns: tuple[str, ...]):
    from rich.table import Table
    from rich.text import Text

    title = f"module @{report.module}" + (f"  (target {report.target}, backend {report.backend})" if report.target else "")
    if report.declared:
        title += f"\nsupport declared by {report.backend}'s support table: the backend is not built yet"
    table = Table(title=title, title_justify="left", header_style="bold")
    right = {"params", "flops"}
    for c in columns:
        table.add_column(c, justify="right" if c in right else "left", no_wrap=c in ("name", "op", "shape"))
    for row in report.rows:
        cells: dict[str, Any] = {
            "name": Text(row.name, style="dim" if row.kind == "input" else ""),
            "op": Text(row.op, style="cyan"),
            "shape": _shapes(row),
            "dtype": _dtypes(row),
            "params": f"{row.params:,}" if row.params else "",
            "flops": _si(row.flops),
            "meta": Text(_meta_text(row), style="magenta"),
            "support": _support_cell(row),
            "sparsity": _sparsity_cell(row),
        }
        table.add_row(*(cells[c] for c in columns))
    table.add_section()
    ops = sum(1 for r in report.rows if r.kind == "op")
    totals: dict[str, Any] = {
        "name": Text("total", style="bold"),
        "op": Text(f"{ops} ops", style="bold"),
        "shape": "", "dtype": "",
        "params": Text(f"{report.total_params:,}", style="bold"),
        "flops": Text(f"{report.total_flops / 1e9:.4f} GFLOPs", style="bold"),
        "meta": "",
        "support": Text(_support_total(report), style="bold") if report.target else "",
        "sparsity": Text(_sparsity_total(report), style="bold"),
    }
    table.add_row(*(totals[c] for c in columns))
    return table


def _support_cell(row: NodeRow):
    from rich.text import Text

    if row.supported is None:
        return ""
    return Text(row.reason, style="green" if row.supported else "red")


def _sparsity_cell(row: NodeRow):
    from rich.text import Text

    d = row.sparsity
    if d is None:
        return ""
    return Text(str(d), style="green" if d.sparse else "yellow")


def _sparsity_total(report: Report) -> str:
    ds = [r.sparsity for r in report.rows if r.sparsity is not None]
    return f"{sum(d.sparse for d in ds)}/{len(ds)} sparse" if ds else ""


def _sparsity_json(d) -> dict[str, Any] | None:
    if d is None:
        return None
    g = d.gemm
    return {"sparse": d.sparse, "reason": d.reason, "layer": d.layer,
            "gemm": None if g is None else {"m": g.m, "k": g.k, "n": g.n, "dtype": g.dtype}}


def _support_total(report: Report) -> str:
    ops = [r for r in report.rows if r.supported is not None]
    return f"{sum(r.supported for r in ops)}/{len(ops)} supported"


def print_table(report: Report, columns: tuple[str, ...], out) -> None:
    out.print(make_table(report, columns))


def table_text(report: Report, columns: tuple[str, ...]) -> str:
    """The table as plain text (for -o FILE)."""
    from sparsec.cli._rich import Out

    buf = io.StringIO()
    Out(file=buf).print(make_table(report, columns))
    return buf.getvalue()


# -- JSON -----------------------------------------------------------------------------------


def to_dict(report: Report) -> dict[str, Any]:
    """A machine-readable report. Keys are stable: every key is always present."""
    nodes = []
    for r in report.rows:
        nodes.append({
            "name": r.name,
            "kind": r.kind,
            "op": r.op,
            "outputs": [{"shape": list(o.shape) if o.shape is not None else None, "dtype": o.dtype} for o in r.outputs],
            "inputs": list(r.inputs),
            "params": r.params,
            "macs": r.macs,
            "flops": r.flops,
            "meta": dict(r.meta),
            "param_meta": {p: dict(items) for p, items in r.param_meta},
            "support": None if r.supported is None else {"supported": r.supported, "reason": r.reason},
            "sparsity": _sparsity_json(r.sparsity),
        })
    supported = [r for r in report.rows if r.supported is not None]
    return {
        "version": JSON_VERSION,
        "module": report.module,
        "target": report.target,
        "backend": report.backend,
        "backend_declared": report.declared,
        "nodes": nodes,
        "outputs": list(report.outputs),
        "totals": {
            "nodes": len(report.rows),
            "ops": sum(1 for r in report.rows if r.kind == "op"),
            "params": report.total_params,
            "macs": report.total_macs,
            "flops": report.total_flops,
            "gflops": report.total_flops / 1e9,
            "supported": sum(r.supported for r in supported) if report.target else None,
        },
    }


def to_json(report: Report) -> str:
    return json.dumps(to_dict(report), indent=2) + "\n"


# -- DOT ----------------------------------------------------------------------------------


def _q(text: str) -> str:
    """A DOT double-quoted string ("\\n" stays a DOT line break)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_dot(report: Report) -> str:
    # The DOT text is written here by hand: networkx's DOT writers
    # (nx.nx_pydot / nx.nx_agraph) need pydot or pygraphviz, which sparsec does
    # not depend on, and the format is a few lines of text.
    lines = [
        f"// sparsec inspect --format dot: module @{report.module}",
        f"digraph {_q(report.module)} {{",
        "  rankdir=TB;",
        '  node [shape=box, style="rounded,filled", fillcolor="white", fontname="Helvetica", fontsize=10];',
    ]
    for r in report.rows:
        label = [r.name, r.op, f"{_dtypes(r)}{_shapes(r)}"]
        if r.params:
            label.append(f"params {r.params:,}")
        if r.flops:
            label.append(f"flops {_si(r.flops)}")
        label += [f"{k}={v}" for k, v in r.meta]
        if r.sparsity is not None:
            label.append(("2:4 sparse" if r.sparsity.sparse else "dense") + f": {r.sparsity.reason}")
        attrs = [f"label={_q(chr(10).join(label))}"]
        if r.kind == "input":
            attrs += ["shape=oval", 'fillcolor="lightgrey"']
        elif r.supported is not None:
            attrs += [f'fillcolor="{"palegreen" if r.supported else "lightpink"}"', f"tooltip={_q(r.reason)}"]
        lines.append(f"  {_q(r.name)} [{', '.join(attrs)}];")
    lines.append('  "output" [label="output", shape=oval, fillcolor="lightgrey"];')
    for r in report.rows:
        for src in r.inputs:
            lines.append(f"  {_q(src)} -> {_q(r.name)};")
    for src in report.outputs:
        lines.append(f"  {_q(src)} -> \"output\";")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_graphviz(dot_text: str, output: Path) -> None:
    """Render DOT text to ``output`` (svg/png/pdf by suffix) with graphviz's ``dot``."""
    from sparsec.cli._io import write_atomic

    exe = shutil.which("dot")
    if exe is None:
        raise SparsecError(
            f"cannot render {output}: graphviz's 'dot' program is not installed (not found on PATH)",
            fix="install graphviz (e.g. apt-get install graphviz, brew install graphviz), "
            "or write the DOT text with -o graph.dot and render it elsewhere",
        )
    fmt = output.suffix.lower().lstrip(".")

    def run(tmp: Path) -> None:
        try:
            proc = subprocess.run([exe, f"-T{fmt}", "-o", str(tmp)], input=dot_text, text=True,
                                  capture_output=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SparsecError(f"graphviz's 'dot' failed to render {output}", actual=str(exc)) from exc
        if proc.returncode != 0:
            raise SparsecError(
                f"graphviz's 'dot' failed to render {output}",
                actual=f"exit {proc.returncode}: {proc.stderr.strip()[:500]}",
                fix="write the DOT text with -o graph.dot to look at it",
            )

    write_atomic(output, run)


# -- other views (--show groups) ----------------------------------------------------------------


def view_name(show: str | None) -> str | None:
    """The view ``--show`` names (``--show groups``), or None for table columns."""
    return show.strip() if show is not None and show.strip() in VIEWS else None


def render_view(view: str, mod, fmt: str) -> str:
    """The text of a view (table/text/json/dot) of ``mod``."""
    import importlib

    m = importlib.import_module(VIEWS[view])
    report, analysis = m.build(mod)
    if fmt == "table":
        return m.table_text(report)
    if fmt == "text":
        return m.to_text(report)
    if fmt == "json":
        return m.to_json(report)
    return m.to_dot(analysis)
