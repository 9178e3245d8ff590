"""Channel rules: how each ATen op couples the channel spaces it touches.

A rule is a function ``rule(node, g)`` registered for one or more ops with
:func:`channel_rule`. It tells the :class:`~sparsec.passes.prune.depgraph.
ChannelDepGraph` builder ``g`` which (node, dim) channel spaces must be
pruned together and by which index map (see :class:`RuleContext` in
``depgraph.py`` for the calls a rule can make). An op with no rule marks
every group it touches unprunable; a rule that meets a case it cannot map
raises :class:`Unsupported`, which does the same with the rule's reason.

A rule may also give ``resize(node, new_shape, kept)``, which rewrites the op's
shape constants (view sizes, split sizes, conv ``groups``...) once the plan
is applied (``new_shape(n)`` is the pruned shape of node ``n``, ``kept(n, d)``
the kept indices of its dim ``d`` or None), and
``reference(node, keep)``, which returns a callable replacing the op in the
consumer-side masked reference when zeroing its pruned inputs is not enough
(layer norm averages over its channels).

Registering a rule for your own op::

    @channel_rule(torch.ops.mylib.scale.default)
    def _scale(node, g):
        g.identity(node.args[0], node)        # out[c] depends on in[c] only

``examples/custom_channel_rule.py`` is a runnable example: a custom op with a
parameter of its own, the diagnostic without a rule, and pruning with one.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import fx

aten = torch.ops.aten


class Unsupported(Exception):
    """Raised by a rule for a case it cannot map; blocks what the node touches."""


@dataclass(frozen=True)
class Rule:
    couple: Callable[[fx.Node, Any], None]
    resize: Callable[[fx.Node, Callable], None] | None = None
    reference: Callable | None = None


RULES: dict[Any, Rule] = {}


def channel_rule(*targets: Any, resize: Callable | None = None, reference: Callable | None = None) -> Callable:
    """Register ``fn(node, g)`` as the channel rule of each op in ``targets``.

    A later registration for the same op replaces the earlier one (so a user
    can override a stock rule); :func:`unregister` removes one.
    """

    def deco(fn: Callable) -> Callable:
        for t in targets:
            RULES[t] = Rule(fn, resize, reference)
        return fn

    return deco


def unregister(*targets: Any) -> None:
    for t in targets:
        RULES.pop(t, None)


def rule_for(target: Any) -> Rule | None:
    return RULES.get(target)


def _ops(*names: str) -> list:
    """The aten overloads that exist among ``names`` ("relu_.default")."""
    out = []
    for name in names:
        base, ov = name.rsplit(".", 1)
        packet = getattr(aten, base, None)
        if packet is not None and hasattr(packet, ov):
            out.append(getattr(packet, ov))
    return out


def _nd(dim: int, ndim: int) -> int:
    return dim + ndim if dim < 0 else dim


# -- passthrough: out[..., c, ...] depends on in[..., c, ...] only --------------

_UNARY = [
    "relu", "relu6", "hardtanh", "silu", "gelu", "hardswish", "hardsigmoid", "sigmoid", "tanh", "leaky_relu",
    "elu", "mish", "neg", "abs", "exp", "sqrt", "rsqrt", "clamp", "clamp_min", "clamp_max", "ne", "eq",
]
_UNARY_NAMES = [f"{u}.default" for u in _UNARY] + [f"{u}_.default" for u in _UNARY] + [
    "ne.Scalar", "eq.Scalar", "gt.Scalar", "lt.Scalar", "ge.Scalar", "le.Scalar",
    "add.Scalar", "sub.Scalar", "mul.Scalar", "div.Scalar", "pow.Tensor_Scalar", "add_.Scalar", "mul_.Scalar",
    "clamp.Tensor", "dropout.default", "feature_dropout.default", "alpha_dropout.default", "dropout_.default",
    "feature_dropout_.default", "clone.default", "contiguous.default", "alias.default",
    "detach.default", "lift_fresh_copy.default", "_to_copy.default", "to.dtype", "to.dtype_layout",
    "fill_.Scalar", "fill_.Tensor", "zero_.default",
]


@channel_rule(*_ops(*_UNARY_NAMES))
def _passthrough(node, g):
    g.identity(node.args[0], node)


# -- elementwise binary ops with broadcasting ------------------------------------

_BINARY_NAMES = [
    f"{op}{suffix}.{ov}"
    for op in ("add", "sub", "mul", "div", "maximum", "minimum", "rsub", "masked_fill", "where")
    for suffix in ("", "_")
    for ov in ("Tensor", "Scalar", "self", "default", "Tensor_mode")
]


@channel_rule(*_ops(*_BINARY_NAMES))
def _broadcast(node, g):
    """Residual adds couple both operands; x * s (s of shape N,C,1,1) couples through C."""
    inputs = [a for a in list(node.args) + list(node.kwargs.values()) if isinstance(a, fx.Node)]
    g.broadcast(node, *inputs)


# -- convolution -------------------------------------------------------------------


def _conv_parts(node):
    from sparsec.ir import ops

    p = ops.conv_params(node)
    if p["transposed"]:
        raise Unsupported("transposed convolution is not pruned")
    return p


@channel_rule(*_ops("conv1d.default", "conv2d.default", "conv3d.default", "convolution.default"),
              resize=lambda node, new_shape, kept: _resize_conv(node, new_shape))
def _conv(node, g):
    """out[n, o] = sum_i w[o, i] x[n, i]; grouped: group k of in and out is one unit."""
    p = _conv_parts(node)
    x, w, b, groups = p["input"], p["weight"], p["bias"], p["groups"]
    g.same(x, 0, node, 0)
    g.same(w, 0, node, 1)
    if b is not None:
        g.same(b, 0, node, 1)
    g.root(node, 1)
    cin, cout = g.shape(x)[1], g.shape(node)[1]
    if groups == 1:
        g.same(x, 1, w, 1)
        return
    # A grouped conv keeps its groups whole: a unit is group k's in- and out-channels.
    cin_g, cout_g = cin // groups, cout // groups
    i = torch.arange(cin)
    g.couple(x, 1, i, node, 1, (i // cin_g) * cout_g)
    o = torch.arange(cout)
    g.couple(node, 1, o, node, 1, (o // cout_g) * cout_g)
    if cin_g > 1:
        g.block(w, 1, "the per-group input channels of a grouped conv stay whole")


def _resize_conv(node, new_shape):
    from sparsec.ir import ops

    p = ops.conv_params(node)
    groups = p["groups"]
    if groups == 1:
        return
    old_in, new_in = _old(p["input"])[1], new_shape(p["input"])[1]
    if old_in != new_in:
        ops.set_arg(node, "groups", groups * new_in // old_in)


def _old(n):
    return tuple(int(d) for d in n.meta["val"].shape)


# -- linear and matrix products ---------------------------------------------------


def _param_backed(n) -> bool:
    """True when ``n`` is a parameter, maybe seen through a transpose/view."""
    seen = 0
    while isinstance(n, fx.Node) and seen < 8:
        if n.op == "get_attr":
            return True
        if n.op != "call_function" or not n.args:
            return False
        n, seen = n.args[0], seen + 1
    return False


@channel_rule(aten.linear.default)
def _linear(node, g):
    x, w = node.args[0], node.args[1]
    b = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
    nd = len(g.shape(node))
    for d in range(nd - 1):
        g.same(x, d, node, d)
    g.same(x, nd - 1, w, 1)
    g.same(w, 0, node, nd - 1)
    if isinstance(b, fx.Node):
        g.same(b, 0, node, nd - 1)
    g.root(node, nd - 1)


@channel_rule(aten.mm.default)
def _mm(node, g):
    a, b = node.args[0], node.args[1]
    g.same(a, 0, node, 0)
    g.same(a, 1, b, 0)
    g.same(b, 1, node, 1)
    if _param_backed(b):
        g.root(node, 1)


@channel_rule(aten.addmm.default)
def _addmm(node, g):
    bias, a, b = node.args[0], node.args[1], node.args[2]
    g.same(a, 0, node, 0)
    g.same(a, 1, b, 0)
    g.same(b, 1, node, 1)
    g.broadcast(node, bias)
    if _param_backed(b):
        g.root(node, 1)


@channel_rule(aten.bmm.default, aten.matmul.default)
def _matmul(node, g):
    a, b = node.args[0], node.args[1]
    sa, sb, so = g.shape(a), g.shape(b), g.shape(node)
    if len(sa) < 2 or len(sb) < 2:
        raise Unsupported("matmul with a 1-D operand is not mapped")
    nd = len(so)
    for t, s in ((a, sa), (b, sb)):  # batch dims broadcast
        for k in range(len(s) - 2):
            od = nd - len(s) + k
            if s[k] == so[od]:
                g.same(t, k, node, od)
    g.same(a, len(sa) - 2, node, nd - 2)
    g.same(a, len(sa) - 1, b, len(sb) - 2)
    g.same(b, len(sb) - 1, node, nd - 1)
    if _param_backed(b):
        g.root(node, nd - 1)


# -- normalisation ------------------------------------------------------------------


@channel_rule(*_ops("batch_norm.default", "_native_batch_norm_legit_no_training.default"))
def _batch_norm(node, g):
    x = node.args[0]
    params = [a for a in node.args[1:5] if isinstance(a, fx.Node)]
    outs = [node] if isinstance(node.meta.get("val"), torch.Tensor) else [g.getitem(node, 0)]
    for p in params:
        g.same(p, 0, x, 1)
    for out in outs:
        if out is not None:
            g.identity(x, out)


def _resize_layer_norm(node, new_shape, kept=None):
    x = node.args[0]
    k = len(node.args[1])
    args = list(node.args)
    args[1] = list(new_shape(x)[-k:])
    node.args = tuple(args)


@channel_rule(aten.layer_norm.default, resize=_resize_layer_norm,
              reference=lambda node, keep: _masked_layer_norm)
def _layer_norm(node, g):
    """Per-position over the last dim: weight/bias follow it. Its statistics average
    over that dim, so the masked reference normalises over the kept channels."""
    x, shape = node.args[0], list(node.args[1])
    nd = len(g.shape(x))
    g.identity(x, node)
    if len(shape) != 1:
        for d in range(nd - len(shape), nd):
            g.block(x, d, "a layer norm over several dims keeps them whole")
        return
    for p in node.args[2:4]:
        if isinstance(p, fx.Node):
            g.same(p, 0, x, nd - 1)


def _masked_layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5, *rest, keep=None):
    """layer_norm over the kept channels only; pruned positions are left at zero."""
    xs = x[..., keep]
    w = weight[keep] if weight is not None else None
    b = bias[keep] if bias is not None else None
    out = torch.zeros_like(x)
    out[..., keep] = torch.nn.functional.layer_norm(xs, (xs.shape[-1],), w, b, eps)
    return out


@channel_rule(aten.group_norm.default, resize=lambda node, new_shape, kept: _resize_group_norm(node, new_shape))
def _group_norm(node, g):
    """Groups stay whole: a unit is one norm group's channels."""
    x, groups = node.args[0], node.args[1]
    g.identity(x, node)
    c = g.shape(x)[1]
    for p in node.args[2:4]:
        if isinstance(p, fx.Node):
            g.same(p, 0, x, 1)
    i = torch.arange(c)
    per = c // groups
    g.couple(x, 1, i, x, 1, (i // per) * per)


def _resize_group_norm(node, new_shape):
    x, groups = node.args[0], node.args[1]
    old, new = _old(x)[1], new_shape(x)[1]
    if old != new:
        args = list(node.args)
        args[1] = groups * new // old
        node.args = tuple(args)


# -- pooling and reductions ---------------------------------------------------------

_POOL = _ops(
    "max_pool1d.default", "max_pool2d.default", "max_pool3d.default", "avg_pool1d.default", "avg_pool2d.default",
    "avg_pool3d.default", "adaptive_avg_pool1d.default", "adaptive_avg_pool2d.default", "adaptive_avg_pool3d.default",
    "adaptive_max_pool2d.default", "max_pool2d_with_indices.default", "_adaptive_avg_pool2d.default",
)
_SPATIAL = {"1d": 1, "2d": 2, "3d": 3}


@channel_rule(*_POOL)
def _pool(node, g):
    x = node.args[0]
    name = node.target._schema.name
    k = next(v for s, v in _SPATIAL.items() if s in name)
    outs = [node] if isinstance(node.meta.get("val"), torch.Tensor) else [g.getitem(node, i) for i in range(2)]
    lead = len(g.shape(x)) - k
    for out in outs:
        if out is None:
            continue
        for d in range(lead):
            g.same(x, d, out, d)


@channel_rule(*_ops("mean.dim", "sum.dim_IntList", "amax.default", "amin.default"))
def _reduce(node, g):
    """Kept dims pass through; a mean/max over a dim changes if that dim is pruned."""
    x = node.args[0]
    nd = len(g.shape(x))
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    dims = list(range(nd)) if dims is None else [_nd(d, nd) for d in ([dims] if isinstance(dims, int) else dims)]
    keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    od = 0
    for d in range(nd):
        if d in dims:
            if node.target is not aten.sum.dim_IntList:
                g.block(x, d, f"{node.target._schema.name.split('::')[-1]} reduces over this dim")
            od += 1 if keepdim else 0
            continue
        g.same(x, d, node, od)
        od += 1


@channel_rule(*_ops("softmax.int", "_softmax.default", "log_softmax.int", "_log_softmax.default"))
def _softmax(node, g):
    x = node.args[0]
    g.identity(x, node)
    g.block(x, _nd(node.args[1], len(g.shape(x))), "softmax normalises over this dim")


# -- concatenation, split and slicing --------------------------------------------------


@channel_rule(aten.cat.default)
def _cat(node, g):
    """The output's cat dim is the concatenation of the inputs', each at an offset."""
    tensors = [t for t in node.args[0] if g.shape(t) is not None and g.shape(t) != (0,)]
    nd = len(g.shape(node))
    dim = _nd(node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0), nd)
    off = 0
    for t in tensors:
        s = g.shape(t)
        for d in range(nd):
            if d != dim:
                g.same(t, d, node, d)
        i = torch.arange(s[dim])
        g.couple(t, dim, i, node, dim, i + off)
        off += s[dim]


def _split_rule(node, g):
    x = node.args[0]
    nd = len(g.shape(x))
    dim = _nd(node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0), nd)
    off = 0
    for k, v in enumerate(node.meta["val"]):
        out = g.getitem(node, k)
        size = int(v.shape[dim])
        if out is not None:
            for d in range(nd):
                if d != dim:
                    g.same(x, d, out, d)
            i = torch.arange(size)
            g.couple(x, dim, i + off, out, dim, i)
        off += size


