"""A stem conv with its pooling fused, on tensor cores: ``sparsec::conv_pool_nhwc``.

ResNet's start is a 7x7 stride-2 conv of the image, bias and ReLU, then a 3x3 stride-2 max-pool. Unfused
on an H100 (fp16) that is cuDNN's conv writing the 112x112 activation, and PyTorch's NHWC max-pool reading
it back: at batch 256, 0.22 + 0.51 ms of pruned ResNet-50's 4.05 ms; at batch 1, 12.7 + 12.6 us of a
0.32 ms forward (``benchmarks/e2e_profile.py``). This kernel is ``fuse-conv-pool``'s: each block computes
the conv outputs one tile of pooled outputs reads (the tile plus its halo, which neighbouring blocks
compute again), keeps them in shared memory, and pools there, so the full-resolution activation never
reaches memory.

Per block: a tile of ``TPH x TPW`` pooled pixels needs ``CH x CW`` conv outputs (``CH = (TPH-1)*PS + PK``),
which read an ``IH x IW`` patch of the image. The patch is loaded once into shared memory as
``[IH][IW][4]`` (channels padded to 4 with zeros), so that the implicit-GEMM K index ``(kh, kw, ci)`` runs
in pairs of neighbouring channels: every A-fragment register of ``mma.sync.m16n8k16`` is one 32-bit
shared load, at (conv output's patch offset) + (tap's offset), both from small tables. The GEMM is
M = CH*CW conv outputs, N = Cout, K = k*k*4 padded to 16; the weights ``[Cout][K]`` stay in shared memory
for the whole (persistent) block. Each warp owns two m16 tiles and up to 64 channels; fp32 accumulators
get ``act(acc + bias)``, are rounded to the output dtype (as the unfused conv's output is) and stored to
the conv tile in shared memory; the block then max- or average-pools it, masking conv rows and columns
outside the conv's output (PyTorch's pool padding), and writes the NHWC output in 16-byte vectors.

Measured on an H100 (``benchmarks/conv_pool.py``, ``benchmarks/results/conv_pool_h100.json``): ResNet-50's
stem + max-pool in fp16 takes 0.011 ms at batch 1 (unfused 0.036) and 0.58 ms at batch 256 (unfused 1.53);
``fuse-conv-pool`` fuses a site from those gains.

    conv_pool_nhwc(x [N, Cin, H, W] (any strides), weight [Cout, KP] (packed: see :func:`pack_weight`),
                   bias [Cout]?, padding [ph, pw], config) -> y [N, PH, PW, Cout]  (NHWC, contiguous)
    y = pool(act(conv2d(x, w, stride, padding) + bias))

Shapes: Cin 1 to 4, Cout a multiple of 8 up to 64 or 128, square kernels 1 to 11 of stride 1 to 4, dilation
1; square pools 1 to 4 of stride 1 to 4, padding at most half the window, no ceil mode; max, or average
with or without the padding counted (no divisor override).
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import re
from typing import Optional

import torch

from sparsec.backends.cutlass.depthwise import ACT_CODE, ACTS, CUDA_T, DTYPES, VEC, out_size
from sparsec.backends.cutlass.handlib import HandWritten, KernelLibrary, check_inputs, check_rc, sm_count
from sparsec.errors import KernelError

MAX_CIN = 4
CONV_K = range(1, 12)
CONV_S = range(1, 5)
POOL_K = range(1, 5)
POOL_S = range(1, 5)
POOLS = ("max", "avg", "avgx")  # avg: padding counted in the divisor (count_include_pad); avgx: not counted
TILES = ((4, 4), (4, 8), (8, 8))  # pooled pixels per block (rows x columns)
SMEM_LIMIT = 200 * 1024
_ACT_RE = "|".join(sorted(ACTS, key=len, reverse=True))
_NAME = re.compile(rf"cpool_(sm_\w+?)_(fp16|bf16)_ci(\d)_k(\d+)s(\d)_co(\d+)_({_ACT_RE})_(max|avgx|avg)(\d)s(\d)p(\d)"
                   r"_t(\d)x(\d)$")


@dataclasses.dataclass(frozen=True)
class ConvPoolConfig(HandWritten):
    """One kernel: ``cpool_<arch>_<dtype>_ci<Cin>_k<k>s<s>_co<Cout>_<act>_<pool><pk>s<ps>p<pp>_t<TPH>x<TPW>``."""

    arch: str
    dtype: str
    cin: int
    k: int
    stride: int
    cout: int
    act: str
    pool: str
    pk: int
    ps: int
    pp: int
    tile: tuple[int, int] = (4, 8)

    def __post_init__(self) -> None:
        why = []
        if self.dtype not in DTYPES:
            why.append(f"dtype {self.dtype!r} (takes {', '.join(DTYPES)})")
        if not 1 <= self.cin <= MAX_CIN:
            why.append(f"Cin {self.cin} (takes 1 to {MAX_CIN})")
        if self.k not in CONV_K or self.stride not in CONV_S:
            why.append(f"a {self.k}x{self.k} conv of stride {self.stride} (takes k 1 to 11, stride 1 to 4)")
        if not cout_ok(self.cout):
            why.append(f"Cout {self.cout} (takes a multiple of {VEC} up to 64, or 128)")
        if self.act not in ACTS:
            why.append(f"activation {self.act!r} (takes {', '.join(ACTS)})")
        if self.pool not in POOLS or self.pk not in POOL_K or self.ps not in POOL_S or not 0 <= 2 * self.pp <= self.pk:
            why.append(f"pool {self.pool} {self.pk}x{self.pk} stride {self.ps} padding {self.pp} (takes {', '.join(POOLS)}, "
                       "window 1 to 4, stride 1 to 4, padding at most half the window)")
        if tuple(self.tile) not in TILES:
            why.append(f"tile {self.tile} (one of {TILES})")
        if why:
            raise ValueError("conv+pool kernel: " + "; ".join(why))
        if smem_bytes(self) > SMEM_LIMIT:
            raise ValueError(f"conv+pool kernel {self.name}: {smem_bytes(self)} bytes of shared memory (at most "
                             f"{SMEM_LIMIT}); use a smaller tile")

    @property
    def name(self) -> str:
        th, tw = self.tile
        return (f"cpool_{self.arch}_{self.dtype}_ci{self.cin}_k{self.k}s{self.stride}_co{self.cout}_{self.act}_"
                f"{self.pool}{self.pk}s{self.ps}p{self.pp}_t{th}x{tw}")

    @classmethod
    @functools.lru_cache(maxsize=None)
    def from_name(cls, name: str) -> "ConvPoolConfig":
        m = _NAME.match(name)
        if not m:
            raise ValueError(f"not a conv+pool kernel name: {name!r}")
        arch, dtype, cin, k, s, cout, act, pool, pk, ps, pp, th, tw = m.groups()
        return cls(arch, dtype, int(cin), int(k), int(s), int(cout), act, pool, int(pk), int(ps), int(pp),
                   (int(th), int(tw)))

    def _emit(self) -> str:
        return emit(self)

    # -- derived sizes (the kernel's constexprs) --------------------------------------------------
    @property
    def kp(self) -> int:
        """The GEMM depth: k*k taps of 4 (padded) channels, rounded up to 16."""
        return -(-self.k * self.k * 4 // 16) * 16


def cout_ok(cout: int) -> bool:
    return cout > 0 and cout % VEC == 0 and (cout <= 64 or cout == 128)


def is_name(name: str) -> bool:
    return name.startswith("cpool_")


def _geometry(cfg: ConvPoolConfig) -> dict:
    th, tw = cfg.tile
    ch, cw = (th - 1) * cfg.ps + cfg.pk, (tw - 1) * cfg.ps + cfg.pk
    ih, iw = (ch - 1) * cfg.stride + cfg.k, (cw - 1) * cfg.stride + cfg.k
    mt = -(-ch * cw // 16)
    nt = cfg.cout // 8
    npw = min(nt, 8)
    return {"CH": ch, "CW": cw, "IH": ih, "IW": iw, "MT": mt, "NPW": npw, "NGRP": nt // npw, "MGRP": -(-mt // 2)}


def smem_bytes(cfg: ConvPoolConfig) -> int:
    """Shared memory of one block: weights, bias, patch, tap table, conv tile."""
    g = _geometry(cfg)
    parts = [cfg.cout * (cfg.kp + 8) * 2, cfg.cout * 4, g["IH"] * g["IW"] * 4 * 2, cfg.kp // 2 * 4,
             g["CH"] * g["CW"] * (cfg.cout + 8) * 2]
    return sum(-(-p // 16) * 16 for p in parts)


def threads(cfg: ConvPoolConfig) -> int:
    g = _geometry(cfg)
    return g["MGRP"] * g["NGRP"] * 32


def pack_weight(w: torch.Tensor, kp: int | None = None) -> torch.Tensor:
    """``[Cout, Cin, k, k]`` -> ``[Cout, KP]``: K ordered (kh, kw, ci) over 4 channels (zero-padded), then
    zero-padded to KP (a multiple of 16)."""
    cout, cin, k, _ = w.shape
    wk = torch.zeros(cout, k, k, 4, dtype=w.dtype, device=w.device)
    wk[..., :cin] = w.permute(0, 2, 3, 1)
    kp = kp or -(-k * k * 4 // 16) * 16
    out = torch.zeros(cout, kp, dtype=w.dtype, device=w.device)
    out[:, : k * k * 4] = wk.reshape(cout, -1)
    return out


def unpack_weight(wp: torch.Tensor, cin: int, k: int) -> torch.Tensor:
    """The inverse of :func:`pack_weight`: ``[Cout, Cin, k, k]``."""
    cout = wp.shape[0]
    return wp[:, : k * k * 4].reshape(cout, k, k, 4)[..., :cin].permute(0, 3, 1, 2)


def emit(cfg: ConvPoolConfig) -> str:
    """The .cu source of one kernel (extern "C" launcher; see the module docstring)."""
    g = _geometry(cfg)
    t = CUDA_T[cfg.dtype]
    t2 = "__half2" if cfg.dtype == "fp16" else "__nv_bfloat162"
    header = "cuda_fp16.h" if cfg.dtype == "fp16" else "cuda_bf16.h"
    to_f = "__half2float" if cfg.dtype == "fp16" else "__bfloat162float"
    from_f2 = "__floats2half2_rn" if cfg.dtype == "fp16" else "__floats2bfloat162_rn"
    mma_t = "f16" if cfg.dtype == "fp16" else "bf16"
    neg_inf = "__ushort_as_half(0xfc00)" if cfg.dtype == "fp16" else "__ushort_as_bfloat16(0xff80)"
    th, tw = cfg.tile
    pool_code = {"max": 0, "avg": 1, "avgx": 2}[cfg.pool]
    return f"""\
