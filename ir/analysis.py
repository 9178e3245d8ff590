"""Analyses over an ``ir.Module``, cached by ``Module.analysis(cls)``.

An analysis is a class with a ``run(mod)`` classmethod that returns an
immutable result. The pass manager drops cached results after a pass that
modified the graph, unless the pass lists the analysis in ``preserves``.
"""

from __future__ import annotations

import dataclasses
import math
from types import MappingProxyType
from typing import Mapping

import torch
from torch import fx

from sparsec.ir import meta as M
from sparsec.ir import ops


@dataclasses.dataclass(frozen=True)
class ShapeInfo:
    """Output shape and dtype of every node, by node name."""

    shapes: Mapping[str, object]

    @classmethod
    def run(cls, mod) -> "ShapeInfo":
        return cls(MappingProxyType({n.name: M.node_meta(n) for n in mod.graph.nodes}))

    def __getitem__(self, name: str):
        return self.shapes[name]


@dataclasses.dataclass(frozen=True)
class NodeCost:
    macs: int = 0
    params: int = 0

    @property
    def flops(self) -> int:
        return 2 * self.macs


@dataclasses.dataclass(frozen=True)
class Cost:
    """MACs and parameters per node, and totals.

    MACs are counted for convolutions, linear layers and matrix products
    (where almost all of a CNN's or transformer's work is); elementwise,
    normalisation and pooling ops count zero. FLOPs are 2 x MACs. Parameters
    are counted once per distinct ``get_attr`` tensor that is an
    ``nn.Parameter`` (buffers such as BN running statistics are excluded),
    attributed to the first op that reads them. Symbolic (dynamic) dims count
    as the example input's size.
    """

    nodes: Mapping[str, NodeCost]
    total_macs: int
    total_params: int

    @property
    def total_flops(self) -> int:
        return 2 * self.total_macs

    @classmethod
    def run(cls, mod) -> "Cost":
        hints = _size_hints(mod)
        per: dict[str, NodeCost] = {}
        seen: set[str] = set()
        for n in mod.graph.nodes:
            if n.op != "call_function":
                continue
            macs = _macs(n, hints)
            params = 0
            for inp in n.all_input_nodes:
                if inp.op == "get_attr" and inp.target not in seen:
                    t = mod.get_param(inp.target)
                    if isinstance(t, torch.nn.Parameter):
                        seen.add(inp.target)
                        params += t.numel()
            if macs or params:
                per[n.name] = NodeCost(macs, params)
        return cls(
            MappingProxyType(per),
            sum(c.macs for c in per.values()),
            sum(c.params for c in per.values()),
        )

    def of(self, node: fx.Node | str) -> NodeCost:
        return self.nodes.get(node if isinstance(node, str) else node.name, NodeCost())


def _size_hints(mod) -> dict[str, int]:
    """Concrete sizes for symbolic dims, taken from the example inputs."""
    hints: dict[str, int] = {}
    for ph, x in zip(mod.placeholders(), mod.example_inputs):
        val = ph.meta.get("val")
        if isinstance(val, torch.Tensor):
            for d, real in zip(val.shape, x.shape):
                if not isinstance(d, int):
                    hints[str(d)] = int(real)
    return hints


def _numel(shape, hints) -> int:
    out = 1
    for d in shape:
        out *= _dim(d, hints)
    return out


def _dim(d, hints) -> int:
    if isinstance(d, torch.SymInt):  # int() would guard on it and specialise the graph
        const = d.node.maybe_as_int()
        if const is not None:
            return const
        hint = getattr(d.node, "hint", None)
        return int(hint) if isinstance(hint, int) else hints.get(str(d), 1)
    try:
        return int(d)
    except Exception:
        return hints.get(str(d), 1)


def _shape(node) -> tuple | None:
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    return tuple(val.shape) if isinstance(val, torch.Tensor) else None