def _resize_split(node, new_shape, kept=None):
    x = node.args[0]
    nd = len(_old(x))
    dim = _nd(node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0), nd)
    if new_shape(x)[dim] == _old(x)[dim]:
        return
    sizes = [new_shape(g)[dim] for g in _getitems(node)]
    node.target = aten.split_with_sizes.default
    node.args = (x, sizes, dim)
    node.kwargs = {}


def _getitems(node):
    by_index = {u.args[1]: u for u in node.users if u.target is operator.getitem}
    if len(by_index) != len(node.meta["val"]):
        raise Unsupported("a split output is not read through getitem")
    return [by_index[i] for i in range(len(by_index))]


RULES.update({t: Rule(_split_rule, _resize_split) for t in _ops(
    "split.Tensor", "split_with_sizes.default", "chunk.default", "unsafe_split.Tensor",
    "split_with_sizes_copy.default", "split_copy.Tensor")})


@channel_rule(operator.getitem)
def _getitem(node, g):
    """Multi-output ops (split, native batch norm) map their getitem users themselves."""


@channel_rule(*_ops("slice.Tensor", "narrow.default"), resize=lambda node, new_shape, kept: _resize_slice(node, new_shape, kept))
def _slice(node, g):
    x = node.args[0]
    sx, so = g.shape(x), g.shape(node)
    nd = len(sx)
    dim, start, step = _slice_args(node, sx)
    for d in range(nd):
        if d != dim:
            g.same(x, d, node, d)
    if step != 1:
        g.block(x, dim, "a strided slice keeps this dim whole")
        return
    i = torch.arange(so[dim])
    g.couple(x, dim, i + start, node, dim, i)


