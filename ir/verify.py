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
    """The weight is 2:4 along ``sp.dim``, and that dim is what its layers reduce over.

    A conv weight (Cout, Cin, kh, kw) is checked as (Cout, kh, kw, Cin): each
    group of 4 is 4 consecutive input channels of one output channel at one
    (kh, kw) tap, exactly as an NHWC implicit GEMM reads K = kh*kw*Cin.
    """
    if node.op != "get_attr":
        raise VerificationError("2:4 metadata on a node that is not a weight", where=node_location(node))
    w = mod.get_param(node.target)
    if not is_24_sparse(w, sp.dim):
        try:
            count = count_24_violations(w, sp.dim)
            actual = f"{count} groups with more than 2 non-zeros; the first is {first_24_violation(w, sp.dim)}"
        except (ValueError, IndexError) as exc:  # the dim cannot be split into groups of 4
            actual = f"{exc} (weight shape {tuple(w.shape)})"
        raise VerificationError(
            "a weight marked 2:4 is not 2:4 sparse", where=node_location(node),
            expected=f"at most 2 non-zeros in every 4 consecutive elements along dim {sp.dim}",
            actual=actual,
            fix="re-run sparsify-2-4, or re-apply the masks after training",
        )
    for user in node.users:
        if user.target in ops.CONV or user.target in ops.LINEAR:
            a = ops.args_of(user)
            if a["weight"] is node and sp.dim != 1:
                raise VerificationError(
                    "a weight marked 2:4 is grouped along a dim its layer does not reduce over",
                    where=node_location(node),
                    expected=f"dim 1 (the input channels that {ops.op_name(user.target)} '{user.name}' reduces over)",
                    actual=f"dim {sp.dim}",
                    fix="mark the weight with Sparsity24(dim=1); sparsify-2-4 does",
                )


def _groups_of_4(w: torch.Tensor, dim: int) -> torch.Tensor:
    """(groups, 4): the weight with ``dim`` moved last (a conv weight becomes (Cout, kh, kw, Cin)), cut in 4s."""
    w = w.detach().movedim(dim, -1)
    if w.shape[-1] % 4:
        raise ValueError(f"dim {dim} of size {w.shape[-1]} is not a multiple of 4")
    return w.reshape(-1, 4)


def count_24_violations(w: torch.Tensor, dim: int = 1) -> int:
    return int(((_groups_of_4(w, dim) != 0).sum(-1) > 2).sum())


def first_24_violation(w: torch.Tensor, dim: int = 1) -> str | None:
    """Where the first group with more than 2 non-zeros is, as an index into the weight, or None."""
    groups = _groups_of_4(w, dim)
    bad = ((groups != 0).sum(-1) > 2).nonzero()
    if len(bad) == 0:
        return None
    moved = w.movedim(dim, -1).shape  # (Cout, kh, kw, Cin) for a conv weight
    flat = int(bad[0]) * 4
    index = []
    for size in reversed(moved):
        index.append(flat % size)
        flat //= size
    index.reverse()
    start = index[-1]
    index = [str(i) for i in index[:-1]]
    index.insert(dim, f"{start}:{start + 4}")
    nz = int((groups[int(bad[0])] != 0).sum())
    return f"weight[{', '.join(index)}] with {nz} non-zeros"


def is_24_sparse(w: torch.Tensor, dim: int = 1) -> bool:
    try:
        return count_24_violations(w, dim) == 0
    except ValueError:
        return False


def _check_backend(node: fx.Node, be: M.BackendAssignment) -> None:
    from sparsec.backends.support import checker_for_backend  # the backend, or its declared support table

    verdict = checker_for_backend(be.backend).support(node)
    if not verdict:
        raise VerificationError(
            f"node assigned to backend '{be.backend}', which does not support it",
            where=node_location(node), actual=verdict.reason,
            fix="re-run the partitioner, or leave this node in PyTorch",
        )