def _macs(n: fx.Node, hints) -> int:
    if not ops.is_aten(n):
        return 0
    out = _shape(n)
    if n.target in ops.CONV:
        p = ops.conv_params(n)
        w = _shape(p["weight"])
        if out is None or w is None:
            return 0
        # each output element does Cin/groups * prod(kernel) MACs
        per_out = w[1] * math.prod(w[2:])
        if p["transposed"]:  # weight is (Cin, Cout/groups, k...): each input element scatters
            x = _shape(p["input"])
            return _numel(x, hints) * w[1] * math.prod(w[2:]) if x else 0
        return _numel(out, hints) * per_out
    if n.target in ops.CONV_TRANSPOSE:  # each input element scatters into Cout/groups * prod(kernel) outputs
        a = ops.args_of(n)
        x, w = _shape(a["input"]), _shape(a["weight"])
        return _numel(x, hints) * w[1] * math.prod(w[2:]) if x and w else 0
    name = ops.op_name(n.target)
    if name in ("sparsec.fused_conv2d", "sparsec.conv2d_pool"):  # the fused ops of passes/fusion/ops.py
        a = ops.args_of(n)
        x, w = _shape(a["x"]), _shape(a["weight"])
        if x is None or w is None:
            return 0
        conv_hw = [(_dim(x[2 + i], hints) + 2 * a["padding"][i] - a["dilation"][i] * (w[2 + i] - 1) - 1)
                   // a["stride"][i] + 1 for i in range(2)]  # the conv's output size, before any pooling
        return _dim(x[0], hints) * w[0] * conv_hw[0] * conv_hw[1] * w[1] * w[2] * w[3]
    if name in ("sparsec.gemm_dense", "sparsec.gemm24"):  # lowered GEMMs (backends/cutlass): x [..., K] -> [..., m]
        x = _shape(n.args[0])  # dense-equivalent MACs: 2:4 zeros are not subtracted, as everywhere here
        return _numel(out, hints) * _dim(x[-1], hints) if out and x else 0
    if name == "sparsec.dwconv2d":  # lowered depthwise conv: weight [k, k, C], each output element k*k MACs
        w = _shape(n.args[1])
        return _numel(out, hints) * w[0] * w[1] if out and w else 0
    if name == "sparsec.stem_conv":  # lowered stem: weight [k, k, Cin, Cout], each output element k*k*Cin MACs
        w = _shape(n.args[1])
        return _numel(out, hints) * w[0] * w[1] * w[2] if out and w else 0
    if name == "sparsec.conv_pool_nhwc":  # lowered conv + pool: the conv's MACs (not the halo the kernel redoes)
        from sparsec.backends.cutlass.conv_pool import ConvPoolConfig, out_shape  # (the op's module is loaded)

        x, cfg = _shape(n.args[0]), ConvPoolConfig.from_name(n.args[4])
        if x is None:
            return 0
        oh, ow, _, _ = out_shape(cfg, _dim(x[2], hints), _dim(x[3], hints), n.args[3])
        return _dim(x[0], hints) * cfg.cout * oh * ow * cfg.cin * cfg.k * cfg.k
    if name in ("sparsec.squeeze_excite", "sparsec.squeeze_excite_nhwc"):  # its two fcs, as the unfused 1x1 convs
        x, w1 = _shape(n.args[0]), _shape(n.args[1])
        return _dim(x[0], hints) * 2 * w1[0] * w1[1] if x and w1 else 0
    if name == "sparsec.fused_linear":
        w = _shape(ops.args_of(n)["weight"])
        return _numel(out, hints) * w[1] if out and w else 0
    if n.target in ops.LINEAR:
        w = _shape(ops.args_of(n)["weight"])
        return _numel(out, hints) * w[1] if out and w else 0
    if n.target in (ops.aten.mm.default, ops.aten.bmm.default, ops.aten.addmm.default, ops.aten.matmul.default):
        a = ops.args_of(n)
        first = a.get("self") if n.target != ops.aten.addmm.default else a.get("mat1")
        x = _shape(first)
        return _numel(out, hints) * _dim(x[-1], hints) if out and x else 0
    return 0
