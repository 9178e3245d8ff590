"""The canonical printer: deterministic text for a Module.

It backs ``sparsec inspect --format text``, the IR dumps of the pass-manager
instruments and the golden tests. Never test against ``gm.code``.

    module @name(%x: f32[1,3,8,8]) {
      params {
        @conv.weight: f32[4,3,3,3]
      }
      %conv2d: f32[1,4,8,8] = aten.conv2d(%x, @conv.weight, padding=[1,1])
      %relu: f32[1,4,8,8] = aten.relu(%conv2d)  {sparsec.folded = [bn]}
      return %relu
    }

- Tensor operands print positionally in schema order, as ``%node`` or
  ``@param``; other arguments print as ``name=value``, and only where they
  differ from the schema default.
- ``sparsec.*`` metadata prints after the node, sorted by key.
- Parameters print as ``@name: f16[64,64,3,3]``, never their values.
- Export's input-guard call (``_guards_fn``) is not printed.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import fx

from sparsec.ir import meta as M
from sparsec.ir import ops
from sparsec.ir.module import is_valueless


def print_module(mod, *, params: bool = True) -> str:
    g = mod.graph
    inputs = ", ".join(f"%{n.name}: {_type(n)}" for n in mod.placeholders())
    lines = [f"module @{mod.name}({inputs}) {{"]
    attrs = [n for n in g.nodes if n.op == "get_attr"]
    if params and attrs:
        lines.append("  params {")
        for n in sorted(attrs, key=lambda n: n.target):
            lines.append(f"    @{n.target}: {_type(n)}{_meta(n)}")
        lines.append("  }")
    for n in g.nodes:
        if n.op in ("placeholder", "get_attr") or n.op == "call_module" and is_valueless(n):
            continue  # export's guard module is plumbing, not computation
        if n.op == "output":
            lines.append(f"  return {_value(n.args[0])}")
            continue
        if is_valueless(n):  # an op run for its effect (e.g. aten._assert_tensor_metadata)
            lines.append(f"  {_call(n)}{_meta(n)}")
            continue
        lines.append(f"  %{n.name}: {_type(n)} = {_call(n)}{_meta(n)}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def print_node(node: fx.Node) -> str:
    return f"%{node.name}: {_type(node)} = {_call(node)}{_meta(node)}"


def _type(n: fx.Node) -> str:
    m = M.node_meta(n)
    if m is None:
        val = n.meta.get("val")
        return "?" if val is None else type(val).__name__
    if isinstance(m, tuple):
        return "(" + ", ".join(str(x) if x is not None else "?" for x in m) + ")"
    return str(m)


def _meta(n: fx.Node) -> str:
    items = M.items(n)
    if not items:
        return ""
    return "  {" + ", ".join(f"{k} = {v}" for k, v in items) + "}"


def _call(n: fx.Node) -> str:
    if ops.is_aten(n):
        parts = []
        for name, value, is_tensor in ops.non_default_args(n):
            if is_tensor or value is None and _is_tensor_arg(n, name):
                parts.append(_value(value))
            else:
                parts.append(f"{name}={_value(value)}")
        return f"{ops.op_name(n.target)}({', '.join(parts)})"
    if n.op == "call_function":
        name = "getitem" if n.target is operator.getitem else ops.op_name(n.target)
    elif n.op == "call_module":
        name = f"module @{n.target}"
    elif n.op == "call_method":
        name = f"method .{n.target}"
    else:
        name = n.op
    args = [_value(a) for a in n.args] + [f"{k}={_value(v)}" for k, v in sorted(n.kwargs.items())]
    return f"{name}({', '.join(args)})"


def _is_tensor_arg(n: fx.Node, name: str) -> bool:
    for a in n.target._schema.arguments:
        if a.name == name:
            return "Tensor" in str(a.type)
    return False


def _value(v: Any) -> str:
    if isinstance(v, fx.Node):
        return f"@{v.target}" if v.op == "get_attr" else f"%{v.name}"
    if isinstance(v, (list, tuple)):
        inner = ",".join(_value(x) for x in v)
        return f"[{inner}]"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, torch.dtype):
        return M.dtype_name(v)
    if isinstance(v, torch.memory_format):
        return str(v).replace("torch.", "")
    if isinstance(v, torch.device):
        return f'"{v}"'
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}={_value(x)}" for k, x in sorted(v.items())) + "}"
    return str(v)
