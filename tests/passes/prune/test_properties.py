"""Hypothesis: small generated nets with residuals, concat, split, grouped and
depthwise convs, squeeze-excite and flatten->linear. For each, prune-channels
verifies (the PassManager runs verify()), matches the consumer-side masked
reference exactly (float64), really shrinks the model, and re-exports."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sparsec.ir.trace import trace

from .util import prune_and_compare, randomise

BLOCKS = ("res", "cat", "split", "group", "se", "dw", "shuffle")


class Block(nn.Module):
    def __init__(self, kind: str, c: int, w: int):
        super().__init__()
        self.kind = kind
        if kind == "res":
            self.a, self.bn, self.b = nn.Conv2d(c, w, 3, padding=1), nn.BatchNorm2d(w), nn.Conv2d(w, c, 1)
            self.out = c
        elif kind == "cat":
            self.a, self.b = nn.Conv2d(c, w, 1), nn.Conv2d(c, c, 3, padding=1)
            self.out = w + c
        elif kind == "split":
            self.k = (c // 4) * 2  # widths stay even, so a later shuffle can halve them
            self.a = nn.Conv2d(self.k, w, 3, padding=1)
            self.out = w + c - self.k
        elif kind == "group":
            self.a, self.bn = nn.Conv2d(c, c, 3, padding=1, groups=4 if c % 4 == 0 else 2), nn.BatchNorm2d(c)
            self.out = c
        elif kind == "se":
            self.a, self.b = nn.Conv2d(c, 4, 1), nn.Conv2d(4, c, 1)
            self.out = c
        elif kind == "dw":
            self.a, self.bn, self.b = nn.Conv2d(c, c, 3, padding=1, groups=c), nn.BatchNorm2d(c), nn.Conv2d(c, w, 1)
            self.out = w
        elif kind == "shuffle":
            self.a = nn.Conv2d(c // 2, c // 2, 1)
            self.out = c

    def forward(self, x):
        k = self.kind
        if k == "res":
            return x + self.b(torch.relu(self.bn(self.a(x))))
        if k == "cat":
            return torch.cat([self.a(x), torch.relu(self.b(x))], 1)
        if k == "split":
            p, q = torch.split(x, [self.k, x.shape[1] - self.k], 1)
            return torch.cat([self.a(p), q], 1)
        if k == "group":
            return torch.relu(self.bn(self.a(x)))
        if k == "se":
            s = torch.sigmoid(self.b(torch.relu(self.a(x.mean((2, 3), keepdim=True)))))
            return x * s
        if k == "dw":
            return self.b(nn.functional.hardswish(self.bn(self.a(x))))
        p, q = x.chunk(2, dim=1)
        y = torch.cat([p, torch.relu(self.a(q))], 1)
        n, c, h, w = y.shape
        return y.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)


class Net(nn.Module):
    def __init__(self, kinds, widths):
        super().__init__()
        c = 16
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        blocks = []
        for kind, w in zip(kinds, widths):
            b = Block(kind, c, w)
            blocks.append(b)
            c = b.out
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(c * 4 * 4, 5)

    def forward(self, x):
        return self.fc(torch.flatten(self.blocks(self.stem(x)), 1))


@settings(max_examples=10)
@given(
    kinds=st.lists(st.sampled_from(BLOCKS), min_size=1, max_size=4),
    widths=st.lists(st.sampled_from([8, 16, 24]), min_size=4, max_size=4),
    importance=st.sampled_from(["l2", "random"]),
    ratio=st.sampled_from([0.25, 0.5, 0.75]),
)
def test_generated_nets_prune_exactly(kinds, widths, importance, ratio):
    torch.manual_seed(0)
    model = randomise(Net(kinds, widths).eval()).double()
    mod = trace(model, torch.randn(1, 3, 4, 4, dtype=torch.float64))
    params0 = sum(p.numel() for p in mod.gm.parameters())
    err, macs0, macs1, records, plan = prune_and_compare(mod, ratio=ratio, round_to=1, importance=importance)
    assert err < 1e-9, f"{kinds}: error {err:.3g}\n{plan}"
    assert plan.groups, f"{kinds}: nothing was prunable\n{plan}"
    assert macs1 < macs0 and sum(p.numel() for p in mod.gm.parameters()) < params0
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(mod.export().module()(x), mod(x))
