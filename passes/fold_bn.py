"""``fold-bn``: fold inference-mode BatchNorm into the conv or linear before it.

For output channel ``c``, with ``s = gamma / sqrt(running_var + eps)``::

    W'[c] = W[c] * s[c]                          # scale every output channel
    b'[c] = (b[c] - running_mean[c]) * s[c] + beta[c]   # b = 0 when there was no bias

so ``bn(conv(x, W, b)) == conv(x, W', b')``. The arithmetic is done in
float64 and cast back to the parameter's dtype.
"""

from __future__ import annotations

import dataclasses
import logging
import operator
from typing import ClassVar

import torch
from torch import fx

from sparsec.errors import PassFailedError, node_location
from sparsec.ir import meta as M
from sparsec.ir import ops
from sparsec.passes.base import Pass, PassResult

log = logging.getLogger("sparsec.passes.fold_bn")

aten = torch.ops.aten

_FOLDABLE_BN = {aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default}
_CONVS = {aten.conv1d.default, aten.conv2d.default, aten.conv3d.default, aten.convolution.default}


@dataclasses.dataclass(frozen=True)
class FoldBatchNorm(Pass):
    """Fold inference-mode BatchNorm into the preceding conv (1d/2d/3d) or linear.

    Applies where the conv/linear output is read only by the BatchNorm, the
    conv is not transposed, and the weights and BN statistics are
    parameters or buffers. The conv's weight (and bias, added if it had
    none) are rewritten; a weight shared with another node is written to a
    new parameter instead. The conv gets ``sparsec.folded = [bn]``. Sites
    that do not apply are skipped and counted; run ``dce`` afterwards to
    drop the BatchNorm's now-unused tensors.

    Example: sparsec opt m.pt2 --pipeline fold-bn,dce
    """

    name: ClassVar[str] = "fold-bn"
    summary: ClassVar[str] = "fold inference-mode BatchNorm into the preceding conv or linear"
    changes_numerics: ClassVar[bool] = False
    idempotent: ClassVar[bool] = True

    def run(self, mod, ctx) -> PassResult:
        # Match every site first, so corrupt statistics fail the pass before anything changed.
        sites: list[_Site] = []
        skipped = 0
        for bn in list(mod.graph.nodes):
            if bn.op != "call_function" or bn.target not in ops.BATCH_NORM:
                continue
            site = _match(mod, bn)
            if isinstance(site, str):
                skipped += 1
                log.debug("fold-bn: skipping %s: %s", bn.name, site)
            else:
                sites.append(site)
        for site in sites:
            _fold(mod, site)
        return PassResult(modified=bool(sites), stats={"folded": len(sites), "skipped": skipped})


@dataclasses.dataclass(frozen=True)
class _Site:
    bn: fx.Node
    prod: fx.Node  # the conv or linear
    readers: tuple[fx.Node, ...]  # the nodes whose uses become uses of prod
    weight: fx.Node
    bias: fx.Node | None
    scale: torch.Tensor  # gamma / sqrt(var + eps), float64
    mean: torch.Tensor  # float64
    beta: torch.Tensor  # float64


