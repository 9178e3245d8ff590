"""``Module.verify()``: the IR invariants, checked after every pass by default.

1. ``graph.lint()`` passes;
2. every node that produces a value has shape metadata (``meta['val']``);
3. every weight marked 2:4 really is 2:4;
4. channel counts agree across conv/linear/norm edges;
5. no layer has zero channels;
6. every node assigned to a backend is supported there.
"""

from __future__ import annotations

import torch
from torch import fx

from sparsec.errors import VerificationError, node_location
from sparsec.ir import meta as M
from sparsec.ir import ops


def verify(mod) -> None:
    try:
        mod.graph.lint()
    except Exception as exc:
        raise VerificationError(
            "the graph is malformed (fx lint failed)", actual=str(exc),
            fix="a pass left a dangling or misordered node; run with --print-ir-after-all",
        ) from exc
    from sparsec.ir.module import is_valueless

    for node in mod.graph.nodes:
        if is_valueless(node):
            continue
        if node.meta.get("val") is None:
            raise VerificationError(
                "a node has no shape metadata", where=node_location(node),
                fix="passes must leave the graph propagatable; the pass manager refreshes shapes after each pass",
            )
        _check_zero_channels(node)
        if ops.is_aten(node):
            _check_channels(mod, node)
        sp = M.get(node, M.Sparsity24)
        if sp is not None:
            _check_24(mod, node, sp)
        be = M.get(node, M.BackendAssignment)
        if be is not None:
            _check_backend(node, be)


def _check_zero_channels(node: fx.Node) -> None:
    val = node.meta["val"]
    vals = val if isinstance(val, (tuple, list)) else (val,)
    for v in vals:
        if isinstance(v, torch.Tensor) and v.dim() >= 2 and any(_is_zero(d) for d in v.shape[1:]):
            raise VerificationError(
                "a layer has zero channels", where=node_location(node),
                actual=f"shape {tuple(v.shape)}",
                fix="lower the pruning ratio or raise min_channels so every layer keeps at least one channel",
            )


def _is_zero(d) -> bool:
    if isinstance(d, torch.SymInt):  # never guard on a symbolic dim (int() would specialise it)
        return d.node.maybe_as_int() == 0
    try:
        return int(d) == 0
    except Exception:
        return False


def _shape(node) -> tuple | None:
    if isinstance(node, fx.Node) and isinstance(node.meta.get("val"), torch.Tensor):
        return tuple(node.meta["val"].shape)
    return None


def _check_channels(mod, node: fx.Node) -> None:
    if node.target in ops.CONV:
        p = ops.conv_params(node)
        x, w = _shape(p["input"]), _shape(p["weight"])
        if x is None or w is None or p["transposed"]:
            return
        cin = w[1] * p["groups"]
        if int(x[1]) != cin:
            raise VerificationError(
                "conv input channels disagree with its weight", where=node_location(node),
                expected=f"{cin} input channels (weight {w}, groups={p['groups']})", actual=f"input {x}",
            )
        b = _shape(p["bias"])
        if b is not None and b[0] != w[0]:
            raise VerificationError(
                "conv bias length disagrees with its output channels", where=node_location(node),
                expected=str(w[0]), actual=str(b[0]),
            )
    elif node.target in ops.LINEAR:
        a = ops.args_of(node)
        x, w = _shape(a["input"]), _shape(a["weight"])
        if x is not None and w is not None and int(x[-1]) != w[1]:
            raise VerificationError(
                "linear input features disagree with its weight", where=node_location(node),
                expected=f"{w[1]} features (weight {w})", actual=f"input {x}",
            )
    elif node.target in ops.BATCH_NORM:
        p = ops.batch_norm_params(node)
        x = _shape(p["input"])
        for name in ("weight", "bias", "running_mean", "running_var"):
            s = _shape(p[name])
            if x is not None and s is not None and s[0] != int(x[1]):
                raise VerificationError(
                    f"batch norm {name} length disagrees with its input channels", where=node_location(node),
                    expected=str(int(x[1])), actual=str(s[0]),
                )


def _check_24(mod, node: fx.Node, sp: M.Sparsity24) -> None:
    if node.op != "get_attr":
        raise VerificationError("2:4 metadata on a node that is not a weight", where=node_location(node))
    w = mod.get_param(node.target)
    if not is_24_sparse(w, sp.dim):
        try:
            actual = f"{count_24_violations(w, sp.dim)} groups with more"
        except (ValueError, IndexError) as exc:  # the dim cannot be split into groups of 4
            actual = f"{exc} (weight shape {tuple(w.shape)})"
        raise VerificationError(
            "a weight marked 2:4 is not 2:4 sparse", where=node_location(node),
            expected=f"at most 2 non-zeros in every 4 consecutive elements along dim {sp.dim}",
            actual=actual,
            fix="re-run sparsify-2-4, or re-apply the masks after training",
        )


def _groups_of_4(w: torch.Tensor, dim: int) -> torch.Tensor:
    w = w.detach().movedim(dim, -1)
    if w.shape[-1] % 4:
        raise ValueError(f"dim {dim} of size {w.shape[-1]} is not a multiple of 4")
    return w.reshape(-1, 4)


def count_24_violations(w: torch.Tensor, dim: int = 1) -> int:
    return int(((_groups_of_4(w, dim) != 0).sum(-1) > 2).sum())


def is_24_sparse(w: torch.Tensor, dim: int = 1) -> bool:
    try:
        return count_24_violations(w, dim) == 0
    except ValueError:
        return False


def _check_backend(node: fx.Node, be: M.BackendAssignment) -> None:
    from sparsec.registry import registry

    backend = registry().get("backend", be.backend)()
    verdict = backend.support(node)
    if not verdict:
        raise VerificationError(
            f"node assigned to backend '{be.backend}', which does not support it",
            where=node_location(node), actual=verdict.reason,
            fix="re-run the partitioner, or leave this node in PyTorch",
        )