def _slice_args(node, sx):
    nd = len(sx)
    if node.target is aten.narrow.default:
        dim, start = _nd(node.args[1], nd), node.args[2]
        start = start + sx[dim] if start < 0 else start
        return dim, start, 1
    args = list(node.args) + [None] * (5 - len(node.args))
    dim = _nd(args[1] if args[1] is not None else node.kwargs.get("dim", 0), nd)
    start = args[2] if args[2] is not None else node.kwargs.get("start", 0) or 0
    step = args[4] if args[4] is not None else node.kwargs.get("step", 1) or 1
    if not isinstance(start, int):
        raise Unsupported("a slice with a symbolic start is not mapped")
    start = max(0, start + sx[dim] if start < 0 else min(start, sx[dim]))
    return dim, start, step


def _resize_slice(node, new_shape, kept):
    x = node.args[0]
    sx, nx = _old(x), new_shape(x)
    dim, start, step = _slice_args(node, sx)
    if sx[dim] == nx[dim] and _old(node)[dim] == new_shape(node)[dim]:
        return
    k = kept(x, dim)
    keep_before = int((k < start).sum()) if k is not None else start
    length = new_shape(node)[dim]
    if node.target is aten.narrow.default:
        node.args = (x, dim, keep_before, length)
    else:
        node.args = (x, dim, keep_before, keep_before + length)
    node.kwargs = {}


