"""2:4 masks in the canonical grouping.

A weight of a conv or linear is viewed as ``(rows, K)`` with the groups of 4
running along the input channels: a linear weight (Cout, Cin) as is, a conv
weight (Cout, Cin, kh, kw) as (Cout, kh, kw, Cin) -- the order an NHWC
implicit GEMM reads K = kh*kw*Cin -- so every group of 4 is 4 consecutive
input channels of one output channel at one (kh, kw) tap.

``magnitude_mask`` keeps the 2 largest |w| of every 4; ties go to the lower
channel (a stable sort), so the mask is deterministic.
"""

from __future__ import annotations

import torch


def as_rows(w: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """``w`` with its input-channel ``dim`` moved last, flattened to (rows, Cin)."""
    moved = w.movedim(dim, -1)
    return moved.reshape(-1, moved.shape[-1])


def magnitude_mask(w: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """A bool mask shaped like ``w``: the 2 largest |w| of every 4 consecutive elements along ``dim``."""
    moved = w.detach().movedim(dim, -1)
    if moved.shape[-1] % 4:
        raise ValueError(f"dim {dim} of size {moved.shape[-1]} is not a multiple of 4")
    groups = moved.abs().reshape(-1, 4)
    keep = torch.argsort(-groups.double(), dim=-1, stable=True)[:, :2]
    mask = torch.zeros(groups.shape, dtype=torch.bool).scatter_(-1, keep, True)
    return mask.reshape(moved.shape).movedim(-1, dim)


def retained_fraction(w: torch.Tensor, mask: torch.Tensor) -> float:
    """Share of the weight's L1 magnitude that ``mask`` keeps (1.0 for an all-zero weight)."""
    total = float(w.detach().double().abs().sum())
    if total == 0.0:
        return 1.0
    return float((w.detach().double().abs() * mask).sum()) / total


def apply_mask(w: torch.Tensor, dim: int = 1) -> tuple[torch.Tensor, float]:
    """(the 2:4-masked weight, the fraction of magnitude it retains)."""
    mask = magnitude_mask(w, dim)
    return torch.where(mask, w.detach(), torch.zeros((), dtype=w.dtype)), retained_fraction(w, mask)
