"""Property tests over random small nets (see ``nets.py``).

For each generated net and the pipeline ``canonicalize,fold-bn,dce`` (with or
without ``to-channels-last``):

- ``verify()`` holds after every pass (the manager runs it, ``verify_each``);
- each idempotent pass, run again, reports ``modified=False`` and leaves the
  printed IR unchanged;
- the result matches the eager model within 1e-5 relative on fresh random
  inputs;
- the pipeline text round-trips;
- printing is deterministic: two traces of the model print the same, and
  running the pipeline on each gives the same text.

The example count comes from the suite's Hypothesis profile (tests/conftest.py).
"""

from __future__ import annotations

import torch
from hypothesis import event, given, note
from hypothesis import strategies as st

import sparsec
from sparsec.ir.printer import print_module
from sparsec.passes.manager import PassContext, PassManager
from sparsec.passes.pipeline import parse_pipeline

from .nets import build, example_input, net_specs

BASE = "canonicalize,fold-bn,dce"


def _rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert out.shape == ref.shape and out.dtype == ref.dtype
    return ((out.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-12)).item()


@given(spec=net_specs(), channels_last=st.booleans(), seed=st.integers(0, 2**16))
def test_pipeline_properties(spec, channels_last: bool, seed: int) -> None:
    text = BASE + (",to-channels-last" if channels_last else "")
    model = build(spec)
    x = example_input(spec)
    mod = sparsec.trace(model, x)
    twin = sparsec.trace(model, x)
    note(print_module(mod))
    for b in spec.blocks:
        event(f"block: {type(b).__name__}")

    # printing is deterministic
    assert print_module(mod) == print_module(mod) == print_module(twin)

    # the pipeline text round-trips
    pm = PassManager.parse(text)
    assert str(pm) == text
    assert parse_pipeline(str(pm)) == pm.passes

    ctx = PassContext(verify_each=True)
    for p in pm.passes:
        (rec,) = PassManager([p]).run(mod, ctx)  # verifies after the pass
        event(f"{p.name} modified: {rec.modified}")
        mod.verify()
        after = print_module(mod)
        note(f"after {p}:\n{after}")
        if p.idempotent:
            again = PassManager([p]).run(mod, ctx)
            assert again[0].modified is False, f"'{p}' is declared idempotent but modified the module again"
            assert print_module(mod) == after, f"'{p}' is declared idempotent but changed the printed IR"

    # the same pipeline on a second trace gives the same text
    pm.run(twin, ctx)
    assert print_module(twin) == print_module(mod)

    # numerics: fresh random inputs, never the example input
    gen = torch.Generator().manual_seed(seed)
    fresh = torch.randn(x.shape, generator=gen)
    with torch.no_grad():
        ref = model(fresh)
        out = mod(fresh)
    assert _rel_error(out, ref) <= 1e-5
