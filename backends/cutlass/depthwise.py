"""Depthwise convolution with a fused epilogue: a direct NHWC kernel and the ``sparsec::dwconv2d`` op.

Why a hand-written kernel and not CUTLASS: a depthwise conv does ``k*k`` multiply-adds per element it
reads, so it is bound by memory traffic, not by math, and tensor cores do not help. What costs time
around it on a GPU is the unfused epilogue: PyTorch runs cuDNN's conv, then the bias add, then the
activation, each a full pass over the output (on an H100, MobileNetV2 fp16 bs256 spent 2.1 ms in
the bias adds and 0.9 ms in the ReLU6s against 1.0 ms in the convs: ``benchmarks/e2e_profile.py``).
CUTLASS 4.2's depthwise kernels (``DepthwiseDirect2dConvFprop``, example 46) are SIMT kernels with the
filter size, stride and dilation fixed at compile time, a tile shape to tune per layer and no fused
activation-after-residual epilogue. The kernel here is short and has a handful of launch variants,
tuned once per filter size and stride: it aims to read each input element once from DRAM, computes
in float32 and writes the output once, with ``act2(act(conv + bias) + residual)`` applied on the
way out.

Layout and contract (what :func:`dwconv2d` takes)::

    dwconv2d(x [N, H, W, C] NHWC, weight [k, k, C], bias [C]?, residual [N, Ho, Wo, C]?,
             padding [ph, pw], config) -> y [N, Ho, Wo, C]
    y = act2(act(depthwise_conv(x, weight, stride, padding) + bias) + residual)   (act2 after act if no residual)

``C`` is a multiple of 8 (one 16-byte vector of fp16/bf16 per thread and tap); ``k`` is 3, 5 or 7,
the stride 1 or 2, the dilation 1: the lowering (:mod:`.lowering`) keeps every other depthwise conv
in PyTorch and says why. Each thread computes 8 channels of ``TW`` neighbouring output pixels of one
row (``TW`` = 4 at stride 1, 2 at stride 2), so the input columns they share are loaded once into
registers. Three layouts (``SPARSEC_CUTLASS_DEPTHWISE``): ``tiled`` copies each block's input tile
(8 output rows x 4 strips, halo included, as many channel vectors as 48 KB hold) into shared memory
with coalesced loads first; ``direct`` reads every tap from global memory and leaves the halo
re-reads to L1/L2; ``rows`` gives each thread 2 channels (one 4-byte vector) of a strip of ``tw``
output columns and walks it down 7 output rows: each input row is loaded once, the next one while
the current one is computed, converted to float32 once, and feeds every output row that reads it,
with all ``k*k`` weights of the two channels in registers (the other layouts convert every weight
and input again for each strip of outputs). Each also has an outputs-per-thread count (``tw``) and a
blocks-per-SM bound (``occ``, which caps registers). ``auto`` (the default) takes the variant of the
measured table (:func:`variant`), else direct for 3x3 and tiled for 5x5 and up.
``benchmarks/dwconv.py`` times them against cuDNN per layer; ``--variants sweep|rows --write-table``
writes the table.

Where it stands (``benchmarks/results/dwconv_h100.json``, fp16 bs256, the shipped table's variants,
``rows`` for every filter size and stride): 1.53 ms over MobileNetV2's 17 layers and 2.37 ms over
EfficientNet-B0's 16 (2.07 and 2.91 ms with the tiled/direct table before), against 3.89 and 4.20 ms
for cuDNN's conv followed by PyTorch's bias add and activation, and 1.39 and 1.68 ms for cuDNN's
conv alone. Not tried yet: half2 arithmetic (fp16 products would risk overflow on BN-folded
weights), shared-memory staging with cp.async for the rows layout.

One library per :class:`DwConfig` (arch, dtype, k, stride, act, act2, residual, variant): a model needs a
handful (MobileNetV2: 2, EfficientNet-B0: 4). They build in seconds through the backend's kernel
cache (:mod:`.build`) and run on torch's current stream, so CUDA-graph capture takes them.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import re
from pathlib import Path
from typing import Optional

import torch

from sparsec.backends.cutlass.handlib import HandWritten, KernelLibrary, check_inputs, check_rc
from sparsec.errors import KernelError

KERNEL_SIZES = (3, 5, 7)
STRIDES = (1, 2)
VEC = 8  # 16-bit elements per 16-byte access: C must be a multiple of it
# the epilogue's activations: every one of the fused ops' (passes/fusion/ops.py ACTIVATIONS)
ACTS = ("none", "relu", "relu6", "silu", "gelu", "gelu_tanh", "hardswish", "sigmoid")
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
CUDA_T = {"fp16": "__half", "bf16": "__nv_bfloat16"}
_ACT_RE = "|".join(sorted(ACTS, key=len, reverse=True))  # gelu_tanh before gelu: names hold underscores
_NAME = re.compile(rf"dw_(sm_\w+?)_(fp16|bf16)_k(\d)s(\d)_({_ACT_RE})_({_ACT_RE})(_res)?(_direct|_rows)?(?:_tw(\d))?(?:_o(\d))?$")
TWS = (1, 2, 4, 8)
OCCS = (1, 2, 3, 4)

ACT_CODE = {
    "none": "v",
    "relu": "fmaxf(v, 0.f)",
    "relu6": "fminf(fmaxf(v, 0.f), 6.f)",
    # __frcp_rn: a reciprocal without IEEE division's slow path (no --use_fast_math here); 1/inf = 0 as it should
    "silu": "v * __frcp_rn(1.f + __expf(-v))",
    "sigmoid": "__frcp_rn(1.f + __expf(-v))",
    "hardswish": "v * fminf(fmaxf(v + 3.f, 0.f), 6.f) * (1.f / 6.f)",
    "gelu": "0.5f * v * (1.f + erff(v * 0.70710678118654752f))",
    "gelu_tanh": "0.5f * v * (1.f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)))",
}


@dataclasses.dataclass(frozen=True)
class DwConfig(HandWritten):
    """One depthwise kernel: ``dw_<arch>_<dtype>_k<k>s<stride>_<act>_<act2>[_res]``."""

    arch: str
    dtype: str
    k: int
    stride: int
    act: str = "none"
    act2: str = "none"
    residual: bool = False
    tiled: bool = True  # False: the direct (or, with rows, the rows) layout: no shared memory
    tw: int = 0  # outputs per thread along W; 0: 4 at stride 1, 2 at stride 2
    occ: int = 0  # blocks per SM the compiler must fit (__launch_bounds__ minimum; caps registers); 0: none
    rows: bool = False  # the rows variant (2 channels x a column strip sliding down RH rows); needs tiled=False

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES or self.k not in KERNEL_SIZES or self.stride not in STRIDES:
            raise ValueError(f"depthwise kernel: dtype {self.dtype!r}, k {self.k}, stride {self.stride} not in "
                             f"{sorted(DTYPES)}, {KERNEL_SIZES}, {STRIDES}")
        for a in (self.act, self.act2):
            if a not in ACTS:
                raise ValueError(f"depthwise kernel: unknown activation {a!r}; known: {', '.join(ACTS)}")
        if self.tw not in (0, *TWS) or self.occ not in (0, *OCCS):
            raise ValueError(f"depthwise kernel: tw {self.tw} / occ {self.occ} not in {TWS} / {OCCS} (or 0)")
        if self.rows and self.tiled:
            raise ValueError("depthwise kernel: the rows variant has no shared-memory tile; use tiled=False")

    @property
    def name(self) -> str:
        return (f"dw_{self.arch}_{self.dtype}_k{self.k}s{self.stride}_{self.act}_{self.act2}"
                + ("_res" if self.residual else "") + ("" if self.tiled else "_rows" if self.rows else "_direct")
                + (f"_tw{self.tw}" if self.tw else "") + (f"_o{self.occ}" if self.occ else ""))

    @classmethod
    @functools.lru_cache(maxsize=None)  # the op parses its config name on every call
    def from_name(cls, name: str) -> "DwConfig":
        m = _NAME.match(name)
        if not m:
            raise ValueError(f"not a depthwise kernel name: {name!r}")
        arch, dtype, k, s, act, act2, res, layout, tw, occ = m.groups()
        return cls(arch, dtype, int(k), int(s), act, act2, bool(res), not layout, int(tw or 0), int(occ or 0),
                   layout == "_rows")

    def _emit(self) -> str:
        return emit(self)

    @property
    def outputs_per_thread(self) -> int:
        return self.tw or (4 if self.stride == 1 else 2)


def is_name(name: str) -> bool:
    return name.startswith("dw_")


def emit(cfg: DwConfig) -> str:
    """The .cu source of one depthwise kernel (extern "C" launcher, see the module docstring)."""
    t = CUDA_T[cfg.dtype]
    header = "cuda_fp16.h" if cfg.dtype == "fp16" else "cuda_bf16.h"
    to_f = "__half2float" if cfg.dtype == "fp16" else "__bfloat162float"
    from_f = "__float2half_rn" if cfg.dtype == "fp16" else "__float2bfloat16_rn"
    t2, to_f2, from_f2 = (("__half2", "__half22float2", "__floats2half2_rn") if cfg.dtype == "fp16" else
                          ("__nv_bfloat162", "__bfloat1622float2", "__floats2bfloat162_rn"))
    load_res = "unpack(__ldg(reinterpret_cast<const uint4*>(res + off)), r);" if cfg.residual else ""
    add_res2 = ("const float2 r = {to_f2}(__ldg(reinterpret_cast<const T2*>(res + off)));\n"
                "      v0 += r.x; v1 += r.y;").format(to_f2=to_f2) if cfg.residual else ""
    add_res = "v += r[e];" if cfg.residual else "(void)r;"
    bounds = f"256, {cfg.occ}" if cfg.occ else "256"
    return f"""\