def _pass_all_but(g, x, nd: int, dim: int, out) -> None:
    """Every dim of ``x`` but ``dim`` (which ``out`` lacks) is the same channel space in ``out``."""
    for od, d in enumerate(d for d in range(nd) if d != dim):
        g.same(x, d, out, od)


@channel_rule(aten.select.int)
def _select(node, g):
    x = node.args[0]
    nd = len(g.shape(x))
    dim = _nd(node.args[1], nd)
    g.block(x, dim, "select picks one index of this dim")
    _pass_all_but(g, x, nd, dim, node)


@channel_rule(*_ops("unbind.int"))
def _unbind(node, g):
    """q, k, v = t.unbind(0): the unbound dim is enumerated, the others pass through to each piece."""
    x = node.args[0]
    nd = len(g.shape(x))
    dim = _nd(node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0), nd)
    g.block(x, dim, "unbind enumerates this dim")
    for k in range(len(node.meta["val"])):
        out = g.getitem(node, k)
        if out is not None:
            _pass_all_but(g, x, nd, dim, out)


# -- views, permutes and reshapes -----------------------------------------------------


@channel_rule(*_ops("permute.default"))
def _permute(node, g):
    x = node.args[0]
    for od, d in enumerate(node.args[1]):
        g.same(x, _nd(d, len(g.shape(x))), node, od)


