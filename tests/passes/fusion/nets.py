"""Hand-made nets for the fusion tests, one per rule shape, and integer-valued weights."""

from __future__ import annotations

import torch
from torch import nn

from ..conftest import ints

ACTS = {
    "relu": nn.ReLU(),
    "relu6": nn.ReLU6(),
    "silu": nn.SiLU(),
    "gelu": nn.GELU(),
    "gelu_tanh": nn.GELU(approximate="tanh"),
    "hardswish": nn.Hardswish(),
    "sigmoid": nn.Sigmoid(),
}


def _layer(kind: str, c: int = 8, bias: bool = True) -> nn.Module:
    return nn.Conv2d(c, c, 3, padding=1, bias=bias) if kind == "conv2d" else nn.Linear(c, c, bias=bias)


class Chain(nn.Module):
    """``act2(act(op(x) [+ b]) + r)`` with each piece optional; r = x (the block input)."""

    def __init__(self, kind="conv2d", act=None, residual=False, act2=None, bias_add=False, c=8) -> None:
        super().__init__()
        self.op = _layer(kind, c, bias=not bias_add)
        shape = (c, 1, 1) if kind == "conv2d" else (c,)
        self.b = nn.Parameter(torch.zeros(shape)) if bias_add else None
        self.act, self.act2, self.residual = (ACTS[act] if act else None), (ACTS[act2] if act2 else None), residual

    def forward(self, x):
        y = self.op(x)
        if self.b is not None:
            y = y + self.b
        if self.act is not None:
            y = self.act(y)
        if self.residual:
            y = y + x
        if self.act2 is not None:
            y = self.act2(y)
        return y


class ConvPool(nn.Module):
    """conv -> [act] -> pool; ``extra`` also returns the conv's (or act's) output."""

    def __init__(self, act="relu", pool="max", extra=False, cin=8, cout=16) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.act = ACTS[act] if act else None
        self.pool = nn.MaxPool2d(3, 2, 1) if pool == "max" else nn.AvgPool2d(2) if pool == "avg" else nn.AdaptiveAvgPool2d(1)
        self.extra = extra

    def forward(self, x):
        y = self.conv(x)
        if self.act is not None:
            y = self.act(y)
        p = self.pool(y)
        return (p, y) if self.extra else p


@torch.no_grad()
def integer_weights(model: nn.Module, seed: int = 0, lo: int = -2, hi: int = 3, dtype=torch.float32) -> nn.Module:
    """Every floating parameter and buffer drawn as small integers (running_var >= 1)."""
    gen = torch.Generator().manual_seed(seed)
    model = model.to(dtype).eval()
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_floating_point():
            t.copy_(ints(*t.shape, lo=1 if name.endswith("running_var") else lo, hi=hi, dtype=t.dtype, gen=gen))
    return model
