"""The ``cutlass`` backend's support table: what the GPU backend is designed to take.

These are **declarations**, not tests of kernels: they state which nodes the
CUTLASS backend (``backends/cutlass/``) is meant to run, so that
``sparsec inspect --target h100`` and the ``partition`` pass can show the
split before the backend lands. The backend's own ``support(node)`` should
answer from this table and narrow it where its kernels do less; its tests,
not this table, prove what runs.

Declared (16-bit tensor-core kernels, fp16/bf16 only)::

    sparsec.fused_conv2d, aten.conv2d     groups=1: implicit-GEMM conv with a fused epilogue;
                                          1x1 stride 1: a plain GEMM (NHWC);
                                          1x1 strided: strided gather + GEMM;
                                          depthwise (groups = Cin = Cout): dense direct conv;
                                          Cin 1 to 4 (the stem): a direct conv
    sparsec.conv2d_pool                   the same convs, with a pooling epilogue
    sparsec.fused_linear, aten.linear,    GEMM with a fused epilogue
    aten.mm, aten.addmm
    sparsec.squeeze_excite                channel sums, the two fcs and the channel scale (C % 8 == 0)

Not taken (they stay in PyTorch, with the reason): fp32/fp64 graphs, grouped
convs that are not depthwise, transposed and 1-D/3-D convs, channel counts
that are not multiples of 8 (16-bit tensor-core rows must be 16-byte
aligned; a conv of 1 to 4 input channels has its own direct kernel), weights that are computed
rather than parameters, 2:4 weights outside the sparse kernels' shape limits,
and every op that is not a GEMM or conv (elementwise, pooling, views): fuse
them into an epilogue first (``fuse-epilogue``, ``fuse-conv-pool``).
"""

from __future__ import annotations

import torch
from torch import fx

from sparsec.backends.target import Supported, Unsupported
from sparsec.backends.targets import _CUTLASS_24_16BIT
from sparsec.ir import meta as M
from sparsec.ir import ops

aten = torch.ops.aten

DTYPES = (torch.float16, torch.bfloat16)
ALIGN = 8  # 16-bit elements per 16-byte access: the channel/feature multiple of the tensor-core kernels
_GEMMS = {aten.mm.default, aten.addmm.default}
_VIEWS = {aten.view.default, aten.reshape.default, aten.flatten.using_ints, aten._unsafe_view.default,
          aten.permute.default, aten.transpose.int, aten.t.default, aten.squeeze.dim, aten.unsqueeze.default,
          aten.contiguous.default, aten.clone.default, aten._to_copy.default}
_POOLS = {aten.max_pool2d.default, aten.avg_pool2d.default, aten.adaptive_avg_pool2d.default,
          aten.max_pool2d_with_indices.default, aten.adaptive_max_pool2d.default}


def _val(n) -> torch.Tensor | None:
    v = n.meta.get("val") if isinstance(n, fx.Node) else None
    return v if isinstance(v, torch.Tensor) else None


def _fused_ops():
    from sparsec.passes.fusion import ops as F  # registers the sparsec:: ops

    return F