@channel_rule(*_ops("transpose.int", "t.default", "swapaxes.default"))
def _transpose(node, g):
    x = node.args[0]
    nd = len(g.shape(x))
    a, b = (0, 1) if node.target is aten.t.default else (_nd(node.args[1], nd), _nd(node.args[2], nd))
    perm = list(range(nd))
    if nd >= 2:
        perm[a], perm[b] = perm[b], perm[a]
    for od, d in enumerate(perm):
        g.same(x, d, node, od)


@channel_rule(*_ops("expand.default", "expand_as.default"), resize=lambda node, new_shape, kept: _resize_sizes(node, new_shape))
def _expand(node, g):
    g.broadcast(node, node.args[0])


_RESHAPES = _ops(
    "view.default", "reshape.default", "_unsafe_view.default", "flatten.using_ints", "unflatten.int",
    "squeeze.dim", "squeeze.dims", "squeeze.default", "unsqueeze.default", "view_copy.default",
)


@channel_rule(*_RESHAPES, resize=lambda node, new_shape, kept: _resize_sizes(node, new_shape))
def _reshape(node, g):
    """Match dims in blocks of equal product. A 1:1 block is the identity. A
    merge or split couples one factor of each side by the flat index
    (flatten->linear: feature j <-> channel j // (H*W); E -> (heads, hd):
    channel e <-> head e // hd), and the other factors stay whole. The factor
    is the outermost one, except that a leading factor enumerated by
    ``select`` (qkv's 3 in ``proj.unflatten(-1, (3, E))``) is skipped, so
    q, k and v stay coupled channel by channel. Channel shuffle's
    view-transpose-view gets its own permutation map."""
    x = node.args[0]
    sx, so = g.shape(x), g.shape(node)
    shuffle = _shuffle_pattern(node)
    if shuffle is not None:
        _channel_shuffle(node, shuffle, g)
        return
    if _shuffle_tail(node):
        return  # coupled by the head of the pattern
    for bi, bo in _reshape_blocks(sx, so):
        if len(bi) == 1 and len(bo) == 1:
            g.same(x, bi[0], node, bo[0])
            continue
        mi = _channel_factor(x, bi)
        mo = _channel_factor(node, bo)
        f = torch.arange(math.prod(sx[d] for d in bi))
        pairs = torch.unique(torch.stack([_digit(f, sx, bi, mi), _digit(f, so, bo, mo)]), dim=1)
        g.couple(x, bi[mi], pairs[0], node, bo[mo], pairs[1])
        for k, d in enumerate(bi):
            if k != mi:
                g.block(x, d, f"dim {d} is a factor of a reshape to {list(so)} that stays whole")
        for k, d in enumerate(bo):
            if k != mo:
                g.block(node, d, f"dim {d} is a factor of a reshape from {list(sx)} that stays whole")


