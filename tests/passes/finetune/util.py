"""Tiny models and data for the fine-tuning tests (CPU, a few hundred samples)."""

from __future__ import annotations

import torch
from torch import nn

import sparsec
from sparsec.ir import meta as M
from sparsec.passes.finetune.masks import magnitude_24_mask


class SmallCNN(nn.Module):
    """conv(C->16) BN relu, conv(16->16) BN relu, mean, linear(16->classes): 2:4-able second conv and fc."""

    def __init__(self, in_ch: int = 1, classes: int = 10) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(in_ch, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.c2, self.b2 = nn.Conv2d(16, 16, 3, padding=1, stride=2, bias=False), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.b2(self.c2(x)))
        return self.fc(x.mean((2, 3)))


def traced(in_ch: int = 1, size: int = 12, seed: int = 0, classes: int = 10):
    torch.manual_seed(seed)
    net = SmallCNN(in_ch, classes).eval()
    return net, sparsec.trace(net, torch.randn(2, in_ch, size, size), dynamic_batch=True)


def mark_24(mod, targets=("c2.weight", "fc.weight")) -> dict[str, torch.Tensor]:
    """2:4-mask the named weights by magnitude and mark them (stands in for sparsify-2-4)."""
    masks = {}
    for node in mod.nodes("get_attr"):
        if node.target in targets:
            w = mod.get_param(node.target)
            m = magnitude_24_mask(w, 1)
            with torch.no_grad():
                w.mul_(m)
            M.put(node, M.Sparsity24(dim=1))
            masks[node.target] = m
    return masks


def synthetic(n: int, in_ch: int = 1, size: int = 12, classes: int = 10, seed: int = 0):
    """A learnable synthetic task (class = which quadrant is bright): for mechanics only, never accuracy."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = torch.randn(n, in_ch, size, size, generator=g) * 0.3
    h = size // 2
    for i in range(n):
        q = int(y[i]) % 4
        x[i, :, (q // 2) * h:(q // 2 + 1) * h, (q % 2) * h:(q % 2 + 1) * h] += 1.0 + int(y[i]) / classes
    return x, y


class Batches:
    """A fixed list of batches; optionally poisons one batch (NaN) or raises KeyboardInterrupt at one."""

    def __init__(self, x, y, bs, *, nan_at: int | None = None, interrupt_at: int | None = None) -> None:
        self.x, self.y, self.bs, self.nan_at, self.interrupt_at = x, y, bs, nan_at, interrupt_at

    def __len__(self) -> int:
        return len(self.x) // self.bs

    def __iter__(self):
        for i in range(len(self)):
            if i == self.interrupt_at:
                raise KeyboardInterrupt
            xb = self.x[i * self.bs:(i + 1) * self.bs].clone()
            if i == self.nan_at:
                xb[0, 0, 0, 0] = float("nan")
            yield xb, self.y[i * self.bs:(i + 1) * self.bs]