// generated by sparsec.backends.cutlass.depthwise -- do not edit
// config: {cfg.name}
#include <cstdint>
#include <cuda_runtime.h>
#include <{header}>

namespace {{
constexpr int K = {cfg.k}, S = {cfg.stride}, TW = {cfg.outputs_per_thread}, VEC = {VEC};
constexpr int COLS = (TW - 1) * S + K;  // input columns one thread's TW outputs read
constexpr bool TILED = {"true" if cfg.tiled else "false"}, ROWS = {"true" if cfg.rows else "false"};
constexpr int RH = 7;  // rows variant: output rows per thread (7 divides the 7 * 2^k sizes of ImageNet CNNs)
constexpr int SMEM_BYTES = 48 * 1024;   // the input tile of a block (tiled)
using T = {t};
using T2 = {t2};

__device__ __forceinline__ float act1(float v) {{ return {ACT_CODE[cfg.act]}; }}
__device__ __forceinline__ float act2(float v) {{ return {ACT_CODE[cfg.act2]}; }}

__device__ __forceinline__ void unpack(const uint4& u, float* f) {{
  const T* h = reinterpret_cast<const T*>(&u);
#pragma unroll
  for (int i = 0; i < VEC; ++i) f[i] = {to_f}(h[i]);
}}

// TW outputs of one row and 8 channels: input column q of kernel row i comes from in(i, q).
template <typename In>
__device__ __forceinline__ void accumulate(const T* __restrict__ w, int C, int c, In in, float (&acc)[TW][VEC]) {{
#pragma unroll
  for (int t = 0; t < TW; ++t)
#pragma unroll
    for (int e = 0; e < VEC; ++e) acc[t][e] = 0.f;
#pragma unroll
  for (int i = 0; i < K; ++i) {{
    float wr[K][VEC];
#pragma unroll
    for (int j = 0; j < K; ++j) unpack(__ldg(reinterpret_cast<const uint4*>(w + (long)(i * K + j) * C + c)), wr[j]);
#pragma unroll
    for (int q = 0; q < COLS; ++q) {{
      uint4 u;
      if (!in(i, q, u)) continue;
      float v[VEC];
      unpack(u, v);
#pragma unroll
      for (int t = 0; t < TW; ++t) {{
        const int j = q - t * S;
        if (j >= 0 && j < K) {{
#pragma unroll
          for (int e = 0; e < VEC; ++e) acc[t][e] = fmaf(v[e], wr[j][e], acc[t][e]);
        }}
      }}
    }}
  }}
}}

// y = act2(act1(acc + bias) + res) for the TW outputs starting at (n, oh, ow0), 8 channels from c.
__device__ __forceinline__ void store(const float (&acc)[TW][VEC], const T* __restrict__ bias,
    const T* __restrict__ res, T* __restrict__ y, long n, int oh, int ow0, int OH, int OW, int C, int c) {{
  float bv[VEC];
  if (bias != nullptr) unpack(__ldg(reinterpret_cast<const uint4*>(bias + c)), bv);
  else {{
#pragma unroll
    for (int e = 0; e < VEC; ++e) bv[e] = 0.f;
  }}
#pragma unroll
  for (int t = 0; t < TW; ++t) {{
    const int ow = ow0 + t;
    if (ow >= OW) break;
    const long off = ((n * OH + oh) * (long)OW + ow) * C + c;
    float r[VEC];
    {load_res}
    uint4 out;
    T* o = reinterpret_cast<T*>(&out);
#pragma unroll
    for (int e = 0; e < VEC; ++e) {{
      float v = act1(acc[t][e] + bv[e]);
      {add_res}
      o[e] = {from_f}(act2(v));
    }}
    *reinterpret_cast<uint4*>(y + off) = out;
  }}
}}

struct Tile {{ int cvb, th, two, ctiles, rtiles, ih, iw; }};

// direct: each thread reads its inputs from global memory (halo re-reads hit L1/L2).
// blockDim = cvb * th * (two / TW): cvb channel vectors (fastest), th rows, strips of TW pixels.
__global__ void __launch_bounds__({bounds}) dwconv_direct(const T* __restrict__ x, const T* __restrict__ w,
    const T* __restrict__ bias, const T* __restrict__ res, T* __restrict__ y,
    int H, int W, int C, int OH, int OW, int ph, int pw, Tile tl) {{
  const int cv = C / VEC, sw = tl.two / TW;
  int tid = threadIdx.x;
  const int cl = tid % tl.cvb; tid /= tl.cvb;
  const int rl = tid % tl.th, sl = tid / tl.th;
  int b = blockIdx.x;
  const int ct = b % tl.ctiles; b /= tl.ctiles;
  const int rt = b % tl.rtiles, st = b / tl.rtiles;
  const int c8 = ct * tl.cvb + cl, oh = rt * tl.th + rl, ow0 = (st * sw + sl) * TW;
  if (c8 >= cv || oh >= OH || ow0 >= OW) return;
  const long n = blockIdx.y;
  const int c = c8 * VEC;
  const int ih0 = oh * S - ph, iw0 = ow0 * S - pw;
  float acc[TW][VEC];
  accumulate(w, C, c, [&](int i, int q, uint4& u) {{
    const int ih = ih0 + i, iw = iw0 + q;
    if (ih < 0 || ih >= H || iw < 0 || iw >= W) return false;
    u = __ldg(reinterpret_cast<const uint4*>(x + ((n * H + ih) * (long)W + iw) * C + c));
    return true;
  }}, acc);
  store(acc, bias, res, y, n, oh, ow0, OH, OW, C, c);
}}

// tiled: a block first copies its input tile (tl.ih x tl.iw pixels x cvb channel vectors, zero-padded)
// into shared memory with coalesced 16-byte loads, then computes th x two outputs from it.
__global__ void __launch_bounds__({bounds}) dwconv_tiled(const T* __restrict__ x, const T* __restrict__ w,
    const T* __restrict__ bias, const T* __restrict__ res, T* __restrict__ y,
    int H, int W, int C, int OH, int OW, int ph, int pw, Tile tl) {{
  extern __shared__ uint4 tile[];
  const int cv = C / VEC, sw = tl.two / TW;
  int b = blockIdx.x;
  const int ct = b % tl.ctiles; b /= tl.ctiles;
  const int rt = b % tl.rtiles, st = b / tl.rtiles;
  const long n = blockIdx.y;
  const int oh0 = rt * tl.th, ow00 = st * tl.two, c80 = ct * tl.cvb;
  const int ih0 = oh0 * S - ph, iw0 = ow00 * S - pw;
  for (int i = threadIdx.x; i < tl.ih * tl.iw * tl.cvb; i += blockDim.x) {{
    const int cl = i % tl.cvb, r = i / tl.cvb;
    const int ih = ih0 + r / tl.iw, iw = iw0 + r % tl.iw, c8 = c80 + cl;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (ih >= 0 && ih < H && iw >= 0 && iw < W && c8 < cv)
      v = __ldg(reinterpret_cast<const uint4*>(x + ((n * H + ih) * (long)W + iw) * C + c8 * VEC));
    tile[i] = v;
  }}
  __syncthreads();
  for (int it = threadIdx.x; it < tl.cvb * tl.th * sw; it += blockDim.x) {{
    const int cl = it % tl.cvb, r = it / tl.cvb;
    const int rl = r % tl.th, sl = r / tl.th;
    const int c8 = c80 + cl, oh = oh0 + rl, ow0 = ow00 + sl * TW;
    if (c8 >= cv || oh >= OH || ow0 >= OW) continue;
    const int c = c8 * VEC;
    float acc[TW][VEC];
    accumulate(w, C, c, [&](int i, int q, uint4& u) {{
      u = tile[((rl * S + i) * tl.iw + sl * TW * S + q) * tl.cvb + cl];
      return true;
    }}, acc);
    store(acc, bias, res, y, n, oh, ow0, OH, OW, C, c);
  }}
}}

// rows: each thread computes 2 channels (one 4-byte vector) of a strip of TW output columns over RH output
// rows, walking down the input: each input row is loaded and converted once and feeds every output row that
// reads it, and all K*K weights of the two channels stay in registers as float32. Everything is unrolled, so
// an output row's accumulators live only from its first input row to its last, where it is stored.
// Threads: channel pairs fastest (a warp's loads are contiguous), then strips (tl.two), then row blocks (tl.th).
__device__ __forceinline__ void store2(float a0, float a1, const float (&bv)[2], const T* __restrict__ res,
                                       T* __restrict__ y, long off) {{
  float v0 = act1(a0 + bv[0]), v1 = act1(a1 + bv[1]);
  {add_res2}
  *reinterpret_cast<T2*>(y + off) = {from_f2}(act2(v0), act2(v1));
}}

__global__ void __launch_bounds__({bounds}) dwconv_rows(const T* __restrict__ x, const T* __restrict__ w,
    const T* __restrict__ bias, const T* __restrict__ res, T* __restrict__ y,
    int H, int W, int C, int OH, int OW, int ph, int pw, Tile tl) {{
  const long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
  const int cp = (int)(idx % tl.cvb);
  const long r = idx / tl.cvb;
  const int strip = (int)(r % tl.two), rb = (int)(r / tl.two);
  if (rb >= tl.th) return;
  const long n = blockIdx.y;
  const int c = cp * 2, oh0 = rb * RH, ow0 = strip * TW;
  const int ih0 = oh0 * S - ph, iw0 = ow0 * S - pw;
  float wf[K][K][2];
#pragma unroll
  for (int i = 0; i < K; ++i)
#pragma unroll
    for (int j = 0; j < K; ++j) {{
      const float2 f = {to_f2}(__ldg(reinterpret_cast<const T2*>(w + (long)(i * K + j) * C + c)));
      wf[i][j][0] = f.x; wf[i][j][1] = f.y;
    }}
  float bv[2] = {{0.f, 0.f}};
  if (bias != nullptr) {{
    const float2 f = {to_f2}(__ldg(reinterpret_cast<const T2*>(bias + c)));
    bv[0] = f.x; bv[1] = f.y;
  }}
  float acc[RH][TW][2];
#pragma unroll
  for (int o = 0; o < RH; ++o)
#pragma unroll
    for (int t = 0; t < TW; ++t) acc[o][t][0] = acc[o][t][1] = 0.f;
  // the next input row is loaded (raw) while the current one is computed: a row's FMAs hide the next one's latency
  const T2 zero = {from_f2}(0.f, 0.f);
  T2 raw[COLS];
  auto load_row = [&](int rr) {{
    const int ih = ih0 + rr;
    const bool row_in = ih >= 0 && ih < H;
    const T2* px = reinterpret_cast<const T2*>(x + ((n * H + ih) * (long)W + iw0) * C + c);
#pragma unroll
    for (int q = 0; q < COLS; ++q) {{
      const int iw = iw0 + q;
      raw[q] = (row_in && iw >= 0 && iw < W) ? __ldg(px + (long)q * (C / 2)) : zero;
    }}
  }};
  constexpr int ROWS_IN = (RH - 1) * S + K;
  load_row(0);
#pragma unroll
  for (int rr = 0; rr < ROWS_IN; ++rr) {{
    float v[COLS][2];
#pragma unroll
    for (int q = 0; q < COLS; ++q) {{
      const float2 f = {to_f2}(raw[q]);
      v[q][0] = f.x; v[q][1] = f.y;
    }}
    if (rr + 1 < ROWS_IN) load_row(rr + 1);
#pragma unroll
    for (int o = 0; o < RH; ++o) {{
      const int i = rr - o * S;  // the kernel row this input row is for output row o (known at compile time)
      if (i < 0 || i >= K) continue;
#pragma unroll
      for (int t = 0; t < TW; ++t)
#pragma unroll
        for (int j = 0; j < K; ++j) {{
          acc[o][t][0] = fmaf(v[t * S + j][0], wf[i][j][0], acc[o][t][0]);
          acc[o][t][1] = fmaf(v[t * S + j][1], wf[i][j][1], acc[o][t][1]);
        }}
      if (i == K - 1 && oh0 + o < OH) {{  // output row o is complete
#pragma unroll
        for (int t = 0; t < TW; ++t)
          if (ow0 + t < OW) store2(acc[o][t][0], acc[o][t][1], bv, res, y, ((n * OH + oh0 + o) * (long)OW + ow0 + t) * C + c);
      }}
    }}
  }}
}}

int largest_divisor(int cv, int hi, int lo) {{  // of cv in [lo, hi], else hi (some idle threads)
  if (cv <= hi) return cv;
  for (int d = hi; d >= lo; --d) if (cv % d == 0) return d;
  return hi;
}}
}}  // namespace

