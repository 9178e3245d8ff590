"""Offline packing of 2:4 weights into the exact layouts of the CUTLASS kernels.

Everything here is plain numpy on 16-bit words (``np.uint16`` bit patterns),
so it is the same for fp16 and bf16 and runs on the CPU at compile time.

The input is the weight as the kernel's A operand: W[M, K], row-major, M =
output channels, K = reduction, already 2:4 along K (at most two nonzeros in
every aligned group of four). The output is a :class:`PackedWeight`: the
compressed values (the kept two of every four, in order, row-major [M, K/2])
and the metadata bytes, both laid out for one arch and tile K.

Metadata of one group of four: the two kept positions i0 < i1, as the 4-bit
nibble ``i0 | i1 << 2``. Groups with fewer than two nonzeros follow CUTLASS's
compressor: ``[x 0 0 0] -> (0, 3)``, ``[0 0 0 x] -> (0, 3)`` with the value
second; an all-zero group gets ``(0, 1)``.

sm_90a (CUTLASS 3.x ``Sm90GemmSparseConfig``, 16-bit types): nibbles of
groups 2j and 2j+1 share a byte (low, high). Bytes are placed by the layout
``fill_layoutE``: its atom is 64 rows by ``tile_k`` columns (tile_k = min(tile
K, 128) logical elements), made by ``make_ordered_layout(((8,2,4),(16,2,NumK)),
((3,1,5),(0,4,2)))`` with NumK = tile_k / 32; atoms go along M first, then K.
The logical offset (in units of 1/8 byte) of element (m, k) is::

    k%16 + 16*((m//8)%2) + 32*((k//32)%NumK) + 32*NumK*(m%8)
         + 256*NumK*((k//16)%2) + 512*NumK*((m//16)%4)
         + 2048*NumK*(m//64) + Mp64*tile_k*(k//tile_k)

and the byte is offset // 8. M pads to 64 and K to tile_k for the metadata.

sm_80 (CUTLASS 2.x ``SparseGemm``, 16-bit types): four nibbles per uint16
(16 logical K), the [M, K/16] uint16 matrix reordered as CUTLASS's
``reorder_meta`` does for ``ColumnMajorInterleaved<2>`` (rows in groups of 32
interleaved by 4, 2x2 blocks transposed, then column pairs interleaved).
"""

from __future__ import annotations

import dataclasses

import numpy as np


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


@dataclasses.dataclass(frozen=True)
class PackedWeight:
    """A packed 2:4 weight: what a sparse kernel reads.

    ``m``/``k``: the logical (unpadded) weight shape; ``mp``/``kp``: the shape
    the kernel is called with (M padded for output alignment, K for the
    operand alignment); ``values``: uint16 [mp, kp/2]; ``meta``: uint8 bytes.
    """

    arch: str
    tile_k: int
    m: int
    k: int
    mp: int
    kp: int
    values: np.ndarray
    meta: np.ndarray

    @property
    def format(self) -> str:
        return f"{self.arch}/tk{self.tile_k}" if self.arch == "sm_90a" else self.arch


def _as_u16(w) -> np.ndarray:
    arr = np.asarray(w)
    if arr.dtype == np.uint16:
        return arr
    if arr.dtype == np.float16:
        return arr.view(np.uint16)
    raise TypeError(f"expected float16 or uint16 bit patterns (bf16 as uint16), got {arr.dtype}")


def pad_shape(arch: str, m: int, k: int, sparse: bool = True) -> tuple[int, int]:
    """(mp, kp): the padded GEMM shape a weight of [m, k] is called with.

    Rows go to 8 (32 on sm_80). K goes to 16 for an sm_90a 2:4 weight (its metadata comes in 16-column
    groups), to 8 for an sm_90a dense one (TMA needs 16-byte row pitches, and zero-fills the last K tile),
    to 64 on sm_80. A K the kernel takes as is costs nothing per call; any other K makes every call pad
    its activations (a zero fill and a copy: on MobileNetV2 pruned to widths of 8, 0.95 ms of 4.4 ms at
    bs256 on an H100 when dense sm_90a K was padded to 16).
    """
    m_mult = 32 if arch == "sm_80" else 8
    k_mult = 64 if arch != "sm_90a" else 16 if sparse else 8
    return _round_up(m, m_mult), _round_up(k, k_mult)