// generated by sparsec.backends.cutlass.conv_pool -- do not edit
// config: {cfg.name}
#include <cstdint>
#include <cuda_runtime.h>
#include <{header}>

namespace {{
using T = {t};
using T2 = {t2};
constexpr int K = {cfg.k}, S = {cfg.stride}, CIN = {cfg.cin}, COUT = {cfg.cout};
constexpr int PK = {cfg.pk}, PS = {cfg.ps}, PP = {cfg.pp}, POOL = {pool_code};  // 0 max, 1 avg, 2 avg w/o padding
constexpr int TPH = {th}, TPW = {tw};
constexpr int CH = {g["CH"]}, CW = {g["CW"]}, IH = {g["IH"]}, IW = {g["IW"]};  // conv tile, input patch
constexpr int MROWS = CH * CW, MT = {g["MT"]};       // GEMM rows (conv outputs) and their m16 tiles
constexpr int KD = K * K * 4, KP = {cfg.kp}, KSTEPS = KP / 16;
constexpr int NPW = {g["NPW"]}, NGRP = {g["NGRP"]}, MGRP = {g["MGRP"]}, MPW = 2;
constexpr int THREADS = MGRP * NGRP * 32;
constexpr int WST = KP + 8;        // weight row stride (halves): 4 mod 8 words, conflict-free B loads
constexpr int CST = COUT + 8;      // conv tile row stride (halves)
constexpr int PATCH = IH * IW * 4; // patch halves
constexpr int VEC = 8, GROUPS = COUT / VEC;

constexpr int up16(int b) {{ return (b + 15) / 16 * 16; }}
constexpr int OFF_W = 0;
constexpr int OFF_B = OFF_W + up16(COUT * WST * 2);
constexpr int OFF_P = OFF_B + up16(COUT * 4);
constexpr int OFF_T = OFF_P + up16(PATCH * 2);
constexpr int OFF_C = OFF_T + up16(KP / 2 * 4);
constexpr int SMEM = OFF_C + up16(MROWS * CST * 2);

__device__ __forceinline__ float act1(float v) {{ return {ACT_CODE[cfg.act]}; }}

__device__ __forceinline__ void mma(float* c, const uint32_t* a, const uint32_t* b) {{
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.{mma_t}.{mma_t}.f32 {{%0,%1,%2,%3}}, {{%4,%5,%6,%7}}, "
               "{{%8,%9}}, {{%0,%1,%2,%3}};\\n"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}}

// A persistent grid-stride loop over (image, tile row, tile column).
__global__ void __launch_bounds__(THREADS) conv_pool(const T* __restrict__ x, const T* __restrict__ w,
    const T* __restrict__ bias, T* __restrict__ y, int N, int H, int W, int OH, int OW, int POH, int POW,
    int ph, int pw, long sn, long sc, long sh, long sw) {{
  extern __shared__ __align__(16) unsigned char smem[];
  T* wsm = reinterpret_cast<T*>(smem + OFF_W);
  float* bsm = reinterpret_cast<float*>(smem + OFF_B);
  T* patch = reinterpret_cast<T*>(smem + OFF_P);
  int* tap = reinterpret_cast<int*>(smem + OFF_T);
  T* ctile = reinterpret_cast<T*>(smem + OFF_C);
  const T zero = T(0.f);

  // once per block: the weights [COUT][KP] (row stride WST), bias, and the tap table: for K pair j, its
  // offset in the patch (in halves). The padded K (past k*k*4) reads tap 0, a real (finite) input value
  // that meets a zero weight: an offset past the patch would, added to a row's offset, land in the conv
  // tile, which other warps are writing.
  for (int i = threadIdx.x; i < COUT * KP / 2; i += THREADS) {{
    const int n = i / (KP / 2), j = i % (KP / 2);
    reinterpret_cast<uint32_t*>(wsm + n * WST)[j] = reinterpret_cast<const uint32_t*>(w + (long)n * KP)[j];
  }}
  for (int i = threadIdx.x; i < COUT; i += THREADS) bsm[i] = bias != nullptr ? {to_f}(bias[i]) : 0.f;
  for (int j = threadIdx.x; j < KP / 2; j += THREADS) {{
    const int k = 2 * j, tp = k / 4, ci = k % 4;
    tap[j] = k < KD ? ((tp / K) * IW + tp % K) * 4 + ci : 0;
  }}

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gid = lane / 4, tig = lane % 4;
  const int mg = warp % MGRP, ng = warp / MGRP;
  int roff[MPW][2];  // this thread's two GEMM rows per m16 tile, as patch offsets (halves)
#pragma unroll
  for (int mi = 0; mi < MPW; ++mi)
#pragma unroll
    for (int h = 0; h < 2; ++h) {{
      const int m = (mg * MPW + mi) * 16 + gid + 8 * h;
      roff[mi][h] = m < MROWS ? ((m / CW) * S * IW + (m % CW) * S) * 4 : 0;
    }}

  const int tiles_y = (POH + TPH - 1) / TPH, tiles_x = (POW + TPW - 1) / TPW;
  const int tiles = N * tiles_y * tiles_x;
  for (int t = blockIdx.x; t < tiles; t += gridDim.x) {{
    const int n = t / (tiles_y * tiles_x), r = t % (tiles_y * tiles_x);
    const int py0 = (r / tiles_x) * TPH, px0 = (r % tiles_x) * TPW;
    const int cy0 = py0 * PS - PP, cx0 = px0 * PS - PP;    // the conv tile's origin (conv output coordinates)
    const int iy0 = cy0 * S - ph, ix0 = cx0 * S - pw;      // the patch's origin (input coordinates)
    const T* xn = x + n * sn;
    for (int i = threadIdx.x; i < IH * IW; i += THREADS) {{
      const int pr = i / IW, pc = i % IW, iy = iy0 + pr, ix = ix0 + pc;
      union {{ T h[4]; uint2 u; }} v;
#pragma unroll
      for (int ci = 0; ci < 4; ++ci) v.h[ci] = zero;
      if (iy >= 0 && iy < H && ix >= 0 && ix < W) {{
#pragma unroll
        for (int ci = 0; ci < CIN; ++ci) v.h[ci] = xn[ci * sc + iy * sh + ix * sw];
      }}
      *reinterpret_cast<uint2*>(patch + i * 4) = v.u;
    }}
    __syncthreads();  // the patch (and, first time round, the weights and tables) are in

    float acc[MPW][NPW][4];
#pragma unroll
    for (int mi = 0; mi < MPW; ++mi)
#pragma unroll
      for (int ni = 0; ni < NPW; ++ni)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[mi][ni][e] = 0.f;
    const uint32_t* p32 = reinterpret_cast<const uint32_t*>(patch);
#pragma unroll 2
    for (int ks = 0; ks < KSTEPS; ++ks) {{
      uint32_t b[NPW][2];
#pragma unroll
      for (int ni = 0; ni < NPW; ++ni) {{
        const uint32_t* wp = reinterpret_cast<const uint32_t*>(wsm + ((ng * NPW + ni) * 8 + gid) * WST + ks * 16) + tig;
        b[ni][0] = wp[0];
        b[ni][1] = wp[4];
      }}
      const int k0 = tap[ks * 8 + tig], k1 = tap[ks * 8 + tig + 4];
#pragma unroll
      for (int mi = 0; mi < MPW; ++mi) {{
        if (mg * MPW + mi >= MT) break;
        const uint32_t a[4] = {{p32[(roff[mi][0] + k0) >> 1], p32[(roff[mi][1] + k0) >> 1],
                               p32[(roff[mi][0] + k1) >> 1], p32[(roff[mi][1] + k1) >> 1]}};
#pragma unroll
        for (int ni = 0; ni < NPW; ++ni) mma(acc[mi][ni], a, b[ni]);
      }}
    }}
    // act(acc + bias), rounded to T as the unfused conv's output is, into the conv tile
#pragma unroll
    for (int mi = 0; mi < MPW; ++mi)
#pragma unroll
      for (int ni = 0; ni < NPW; ++ni)
#pragma unroll
        for (int h = 0; h < 2; ++h) {{
          const int m = (mg * MPW + mi) * 16 + gid + 8 * h, c = (ng * NPW + ni) * 8 + tig * 2;
          if (m < MROWS)
            *reinterpret_cast<T2*>(ctile + m * CST + c) =
                {from_f2}(act1(acc[mi][ni][2 * h] + bsm[c]), act1(acc[mi][ni][2 * h + 1] + bsm[c + 1]));
        }}
    __syncthreads();  // the conv tile is complete

    for (int i = threadIdx.x; i < TPH * TPW * GROUPS; i += THREADS) {{
      const int grp = i % GROUPS, p = i / GROUPS, ty = p / TPW, tx = p % TPW;
      const int py = py0 + ty, px = px0 + tx;
      if (py >= POH || px >= POW) continue;
      float s[VEC];
      T2 mx[VEC / 2];
#pragma unroll
      for (int e = 0; e < VEC; ++e) s[e] = 0.f;
#pragma unroll
      for (int e = 0; e < VEC / 2; ++e) mx[e] = T2({neg_inf}, {neg_inf});
      int count = 0;
#pragma unroll
      for (int di = 0; di < PK; ++di) {{
        const int cy = ty * PS + di, gy = cy0 + cy;
        if (gy < 0 || gy >= OH) continue;
#pragma unroll
        for (int dj = 0; dj < PK; ++dj) {{
          const int cx = tx * PS + dj, gx = cx0 + cx;
          if (gx < 0 || gx >= OW) continue;
          const uint4 u = *reinterpret_cast<const uint4*>(ctile + (cy * CW + cx) * CST + grp * VEC);
          const T2* v = reinterpret_cast<const T2*>(&u);
          ++count;
#pragma unroll
          for (int e = 0; e < VEC / 2; ++e) {{
            if (POOL == 0) {{
              mx[e] = __hmax2_nan(mx[e], v[e]);
            }} else {{
              s[2 * e] += {to_f}(v[e].x);
              s[2 * e + 1] += {to_f}(v[e].y);
            }}
          }}
        }}
      }}
      uint4 out;
      T2* o = reinterpret_cast<T2*>(&out);
      if (POOL == 0) {{
#pragma unroll
        for (int e = 0; e < VEC / 2; ++e) o[e] = mx[e];
      }} else {{
        const float inv = 1.f / (POOL == 1 ? PK * PK : count);
#pragma unroll
        for (int e = 0; e < VEC / 2; ++e) o[e] = {from_f2}(s[2 * e] * inv, s[2 * e + 1] * inv);
      }}
      *reinterpret_cast<uint4*>(y + (((long)n * POH + py) * POW + px) * COUT + grp * VEC) = out;
    }}
    __syncthreads();  // the patch and the conv tile are free again
  }}
}}
}}  // namespace

