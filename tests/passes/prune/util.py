"""Helpers for the pruning tests: the exactness harness shared by the zoo and Hypothesis tests."""

from __future__ import annotations

import torch

from sparsec.ir.analysis import Cost
from sparsec.passes import PassManager
from sparsec.passes.prune import ChannelPrunePlanner, PruneChannels, masked_reference

from ..conftest import randomise_bn, rel_err


@torch.no_grad()
def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial BN statistics, and no all-zero weights (ViT's head starts at zero)."""
    gen = torch.Generator().manual_seed(seed)
    randomise_bn(model, gen)
    for p in model.parameters():
        if p.abs().sum() == 0:
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model


def prune_and_compare(mod, ratio: float = 0.5, n_inputs: int = 1, **options):
    """Prune ``mod`` in place through the PassManager; return (max rel err vs the
    masked reference on fresh random inputs, MACs before, MACs after, records, plan)."""
    macs0 = Cost.run(mod).total_macs
    p = PruneChannels(ratio=ratio, **options)
    plan = p.make_plan(mod)
    ref = masked_reference(mod, plan)
    records = PassManager([p]).run(mod)  # recompiles and verifies
    gen = torch.Generator().manual_seed(1234)
    err = 0.0
    for _ in range(n_inputs):
        xs = tuple(torch.randn(x.shape, generator=gen, dtype=x.dtype) for x in mod.example_inputs)
        with torch.no_grad():
            out, want = mod(*xs), ref(*xs)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        wants = want if isinstance(want, (tuple, list)) else (want,)
        for o, w in zip(outs, wants):
            assert o.shape == w.shape and o.dtype == w.dtype
            assert w.abs().max() > 0, "the reference output is all zero: the comparison would prove nothing"
            err = max(err, rel_err(o, w))
    return err, macs0, Cost.run(mod).total_macs, records, plan
