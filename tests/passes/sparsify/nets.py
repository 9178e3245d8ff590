"""Small nets for the 2:4 tests, and a hand-written reference of the 2:4 mask."""

from __future__ import annotations

import itertools

import torch
from torch import nn


class ConvNet(nn.Module):
    """A 3-channel stem, a 3x3 conv, a depthwise and a grouped conv, a 1x1 conv, and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.conv = nn.Conv2d(16, 32, 3, padding=1)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.grouped = nn.Conv2d(32, 32, 1, groups=2)
        self.pw = nn.Conv2d(32, 64, 1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.stem(x)))
        y = torch.relu(self.conv(y))
        y = torch.relu(self.grouped(self.dw(y)))
        y = torch.relu(self.pw(y))
        return self.fc(y.mean((2, 3)))


class MLP(nn.Module):
    """Linear-heavy: 256 -> 512 -> 256 -> 128."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(256, 512)
        self.down = nn.Linear(512, 256)
        self.out = nn.Linear(256, 128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.down(torch.relu(self.up(x)))))


def conv_net(seed: int = 0, dtype=torch.float32) -> ConvNet:
    torch.manual_seed(seed)
    net = ConvNet().eval()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-1, 1)
        net.bn.running_var.uniform_(0.5, 2.0)
        net.bn.weight.uniform_(0.5, 1.5)
        net.bn.bias.uniform_(-0.5, 0.5)
    return net.to(dtype)


def hand_mask(w: torch.Tensor) -> torch.Tensor:
    """2:4 by loops, independent of sparsec: for each output channel (and each (kh, kw)
    tap of a conv), in each run of 4 input channels, keep the 2 largest |w| (ties: lower channel)."""
    w = w.detach()
    out = torch.zeros_like(w)
    taps = list(itertools.product(*(range(s) for s in w.shape[2:])))
    for o in range(w.shape[0]):
        for tap in taps:
            for c0 in range(0, w.shape[1], 4):
                vals = [(abs(float(w[(o, c, *tap)])), c) for c in range(c0, c0 + 4)]
                for _, c in sorted(vals, key=lambda v: (-v[0], v[1]))[:2]:
                    out[(o, c, *tap)] = w[(o, c, *tap)]
    return out


class Encoder(nn.Module):
    """A linear embedding, one transformer encoder layer (attention, layer norms, residuals), a head."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Linear(16, 64)
        self.enc = nn.TransformerEncoderLayer(64, 4, 128, batch_first=True, dropout=0.0)
        self.head = nn.Linear(64, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.enc(self.emb(x)).mean(1))
