"""Lowering convs and linears to the CUTLASS GEMM ops, in NHWC.

Every node :func:`plan` accepts becomes one ``sparsec::gemm24`` (its weight
carries a valid 2:4 mark) or ``sparsec::gemm_dense`` call, with the bias,
activation and residual add fused into the kernel's epilogue
``act(acc + bias + residual)``. The GEMM convention is the backend's: the
weight is the A operand, M = Cout, K = kh*kw*Cin, N = tokens; activations are
NHWC so that ``x`` is row-major [N, K]:

* 1x1 stride-1 conv: ``permute(x, NHWC)`` then the GEMM;
* strided 1x1 conv: a strided slice of the NHWC view, then the GEMM;
* kxk conv: an NHWC im2col (``pad``, ``unfold`` over H and W, taps before
  channels, so K runs (kh, kw, Cin) -- the order the 2:4 groups were chosen
  in), then the GEMM;
* linear / ``fused_linear``: the GEMM on ``x [..., K]`` as is;
* depthwise conv (groups = Cin = Cout; k 3, 5 or 7, stride 1 or 2, C a
  multiple of 8): one ``sparsec::dwconv2d`` call (:mod:`.depthwise`, a direct
  NHWC kernel), bias, activations and residual fused;
* ``sparsec.squeeze_excite`` (C a multiple of 8): one ``sparsec::squeeze_excite_nhwc``
  call (:mod:`.squeeze_excite`: channel sums, both fcs, the gated scale);
* the stem (Cin 1 to 4, at most :data:`.stem.MAX_MACS` multiply-adds per output, e.g. a
  3x3 conv of the image): one ``sparsec::stem_conv`` call (:mod:`.stem`), reading the
  image in its own layout (the graph's channels-last copy of it goes away), bias and
  activation fused;
* ``sparsec.conv2d_pool`` of the image (Cin 1 to 4: ``fuse-conv-pool`` fused a stem
  with its pool, e.g. ResNet's 7x7 conv, ReLU and 3x3 max-pool): one
  ``sparsec::conv_pool_nhwc`` call (:mod:`.conv_pool`, tensor cores), reading the
  image as it is.

The GEMM output [N, Ho, Wo, Cout] goes back to NCHW through a ``permute``
(a channels-last view, no copy); back-to-back ``permute``s between two
lowered convs cancel, so chains of convs stay NHWC. What the epilogue cannot
take (``act`` *and* ``act2`` without a residual, an activation before the
residual add, ``gelu_tanh``) runs after the kernel in PyTorch.

Weights are packed offline (``runtime.pack_weight`` layout, on the CPU) and
held as buffers of the graph module, so ``torch.export`` stores them in the
program. Grouped, dilated and transposed convs, 7x7 stems without a fused pool
(compute-bound: cuDNN's tensor cores beat the CUDA-core stem kernel) and the
depthwise convs the kernel does not take stay in PyTorch (cuDNN); :func:`plan`
says why.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import torch
from torch import fx

from sparsec import knobs
from sparsec.backends.target import Unsupported
from sparsec.errors import UsageError
from sparsec.ir import meta as M
from sparsec.ir import ops
from sparsec.ir.verify import is_24_sparse

log = logging.getLogger("sparsec.backends.cutlass")

aten = torch.ops.aten

# fused-op activation name -> kernel epilogue activation (gelu_tanh has no kernel epilogue)
KERNEL_ACT = {"none": "identity", "relu": "relu", "relu6": "relu6", "silu": "silu", "gelu": "gelu",
              "hardswish": "hardswish", "sigmoid": "sigmoid"}
_DTYPE = {torch.float16: "fp16", torch.bfloat16: "bf16"}


def _fused():
    from sparsec.passes.fusion import ops as F

    return F


def _val(n):
    v = n.meta.get("val") if isinstance(n, fx.Node) else None
    return v if isinstance(v, torch.Tensor) else None


def _pair(v) -> tuple[int, int]:
    v = list(v) if isinstance(v, (list, tuple)) else [v]
    return (int(v[0]), int(v[-1]))


@dataclasses.dataclass(frozen=True)
class GemmPlan:
    """How one node becomes a GEMM."""

    kind: str  # "linear" | "conv1x1" | "conv1x1-strided" | "conv-im2col"
    x: fx.Node
    weight: fx.Node
    bias: object
    residual: object
    act: str
    act2: str
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)


def plan(node: fx.Node) -> "GemmPlan | DwPlan | StemPlan | SePlan | ConvPoolPlan | Unsupported":
    """How the lowering takes ``node``, or why it stays in PyTorch (dtype checks are the support table's)."""
    F = _fused()
    t = node.target
    if node.op != "call_function":
        return Unsupported(f"'{node.op}' nodes are not lowered")
    if t in ops.LINEAR or t is F.fused_linear:
        a = ops.args_of(node)
        x = a.get("x", a.get("input"))
        w = a["weight"]
        if not isinstance(w, fx.Node) or w.op != "get_attr":
            return Unsupported("the weight is computed, not a parameter: kernels take packed constant weights")
        return GemmPlan("linear", x, w, a.get("bias"), a.get("residual"), a.get("act", "none"), a.get("act2", "none"))
    if t is F.squeeze_excite:
        return _se_plan(node)
    if t is F.conv2d_pool:
        return _conv_pool_plan(node)
    if t in ops.MATMUL:
        return Unsupported(f"{ops.op_name(t)}: both operands are activations; the kernels take packed constant weights")
    if not (t in ops.CONV or t is F.fused_conv2d):
        return Unsupported(f"{ops.op_name(t)}: not a conv or linear")
    if t in ops.CONV:
        p = ops.conv_params(node)
        if p["transposed"]:
            return Unsupported("transposed conv: stays in PyTorch")
        x, w, bias, res, act, act2 = p["input"], p["weight"], p["bias"], None, "none", "none"
        stride, padding, dilation, groups = p["stride"], p["padding"], p["dilation"], int(p["groups"])
    else:
        a = ops.args_of(node)
        x, w, bias, res, act, act2 = a["x"], a["weight"], a["bias"], a["residual"], a["act"], a["act2"]
        stride, padding, dilation, groups = a["stride"], a["padding"], a["dilation"], int(a["groups"])
    if not isinstance(w, fx.Node) or w.op != "get_attr":
        return Unsupported("the weight is computed, not a parameter: kernels take packed constant weights")
    wv = _val(w)
    if wv is None or wv.dim() != 4:
        return Unsupported("only 2-D convs are lowered")
    if groups != 1:
        cin = int(wv.shape[1]) * groups
        if groups == cin and int(wv.shape[0]) == cin:
            return _depthwise_plan(x, w, wv, bias, res, act, act2, stride, padding, dilation)
        return Unsupported(f"grouped (groups={groups}) conv: no kernel for it in this version; stays dense in PyTorch "
                           "(cuDNN)")
    if isinstance(padding, str) or any(d != 1 for d in _pair(dilation)):
        return Unsupported(f"dilation {list(_pair(dilation))} / padding {padding!r}: the NHWC im2col takes dilation 1 "
                           "and explicit padding; stays in PyTorch (cuDNN)")
    if int(wv.shape[1]) < 8:
        return _stem_plan(x, w, wv, bias, res, act, act2, stride, padding)
    kh, kw = int(wv.shape[2]), int(wv.shape[3])
    s, pd = _pair(stride), _pair(padding)
    if (kh, kw) == (1, 1) and pd == (0, 0):
        kind = "conv1x1" if s == (1, 1) else "conv1x1-strided"
    else:
        kind = "conv-im2col"
    return GemmPlan(kind, x, w, bias, res, act, act2, s, pd)


@dataclasses.dataclass(frozen=True)
class DwPlan:
    """How a depthwise conv becomes one ``sparsec::dwconv2d`` call (:mod:`.depthwise`), epilogue fused."""

    x: fx.Node
    weight: fx.Node
    bias: object
    residual: object
    act: str
    act2: str
    k: int
    stride: int
    padding: tuple[int, int]
    kind: str = "depthwise"


def _depthwise_plan(x, w, wv, bias, res, act, act2, stride, padding, dilation) -> DwPlan | Unsupported:
    from sparsec.backends.cutlass import depthwise as D

    c, kh, kw = int(wv.shape[0]), int(wv.shape[2]), int(wv.shape[3])
    s = _pair(stride)
    why = None
    mode = knobs.get("cutlass_depthwise")
    if mode not in ("auto", "tiled", "direct", "rows", "none"):
        raise UsageError(f"SPARSEC_CUTLASS_DEPTHWISE={mode!r}", expected="auto, tiled, direct, rows or none")
    if mode == "none":
        return Unsupported("depthwise conv: stays cuDNN (SPARSEC_CUTLASS_DEPTHWISE=none)")
    if kh != kw or kh not in D.KERNEL_SIZES:
        why = f"a {kh}x{kw} filter (the kernel takes square {', '.join(map(str, D.KERNEL_SIZES))})"
    elif s[0] != s[1] or s[0] not in D.STRIDES:
        why = f"stride {list(s)} (the kernel takes 1 or 2, the same in H and W)"
    elif isinstance(padding, str) or any(d != 1 for d in _pair(dilation)):
        why = f"dilation {list(_pair(dilation))} / padding {padding!r} (the kernel takes dilation 1, explicit padding)"
    elif c % D.VEC:
        why = f"C={c} (the kernel reads 16-byte vectors: C a multiple of {D.VEC})"
    if why:
        return Unsupported(f"depthwise conv with {why}: stays dense in PyTorch (cuDNN)")
    return DwPlan(x, w, bias, res, act, act2, kh, s[0], _pair(padding))


@dataclasses.dataclass(frozen=True)
class StemPlan:
    """How a conv of few input channels becomes one ``sparsec::stem_conv`` call (:mod:`.stem`)."""

    x: fx.Node
    weight: fx.Node
    bias: object
    act: str
    k: int
    stride: int
    padding: tuple[int, int]
    kind: str = "stem"


def _stem_plan(x, w, wv, bias, res, act, act2, stride, padding) -> StemPlan | Unsupported:
    from sparsec.backends.cutlass import stem as ST

    cout, cin, kh, kw = (int(d) for d in wv.shape)
    s = _pair(stride)
    if act != "none" and act2 != "none":
        why = f"two activations ({act}, {act2})"
    elif res is not None:
        why = "a residual add"
    elif kh != kw or kh not in ST.KERNEL_SIZES or s[0] != s[1] or s[0] not in ST.STRIDES:
        why = f"a {kh}x{kw} filter, stride {list(s)} (the kernel takes square {ST.KERNEL_SIZES}, stride 1 or 2)"
    elif cin > ST.MAX_CIN or cout % ST.VEC:
        why = f"Cin={cin}, Cout={cout} (the kernel takes Cin 1 to {ST.MAX_CIN}, Cout a multiple of {ST.VEC})"
    elif kh * kw * cin > ST.MAX_MACS:
        why = (f"{kh}x{kw}x{cin} = {kh * kw * cin} multiply-adds per output (the CUDA-core kernel takes at most "
               f"{ST.MAX_MACS}; cuDNN's tensor-core conv is faster there: benchmarks/stem_conv.py)")
    elif (kh * kw * cin + 1) * cout * 4 > ST.SMEM_BYTES:
        why = f"{kh}x{kw}x{cin}x{cout} weights (the kernel keeps them in 48 KB of shared memory as float32)"
    else:
        return StemPlan(x, w, bias, act if act != "none" else act2, kh, s[0], _pair(padding))
    return Unsupported(f"conv of {cin} input channels with {why}: stays in PyTorch (cuDNN)")


@dataclasses.dataclass(frozen=True)
class ConvPoolPlan:
    """How a ``sparsec.conv2d_pool`` of few input channels becomes one ``sparsec::conv_pool_nhwc`` call
    (:mod:`.conv_pool`): the conv on tensor cores, its bias, activation and pooling fused."""

    x: fx.Node
    weight: fx.Node
    bias: object
    act: str
    k: int
    stride: int
    padding: tuple[int, int]
    pool: str  # conv_pool.POOLS
    pk: int
    ps: int
    pp: int
    kind: str = "conv-pool"


def _conv_pool_plan(node: fx.Node) -> ConvPoolPlan | Unsupported:
    from sparsec.backends.cutlass import conv_pool as CP

    a = ops.args_of(node)
    w, wv = a["weight"], _val(a["weight"])
    if not isinstance(w, fx.Node) or w.op != "get_attr" or wv is None or wv.dim() != 4:
        return Unsupported("conv+pool with a computed or non-2-D weight: the fused op runs in PyTorch")
    cout, cin, kh, kw = (int(d) for d in wv.shape)
    s, pd, d = _pair(a["stride"]), a["padding"], _pair(a["dilation"])
    pk, ps = _pair(a["kernel_size"]), _pair(a["pool_stride"] or a["kernel_size"])
    pp, pdil = _pair(a["pool_padding"]), _pair(a["pool_dilation"])
    why = None
    if int(a["groups"]) != 1 or cin > CP.MAX_CIN:
        why = (f"Cin={cin}, groups={a['groups']} (the kernel takes the image: 1 to {CP.MAX_CIN} channels, "
               "groups 1)")
    elif not CP.cout_ok(cout):
        why = f"Cout={cout} (the kernel takes a multiple of 8 up to 64, or 128)"
    elif kh != kw or kh not in CP.CONV_K or s[0] != s[1] or s[0] not in CP.CONV_S or d != (1, 1) \
            or isinstance(pd, str):
        why = f"a {kh}x{kw} conv, stride {list(s)}, dilation {list(d)} (square 1 to 11, stride 1 to 4, dilation 1)"
    elif pk[0] != pk[1] or ps[0] != ps[1] or pp[0] != pp[1] or pk[0] not in CP.POOL_K or ps[0] not in CP.POOL_S \
            or pdil != (1, 1) or a["ceil_mode"] or a["divisor_override"] is not None:
        why = (f"a {list(pk)} pool, stride {list(ps)}, padding {list(pp)}, dilation {list(pdil)}, ceil_mode "
               f"{a['ceil_mode']}, divisor_override {a['divisor_override']} (square 1 to 4, stride 1 to 4, "
               "dilation 1, no ceil mode, no divisor override)")
    pool = a["pool"] if a["pool"] == "max" or a["count_include_pad"] else "avgx"
    if not why:
        try:  # the smallest tile: whether the weights and tiles fit shared memory
            CP.ConvPoolConfig("sm_90a", "fp16", cin, kh, s[0], cout, a["act"], pool, pk[0], ps[0], pp[0], (4, 4))
        except ValueError as exc:
            why = str(exc).removeprefix("conv+pool kernel")
    if why:
        return Unsupported(f"conv+pool with {why}: the fused op runs in PyTorch (its reference ops)")
    return ConvPoolPlan(a["x"], w, a["bias"], a["act"], kh, s[0], _pair(pd), pool, pk[0], ps[0], pp[0])


@dataclasses.dataclass(frozen=True)
class SePlan:
    """How a ``sparsec.squeeze_excite`` becomes one ``sparsec::squeeze_excite_nhwc`` call."""

    x: fx.Node
    w1: fx.Node
    b1: object
    w2: fx.Node
    b2: object
    act: str
    gate: str
    kind: str = "squeeze-excite"


def _se_plan(node: fx.Node) -> SePlan | Unsupported:
    from sparsec.backends.cutlass import squeeze_excite as S

    a = ops.args_of(node)
    x, w1, w2 = _val(node), a["w1"], a["w2"]  # the output is x's shape (a lowered producer has no meta yet)
    if x is None or x.dim() != 4:
        return Unsupported("squeeze-excite of a tensor that is not NCHW: stays in PyTorch")
    c, r = int(x.shape[1]), int(_val(w1).shape[0])
    why = None
    if any(not isinstance(w, fx.Node) or w.op != "get_attr" for w in (w1, w2)):
        why = "computed fc weights (the kernels take parameters)"
    elif c % S.VEC:
        why = f"C={c} (the kernels read 16-byte vectors: C a multiple of {S.VEC})"
    elif (c + r) * 4 > S.SMEM_LIMIT:
        why = f"C + R = {c + r} (the fc kernel keeps C + R floats in 48 KB of shared memory)"
    elif a["act"] not in S.ACTS or a["gate"] not in S.ACTS:
        why = f"activations {a['act']}/{a['gate']} (the kernels take {', '.join(S.ACTS)})"
    if why:
        return Unsupported(f"squeeze-excite with {why}: stays in PyTorch (its reference ops)")
    return SePlan(a["x"], w1, a["b1"], w2, a["b2"], a["act"], a["gate"])


def gemm_weight(w: torch.Tensor) -> torch.Tensor:
    """The weight as the A operand [M, K]: convs reordered (Cout, kh, kw, Cin)."""
    return w.permute(0, 2, 3, 1).reshape(w.shape[0], -1) if w.dim() == 4 else w


def epilogue(p: GemmPlan) -> tuple[str, bool, list]:
    """(kernel activation, kernel takes the residual, [post-ops run in PyTorch after the kernel])."""
    post: list = []
    act, act2 = p.act, p.act2
    if p.residual is not None:
        if act == "none" and act2 in KERNEL_ACT:
            return KERNEL_ACT[act2], True, post
        kact = KERNEL_ACT.get(act)
        if kact is None:  # gelu_tanh before the add
            return "identity", False, [("act", act), ("add", None), ("act", act2)]
        return kact, False, [("add", None), ("act", act2)]
    if act == "none":
        act, act2 = act2, "none"
    kact = KERNEL_ACT.get(act)
    if kact is None:
        return "identity", False, [("act", act), ("act", act2)]
    return kact, False, [("act", act2)]


@dataclasses.dataclass
class Lowering:
    """Rewrites the planned nodes of an ``ir.Module`` into kernel calls (see the module docstring).

    ``arch``: the kernels' arch; ``choose(m, n, k, dtype, sparse, activation, residual)`` returns
    the :class:`KernelConfig` of a layer; ``reference=True`` keeps float32/float64 weights in
    their dtype (the CPU reference kernels then compute the graph exactly) and names fp16 configs.
    """

    arch: str
    choose: object
    reference: bool = False
    records: list = dataclasses.field(default_factory=list)
    replaced: set = dataclasses.field(default_factory=set)  # parameters now held in kernel layouts too

    def run(self, mod, nodes) -> list[dict]:
        from sparsec.backends.cutlass import reference as R  # the CPU kernels, and the packers

        g = mod.graph
        for node in list(nodes):
            p = plan(node)
            if isinstance(p, GemmPlan):
                self._lower(mod, g, node, p, R)
            elif isinstance(p, DwPlan) and not self.reference:
                self._lower_depthwise(mod, g, node, p)
            elif isinstance(p, SePlan) and not self.reference:
                self._lower_se(mod, g, node, p)
            elif isinstance(p, StemPlan) and not self.reference:
                self._lower_stem(mod, g, node, p)
            elif isinstance(p, ConvPoolPlan) and not self.reference:
                self._lower_conv_pool(mod, g, node, p)
        _cancel_permutes(g)
        g.eliminate_dead_code()
        used = {n.target for n in g.nodes if n.op == "get_attr"}
        for name in ({r["weight"] for r in self.records} | self.replaced) - used:  # not shipped twice
            mod.delete_param(name)
        mod.recompile()
        return self.records

    # -- one node ---------------------------------------------------------------------------
    def _lower(self, mod, g: fx.Graph, node: fx.Node, p: GemmPlan, R) -> None:
        w = mod.get_param(p.weight.target).detach()
        out = _val(node)  # (lowered producers have no meta yet: read this node's own)
        dtype = _DTYPE.get(out.dtype)
        if dtype is None and not self.reference:
            raise TypeError(f"{node.name}: the kernels take fp16/bf16, got {out.dtype}")
        w2 = gemm_weight(w)
        m, k = int(w2.shape[0]), int(w2.shape[1])
        n = _tokens(out, conv=p.kind != "linear")
        mark = M.get(p.weight, M.Sparsity24)
        sparse = mark is not None and k % 4 == 0 and is_24_sparse(w2, 1)
        kact, fuse_res, post = epilogue(p)
        cfg = self.choose(m, n, k, dtype or "fp16", sparse, kact, fuse_res)
        base = mod.fresh_param_name("cutlass_" + p.weight.target.replace(".", "_"))
        with g.inserting_before(node):
            if sparse:
                values, meta = R.pack_any(w2, cfg)
                args = (self._buffer(mod, g, base + "_values", values), self._buffer(mod, g, base + "_meta", meta))
                target = torch.ops.sparsec.gemm24.default
            else:
                args = (self._buffer(mod, g, base + "_dense", R.pad_any(w2, cfg)),)
                target = torch.ops.sparsec.gemm_dense.default
            xin = self._input(g, p)
            res = p.residual if fuse_res else None
            if res is not None and p.kind != "linear":
                res = g.call_function(aten.permute.default, (res, [0, 2, 3, 1]))
            y = g.call_function(target, (xin, *args, p.bias, res, None, cfg.name, m))
            M.put(y, M.BackendAssignment("cutlass"))
            if p.kind != "linear":
                y = g.call_function(aten.permute.default, (y, [0, 3, 1, 2]))
            for op, arg in post:
                if op == "add":
                    y = g.call_function(aten.add.Tensor, (y, p.residual))
                elif arg != "none":
                    y = _act_node(g, arg, y)
        node.replace_all_uses_with(y)
        g.erase_node(node)
        self.records.append({"node": node.name, "weight": p.weight.target, "kind": p.kind,
                             "m": m, "n": n, "k": k, "sparse": sparse, "config": cfg.name,
                             "epilogue_in_pytorch": [a if o == "act" else o for o, a in post if a != "none"]})

    def _lower_depthwise(self, mod, g: fx.Graph, node: fx.Node, p: DwPlan) -> None:
        from sparsec.backends.cutlass.depthwise import DwConfig, variant

        w, out, dtype = mod.get_param(p.weight.target).detach(), _val(node), _kernel_dtype(node)
        res = p.residual is not None
        cfg = DwConfig(self.arch, dtype, p.k, p.stride, p.act, p.act2, res,
                       **variant(self.arch, p.k, p.stride, knobs.get("cutlass_depthwise")))
        base = mod.fresh_param_name("dw_" + p.weight.target.replace(".", "_"))
        with g.inserting_before(node):
            wk = self._buffer(mod, g, base, w[:, 0].permute(1, 2, 0).to(out.dtype))  # [C,1,k,k] -> [k, k, C]
            x = g.call_function(aten.permute.default, (p.x, [0, 2, 3, 1]))  # NHWC view
            r = g.call_function(aten.permute.default, (p.residual, [0, 2, 3, 1])) if res else None
        self._replace(g, node, torch.ops.sparsec.dwconv2d.default, (x, wk, p.bias, r, list(p.padding), cfg.name),
                      weight=p.weight.target, kind="depthwise", m=int(w.shape[0]), k=p.k * p.k, config=cfg.name)

    def _lower_stem(self, mod, g: fx.Graph, node: fx.Node, p: StemPlan) -> None:
        from sparsec.backends.cutlass.stem import StemConfig

        w, out, dtype = mod.get_param(p.weight.target).detach(), _val(node), _kernel_dtype(node)
        cfg = StemConfig(self.arch, dtype, int(w.shape[1]), p.k, p.stride, p.act)
        base = mod.fresh_param_name("stem_" + p.weight.target.replace(".", "_"))
        with g.inserting_before(node):
            wk = self._buffer(mod, g, base, w.permute(2, 3, 1, 0).to(out.dtype))  # [Cout,Cin,k,k] -> [k,k,Cin,Cout]
        self._replace(g, node, torch.ops.sparsec.stem_conv.default,
                      (_skip_layout_copy(p.x), wk, p.bias, list(p.padding), cfg.name),
                      weight=p.weight.target, kind="stem", m=int(w.shape[0]), k=int(w[0].numel()), config=cfg.name)

    def _lower_conv_pool(self, mod, g: fx.Graph, node: fx.Node, p: ConvPoolPlan) -> None:
        from sparsec.backends.cutlass import conv_pool as CP

        w, out, dtype = mod.get_param(p.weight.target).detach(), _val(node), _kernel_dtype(node)
        cfg = CP.choose_tile(lambda tile: CP.ConvPoolConfig(self.arch, dtype, int(w.shape[1]), p.k, p.stride,
                                                            int(w.shape[0]), p.act, p.pool, p.pk, p.ps, p.pp, tile))
        base = mod.fresh_param_name("cpool_" + p.weight.target.replace(".", "_"))
        with g.inserting_before(node):
            wk = self._buffer(mod, g, base, CP.pack_weight(w.to(out.dtype), cfg.kp))
        self._replace(g, node, torch.ops.sparsec.conv_pool_nhwc.default,
                      (_skip_layout_copy(p.x), wk, p.bias, list(p.padding), cfg.name),
                      weight=p.weight.target, kind="conv-pool", m=int(w.shape[0]), k=int(w[0].numel()),
                      config=cfg.name)

    def _lower_se(self, mod, g: fx.Graph, node: fx.Node, p: SePlan) -> None:
        from sparsec.backends.cutlass.squeeze_excite import SeConfig

        out, dtype = _val(node), _kernel_dtype(node)
        cfg = SeConfig(self.arch, dtype, p.act, p.gate)
        w1 = mod.get_param(p.w1.target).detach().flatten(1)  # [R, C, 1, 1] -> [R, C]
        w2t = mod.get_param(p.w2.target).detach().flatten(1).t()  # [C, R, 1, 1] -> [R, C]: coalesced per channel
        base = mod.fresh_param_name("se_" + p.w1.target.replace(".", "_"))
        with g.inserting_before(node):
            a1 = self._buffer(mod, g, base + "_w1", w1.to(out.dtype))
            a2 = self._buffer(mod, g, base + "_w2t", w2t.to(out.dtype))
            x = g.call_function(aten.permute.default, (p.x, [0, 2, 3, 1]))  # NHWC view
        self._replace(g, node, torch.ops.sparsec.squeeze_excite_nhwc.default, (x, a1, p.b1, a2, p.b2, cfg.name),
                      weight=p.w1.target, kind="squeeze-excite", m=int(w1.shape[1]), k=int(w1.shape[0]),
                      config=cfg.name)
        self.replaced.add(p.w2.target)

    def _replace(self, g: fx.Graph, node: fx.Node, target, args, **record) -> None:
        """``node`` -> ``permute(target(*args), NCHW)``: a hand-written kernel's NHWC output as the node's value,
        and its record (dense, its whole epilogue in the kernel)."""
        with g.inserting_before(node):
            y = g.call_function(target, args)
            M.put(y, M.BackendAssignment("cutlass"))
            y = g.call_function(aten.permute.default, (y, [0, 3, 1, 2]))
        out = _val(node)
        node.replace_all_uses_with(y)
        g.erase_node(node)
        self.records.append({"node": node.name, **record, "n": _tokens(out, conv=True), "sparse": False,
                             "epilogue_in_pytorch": []})

    @staticmethod
    def _buffer(mod, g: fx.Graph, name: str, value: torch.Tensor) -> fx.Node:
        mod.gm.register_buffer(name, value.contiguous())
        return g.get_attr(name)

    @staticmethod
    def _input(g: fx.Graph, p: GemmPlan) -> fx.Node:
        if p.kind == "linear":
            return p.x
        x = g.call_function(aten.permute.default, (p.x, [0, 2, 3, 1]))  # NHWC view
        if p.kind == "conv1x1":
            return x
        sh, sw = p.stride
        if p.kind == "conv1x1-strided":
            x = g.call_function(aten.slice.Tensor, (x, 1, 0, None, sh))
            return g.call_function(aten.slice.Tensor, (x, 2, 0, None, sw))
        ph, pw = p.padding
        wv = _val(p.weight)
        kh, kw = int(wv.shape[2]), int(wv.shape[3])
        if ph or pw:
            x = g.call_function(aten.constant_pad_nd.default, (x, [0, 0, pw, pw, ph, ph], 0.0))
        x = g.call_function(aten.unfold.default, (x, 1, kh, sh))  # [N, Ho, Wp, C, kh]
        x = g.call_function(aten.unfold.default, (x, 2, kw, sw))  # [N, Ho, Wo, C, kh, kw]
        x = g.call_function(aten.permute.default, (x, [0, 1, 2, 4, 5, 3]))  # taps before channels
        return g.call_function(aten.flatten.using_ints, (x, 3, 5))  # [N, Ho, Wo, kh*kw*C] (a copy)


def _skip_layout_copy(x: fx.Node) -> fx.Node:
    """The stem kernel reads any layout: drop ``to-channels-last``'s copy of the image, also under a cast
    (``_to_copy(clone(x, channels_last), dtype)`` with fp32 I/O), where the copy is used only on this path."""

    def is_cl_clone(n) -> bool:
        return (isinstance(n, fx.Node) and n.op == "call_function" and n.target is aten.clone.default
                and len(n.users) == 1 and n.kwargs.get("memory_format") is torch.channels_last)

    if is_cl_clone(x):
        return x.args[0]
    if (x.op == "call_function" and x.target is aten._to_copy.default and len(x.users) == 1
            and set(x.kwargs) <= {"dtype"} and is_cl_clone(x.args[0])):
        x.replace_input_with(x.args[0], x.args[0].args[0])  # cast the image as it is: one pass, not two
    return x


def _kernel_dtype(node: fx.Node) -> str:
    """The kernels' dtype name of ``node``'s output (a TypeError for any other dtype)."""
    out = _val(node)  # (lowered producers have no meta yet: read this node's own)
    dtype = _DTYPE.get(out.dtype)
    if dtype is None:
        raise TypeError(f"{node.name}: the kernels take fp16/bf16, got {out.dtype}")
    return dtype


def _tokens(out: torch.Tensor, *, conv: bool) -> int:
    dims = [d for i, d in enumerate(out.shape) if i != (1 if conv else out.dim() - 1)]
    return int(math.prod(int(d) if isinstance(d, int) else int(getattr(d, "node", d).hint or 1) for d in dims))


def _act_node(g: fx.Graph, name: str, y: fx.Node) -> fx.Node:
    if name == "relu6":
        return g.call_function(aten.hardtanh.default, (y, 0.0, 6.0))
    if name in ("gelu", "gelu_tanh"):
        return g.call_function(aten.gelu.default, (y,), {"approximate": "tanh" if name == "gelu_tanh" else "none"})
    return g.call_function({"relu": aten.relu.default, "silu": aten.silu.default, "hardswish": aten.hardswish.default,
                            "sigmoid": aten.sigmoid.default}[name], (y,))


def _cancel_permutes(g: fx.Graph) -> None:
    """permute(permute(t, NCHW), NHWC) -> t: lowered convs that feed each other stay NHWC."""
    for n in list(g.nodes):
        if n.op == "call_function" and n.target is aten.permute.default and list(n.args[1]) == [0, 2, 3, 1]:
            src = n.args[0]
            if (isinstance(src, fx.Node) and src.op == "call_function" and src.target is aten.permute.default
                    and list(src.args[1]) == [0, 3, 1, 2]):
                n.replace_all_uses_with(src.args[0])
                g.erase_node(n)


def lower_reference(mod, arch: str = "sm_90a") -> list[dict]:
    """Reference mode: lower every node :func:`plan` takes, keeping the graph's dtype (fp32/fp64 too).

    The configs are named as for fp16 (from the shipped tuning DB); on the CPU the reference
    kernels (:mod:`.reference`) run them, so the result must equal the un-lowered module.
    """
    from sparsec.backends.cutlass import tuning

    db = tuning.load_db(arch=arch)

    def choose(m, n, k, dtype, sparse, activation, residual):
        return tuning.choose(m, n, k, dtype, sparse, arch=arch, activation=activation, residual=residual, db=db)

    return Lowering(arch, choose, reference=True).run(mod, [n for n in mod.graph.nodes if isinstance(plan(n), GemmPlan)])