// 0 on success; 1: a shape the kernel does not take; 4: the launch failed.
extern "C" int {cfg.symbol}(const void* x, const void* w, const void* bias, void* y, int N, int H, int W, int OH,
                            int OW, int POH, int POW, int ph, int pw, long sn, long sc, long sh, long sw, int sms,
                            cudaStream_t stream) {{
  static int per_sm = -1;
  if (per_sm < 0) {{
    if (cudaFuncSetAttribute(conv_pool, cudaFuncAttributeMaxDynamicSharedMemorySize, SMEM) != cudaSuccess) return 4;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, conv_pool, THREADS, SMEM) != cudaSuccess) return 4;
    if (per_sm < 1) per_sm = 1;
  }}
  const long span = (CIN - 1) * sc + (H - 1) * sh + (W - 1) * sw;  // one image's furthest input element
  const long tiles = (long)N * ((POH + TPH - 1) / TPH) * ((POW + TPW - 1) / TPW);
  if (N <= 0 || POH <= 0 || POW <= 0 || span > 0x7fffffffL || tiles > 0x7fffffffL
      || (long)N * POH * POW * COUT > 0x7fffffffffffL) return 1;
  long blocks = (long)sms * per_sm;
  if (blocks > tiles) blocks = tiles;
  conv_pool<<<(int)blocks, THREADS, SMEM, stream>>>(static_cast<const T*>(x), static_cast<const T*>(w),
      static_cast<const T*>(bias), static_cast<T*>(y), N, H, W, OH, OW, POH, POW, ph, pw, sn, sc, sh, sw);
  return cudaGetLastError() == cudaSuccess ? 0 : 4;
}}
"""


# ---------------------------------------------------------------- loading and running

_kernels = KernelLibrary(ConvPoolConfig.from_name, [ctypes.c_void_p] * 4 + [ctypes.c_int] * 9 + [ctypes.c_long] * 4
                         + [ctypes.c_int, ctypes.c_void_p])


def preload(configs) -> None:
    """Build (parallel nvcc, cached) and load these kernels, so that calls do no setup."""
    _kernels.preload(configs)


def out_shape(cfg: ConvPoolConfig, h: int, w: int, padding) -> tuple[int, int, int, int]:
    """(conv OH, OW, pooled PH, PW) for an H x W input."""
    oh, ow = out_size(h, cfg.k, cfg.stride, padding[0]), out_size(w, cfg.k, cfg.stride, padding[1])
    return oh, ow, out_size(oh, cfg.pk, cfg.ps, cfg.pp), out_size(ow, cfg.pk, cfg.ps, cfg.pp)


PREFERRED_TILES = ((4, 8), (4, 4))


def choose_tile(make) -> ConvPoolConfig:
    """``make(tile)``'s config for the first of :data:`PREFERRED_TILES` that fits shared memory.

    4x8 was the fastest tile, or within 4% of it, for ResNet-50's stem (Cout 64, and 32 pruned) at every
    batch from 1 to 256 on an H100 (``benchmarks/conv_pool.py --tiles all``, ``tile_ms`` in
    ``benchmarks/results/conv_pool_h100.json``); 8x8 recomputes fewer halo rows but holds half as many
    blocks per SM.
    """
    for tile in PREFERRED_TILES:
        try:
            return make(tile)
        except ValueError:
            continue
    return make(PREFERRED_TILES[-1])  # raises, saying why


@torch.library.custom_op("sparsec::conv_pool_nhwc", mutates_args=())
def conv_pool_nhwc(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], padding: list[int],
                   config: str) -> torch.Tensor:
    """y [N, PH, PW, Cout] (NHWC) = pool(act(conv2d(x [N, Cin, H, W], weight) + bias)); weight packed [Cout, KP]."""
    from sparsec.backends.cutlass.runtime import poison

    cfg = ConvPoolConfig.from_name(config)
    n, cin, h, w_ = x.shape
    want = check_inputs("conv+pool", cfg, x, weight=weight)
    if cin != cfg.cin or tuple(weight.shape) != (cfg.cout, cfg.kp):
        raise KernelError(f"conv+pool kernel {cfg.name}: x {tuple(x.shape)}, weight {tuple(weight.shape)}",
                          expected=f"Cin {cfg.cin}, packed weight ({cfg.cout}, {cfg.kp})", fix="compile the model again")
    oh, ow, ph, pw = out_shape(cfg, h, w_, padding)
    if min(oh, ow, ph, pw) <= 0:
        raise KernelError(f"conv+pool kernel {cfg.name}: a {h}x{w_} input leaves no output",
                          where=f"x {tuple(x.shape)}", fix="give a larger input")
    bias = None if bias is None else bias.to(want).contiguous()
    y = poison(torch.empty(n, ph, pw, cfg.cout, dtype=want, device=x.device))
    if y.numel() == 0:
        return y
    rc = _kernels.get(cfg)(x.data_ptr(), weight.contiguous().data_ptr(), None if bias is None else bias.data_ptr(),
                           y.data_ptr(), n, h, w_, oh, ow, ph, pw, padding[0], padding[1], *x.stride(),
                           sm_count(x.device.index or 0), torch.cuda.current_stream(x.device).cuda_stream)
    check_rc(rc, "conv+pool", cfg, f"x {tuple(x.shape)}")
    return y


@conv_pool_nhwc.register_fake
def _conv_pool_fake(x, weight, bias, padding, config):
    cfg = ConvPoolConfig.from_name(config)
    n, _, h, w_ = x.shape
    _, _, ph, pw = out_shape(cfg, h, w_, padding)
    return x.new_empty(n, ph, pw, cfg.cout)


def reference(x, weight, bias, padding, config) -> torch.Tensor:
    """The op in plain ATen (float32 compute, the conv's output rounded to the dtype before pooling, as the
    kernel does): the CPU kernel, and the tests' reference."""
    from sparsec.passes.fusion.ops import ACTIVATIONS

    cfg = ConvPoolConfig.from_name(config)
    wt = unpack_weight(weight, cfg.cin, cfg.k).float()
    y = torch.nn.functional.conv2d(x.float(), wt, None if bias is None else bias.float(), cfg.stride, list(padding))
    y = ACTIVATIONS[cfg.act](y).to(x.dtype).float()
    if cfg.pool == "max":
        y = torch.nn.functional.max_pool2d(y, cfg.pk, cfg.ps, cfg.pp)
    else:
        y = torch.nn.functional.avg_pool2d(y, cfg.pk, cfg.ps, cfg.pp, count_include_pad=cfg.pool == "avg")
    return y.to(x.dtype).permute(0, 2, 3, 1).contiguous()


torch.library.register_kernel("sparsec::conv_pool_nhwc", "cpu", reference)