def select(w16: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per group of four: kept positions (i0, i1) and kept values, as CUTLASS picks them.

    Returns ``(idx0, idx1, vals)`` with shapes [M, K/4], [M, K/4], [M, K/4, 2].
    Raises ValueError where a group holds more than two nonzeros.
    """
    m, k = w16.shape
    g = w16.reshape(m, k // 4, 4)
    nz = (g & 0x7FFF) != 0  # -0.0 counts as zero, as in CUTLASS's compressor
    count = nz.sum(-1)
    if (count > 2).any():
        r, c = np.argwhere(count > 2)[0]
        raise ValueError(f"weight is not 2:4: row {r}, K group {c} (K {4 * c}..{4 * c + 3}) has {count[r, c]} nonzeros")
    # positions of nonzeros, in order, padded with 4 (sorts last)
    pos = np.where(nz, np.arange(4), 4)
    pos.sort(axis=-1)
    i0, i1 = pos[..., 0].copy(), pos[..., 1].copy()
    one = count == 1
    last = one & (i0 == 3)  # [0 0 0 x] -> (0, 3): value goes second
    i0[last] = 0
    i1[one] = 3
    zero = count == 0
    i0[zero], i1[zero] = 0, 1
    vals = np.take_along_axis(g, np.stack([i0, i1], -1), axis=-1)
    vals[last, 0] = 0
    vals[one & ~last, 1] = 0
    return i0.astype(np.uint8), i1.astype(np.uint8), vals


def sm90_meta_offsets(mp64: int, kp: int, tile_k: int) -> np.ndarray:
    """Byte index in the sm_90 metadata of each (row, 8-wide K block), shape [mp64, kp/8]."""
    nk = tile_k // 32
    m = np.arange(mp64)[:, None]
    k = (np.arange(kp // 8) * 8)[None, :]
    off = (k % 16 + 16 * ((m // 8) % 2) + 32 * ((k // 32) % nk) + 32 * nk * (m % 8)
           + 256 * nk * ((k // 16) % 2) + 512 * nk * ((m // 16) % 4)
           + 2048 * nk * (m // 64) + mp64 * tile_k * (k // tile_k))
    return off // 8


def sm80_meta_offsets(mp: int, ncols: int) -> np.ndarray:
    """Index of each uint16 of the [mp, ncols] metadata in CUTLASS's reordered layout."""
    rows = np.repeat(np.arange(mp)[:, None], ncols, 1)
    cols = np.repeat(np.arange(ncols)[None, :], mp, 0)
    rows = rows // 32 * 32 + (rows % 8) * 4 + (rows % 32) // 8
    tr = ((rows % 2 == 0) & (cols % 2 == 1)).astype(np.int64)
    bl = ((rows % 2 == 1) & (cols % 2 == 0)).astype(np.int64)
    rows = rows + tr - bl
    cols = cols - (tr - bl)
    return (cols // 2) * mp * 2 + rows * 2 + cols % 2


def pack(w, arch: str = "sm_90a", tile_k: int = 128) -> PackedWeight:
    """Pack a 2:4 weight [M, K] (float16 array, or uint16 bits for bf16) for ``arch``.

    Example:
        >>> w = np.zeros((64, 128), np.float16); w[:, ::2] = 1
        >>> pack(w).values.shape
        (64, 64)
    """
    w16 = _as_u16(w)
    m, k = w16.shape
    mp, kp = pad_shape(arch, m, k)
    if arch == "sm_90a":
        if tile_k not in (64, 128):
            raise ValueError(f"sm_90a tile_k must be 64 or 128, got {tile_k}")
        mp_e, kp_e = _round_up(mp, 64), _round_up(kp, tile_k)
    elif arch == "sm_80":
        tile_k, mp_e, kp_e = 0, mp, kp
    else:
        raise ValueError(f"unknown arch {arch!r}")
    full = np.zeros((mp_e, kp_e), np.uint16)
    full[:m, :k] = w16
    i0, i1, vals = select(full)
    values = np.ascontiguousarray(vals.reshape(mp_e, kp_e // 2)[:mp, : kp // 2])
    nib = (i0 | (i1 << 2)).astype(np.uint16)  # [mp_e, kp_e/4]
    if arch == "sm_90a":
        byte = (nib[:, 0::2] | (nib[:, 1::2] << 4)).astype(np.uint8)  # [mp_e, kp_e/8]
        meta = np.zeros(mp_e * kp_e // 8, np.uint8)
        meta[sm90_meta_offsets(mp_e, kp_e, tile_k).ravel()] = byte.ravel()
    else:
        q = nib.reshape(mp, kp // 16, 4)
        word = q[..., 0] | (q[..., 1] << 4) | (q[..., 2] << 8) | (q[..., 3] << 12)
        meta16 = np.zeros(mp * kp // 16, np.uint16)
        meta16[sm80_meta_offsets(mp, kp // 16).ravel()] = word.ravel()
        meta = meta16.view(np.uint8)
    return PackedWeight(arch, tile_k, m, k, mp, kp, values, meta)


def unpack(p: PackedWeight) -> np.ndarray:
    """The dense [m, k] uint16 weight a packed one stands for (inverse of :func:`pack`)."""
    if p.arch == "sm_90a":
        mp_e, kp_e = _round_up(p.mp, 64), _round_up(p.kp, p.tile_k)
        byte = p.meta[sm90_meta_offsets(mp_e, kp_e, p.tile_k)]  # [mp_e, kp_e/8]
        nib = np.stack([byte & 0xF, byte >> 4], -1).reshape(mp_e, kp_e // 4)[: p.mp, : p.kp // 4]
    else:
        meta16 = p.meta.view(np.uint16)
        word = meta16[sm80_meta_offsets(p.mp, p.kp // 16)]
        nib = np.stack([(word >> s) & 0xF for s in (0, 4, 8, 12)], -1).reshape(p.mp, p.kp // 4)
    i0, i1 = (nib & 3).astype(np.int64), (nib >> 2).astype(np.int64)
    vals = p.values.reshape(p.mp, p.kp // 4, 2)
    dense = np.zeros((p.mp, p.kp // 4, 4), np.uint16)
    np.put_along_axis(dense, i0[..., None], vals[..., :1], -1)
    np.put_along_axis(dense, i1[..., None], vals[..., 1:], -1)
    return dense.reshape(p.mp, p.kp)[: p.m, : p.k]


def mask_2to4(w: np.ndarray) -> np.ndarray:
    """Magnitude 2:4 mask along the last dim (keeps the 2 largest of every 4); for tests."""
    m, k = w.shape
    g = np.abs(w.astype(np.float32)).reshape(m, k // 4, 4)
    order = np.argsort(-g, axis=-1, kind="stable")[..., :2]
    keep = np.zeros_like(g, bool)
    np.put_along_axis(keep, order, True, -1)
    return keep.reshape(m, k)


def pack_torch(w, arch: str = "sm_90a", tile_k: int = 128):
    """:func:`pack` in torch ops, on ``w``'s device (fast for large weights on the GPU).

    Same layout and bits as :func:`pack` (the tests compare the two); returns
    ``(values, meta)`` torch tensors (values in ``w``'s 16-bit dtype, meta uint8).
    """
    import torch

    m, k = w.shape
    mp, kp = pad_shape(arch, m, k)
    if arch == "sm_90a":
        mp_e, kp_e = _round_up(mp, 64), _round_up(kp, tile_k)
    else:
        mp_e, kp_e = mp, kp
    full = torch.zeros(mp_e, kp_e, dtype=w.dtype, device=w.device)
    full[:m, :k] = w
    bits = full.view(torch.int16)
    g = bits.reshape(mp_e, kp_e // 4, 4)
    nz = (g & 0x7FFF) != 0
    count = nz.sum(-1)
    if bool((count > 2).any()):
        r, c = (count > 2).nonzero()[0].tolist()
        raise ValueError(f"weight is not 2:4: row {r}, K group {c} (K {4 * c}..{4 * c + 3}) has {count[r, c].item()} nonzeros")
    pos = torch.where(nz, torch.arange(4, device=w.device), torch.full_like(g, 4, dtype=torch.int64)).sort(-1).values
    i0, i1 = pos[..., 0].clone(), pos[..., 1].clone()
    one, zero = count == 1, count == 0
    last = one & (i0 == 3)
    i0[last] = 0
    i1[one] = 3
    i0[zero], i1[zero] = 0, 1
    vals = torch.gather(g, -1, torch.stack([i0, i1], -1))
    vals[..., 0][last] = 0
    vals[..., 1][one & ~last] = 0
    values = vals.reshape(mp_e, kp_e // 2)[:mp, : kp // 2].contiguous().view(w.dtype)
    nib = (i0 | (i1 << 2)).to(torch.int32)
    if arch == "sm_90a":
        byte = (nib[:, 0::2] | (nib[:, 1::2] << 4)).to(torch.uint8)
        meta = torch.zeros(mp_e * kp_e // 8, dtype=torch.uint8, device=w.device)
        idx = torch.from_numpy(sm90_meta_offsets(mp_e, kp_e, tile_k)).to(w.device)
        meta[idx.reshape(-1)] = byte.reshape(-1)
    else:
        q = nib.reshape(mp, kp // 16, 4)
        word = (q[..., 0] | (q[..., 1] << 4) | (q[..., 2] << 8) | (q[..., 3] << 12)).to(torch.int32)
        meta16 = torch.zeros(mp * kp // 16, dtype=torch.int32, device=w.device)
        idx = torch.from_numpy(sm80_meta_offsets(mp, kp // 16)).to(w.device)
        meta16[idx.reshape(-1)] = word.reshape(-1)
        meta = _u16_to_bytes(meta16)
    return values, meta


def _u16_to_bytes(words):
    """int32 tensor holding uint16 values -> their little-endian bytes (uint8)."""
    import torch

    lo = (words & 0xFF).to(torch.uint8)
    hi = ((words >> 8) & 0xFF).to(torch.uint8)
    return torch.stack([lo, hi], -1).reshape(-1)