def _match(mod, bn: fx.Node) -> _Site | str:
    """The fold site at ``bn``, or why there is none."""
    if bn.target not in _FOLDABLE_BN:
        return f"{ops.op_name(bn.target)} is not folded"
    p = ops.batch_norm_params(bn)
    if p["training"]:
        log.warning("fold-bn: %s is in training mode; call model.eval() before tracing to fold it",
                    node_location(bn))
        return "batch norm in training mode"
    readers: tuple[fx.Node, ...] = (bn,)
    if bn.target is aten._native_batch_norm_legit_no_training.default:
        if any(u.target is not operator.getitem or (u.args[1] != 0 and u.users) for u in bn.users):
            return "its mean/invstd outputs are read"
        readers = tuple(u for u in bn.users if u.args[1] == 0)
    prod = p["input"]
    if not isinstance(prod, fx.Node) or prod.op != "call_function":
        return "its input is not a conv or linear"
    if prod.target in _CONVS:
        cp = ops.conv_params(prod)
        if cp["transposed"]:
            return "the conv is transposed"
        w_node, b_node = cp["weight"], cp["bias"]
    elif prod.target in ops.LINEAR:
        a = ops.args_of(prod)
        w_node, b_node = a["weight"], a["bias"]
        val = prod.meta.get("val")
        if not isinstance(val, torch.Tensor) or val.dim() != 2:
            return "the linear output is not 2-D, so BN's channel dim is not its feature dim"
    else:
        return f"its input comes from {ops.op_name(prod.target)}, not a conv or linear"
    if len(prod.users) != 1:
        return f"'{prod.name}' has other users besides the batch norm"
    if not _is_attr(p["running_mean"]) or not _is_attr(p["running_var"]):
        return "its running statistics are not buffers"
    if any(p[k] is not None and not _is_attr(p[k]) for k in ("weight", "bias")):
        return "its weight or bias is computed, not a parameter"
    if not _is_attr(w_node) or (b_node is not None and not _is_attr(b_node)):
        return f"'{prod.name}' has computed weights"

    C = mod.get_param(w_node.target).shape[0]

    def f64(node: fx.Node | None, default: float) -> torch.Tensor:
        if node is None:
            return torch.full((C,), default, dtype=torch.float64)
        return mod.get_param(node.target).detach().double()

    mean, var = f64(p["running_mean"], 0.0), f64(p["running_var"], 1.0)
    gamma, beta = f64(p["weight"], 1.0), f64(p["bias"], 0.0)
    if any(t.shape != (C,) for t in (mean, var, gamma, beta)):
        return f"channel count mismatch: the weight has {C} output channels, the statistics {tuple(mean.shape)}"
    denom = var + float(p["eps"])
    ok = (denom > 0) & torch.isfinite(denom)
    if not bool(ok.all()):
        bad = int((~ok).nonzero()[0])
        raise PassFailedError(
            "cannot fold a batch norm whose running_var + eps is not positive and finite",
            where=node_location(bn),
            expected="running_var + eps > 0 for every channel",
            actual=f"channel {bad}: running_var={var[bad].item():g}, eps={float(p['eps']):g} "
            f"(buffer '{p['running_var'].target}')",
            fix="the BatchNorm statistics are corrupt: re-calibrate or reload them, or run without fold-bn",
        )
    scale = gamma / denom.sqrt()
    return _Site(bn, prod, readers, w_node, b_node, scale, mean, beta)


def _fold(mod, site: _Site) -> None:
    """W' = W * scale (per output channel); b' = (b - mean) * scale + beta."""
    prod, graph = site.prod, mod.graph
    W = mod.get_param(site.weight.target)
    new_w = (W.detach().double() * site.scale.reshape(-1, *([1] * (W.dim() - 1)))).to(W.dtype)
    _write(mod, prod, "weight", site.weight, new_w, f"{site.weight.target}_folded")
    if site.bias is not None:
        b = mod.get_param(site.bias.target)
        new_b = ((b.detach().double() - site.mean) * site.scale + site.beta).to(b.dtype)
        _write(mod, prod, "bias", site.bias, new_b, f"{site.bias.target}_folded")
    else:
        name = mod.fresh_param_name(_sibling(site.weight.target, "bias"))
        mod.set_param(name, (site.beta - site.mean * site.scale).to(W.dtype))  # b = 0
        with graph.inserting_before(prod):
            ops.set_arg(prod, "bias", graph.get_attr(name))
    for r in site.readers:
        r.replace_all_uses_with(prod)
        if r is not site.bn:
            graph.erase_node(r)
    for u in list(site.bn.users):  # unread getitems of the mean/invstd outputs
        graph.erase_node(u)
    graph.erase_node(site.bn)
    prev = M.get(prod, M.FoldedFrom)
    M.put(prod, M.FoldedFrom((prev.nodes if prev else ()) + (site.bn.name,)))


def _is_attr(n) -> bool:
    return isinstance(n, fx.Node) and n.op == "get_attr"


def _sibling(target: str, leaf: str) -> str:
    head, _, _ = target.rpartition(".")
    return f"{head}.{leaf}" if head else leaf


def _shared(mod, node: fx.Node) -> bool:
    """Is the tensor behind get_attr ``node`` read by anything besides its one user?"""
    if len(node.users) != 1:
        return True
    t = mod.get_param(node.target)
    for other in mod.graph.nodes:
        if other.op != "get_attr" or other is node:
            continue
        if other.target == node.target:
            return True
        try:
            o = mod.get_param(other.target)
        except AttributeError:
            continue
        if isinstance(o, torch.Tensor) and o.numel() and t.numel() and _storage(o) == _storage(t):
            return True
    return False


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def _write(mod, prod: fx.Node, arg: str, node: fx.Node, value: torch.Tensor, fresh_base: str) -> None:
    """Give ``prod`` the tensor ``value`` for ``arg``: in place, or as a new param if shared."""
    if not _shared(mod, node):
        mod.set_param(node.target, value)
        return
    name = mod.fresh_param_name(fresh_base)
    mod.set_param(name, value)
    with mod.graph.inserting_before(prod):
        ga = mod.graph.get_attr(name)
    ops.set_arg(prod, arg, ga)
