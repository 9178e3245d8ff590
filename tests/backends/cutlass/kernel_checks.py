"""What the hand-written kernels' tests share (depthwise, squeeze-excite, stem, conv+pool): the GPU arch to
build for (or a skip), a real nvcc build of configs, and a lowered graph against the unlowered one."""

from __future__ import annotations

import pytest
import torch


def gpu_arch() -> str:
    """The arch of this machine's kernels (sm_90a on an H100, else sm_80); skips without an sm_80+ GPU."""
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("needs an sm_80 or newer GPU")
    return "sm_90a" if torch.cuda.get_device_capability() == (9, 0) else "sm_80"


def assert_nvcc_builds(cfgs, tmp_path) -> None:
    """nvcc builds each config into a library that exports its launcher (skips without a CUDA toolchain)."""
    from sparsec import knobs
    from sparsec.backends.cutlass import build
    from sparsec.errors import BuildError

    try:
        build.toolchain()
    except BuildError as exc:
        pytest.skip(f"no CUDA toolchain here: {exc.what}")
    with knobs.scope(cache_dir=tmp_path):
        libs = build.build(cfgs)
        for c in cfgs:
            assert c.symbol.encode() in libs[c].read_bytes()


def assert_matches_unlowered(mod, ref, x, tol: float = 5e-3) -> None:
    """The lowered module's output on ``x`` (its kernels' CPU references) within ``tol`` of the unlowered one's."""
    with torch.no_grad():
        y, r = mod.gm(x), ref.gm(x)
    y, r = (t[0] if isinstance(t, (tuple, list)) else t for t in (y, r))
    rel = ((y.double() - r.double()).norm() / r.double().norm()).item()
    assert torch.isfinite(y).all() and rel < tol, rel
