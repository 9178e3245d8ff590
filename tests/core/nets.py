"""Small nets for the core tests: fixed ones, and Hypothesis strategies for random ones.

A random net is described by a :class:`NetSpec` (a tuple of block specs,
printable in a failure report) and built by :func:`build`. Every net is
NCHW on 8x8 images with 8-16 channels, built from:

- ``Conv``: conv (plain, grouped or depthwise) + optional BN + activation;
- ``Residual``: ``x + block(x)`` (or in place: ``y = block(x); y += x``);
- ``Concat``: ``cat([branch_a(x), branch_b(x)], dim=1)``;
- ``Split``: ``a, b = x.chunk(2, dim=1)`` (or ``split``), a conv on ``a``, cat back;
- ``SE``: ``x * sigmoid(fc(pool(x)))``;
- a head: global pool -> flatten -> linear, or flatten -> linear, with an
  optional eval-mode dropout before the linear.

BatchNorm statistics and affine parameters are randomised, so folding them
is never a no-op.
"""

from __future__ import annotations

import dataclasses
from typing import Union

import torch
from hypothesis import strategies as st
from torch import nn

# -- fixed nets ---------------------------------------------------------------------


class SmallNet(nn.Module):
    """conv + bn + relu, a residual add, global pool, flatten, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.conv(x)))
        y = y + self.conv2(y)
        y = self.pool(y).flatten(1)
        return self.fc(y)


def small_net(seed: int = 0) -> SmallNet:
    torch.manual_seed(seed)
    return randomize_bn(SmallNet()).eval()


def randomize_bn(model: nn.Module) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn_like(m.running_mean) * 0.5)
                m.running_var.copy_(torch.rand_like(m.running_var) + 0.5)
                m.weight.copy_(torch.randn_like(m.weight))
                m.bias.copy_(torch.randn_like(m.bias))
    return model


# -- block specs ----------------------------------------------------------------------

ACTS = ("relu", "relu6", "silu", "hardswish", "none")


@dataclasses.dataclass(frozen=True)
class Conv:
    out: int
    kernel: int = 3
    groups: str = "1"  # "1", "2" or "dw"
    bn: bool = True
    act: str = "relu"
    stride: int = 1


@dataclasses.dataclass(frozen=True)
class Residual:
    inner: Conv  # its ``out`` is ignored: a residual keeps the channel count
    inplace: bool = False  # ``y = block(x); y += x`` instead of ``x + block(x)``


@dataclasses.dataclass(frozen=True)
class Concat:
    a: Conv
    b: Conv


@dataclasses.dataclass(frozen=True)
class Split:
    inner: Conv  # applied to the first half; its ``out`` is ignored
    use_chunk: bool = True


@dataclasses.dataclass(frozen=True)
class SE:
    hidden: int


Block = Union[Conv, Residual, Concat, Split, SE]


@dataclasses.dataclass(frozen=True)
class NetSpec:
    in_channels: int
    blocks: tuple
    head: str  # "pool" (pool -> flatten -> linear) or "flatten" (flatten -> linear)
    seed: int
    dropout: bool = False  # an (eval-mode) dropout before the linear


# -- building ---------------------------------------------------------------------------


def _act(name: str) -> nn.Module:
    return {
        "relu": nn.ReLU(inplace=True),
        "relu6": nn.ReLU6(inplace=True),
        "silu": nn.SiLU(),
        "hardswish": nn.Hardswish(),
        "none": nn.Identity(),
    }[name]


def _groups(spec: Conv, cin: int, cout: int) -> int:
    if spec.groups == "dw":
        return cin if cin == cout else 1
    if spec.groups == "2":
        return 2 if cin % 2 == 0 and cout % 2 == 0 else 1
    return 1


class ConvBlock(nn.Module):
    def __init__(self, spec: Conv, cin: int, cout: int) -> None:
        super().__init__()
        g = _groups(spec, cin, cout)
        self.conv = nn.Conv2d(cin, cout, spec.kernel, stride=spec.stride, padding=spec.kernel // 2, groups=g, bias=not spec.bn)
        self.bn = nn.BatchNorm2d(cout) if spec.bn else nn.Identity()
        self.act = _act(spec.act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class ResidualBlock(nn.Module):
    def __init__(self, spec: Residual, c: int) -> None:
        super().__init__()
        self.body = ConvBlock(dataclasses.replace(spec.inner, stride=1), c, c)
        self.inplace = spec.inplace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inplace:
            y = self.body(x)
            y += x
            return y
        return x + self.body(x)


class ConcatBlock(nn.Module):
    def __init__(self, spec: Concat, c: int) -> None:
        super().__init__()
        self.a = ConvBlock(dataclasses.replace(spec.a, stride=1), c, spec.a.out)
        self.b = ConvBlock(dataclasses.replace(spec.b, stride=1), c, spec.b.out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.a(x), self.b(x)], dim=1)


class SplitBlock(nn.Module):
    def __init__(self, spec: Split, c: int) -> None:
        super().__init__()
        self.half = c // 2
        self.use_chunk = spec.use_chunk
        self.body = ConvBlock(dataclasses.replace(spec.inner, stride=1), self.half, self.half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1) if self.use_chunk else torch.split(x, self.half, dim=1)
        return torch.cat([self.body(a), b], dim=1)


class SEBlock(nn.Module):
    def __init__(self, spec: SE, c: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(c, spec.hidden)
        self.fc2 = nn.Linear(spec.hidden, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.pool(x).flatten(1)
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))
        return x * s[:, :, None, None]


class Net(nn.Module):
    def __init__(self, spec: NetSpec) -> None:
        super().__init__()
        c, hw = spec.in_channels, 8
        layers: list[nn.Module] = []
        for b in spec.blocks:
            if isinstance(b, Conv):
                layers.append(ConvBlock(b, c, b.out))
                c, hw = b.out, (hw + b.stride - 1) // b.stride
            elif isinstance(b, Residual):
                layers.append(ResidualBlock(b, c))
            elif isinstance(b, Concat):
                layers.append(ConcatBlock(b, c))
                c = b.a.out + b.b.out
            elif isinstance(b, Split):
                layers.append(SplitBlock(b, c))
            elif isinstance(b, SE):
                layers.append(SEBlock(b, c))
            else:  # pragma: no cover - a bug in the strategy
                raise TypeError(b)
        self.body = nn.Sequential(*layers)
        self.head = spec.head
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(0.25) if spec.dropout else nn.Identity()
        self.fc = nn.Linear(c if spec.head == "pool" else c * hw * hw, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        if self.head == "pool":
            y = self.pool(y)
        return self.fc(self.drop(torch.flatten(y, 1)))


def build(spec: NetSpec) -> nn.Module:
    """The eval-mode model of ``spec``, with seeded weights and randomised BN."""
    torch.manual_seed(spec.seed)
    return randomize_bn(Net(spec)).eval()


def example_input(spec: NetSpec, batch: int = 2, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, spec.in_channels, 8, 8, generator=gen)


# -- strategies ---------------------------------------------------------------------------

CHANNELS = st.sampled_from([8, 12, 16])


@st.composite
def convs(draw, stride_ok: bool = False) -> Conv:
    return Conv(
        out=draw(CHANNELS),
        kernel=draw(st.sampled_from([1, 3])),
        groups=draw(st.sampled_from(["1", "2", "dw"])),
        bn=draw(st.sampled_from([True, False])),  # BN first: most convs should have one to fold
        act=draw(st.sampled_from(ACTS)),
        stride=draw(st.sampled_from([1, 2])) if stride_ok else 1,
    )


@st.composite
def half_convs(draw) -> Conv:
    """Convs for the two branches of a concat: 4 or 8 channels each (sum 8-16)."""
    return dataclasses.replace(draw(convs()), out=draw(st.sampled_from([4, 8])))


residuals = st.builds(Residual, convs(), st.booleans())
concats = st.builds(Concat, half_convs(), half_convs())
splits = st.builds(Split, convs(), st.booleans())
ses = st.builds(SE, st.sampled_from([2, 4]))
blocks = st.one_of(convs(stride_ok=True), residuals, concats, splits, ses)


@st.composite
def net_specs(draw, max_extra: int = 2) -> NetSpec:
    """A conv stem, one featured compound block (residual, concat, split or SE) and 0-2 more blocks.

    The featured block makes every kind show up within a few examples, even
    in a derandomized CI run.
    """
    first = draw(convs())
    featured = draw(st.sampled_from([concats, residuals, splits, ses]).flatmap(lambda s: s))
    rest = draw(st.lists(blocks, max_size=max_extra))
    at = draw(st.integers(0, len(rest)))
    return NetSpec(
        in_channels=draw(st.sampled_from([3, 8])),
        blocks=(first, *rest[:at], featured, *rest[at:]),
        head=draw(st.sampled_from(["pool", "flatten"])),
        seed=draw(st.integers(0, 2**16)),
        dropout=draw(st.booleans()),
    )
