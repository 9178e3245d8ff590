"""``ir.Module``: the unit every pass, analysis and backend works on.

It owns
- an ATen-level ``fx.GraphModule`` captured with ``torch.export`` (the
  training IR, so a pruned graph can still be fine-tuned); parameters are
  ``get_attr`` nodes whose targets are the original dotted names;
- the example inputs (and the dynamic-shape spec, for re-export);
- typed ``sparsec.*`` node metadata (see :mod:`sparsec.ir.meta`);
- an analysis cache, invalidated by the pass manager.
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Iterable, TypeVar

import torch
from torch import fx
from torch.fx.passes.fake_tensor_prop import FakeTensorProp

from sparsec.errors import SparsecError, VerificationError, node_location
from sparsec.ir import meta as M

log = logging.getLogger("sparsec.ir")

A = TypeVar("A")

# Nodes that carry no tensor value by design.
_VALUELESS_MODULES = {"_guards_fn"}


def is_valueless(node: fx.Node) -> bool:
    """Nodes that produce no tensor: the output, export's guard module, and
    ATen ops whose schema returns nothing (``aten._assert_tensor_metadata``)."""
    if node.op == "output" or (node.op == "call_module" and node.target in _VALUELESS_MODULES):
        return True
    schema = getattr(node.target, "_schema", None) if node.op == "call_function" else None
    return schema is not None and len(schema.returns) == 0


class Module:
    def __init__(
        self,
        gm: fx.GraphModule,
        example_inputs: Iterable[torch.Tensor],
        *,
        name: str = "module",
        dynamic_shapes: Any = None,
    ) -> None:
        self.gm = gm
        self.example_inputs = tuple(example_inputs)
        self.name = name
        self.dynamic_shapes = dynamic_shapes
        self._analyses: dict[type, Any] = {}
        if not all("val" in n.meta for n in gm.graph.nodes if not is_valueless(n)):
            self.propagate_shapes()

    # -- graph access ---------------------------------------------------------
    @property
    def graph(self) -> fx.Graph:
        return self.gm.graph

    def nodes(self, op: str | None = None, target: Any = None) -> list[fx.Node]:
        out = []
        for n in self.graph.nodes:
            if op is not None and n.op != op:
                continue
            if target is not None:
                targets = target if isinstance(target, (set, tuple, list, frozenset)) else (target,)
                if n.target not in targets:
                    continue
            out.append(n)
        return out

    def placeholders(self) -> list[fx.Node]:
        return self.nodes("placeholder")

    # -- parameters -----------------------------------------------------------
    def get_param(self, target: str) -> torch.Tensor:
        obj: Any = self.gm
        for part in target.split("."):
            obj = getattr(obj, part)
        return obj

    def set_param(self, target: str, value: torch.Tensor) -> None:
        """Replace (or create) the tensor at a dotted ``get_attr`` target.

        Parameters stay parameters and buffers stay buffers; a new name
        becomes a parameter if the value is floating point, else a buffer.
        """
        *path, leaf = target.split(".")
        owner: Any = self.gm
        for part in path:
            if not hasattr(owner, part):
                owner.add_module(part, torch.nn.Module())
            owner = getattr(owner, part)
        value = value.detach()
        if leaf in owner._buffers:
            owner._buffers[leaf] = value
        elif leaf in owner._parameters or (value.is_floating_point() and leaf not in owner.__dict__):
            owner._parameters[leaf] = torch.nn.Parameter(value, requires_grad=value.is_floating_point())
        else:
            setattr(owner, leaf, value)

    def delete_param(self, target: str) -> None:
        *path, leaf = target.split(".")
        owner: Any = self.gm
        for part in path:
            owner = getattr(owner, part)
        delattr(owner, leaf)

    def fresh_param_name(self, base: str) -> str:
        """A dotted name not yet used in the module, derived from ``base``."""
        name, i = base, 0
        while True:
            try:
                self.get_param(name)
            except AttributeError:
                return name
            i += 1
            name = f"{base}_{i}"

    def param_nodes(self) -> dict[str, fx.Node]:
        return {n.target: n for n in self.nodes("get_attr")}

    # -- analyses -------------------------------------------------------------
    def analysis(self, cls: type[A]) -> A:
        """The analysis ``cls`` of this module, computed once and cached."""
        if cls not in self._analyses:
            self._analyses[cls] = cls.run(self)  # type: ignore[attr-defined]
        return self._analyses[cls]

    def invalidate(self, preserved: Iterable[type] = ()) -> None:
        keep = set(preserved)
        self._analyses = {k: v for k, v in self._analyses.items() if k in keep}

    # -- shape propagation and recompilation ----------------------------------
    def propagate_shapes(self) -> None:
        """Refresh ``meta['val']`` on every node by fake-tensor propagation."""
        propagate_shapes(self.gm, self.example_inputs)

    def recompile(self) -> None:
        self.graph.lint()
        self.gm.recompile()
        self.propagate_shapes()

    # -- running and exporting ------------------------------------------------
    def __call__(self, *inputs: torch.Tensor) -> Any:
        return self.gm(*inputs)

    def export(self) -> torch.export.ExportedProgram:
        """Re-export the (transformed) graph as a ``torch.export`` program."""
        try:
            return torch.export.export(self.gm, self.example_inputs, dynamic_shapes=self.dynamic_shapes)
        except Exception as exc:
            raise SparsecError(
                "the transformed graph could not be re-exported with torch.export",
                actual=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                fix="run with --print-ir-after-all to find the pass that produced this graph, and report it",
            ) from exc

    def clone(self) -> "Module":
        """A deep copy: graph, parameters and metadata (analyses are not copied)."""
        gm = copy.deepcopy(self.gm)
        return Module(gm, self.example_inputs, name=self.name, dynamic_shapes=self.dynamic_shapes)

    # -- invariants -------------------------------------------------------------
    def verify(self) -> None:
        """Check the IR invariants; raise VerificationError naming the first broken one."""
        from sparsec.ir.verify import verify

        verify(self)

    def __repr__(self) -> str:
        n = sum(1 for _ in self.graph.nodes)
        return f"<sparsec.ir.Module {self.name!r}: {n} nodes>"


class _TrackingFakeProp(FakeTensorProp):
    current: fx.Node | None = None

    def run_node(self, n: fx.Node) -> Any:
        self.current = n
        return super().run_node(n)


def propagate_shapes(gm: fx.GraphModule, example_inputs: tuple) -> None:
    from torch._guards import detect_fake_mode
    from torch._subclasses.fake_tensor import FakeTensorMode

    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    vals = [n.meta.get("val") for n in placeholders]
    mode = detect_fake_mode([v for v in vals if v is not None])
    if mode is None:
        mode = FakeTensorMode(allow_non_fake_inputs=True)
    if len(example_inputs) != len(placeholders):
        raise VerificationError(
            "the graph's inputs do not match the example inputs",
            expected=f"{len(placeholders)} inputs", actual=f"{len(example_inputs)} example inputs",
        )
    fake_args = []
    for v, x in zip(vals, example_inputs):
        if isinstance(v, torch.Tensor) and v.dtype == x.dtype and v.dim() == x.dim():
            fake_args.append(v)
        else:
            fake_args.append(mode.from_tensor(x))
    saved = mode.allow_non_fake_inputs
    mode.allow_non_fake_inputs = True
    prop = _TrackingFakeProp(gm, mode=mode)
    try:
        prop.propagate_dont_convert_inputs(*fake_args)
    except Exception as exc:
        where = node_location(prop.current) if prop.current is not None else "graph"
        raise VerificationError(
            "shape propagation failed: an op received inputs it cannot take",
            where=where,
            actual=f"{type(exc).__name__}: {_first_line(exc)}",
            fix="the last pass produced inconsistent shapes; run with --print-ir-after-all to see its output",
        ) from exc
    finally:
        mode.allow_non_fake_inputs = saved


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""