// 0 on success; 1: a shape the kernel does not take; 4: the launch failed.
extern "C" int {cfg.symbol}(const void* x, const void* w, const void* bias, const void* res, void* y,
                            int N, int H, int W, int C, int OH, int OW, int ph, int pw, cudaStream_t stream) {{
  if (C % VEC != 0 || N <= 0 || N > 65535) return 1;
  const int cv = C / VEC;
  const int strips = (OW + TW - 1) / TW;
  Tile tl;
  size_t smem = 0;
  int threads;
  if (ROWS) {{
    tl.cvb = C / 2;                      // channel pairs
    tl.two = strips;                     // strips of TW columns
    tl.th = (OH + RH - 1) / RH;          // blocks of RH rows
    const long items = (long)tl.cvb * tl.two * tl.th;
    if ((items + 255) / 256 > 0x7fffffffL) return 1;
    dim3 grid((unsigned)((items + 255) / 256), N);
    dwconv_rows<<<grid, 256, 0, stream>>>(static_cast<const T*>(x), static_cast<const T*>(w),
        static_cast<const T*>(bias), static_cast<const T*>(res), static_cast<T*>(y), H, W, C, OH, OW, ph, pw, tl);
    return cudaGetLastError() == cudaSuccess ? 0 : 4;
  }}
  if (TILED) {{
    // output tile: up to 8 rows x 4 strips; channel vectors: as many as the shared-memory budget holds
    tl.th = OH < 8 ? OH : 8;
    const int sw = strips < 4 ? strips : 4;
    tl.two = sw * TW;
    tl.ih = (tl.th - 1) * S + K;
    tl.iw = (tl.two - 1) * S + K;
    const int fit = SMEM_BYTES / (tl.ih * tl.iw * 16);
    if (fit < 1) return 1;
    const int hi = fit < 32 ? fit : 32;
    tl.cvb = largest_divisor(cv, hi, (hi + 1) / 2);
    smem = (size_t)tl.ih * tl.iw * tl.cvb * 16;
    const int items = tl.cvb * tl.th * sw;  // one per thread where they fit, whole warps
    threads = items >= 256 ? 256 : (items + 31) / 32 * 32;
  }} else {{
    tl.cvb = largest_divisor(cv, 32, 8);
    const int rest = 256 / tl.cvb;        // threads left for rows x strips
    tl.th = rest < 8 ? rest : 8;
    if (tl.th > OH) tl.th = OH;
    int sw = rest / tl.th;
    if (sw > strips) sw = strips;
    if (sw < 1) sw = 1;
    tl.two = sw * TW;
    tl.ih = tl.iw = 0;
    threads = tl.cvb * tl.th * sw;
  }}
  tl.ctiles = (cv + tl.cvb - 1) / tl.cvb;
  tl.rtiles = (OH + tl.th - 1) / tl.th;
  const int stiles = (OW + tl.two - 1) / tl.two;
  dim3 grid(tl.ctiles * tl.rtiles * stiles, N);
  auto kernel = TILED ? dwconv_tiled : dwconv_direct;
  kernel<<<grid, threads, smem, stream>>>(static_cast<const T*>(x), static_cast<const T*>(w),
      static_cast<const T*>(bias), static_cast<const T*>(res), static_cast<T*>(y), H, W, C, OH, OW, ph, pw, tl);
  return cudaGetLastError() == cudaSuccess ? 0 : 4;
}}
"""


# ---------------------------------------------------------------- choosing a variant

TUNING_SCHEMA = "sparsec.dw-tuning/1"


def tuning_table(arch: str) -> dict:
    """The measured variant per filter size and stride: ``<cache dir>/tuning/dw_<arch>.json`` (written by
    ``benchmarks/dwconv.py --sweep --write-table``), else the shipped ``backends/cutlass/tuned/dw_<arch>.json``,
    else empty."""
    import json

    from sparsec import knobs

    local = Path(knobs.get("cache_dir")) / "tuning" / f"dw_{arch}.json"
    shipped = Path(__file__).parent / "tuned" / f"dw_{arch}.json"
    for path in (local, shipped):
        if path.is_file():
            doc = json.loads(path.read_text())
            if doc.get("schema") == TUNING_SCHEMA:
                return doc.get("choices", {})
    return {}


def variant(arch: str, k: int, stride: int, mode: str = "auto") -> dict:
    """``tiled``/``tw``/``occ``/``rows`` of the kernel for a ``k``x``k`` stride-``stride`` layer under
    ``SPARSEC_CUTLASS_DEPTHWISE`` = ``mode``: ``tiled``, ``direct`` or ``rows`` as asked; ``auto`` the tuning
    table's choice for (k, stride), else tiled for 5x5 and up and direct for 3x3 (the winners of the first
    measurement, before the rows layout; the shipped sm_90a table picks rows everywhere)."""
    if mode in ("tiled", "direct", "rows"):
        return {"tiled": mode == "tiled", "tw": 0, "occ": 0, "rows": mode == "rows"}
    got = tuning_table(arch).get(f"k{k}s{stride}")
    if got:
        return {"tiled": bool(got["tiled"]), "tw": int(got.get("tw", 0)), "occ": int(got.get("occ", 0)),
                "rows": bool(got.get("rows", False))}
    return {"tiled": k >= 5, "tw": 0, "occ": 0, "rows": False}


# ---------------------------------------------------------------- loading and running

_kernels = KernelLibrary(DwConfig.from_name, [ctypes.c_void_p] * 5 + [ctypes.c_int] * 8 + [ctypes.c_void_p])


def preload(configs) -> None:
    """Build (parallel nvcc, cached) and load these depthwise kernels, so that calls do no setup."""
    _kernels.preload(configs)


def out_size(size: int, k: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - k) // stride + 1


@torch.library.custom_op("sparsec::dwconv2d", mutates_args=())
def dwconv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], residual: Optional[torch.Tensor],
             padding: list[int], config: str) -> torch.Tensor:
    """y [N, Ho, Wo, C] = act2(act(depthwise conv of x [N, H, W, C] with weight [k, k, C] + bias) + residual)."""
    from sparsec.backends.cutlass.runtime import poison

    cfg = DwConfig.from_name(config)
    n, h, w_, c = x.shape
    oh, ow = out_size(h, cfg.k, cfg.stride, padding[0]), out_size(w_, cfg.k, cfg.stride, padding[1])
    want = check_inputs("depthwise", cfg, x, weight=weight)
    if c % VEC or tuple(weight.shape) != (cfg.k, cfg.k, c):
        raise KernelError(f"depthwise kernel {cfg.name}: C={c}, weight {tuple(weight.shape)}",
                          expected=f"C a multiple of {VEC}, weight ({cfg.k}, {cfg.k}, C)", fix="compile the model again")
    x = x.contiguous()
    bias = None if bias is None else bias.to(want).contiguous()
    if cfg.residual:
        if residual is None or tuple(residual.shape) != (n, oh, ow, c):
            raise KernelError(f"depthwise kernel {cfg.name} takes a residual of the output's shape",
                              expected=str((n, oh, ow, c)), actual=None if residual is None else str(tuple(residual.shape)))
        residual = residual.to(want).contiguous()
    y = poison(torch.empty(n, oh, ow, c, dtype=want, device=x.device))
    if y.numel() == 0:
        return y
    ptr = lambda t: None if t is None else t.data_ptr()  # noqa: E731
    for chunk in range(0, n, 65535):  # grid.y holds the images
        m = min(65535, n - chunk)
        xs, ys = x[chunk:chunk + m], y[chunk:chunk + m]
        rs = residual[chunk:chunk + m] if cfg.residual else None
        rc = _kernels.get(cfg)(ptr(xs), weight.data_ptr(), ptr(bias), ptr(rs), ys.data_ptr(), m, h, w_, c, oh, ow,
                          padding[0], padding[1], torch.cuda.current_stream(x.device).cuda_stream)
        check_rc(rc, "depthwise", cfg, f"x {tuple(x.shape)}, padding {list(padding)}")
    return y


@dwconv2d.register_fake
def _dwconv2d_fake(x, weight, bias, residual, padding, config):
    cfg = DwConfig.from_name(config)
    n, h, w_, c = x.shape
    return x.new_empty(n, out_size(h, cfg.k, cfg.stride, padding[0]), out_size(w_, cfg.k, cfg.stride, padding[1]), c)


def reference(x, weight, bias, residual, padding, config) -> torch.Tensor:
    """The op in plain ATen (float32 compute, NCHW conv): the CPU kernel, and the tests' reference."""
    from sparsec.passes.fusion.ops import ACTIVATIONS

    cfg = DwConfig.from_name(config)
    c = x.shape[-1]
    wt = weight.permute(2, 0, 1).unsqueeze(1).float()  # [C, 1, k, k]
    y = torch.nn.functional.conv2d(x.permute(0, 3, 1, 2).float(), wt, None if bias is None else bias.float(),
                                   cfg.stride, list(padding), 1, c)
    y = ACTIVATIONS[cfg.act](y)
    if cfg.residual:
        y = y + residual.permute(0, 3, 1, 2).float()
    return ACTIVATIONS[cfg.act2](y).to(x.dtype).permute(0, 2, 3, 1).contiguous()


torch.library.register_kernel("sparsec::dwconv2d", "cpu", reference)
