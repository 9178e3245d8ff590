"""Properties of the fusion passes over generated chains: exact, verified, idempotent, printable, round-trip."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import sparsec
from sparsec.ir import print_module
from sparsec.passes import PassManager

from ..conftest import ints, run
from .nets import ACTS, Chain, integer_weights

PIPELINE = "fuse-epilogue,fuse-conv-pool{force=true},dce"  # the order of the fusion pipeline
maybe_act = st.one_of(st.none(), st.sampled_from(sorted(ACTS)))


@st.composite
def nets(draw):
    blocks = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["conv2d", "conv2d", "linear"])) if not blocks else blocks[0][0]
        blocks.append((kind, dict(act=draw(maybe_act), residual=draw(st.booleans()), act2=draw(maybe_act),
                                  bias_add=draw(st.booleans()))))
    pool = blocks[0][0] == "conv2d" and draw(st.booleans())
    return blocks, pool


class Net(nn.Module):
    def __init__(self, blocks, pool: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Chain(kind, c=8, **opts) for kind, opts in blocks)
        self.pool = nn.MaxPool2d(2) if pool else None

    def forward(self, x):
        outs = []
        for b in self.blocks:
            x = b(x)
            outs.append(x.sum())  # a second reader of each block's output, as in real nets
        return (self.pool(x) if self.pool is not None else x), torch.stack(outs)


@given(nets())
def test_fusion_is_exact_verified_and_idempotent(spec):
    blocks, pool = spec
    kind = blocks[0][0]
    shape = (2, 8, 4, 4) if kind == "conv2d" else (3, 8)
    model = integer_weights(Net(blocks, pool), lo=-1, hi=2)
    mod = sparsec.trace(model, (ints(*shape),))
    reference = mod.clone()
    run(mod, PIPELINE)  # the manager verifies after every pass
    once = print_module(mod)
    assert once == print_module(mod)  # deterministic
    records = run(mod, PIPELINE)
    assert not any(r.modified for r in records) and print_module(mod) == once
    assert str(PassManager.parse(PIPELINE)) == str(PassManager.parse(str(PassManager.parse(PIPELINE))))
    x = ints(*shape, gen=torch.Generator().manual_seed(7))
    for got, want in zip(mod(x), reference(x)):
        assert got.shape == want.shape and torch.equal(got, want)