def _digit(f, shape, dims, m):
    """The index along dims[m] of flat position f over dims."""
    inner = math.prod(shape[d] for d in dims[m + 1:])
    return (f // inner) % shape[dims[m]]


def _channel_factor(n, dims) -> int:
    for k, d in enumerate(dims[:-1]):
        if not _enumerated(n, d):
            return k
    return len(dims) - 1


def _enumerated(n, dim, depth=0) -> bool:
    """True when dim of n reaches ``select`` on that dim through shape-only ops."""
    if depth > 8 or not isinstance(n.meta.get("val"), torch.Tensor):
        return False
    nd = n.meta["val"].dim()
    for u in n.users:
        t = u.target
        if t is aten.select.int and _nd(u.args[1], nd) == dim:
            return True
        if t is aten.unbind.int and _nd(u.args[1] if len(u.args) > 1 else 0, nd) == dim:
            return True
        if t in _COPIES:
            nxt = dim
        elif t is aten.unsqueeze.default:
            nxt = dim + (1 if _nd(u.args[1], nd + 1) <= dim else 0)
        elif t in (aten.squeeze.dim, aten.squeeze.dims):
            ds = u.args[1] if isinstance(u.args[1], (list, tuple)) else [u.args[1]]
            ds = [_nd(d, nd) for d in ds if n.meta["val"].shape[_nd(d, nd)] == 1]
            if dim in ds:
                continue
            nxt = dim - sum(1 for d in ds if d < dim)
        elif t is aten.transpose.int:
            a, b = _nd(u.args[1], nd), _nd(u.args[2], nd)
            nxt = b if dim == a else a if dim == b else dim
        elif t is aten.permute.default:
            nxt = [_nd(p, nd) for p in u.args[1]].index(dim)
        else:
            continue
        if _enumerated(u, nxt, depth + 1):
            return True
    return False


_VIEWS = set(_ops("view.default", "reshape.default", "_unsafe_view.default"))
_SWAPS = set(_ops("transpose.int", "permute.default"))
_COPIES = set(_ops("contiguous.default", "clone.default"))


def _only_user(n):
    return next(iter(n.users)) if len(n.users) == 1 else None


def _shuffle_pattern(v1):
    """Channel shuffle: view (.., C, ..) -> (.., a, b, ..), swap the two, view back.

    Returns (d, a, b, tail view) or None."""
    if v1.target not in _VIEWS or not isinstance(v1.meta.get("val"), torch.Tensor):
        return None
    x = v1.args[0]
    if not isinstance(x, fx.Node) or not isinstance(x.meta.get("val"), torch.Tensor):
        return None
    sx, s1 = _old(x), _old(v1)
    if len(s1) != len(sx) + 1:
        return None
    d = next((k for k in range(len(sx)) if sx[k] != s1[k]), None)
    if d is None or s1[:d] != sx[:d] or s1[d + 2:] != sx[d + 1:] or s1[d] * s1[d + 1] != sx[d]:
        return None
    t = _only_user(v1)
    if t is None or t.target not in _SWAPS or t.args[0] is not v1:
        return None
    nd = len(s1)
    if t.target is aten.transpose.int:
        if sorted((_nd(t.args[1], nd), _nd(t.args[2], nd))) != [d, d + 1]:
            return None
    else:
        perm = [_nd(p, nd) for p in t.args[1]]
        want = list(range(nd))
        want[d], want[d + 1] = d + 1, d
        if perm != want:
            return None
    tail = _only_user(t)
    while tail is not None and tail.target in _COPIES:
        tail = _only_user(tail)
    if tail is None or tail.target not in _VIEWS or _old(tail) != sx:
        return None
    return d, s1[d], s1[d + 1], tail


def _shuffle_tail(v2) -> bool:
    n = v2.args[0]
    while isinstance(n, fx.Node) and n.target in _COPIES:
        n = n.args[0]
    if not isinstance(n, fx.Node) or n.target not in _SWAPS:
        return False
    head = n.args[0]
    hit = _shuffle_pattern(head) if isinstance(head, fx.Node) else None
    return hit is not None and hit[3] is v2


def _channel_shuffle(v1, pattern, g):
    """in[i*b + j] -> out[j*a + i]; the a copies of j form one unit, so a
    pruned input is still a view of (a, b') and the shuffle stays a shuffle."""
    d, a, b, tail = pattern
    x = v1.args[0]
    for k in range(len(g.shape(x))):
        if k != d:
            g.same(x, k, tail, k)
    i = torch.arange(a).repeat_interleave(b)
    j = torch.arange(b).repeat(a)
    g.couple(x, d, i * b + j, tail, d, j * a + i)
    g.couple(x, d, i * b + j, x, d, j)


def _reshape_blocks(sx, so):
    """[(input dims, output dims)] with equal products; size-1 dims are left out."""
    i = [d for d in range(len(sx)) if sx[d] != 1]
    o = [d for d in range(len(so)) if so[d] != 1]
    blocks, a, b = [], 0, 0
    while a < len(i) and b < len(o):
        bi, bo = [i[a]], [o[b]]
        pi, po = sx[i[a]], so[o[b]]
        a, b = a + 1, b + 1
        while pi != po:
            if pi < po:
                if a >= len(i):
                    raise Unsupported(f"cannot match reshape {list(sx)} -> {list(so)}")
                bi.append(i[a]); pi *= sx[i[a]]; a += 1
            else:
                if b >= len(o):
                    raise Unsupported(f"cannot match reshape {list(sx)} -> {list(so)}")
                bo.append(o[b]); po *= so[o[b]]; b += 1
        blocks.append((bi, bo))
    return blocks


def _resize_sizes(node, new_shape):
    """Rewrite a size list (view/reshape/expand/unflatten) from the pruned output shape."""
    t = node.target
    args = list(node.args)
    shuffle = _shuffle_pattern(node)
    if shuffle is not None:
        d, a, b, _ = shuffle
        sizes = list(args[1])
        sizes[d + 1] = new_shape(node.args[0])[d] // a
        args[1] = sizes
        node.args = tuple(args)
        return
    old, new = _old(node), new_shape(node)
    if old == new:
        return
    if t in _ops("flatten.using_ints", "squeeze.dim", "squeeze.dims", "squeeze.default", "unsqueeze.default"):
        return  # dims only: the shape follows the input
    if t is aten.unflatten.int:
        dim = _nd(args[1], len(_old(args[0])))
        k = len(args[2])
        args[2] = [s if (isinstance(s, int) and s == -1) or not isinstance(s, int) else new[dim + j]
                   for j, s in enumerate(args[2])][:k]
        node.args = tuple(args)
        return
    if t is aten.expand_as.default:
        return
    sizes = list(args[1])
    out = []
    for d, s in enumerate(sizes):
        if isinstance(s, int) and s != -1:
            out.append(new[d] if len(sizes) == len(new) else s)
        else:
            out.append(s)
    args[1] = out
    node.args = tuple(args)


# -- attention and misc -------------------------------------------------------------------


@channel_rule(aten.scaled_dot_product_attention.default)
def _sdpa(node, g):
    """q (..., L, E), k (..., S, E), v (..., S, Ev) -> out (..., L, Ev)."""
    q, k, v = node.args[:3]
    mask = node.args[3] if len(node.args) > 3 else node.kwargs.get("attn_mask")
    sq, sk, sv, so = g.shape(q), g.shape(k), g.shape(v), g.shape(node)
    nd = len(so)
    for t, s in ((q, sq), (k, sk), (v, sv)):
        for d in range(len(s) - 2):
            if s[d] == so[nd - len(s) + d]:
                g.same(t, d, node, nd - len(s) + d)
    g.same(q, len(sq) - 2, node, nd - 2)
    g.same(k, len(sk) - 2, v, len(sv) - 2)
    g.same(q, len(sq) - 1, k, len(sk) - 1)
    g.same(v, len(sv) - 1, node, nd - 1)
    if isinstance(mask, fx.Node):
        g.block_all(mask, "attention masks are not pruned")
    if (node.kwargs.get("scale") if len(node.args) < 7 else node.args[6]) is None:
        g.block(q, len(sq) - 1, "the default attention scale 1/sqrt(head dim) depends on this dim")
    g.block(k, len(sk) - 2, "attention keys are not pruned")


@channel_rule(aten.index.Tensor)
def _index(node, g):
    """table[idx] with one index tensor: the indexed dim is replaced, the rest pass through."""
    x, indices = node.args[0], list(node.args[1])
    hit = [k for k, t in enumerate(indices) if t is not None]
    if len(hit) != 1:
        raise Unsupported("advanced indexing with several index tensors is not mapped")
    p = hit[0]
    k = len(g.shape(indices[p]))
    nd = len(g.shape(x))
    g.block(x, p, "an indexed dim is gathered, not pruned")
    for d in range(nd):
        if d < p:
            g.same(x, d, node, d)
        elif d > p:
            g.same(x, d, node, d + k - 1)


@channel_rule(*_ops("pad.default", "constant_pad_nd.default"))
def _pad(node, g):
    """pad[2k], pad[2k+1] pad dim (nd - 1 - k); unpadded dims pass through."""
    x, pad = node.args[0], list(node.args[1])
    nd = len(g.shape(x))
    for d in range(nd):
        k = nd - 1 - d
        if any(pad[2 * k:2 * k + 2]):
            g.block(x, d, "pad changes this dim")
        else:
            g.same(x, d, node, d)


@channel_rule(*_ops("roll.default"))
def _roll(node, g):
    x = node.args[0]
    nd = len(g.shape(x))
    dims = node.args[2] if len(node.args) > 2 else node.kwargs.get("dims", [])
    dims = [_nd(d, nd) for d in ([dims] if isinstance(dims, int) else dims)]
    for d in range(nd):
        if d in dims:
            g.block(x, d, "roll shifts this dim")
        else:
            g.same(x, d, node, d)


@channel_rule(*_ops("new_zeros.default", "new_ones.default", "new_full.default", "new_empty.default",
                    "zeros.default", "ones.default", "full.default", "empty.memory_format", "arange.default",
                    "arange.start", "arange.start_step", "zeros_like.default", "ones_like.default"))
def _factory(node, g):
    g.block_all(node, "a constant made in the graph has a fixed size")
