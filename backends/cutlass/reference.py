"""Torch reference implementations of ``sparsec::gemm24`` and ``sparsec::gemm_dense`` for the CPU.

The CUTLASS kernels run on CUDA only. Importing this module registers a CPU
kernel on both ops (``torch.library.register_kernel``) that computes the same
contract from the *unpacked* weight::

    y[..., m] = act(scale * (x @ W[:m]^T) + bias + residual)

``gemm24`` decodes its packed operands (the kept values and the metadata
bytes, in the layout of the config's arch and tile K) back into the dense
[mp, kp] weight with :func:`unpack`, the torch inverse of
:func:`packing.pack_torch`; ``gemm_dense`` reads its zero-padded weight. 16-bit
inputs accumulate in float32 (as the kernels do); float32/float64 inputs stay
in their dtype, so a lowered graph can be checked against the un-lowered one
exactly (the lowering's reference mode keeps the graph's dtype, see
:func:`pack_any`). CUDA tensors still go to the real kernels.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from sparsec.backends.cutlass import packing
from sparsec.backends.cutlass import runtime  # noqa: F401 -- defines the ops registered on below
from sparsec.backends.cutlass.config import KernelConfig

_ACT = runtime._ACT


@functools.lru_cache(maxsize=64)
def _meta_index(arch: str, mp: int, kp: int, tile_k: int) -> torch.Tensor:
    if arch == "sm_90a":
        mp_e, kp_e = packing._round_up(mp, 64), packing._round_up(kp, tile_k)
        return torch.from_numpy(packing.sm90_meta_offsets(mp_e, kp_e, tile_k))
    return torch.from_numpy(packing.sm80_meta_offsets(mp, kp // 16))


def kept_positions(meta: torch.Tensor, arch: str, tile_k: int, mp: int, kp: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The kept positions (i0, i1), each int64 [mp, kp/4], that the metadata bytes encode."""
    meta = meta.cpu()
    if arch == "sm_90a":
        mp_e, kp_e = packing._round_up(mp, 64), packing._round_up(kp, tile_k)
        byte = meta[_meta_index(arch, mp, kp, tile_k)].to(torch.int64)  # [mp_e, kp_e/8]
        nib = torch.stack([byte & 0xF, byte >> 4], -1).reshape(mp_e, kp_e // 4)[:mp, : kp // 4]
    else:
        b = meta.to(torch.int64)
        words = (b[0::2] | (b[1::2] << 8))[_meta_index(arch, mp, kp, 0)]  # [mp, kp/16]
        nib = torch.stack([(words >> s) & 0xF for s in (0, 4, 8, 12)], -1).reshape(mp, kp // 4)
    return nib & 3, nib >> 2


def unpack(values: torch.Tensor, meta: torch.Tensor, cfg: KernelConfig) -> torch.Tensor:
    """The dense [mp, kp] weight (values' dtype, on the CPU) that packed ``(values, meta)`` stand for."""
    mp, kp = values.shape[0], values.shape[1] * 2
    i0, i1 = kept_positions(meta, cfg.arch, cfg.pack_tile_k, mp, kp)
    vals = values.cpu().reshape(mp, kp // 4, 2)
    dense = torch.zeros(mp, kp // 4, 4, dtype=values.dtype)
    dense.scatter_(-1, i0[..., None], vals[..., :1])
    dense.scatter_(-1, i1[..., None], vals[..., 1:])
    return dense.reshape(mp, kp)


def pack_any(w: torch.Tensor, cfg: KernelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Pack a 2:4 weight [M, K] for a sparse ``cfg`` on the CPU, keeping ``w``'s dtype.

    16-bit weights go through :func:`runtime.pack_weight` (bit-exact with the
    packers the kernels are tested against). float32/float64 weights (the
    lowering's reference mode) get the same metadata -- it depends only on
    the nonzero pattern, so it is packed from a 16-bit copy of the pattern --
    and their own values gathered at the positions it encodes.
    """
    if w.dtype in (torch.float16, torch.bfloat16):
        return runtime.pack_weight(w.to(runtime._TORCH_DTYPE[cfg.dtype]), cfg, device="cpu")
    _, meta = packing.pack_torch((w != 0).to(torch.float16).contiguous(), cfg.arch, cfg.pack_tile_k)
    m, k = w.shape
    mp, kp = packing.pad_shape(cfg.arch, m, k)
    full = torch.zeros(mp, kp, dtype=w.dtype)
    full[:m, :k] = w
    i0, i1 = kept_positions(meta, cfg.arch, cfg.pack_tile_k, mp, kp)
    values = torch.gather(full.reshape(mp, kp // 4, 4), -1, torch.stack([i0, i1], -1)).reshape(mp, kp // 2)
    return values.contiguous(), meta


def pad_any(w: torch.Tensor, cfg: KernelConfig) -> torch.Tensor:
    """A dense weight [M, K] zero-padded to the kernel's [mp, kp] (16-bit: the config's dtype; else ``w``'s)."""
    if w.dtype in (torch.float16, torch.bfloat16):
        return runtime.pad_dense_weight(w, cfg, device="cpu")
    m, k = w.shape
    mp, kp = packing.pad_shape(cfg.arch, m, k, sparse=False)
    out = torch.zeros(mp, kp, dtype=w.dtype)
    out[:m, :k] = w
    return out


def gemm(x: torch.Tensor, w: torch.Tensor, bias, residual, scale, activation: str, m: int) -> torch.Tensor:
    """act(scale * (x @ w[:m]^T) + bias + residual) with ``w`` the padded dense [mp, kp] weight."""
    acc = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1]).to(acc)
    x2 = F.pad(x2, (0, w.shape[1] - x2.shape[1]))
    y = x2 @ w[:m].to(acc).t()
    if scale is not None:
        y = y * scale.to(acc)
    if bias is not None:
        y = y + bias.to(acc)
    if residual is not None:
        y = y + residual.reshape(-1, m).to(acc)
    return _ACT[activation](y).to(x.dtype).reshape(*lead, m)


def _gemm24_cpu(x, values, meta, bias, residual, scale, config, m):
    cfg = KernelConfig.from_name(config)
    return gemm(x, unpack(values, meta, cfg), bias, residual, scale, cfg.activation, m)


def _gemm_dense_cpu(x, weight, bias, residual, scale, config, m):
    return gemm(x, weight, bias, residual, scale, KernelConfig.from_name(config).activation, m)


torch.library.register_kernel("sparsec::gemm24", "cpu", _gemm24_cpu)
torch.library.register_kernel("sparsec::gemm_dense", "cpu", _gemm_dense_cpu)
