"""Which conv and linear layers go 2:4, and why: eligibility and the decision.

Each conv or linear node is one candidate, named by its weight's module path
(``layer1.0.conv1``). The first rule that fails gives its reason:

1. the weight is a parameter (``get_attr``), not computed, nor shared with another node;
2. ``layers=`` patterns (fnmatch; ``!pattern`` excludes) admit it;
3. it is a plain conv: not transposed, not depthwise, not grouped;
4. the 2:4 groups fit: a conv's Cin (the groups run along Cin inside each
   (kh, kw) tap) or a linear's K is a multiple of 4 -- this is what keeps a
   3-channel stem conv dense;
5. the shape limits (target's ``sparse[dtype]``, or the pass options) hold:
   K and M alignment, then the minimum sizes;
6. the cost model says sparse: ``measured`` (the tuning DB; a kxk conv stays
   dense, since its 2:4 path adds an im2col that the DB's GEMM timings leave
   out), ``shape`` (the limits alone) or ``off`` (every layer that passed 1-4).

GEMM convention: M = Cout, K = kh*kw*Cin, N = tokens. The target's
:class:`~sparsec.backends.target.SparseLimits` name the weight's rows (Cout)
``n``, after torch's N x K sparse operand: ``n_multiple``/``min_n`` apply to M here.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math

import torch
from torch import fx

from sparsec.ir import meta as M
from sparsec.ir import ops
from sparsec.ir.analysis import _dim, _size_hints
from sparsec.ir.verify import is_24_sparse
from sparsec.passes.fold_bn import _shared
from sparsec.passes.sparsify import costmodel as C


@dataclasses.dataclass(frozen=True)
class Limits:
    """Shape limits of the sparse kernels; ``source`` says where they come from."""

    k_multiple: int
    m_multiple: int
    min_k: int
    min_m: int
    source: str

    def __str__(self) -> str:
        return f"k%{self.k_multiple}, m%{self.m_multiple}, k>={self.min_k}, m>={self.min_m}"


@dataclasses.dataclass(frozen=True)
class Settings:
    """What a decision depends on, resolved from the pass options and the target."""

    cost_model: str
    dtype: str
    limits: Limits | None
    db: C.TuningDB | None
    patterns: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Decision:
    """The verdict on one conv/linear node."""

    node: str  # the conv/linear node
    weight: str | None  # its weight's get_attr node name (None when computed)
    target: str | None  # the weight parameter's dotted name
    layer: str  # module path, e.g. "layer1.0.conv1"
    gemm: C.GemmShape | None
    sparse: bool
    reason: str
    already: bool = False  # the weight already carries a valid 2:4 mark

    def __str__(self) -> str:
        return ("sparse: " if self.sparse else "dense: ") + self.reason


_LAYERS = ops.CONV | ops.LINEAR | ops.CONV_TRANSPOSE


def candidates(mod) -> list[fx.Node]:
    return [n for n in mod.graph.nodes if n.op == "call_function" and n.target in _LAYERS]


def layer_name(weight: fx.Node | None, node: fx.Node) -> str:
    if weight is None or weight.op != "get_attr":
        return node.name
    return weight.target[: -len(".weight")] if weight.target.endswith(".weight") else weight.target


def gemm_shape(mod, node: fx.Node, w: torch.Tensor, dtype: str, hints: dict | None = None) -> C.GemmShape:
    """M = Cout, K = kh*kw*Cin, N = tokens (every output dim but the channels)."""
    hints = _size_hints(mod) if hints is None else hints
    out = node.meta["val"].shape
    ch = 1 if node.target in ops.CONV else len(out) - 1
    n = math.prod(_dim(d, hints) for i, d in enumerate(out) if i != ch)
    return C.GemmShape(int(w.shape[0]), int(math.prod(w.shape[1:])), int(n), dtype)


def admitted(names: tuple[str, ...], patterns: tuple[str, ...]) -> str | None:
    """None if ``patterns`` admit a layer with these names, else why not."""
    includes = [p for p in patterns if not p.startswith("!")]
    for p in patterns:
        if p.startswith("!") and any(fnmatch.fnmatchcase(n, p[1:]) for n in names):
            return f"excluded by layers pattern '{p}'"
    if includes and not any(fnmatch.fnmatchcase(n, p) for n in names for p in includes):
        return f"matches none of the layers patterns {list(includes)}"
    return None


def decide(mod, s: Settings) -> list[Decision]:
    hints = _size_hints(mod)
    return [_decide(mod, node, s, hints) for node in candidates(mod)]


def _decide(mod, node: fx.Node, s: Settings, hints: dict) -> Decision:
    a = ops.args_of(node)
    w_node = a["weight"]
    is_conv = node.target in ops.CONV
    wn = w_node if isinstance(w_node, fx.Node) else None
    name = layer_name(wn, node)

    def verdict(sparse: bool, reason: str, gemm=None, already=False) -> Decision:
        return Decision(node.name, wn.name if wn is not None else None,
                        wn.target if wn is not None and wn.op == "get_attr" else None,
                        name, gemm, sparse, reason, already)

    if wn is None or wn.op != "get_attr":
        return verdict(False, "its weight is computed, not a parameter")
    why = admitted((name, node.name, wn.target), s.patterns)
    if why:
        return verdict(False, why)
    w = mod.get_param(wn.target)
    if node.target in ops.CONV_TRANSPOSE:
        return verdict(False, "transposed conv: not a GEMM with the weight as its A operand")
    if is_conv:
        p = ops.conv_params(node)
        if p["transposed"]:
            return verdict(False, "transposed conv: not a GEMM with the weight as its A operand")
        groups = int(p["groups"])
        if groups > 1:
            cin = int(w.shape[1]) * groups
            if groups == cin:
                return verdict(False, f"depthwise conv (groups={groups}): no reduction over channels to sparsify")
            return verdict(False, f"grouped conv (groups={groups}): the 2:4 kernels take dense GEMMs only")
    if _shared(mod, wn):
        return verdict(False, "its weight is shared with another node; masking it would change that one too")
    gemm = gemm_shape(mod, node, w, s.dtype, hints)
    cin = int(w.shape[1])
    if cin % 4:
        if is_conv and gemm.k != cin:
            return verdict(False, f"Cin={cin} is not a multiple of 4: 2:4 groups along Cin would straddle the "
                                  f"(kh, kw) taps of K={gemm.k} (a stem conv stays dense)", gemm)
        return verdict(False, f"K={gemm.k} is not a multiple of 4: it cannot be cut into groups of 4", gemm)
    mark = M.get(wn, M.Sparsity24)
    if mark is not None and mark.dim == 1 and is_24_sparse(w, 1):
        return verdict(True, mark.reason or "already 2:4", gemm, already=True)
    if s.cost_model == "off":
        return verdict(True, "cost model off: every layer that can hold a 2:4 pattern goes sparse", gemm)
    lim = s.limits
    if lim is not None:
        if gemm.k % lim.k_multiple:
            return verdict(False, f"K={gemm.k} is not a multiple of {lim.k_multiple} ({lim.source})", gemm)
        if gemm.m % lim.m_multiple:
            return verdict(False, f"M=Cout={gemm.m} is not a multiple of {lim.m_multiple} ({lim.source})", gemm)
        if gemm.k < lim.min_k:
            return verdict(False, f"K={gemm.k} < min-k {lim.min_k} ({lim.source}): too small to gain", gemm)
        if gemm.m < lim.min_m:
            return verdict(False, f"M=Cout={gemm.m} < min-m {lim.min_m} ({lim.source}): too small to gain", gemm)
    if s.cost_model == "shape":
        within = f"meets the {lim.source} limits ({lim})" if lim is not None else "has no shape limits to meet"
        return verdict(True, f"shape: {gemm} {within}; no timing consulted", gemm)
    if is_conv and gemm.k != cin:
        # The tuning DB times GEMMs; a kxk conv's 2:4 path also pays an NHWC im2col, which no
        # measurement covers (on ResNet-50 bs256, im2col + 2:4 lost to cuDNN: e2e_h100.json).
        return verdict(False, f"kxk conv: its 2:4 path adds an im2col of K={gemm.k} that the tuning DB does "
                              "not measure; stays dense (cost-model=shape marks it anyway)", gemm)
    v = C.measured(s.db, gemm)
    return verdict(v.sparse, v.reason, gemm)
