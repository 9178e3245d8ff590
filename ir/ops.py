"""ATen op groups and schema-based argument access for fx nodes.

Passes and analyses ask ``args_of(node)`` for keyword-normalised arguments
(the op's own schema names, defaults filled in) instead of indexing
``node.args`` by position, so positional/keyword spelling never matters.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx

aten = torch.ops.aten

CONV = {aten.conv1d.default, aten.conv2d.default, aten.conv3d.default, aten.convolution.default}
# What torch.export emits for nn.ConvTranspose*d: weight is (Cin, Cout/groups, k...).
CONV_TRANSPOSE = {aten.conv_transpose1d.default, aten.conv_transpose2d.input, aten.conv_transpose3d.input}
LINEAR = {aten.linear.default}
MATMUL = {aten.mm.default, aten.bmm.default, aten.matmul.default, aten.addmm.default}
BATCH_NORM = {
    aten.batch_norm.default,
    aten._native_batch_norm_legit_no_training.default,
    aten.cudnn_batch_norm.default,
}
DROPOUT = {aten.dropout.default, aten.feature_dropout.default, aten.alpha_dropout.default}
IDENTITY = {aten.alias.default, aten.detach.default, aten.lift_fresh_copy.default}

# In-place op -> its functional twin (canonicalize rewrites when it is safe).
INPLACE = {
    aten.relu_.default: aten.relu.default,
    aten.add_.Tensor: aten.add.Tensor,
    aten.mul_.Tensor: aten.mul.Tensor,
    aten.hardtanh_.default: aten.hardtanh.default,
    aten.hardswish_.default: aten.hardswish.default,
    aten.hardsigmoid_.default: aten.hardsigmoid.default,
    aten.silu_.default: aten.silu.default,
    aten.sigmoid_.default: aten.sigmoid.default,
    aten.gelu_.default: aten.gelu.default,
    aten.leaky_relu_.default: aten.leaky_relu.default,
    aten.elu_.default: aten.elu.default,
    aten.clamp_.default: aten.clamp.default,
}


def is_aten(node: fx.Node) -> bool:
    return node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload)


def op_name(target: Any) -> str:
    """``aten.conv2d`` for an OpOverload (overload shown unless ``default``)."""
    if isinstance(target, torch._ops.OpOverload):
        ns = target.namespace
        base = target._schema.name.split("::")[-1]
        ov = target._overloadname
        return f"{ns}.{base}" if ov == "default" else f"{ns}.{base}.{ov}"
    if isinstance(target, str):
        return target
    mod = getattr(target, "__module__", "") or ""
    name = getattr(target, "__name__", str(target))
    if mod in ("_operator", "operator"):
        return name
    return f"{mod}.{name}" if mod else name


def args_of(node: fx.Node) -> dict[str, Any]:
    """Arguments by schema name, defaults filled in, for an ATen op node."""
    if not is_aten(node):
        raise TypeError(f"{node.format_node()} is not an ATen op")
    schema = node.target._schema
    out: dict[str, Any] = {}
    for i, arg in enumerate(schema.arguments):
        if i < len(node.args):
            out[arg.name] = node.args[i]
        elif arg.name in node.kwargs:
            out[arg.name] = node.kwargs[arg.name]
        elif arg.has_default_value():
            out[arg.name] = arg.default_value
        else:
            out[arg.name] = None
    return out


def non_default_args(node: fx.Node) -> list[tuple[str, Any, bool]]:
    """(name, value, is_tensor_input) for each argument that differs from its default."""
    schema = node.target._schema
    given = args_of(node)
    out = []
    for arg in schema.arguments:
        value = given[arg.name]
        is_tensor = isinstance(value, fx.Node) or (
            isinstance(value, (list, tuple)) and any(isinstance(v, fx.Node) for v in value)
        )
        if not is_tensor and arg.has_default_value() and _same(value, arg.default_value):
            continue
        out.append((arg.name, value, is_tensor))
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    try:
        return bool(a == b)
    except Exception:
        return False


def set_arg(node: fx.Node, name: str, value: Any) -> None:
    """Set an argument by schema name, positional or keyword as it stands."""
    schema = node.target._schema
    names = [a.name for a in schema.arguments]
    i = names.index(name)
    if i < len(node.args):
        args = list(node.args)
        args[i] = value
        node.args = tuple(args)
    else:
        kwargs = dict(node.kwargs)
        kwargs[name] = value
        node.kwargs = kwargs


def conv_params(node: fx.Node) -> dict[str, Any]:
    """input, weight, bias, stride, padding, dilation, groups, transposed of a conv node."""
    a = args_of(node)
    return {
        "input": a["input"],
        "weight": a["weight"],
        "bias": a.get("bias"),
        "stride": a.get("stride"),
        "padding": a.get("padding"),
        "dilation": a.get("dilation"),
        "groups": a.get("groups", 1) or 1,
        "transposed": bool(a.get("transposed", False)),
    }


def batch_norm_params(node: fx.Node) -> dict[str, Any]:
    """input, weight, bias, running_mean, running_var, eps, training of a BN node."""
    a = args_of(node)
    training = a.get("training", False)
    return {
        "input": a["input"],
        "weight": a["weight"],
        "bias": a["bias"],
        "running_mean": a["running_mean"],
        "running_var": a["running_var"],
        "eps": a["eps"],
        "training": bool(training),
    }