class CutlassSupport:
    """``support(node)`` of the CUTLASS GPU backend, as declared above.

    Example:
        >>> CutlassSupport().support(conv_node)
        Supported(note='cutlass: implicit-GEMM conv, fused epilogue (act=relu)')
    """

    name = "cutlass"

    def support(self, node: fx.Node) -> Supported | Unsupported:
        if node.op in ("placeholder", "get_attr", "output"):
            return Supported("graph structure")
        if node.op != "call_function":
            return Unsupported(f"'{node.op}' nodes stay in PyTorch")
        F = _fused_ops()
        t = node.target
        if t in (F.fused_conv2d, F.conv2d_pool) or t in ops.CONV:
            return self._conv(node, F)
        if t in (F.fused_linear,) or t in ops.LINEAR or t in _GEMMS:
            return self._gemm(node, F)
        if t is F.squeeze_excite:
            return self._squeeze_excite(node)
        name = ops.op_name(t)
        if t in _POOLS:
            return Unsupported(f"{name}: pooling is not a CUTLASS kernel; stays in PyTorch "
                               "(fuse-conv-pool can put it in the conv's epilogue)")
        if t in _VIEWS:
            return Unsupported(f"{name}: a view or copy; stays in PyTorch")
        if t in (aten.add.Tensor, aten.mul.Tensor) or t in ops.INPLACE.values():
            return Unsupported(f"{name}: elementwise; taken only inside a fused epilogue (run fuse-epilogue)")
        return Unsupported(f"{name}: no CUTLASS kernel is declared for it; stays in PyTorch")

    # -- convs --------------------------------------------------------------------------------
    def _conv(self, node: fx.Node, F) -> Supported | Unsupported:
        a = ops.args_of(node)
        if node.target in ops.CONV:
            p = ops.conv_params(node)
            if p["transposed"]:
                return Unsupported("transposed conv: no CUTLASS kernel declared; stays in PyTorch")
            x, w, groups, stride = p["input"], p["weight"], int(p["groups"]), p["stride"]
            epilogue = "identity epilogue"
        else:
            x, w, groups, stride = a["x"], a["weight"], int(a["groups"]), a["stride"]
            acts = [f"{k}={a[k]}" for k in ("act", "act2") if a.get(k, "none") != "none"]
            if a.get("residual") is not None:
                acts.insert(0, "residual")
            epilogue = "fused epilogue" + (f" ({', '.join(acts)})" if acts else "")
            if node.target is F.conv2d_pool:
                epilogue += f", {a['pool']}-pool epilogue"
        if _val(x) is None or _val(x).dim() != 4:
            return Unsupported("only 2-D convs (NCHW input, 4-D weight) are declared")
        bad = self._operands(x, w)
        if bad is not None:
            return bad
        wv = _val(w)
        cout, cin_g, kh, kw = (int(d) for d in wv.shape)
        cin = cin_g * groups
        if groups != 1 and not (groups == cin and cout == cin):
            return Unsupported(f"grouped conv (groups={groups}, Cin={cin}, Cout={cout}) that is not depthwise: "
                               "no CUTLASS kernel declared; stays in PyTorch (cuDNN)")
        if groups != 1:
            return self._sparse_ok(w, "cutlass: depthwise conv, dense direct kernel, " + epilogue, depthwise=True)
        if cin <= 4 and cout % ALIGN == 0:
            if node.target is F.conv2d_pool:
                return Supported(f"cutlass: conv of {cin} input channels (the stem) and its pool as one tensor-core "
                                 f"kernel, {epilogue}")
            return Supported(f"cutlass: direct conv of {cin} input channels (the stem), {epilogue}")
        if cin % ALIGN or cout % ALIGN:
            return Unsupported(f"Cin={cin}, Cout={cout}: 16-bit tensor-core kernels need channel counts that are "
                               f"multiples of {ALIGN}; stays in PyTorch (or pad the channels)")
        s = [int(v) for v in (stride if isinstance(stride, (list, tuple)) else [stride])]
        if (kh, kw) == (1, 1):
            kind = "1x1 conv as a GEMM (NHWC)" if set(s) == {1} else f"strided 1x1 conv: gather (stride {s}) + GEMM"
        else:
            kind = f"implicit-GEMM {kh}x{kw} conv"
        return self._sparse_ok(w, f"cutlass: {kind}, {epilogue}", n=cout, k=cin_g * kh * kw)

    def _squeeze_excite(self, node: fx.Node) -> Supported | Unsupported:
        a = ops.args_of(node)
        for w in (a["w1"], a["w2"]):
            bad = self._operands(a["x"], w)
            if bad is not None:
                return bad
        c = int(_val(a["x"]).shape[1])
        if c % ALIGN:
            return Unsupported(f"squeeze-excite of C={c} channels: the kernels read 16-byte vectors (C a multiple of "
                               f"{ALIGN}); stays in PyTorch")
        return Supported(f"cutlass: squeeze-excite (channel sums, fc {a['act']}, fc {a['gate']}, channel scale)")

    # -- GEMMs ----------------------------------------------------------------------------------
    def _gemm(self, node: fx.Node, F) -> Supported | Unsupported:
        a = ops.args_of(node)
        if node.target in _GEMMS:
            lhs, rhs = (a["self"], a["mat2"]) if node.target is aten.mm.default else (a["mat1"], a["mat2"])
            bad = self._operands(lhs, rhs, constant_weight=False)
            if bad is not None:
                return bad
            k, n = (int(d) for d in _val(rhs).shape)
            if k % ALIGN or n % ALIGN:
                return Unsupported(f"K={k}, N={n}: not multiples of {ALIGN}; stays in PyTorch")
            return Supported(f"cutlass: GEMM {ops.op_name(node.target)}")
        x, w = a["x"] if "x" in a else a["input"], a["weight"]
        bad = self._operands(x, w)
        if bad is not None:
            return bad
        n, k = (int(d) for d in _val(w).shape)
        if k % ALIGN or n % ALIGN:
            return Unsupported(f"in_features={k}, out_features={n}: 16-bit tensor-core kernels need multiples of "
                               f"{ALIGN}; stays in PyTorch (or pad the features)")
        epi = "fused epilogue" if node.target is F.fused_linear else "identity epilogue"
        return self._sparse_ok(w, f"cutlass: GEMM (linear), {epi}", n=n, k=k)

    # -- shared checks ----------------------------------------------------------------------------
    def _operands(self, x, w, *, constant_weight: bool = True) -> Unsupported | None:
        """Why the kernels cannot take activation ``x`` and weight ``w``, else None."""
        xv, wv = _val(x), _val(w)
        if xv is None or wv is None:
            return Unsupported("operands without shape metadata")
        bad = self._dtype(xv)
        if bad is not None:
            return bad
        if constant_weight and (not isinstance(w, fx.Node) or w.op != "get_attr"):
            return Unsupported("the weight is computed, not a parameter: kernels take packed constant weights")
        return None

    @staticmethod
    def _dtype(v: torch.Tensor) -> Unsupported | None:
        if v.dtype in DTYPES:
            return None
        return Unsupported(f"{M.dtype_name(v.dtype)}: the CUTLASS kernels compute in fp16/bf16; "
                           "run to-dtype{dtype=fp16} first")

    @staticmethod
    def _sparse_ok(w: fx.Node, note: str, *, n: int = 0, k: int = 0, depthwise: bool = False):
        """A 2:4-marked weight must fit the sparse kernels' shape limits (targets.py)."""
        if M.get(w, M.Sparsity24) is None:
            return Supported(note)
        lim = _CUTLASS_24_16BIT
        if depthwise:
            return Unsupported("a depthwise weight marked 2:4: there is no sparse depthwise kernel")
        if n % lim.n_multiple or k % lim.k_multiple or n < lim.min_n or k < lim.min_k:
            return Unsupported(f"2:4 weight with N={n}, K={k}: the sparse kernels need N%{lim.n_multiple}, "
                               f"K%{lim.k_multiple}, N>={lim.min_n}, K>={lim.min_k}")
        return Supported(note.replace("cutlass: ", "cutlass: 2:4 sparse ", 1))
