"""Conversion passes: ``to-dtype`` and ``to-channels-last``.

Both insert a conversion right after each graph input (once: a second run
finds it and changes nothing) and convert the parameters in place.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import ClassVar, Literal

import torch
from torch import fx

from sparsec.errors import PassFailedError, node_location
from sparsec.ir import meta as M
from sparsec.ir import ops
from sparsec.ir.analysis import Cost
from sparsec.ir.module import is_valueless
from sparsec.passes.base import Pass, PassResult

log = logging.getLogger("sparsec.passes.convert")

aten = torch.ops.aten

_FP16_MAX = torch.finfo(torch.float16).max


def _val(node: fx.Node) -> torch.Tensor | None:
    v = node.meta.get("val")
    return v if isinstance(v, torch.Tensor) else None


def _is_conversion(node: fx.Node, target, **want) -> bool:
    """Is ``node`` ``target(x, **want)`` with every other argument at its default?"""
    if node.op != "call_function" or node.target is not target:
        return False
    for name, value, is_tensor in ops.non_default_args(node):
        if is_tensor:
            continue
        if name not in want or want[name] != value:
            return False
    return all(ops.args_of(node)[k] == v for k, v in want.items())


def _call(graph: fx.Graph, target, x: fx.Node, **kwargs) -> fx.Node:
    """``target(x, **kwargs)`` as a new node named after the op (``_to_copy``, ``clone``)."""
    return graph.create_node("call_function", target, (x,), kwargs, name=target._schema.name.split("::")[-1])


def _overflows_fp16(t: torch.Tensor) -> bool:
    t = t.detach()
    return bool(t.numel()) and bool(((t.abs() > _FP16_MAX) & t.isfinite()).any())


def _is_io_conversion(node: fx.Node) -> bool:
    """A conversion these passes put after an input.

    That is ``_to_copy(x, dtype=D)`` or ``clone(x, memory_format=channels_last)``.
    """
    if node.op != "call_function":
        return False
    if node.target is aten._to_copy.default:
        return _is_conversion(node, aten._to_copy.default, dtype=ops.args_of(node)["dtype"])
    return _is_conversion(node, aten.clone.default, memory_format=torch.channels_last)


def _readers(node: fx.Node) -> list[fx.Node]:
    """Users of ``node`` that read its value (export's input guard does not count)."""
    return [u for u in node.users if u.op == "output" or not is_valueless(u)]


def _convert_inputs(mod, make, is_done, applies) -> int:
    """After each input with ``applies(val)``, insert ``make(graph, x)`` once and route the readers through it.

    Conversions already inserted after an input (by this pass or the other
    conversion pass) are followed, so a second run, in either order, finds
    its own conversion and changes nothing. Export's input guard keeps
    reading the raw input. Returns how many inputs were converted.
    """
    graph = mod.graph
    phs = mod.placeholders()
    changed = 0
    for ph in phs:
        val = _val(ph)
        if val is None or not applies(val):
            continue
        chain = [ph]
        while len(_readers(chain[-1])) == 1 and _is_io_conversion(_readers(chain[-1])[0]):
            chain.append(_readers(chain[-1])[0])
        if any(is_done(n) for n in chain[1:]):
            continue
        last = chain[-1]
        readers = _readers(last)
        if not readers:
            continue
        with graph.inserting_after(phs[-1] if last is ph else last):
            conv = make(graph, last)
        conv.meta = {k: v for k, v in ph.meta.items() if k == "stack_trace"}
        for u in readers:
            u.replace_input_with(last, conv)
        changed += 1
    return changed


@dataclasses.dataclass(frozen=True)
class ToDtype(Pass):
    """Convert a model to fp16 or bf16.

    Floating parameters and buffers are cast. Explicit ``dtype=f32``
    arguments (``_to_copy``, ``full``, ``zeros``, ...) become the new dtype.
    With ``keep_io=true`` (default) the model still takes and returns its
    original dtypes: each floating input is cast after it is read, and each
    floating output is cast back. With ``keep_io=false`` the module's
    example inputs are converted instead, and it takes and returns the new
    dtype. A parameter that does not fit the new dtype (fp16 overflows
    above 65504) fails the pass, naming it.

    Example: sparsec opt m.pt2 --pipeline "to-dtype{dtype=bf16,keep-io=false}"
    """

    name: ClassVar[str] = "to-dtype"
    summary: ClassVar[str] = "cast parameters and compute to fp16 or bf16"
    preserves: ClassVar[tuple[type, ...]] = (Cost,)
    changes_numerics: ClassVar[bool] = True
    idempotent: ClassVar[bool] = True

    dtype: Literal["fp16", "bf16"] = "fp16"
    keep_io: bool = True

    def run(self, mod, ctx) -> PassResult:
        to = M.parse_dtype(self.dtype)
        graph = mod.graph
        out_node = next(n for n in graph.nodes if n.op == "output")
        # each output's dtype before the pass, in map_arg order (step 2 may replace the node itself)
        out_dtypes: list[torch.dtype | None] = []
        fx.node.map_arg(out_node.args, lambda n: out_dtypes.append(_val(n).dtype if _val(n) is not None else None))

        # 1. parameters and buffers (checked before anything changes)
        plan: dict[str, torch.Tensor] = {}
        converted: dict[int, torch.Tensor] = {}
        for name, t in self._tensors(mod):
            if not t.is_floating_point() or t.dtype == to:
                continue
            if to == torch.float16 and _overflows_fp16(t):
                readers = (node_location(n) for n in graph.nodes if n.op == "get_attr" and n.target == name)
                where = next(readers, f"tensor '{name}'")
                raise PassFailedError(
                    f"parameter '{name}' does not fit in fp16",
                    where=where,
                    expected=f"|value| <= {_FP16_MAX:g}",
                    actual=f"max |value| = {t.detach().abs().max().item():g}",
                    fix="use to-dtype{dtype=bf16}, which has fp32's range",
                )
            if id(t) not in converted:
                converted[id(t)] = t.detach().to(to)
            plan[name] = converted[id(t)]
        for name, value in plan.items():
            mod.set_param(name, value)
        stats = {"params_cast": len(plan), "inputs_cast": 0, "dtype_args": 0, "outputs_cast": 0}

        # 2. inputs
        if self.keep_io:
            stats["inputs_cast"] = _convert_inputs(
                mod,
                make=lambda g, x: _call(g, aten._to_copy.default, x, dtype=to),
                is_done=lambda u: _is_conversion(u, aten._to_copy.default, dtype=to),
                applies=lambda v: v.is_floating_point() and v.dtype != to,
            )
        else:
            xs = mod.example_inputs
            new = tuple(x.to(to) if x.is_floating_point() and x.dtype != to else x for x in xs)
            if any(a is not b for a, b in zip(new, xs)):
                mod.example_inputs = new
                stats["inputs_cast"] = sum(a is not b for a, b in zip(new, xs))

        # 3. explicit float32 dtype arguments
        cast_backs: set[fx.Node] = set()
        if self.keep_io:
            leaves: list[fx.Node] = []
            fx.node.map_arg(out_node.args, leaves.append)
            cast_backs = {
                n for n, d in zip(leaves, out_dtypes)
                if set(n.users) == {out_node} and _is_conversion(n, aten._to_copy.default, dtype=d)
            }
        for node in graph.nodes:
            if ops.is_aten(node) and node not in cast_backs and ops.args_of(node).get("dtype") == torch.float32:
                ops.set_arg(node, "dtype", to)
                stats["dtype_args"] += 1

        # 4. outputs back to their original dtypes
        if self.keep_io:
            casts: dict[tuple[fx.Node, torch.dtype], fx.Node] = {}
            dtypes = iter(out_dtypes)

            def back(n: fx.Node) -> fx.Node:
                d = next(dtypes)
                if n in cast_backs or d is None or not d.is_floating_point or d == to:
                    return n
                if (n, d) not in casts:
                    with graph.inserting_before(out_node):
                        casts[n, d] = _call(graph, aten._to_copy.default, n, dtype=d)
                return casts[n, d]

            out_node.args = fx.node.map_arg(out_node.args, back)
            stats["outputs_cast"] = len(casts)
        return PassResult(modified=any(stats.values()), stats=stats)

    @staticmethod
    def _tensors(mod):
        seen = set()
        for n in mod.graph.nodes:
            if n.op == "get_attr" and n.target not in seen:
                seen.add(n.target)
                t = mod.get_param(n.target)
                if isinstance(t, torch.Tensor):
                    yield n.target, t
        gm = mod.gm
        for name, t in (*gm.named_parameters(remove_duplicate=False), *gm.named_buffers(remove_duplicate=False)):
            if name not in seen:
                seen.add(name)
                yield name, t


@dataclasses.dataclass(frozen=True)
class ToChannelsLast(Pass):
    """Use the channels-last (NHWC) memory format for 4-D convolutions.

    Every 4-D floating conv weight is stored channels-last, and each 4-D
    floating input is copied to channels-last once, right after it is read
    (``aten.clone(x, memory_format=channels_last)``). Values do not change,
    only strides.

    Example: sparsec opt m.pt2 --pipeline to-channels-last
    """

    name: ClassVar[str] = "to-channels-last"
    summary: ClassVar[str] = "store 4-D conv weights and inputs channels-last (NHWC)"
    preserves: ClassVar[tuple[type, ...]] = (Cost,)
    changes_numerics: ClassVar[bool] = False
    idempotent: ClassVar[bool] = True

    def run(self, mod, ctx) -> PassResult:
        cl = torch.channels_last
        weights = 0
        done: set[str] = set()
        for node in mod.graph.nodes:
            if node.op != "call_function" or node.target not in ops.CONV:
                continue
            w = ops.conv_params(node)["weight"]
            if not isinstance(w, fx.Node) or w.op != "get_attr" or w.target in done:
                continue
            done.add(w.target)
            t = mod.get_param(w.target)
            if t.dim() == 4 and t.is_floating_point() and not t.is_contiguous(memory_format=cl):
                mod.set_param(w.target, t.detach().contiguous(memory_format=cl))
                weights += 1
        inputs = _convert_inputs(
            mod,
            make=lambda g, x: _call(g, aten.clone.default, x, memory_format=cl),
            is_done=lambda u: _is_conversion(u, aten.clone.default, memory_format=cl),
            applies=lambda v: v.dim() == 4 and v.is_floating_point(),
        )
        return PassResult(modified=bool(weights or inputs), stats={"weights": weights, "inputs": inputs})
