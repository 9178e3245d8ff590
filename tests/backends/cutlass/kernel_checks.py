"""What the hand-written kernels' tests share (depthwise, squeeze-excite, stem, conv+pool): the GPU arch to
build for (or a skip), a real nvcc build of configs, a lowered graph against the unlowered one, and the
image convs' GPU inputs and float64 check."""

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


def image_conv_inputs(n, cin, h, w, cout, k, dtype, channels_last):
    """A conv of the image on the GPU: x [N, Cin, H, W] (channels-last strides or not), weight [Cout, Cin, k, k]
    scaled to unit output variance, bias [Cout]; fresh random values of ``dtype`` (a torch dtype)."""
    g = torch.Generator(device="cuda").manual_seed(cin * k + cout)
    x = torch.randn(n, cin, h, w, device="cuda", generator=g).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    wt = (torch.randn(cout, cin, k, k, device="cuda", generator=g) / (cin * k * k) ** 0.5).to(dtype)
    bias = torch.randn(cout, device="cuda", generator=g).to(dtype)
    return x, wt, bias


def assert_nhwc_matches(y, ref, dtype: str) -> None:
    """A kernel's NHWC output against the float64 NCHW reference: every element written (the output was
    NaN-poisoned), relative error within the dtype's tolerance."""
    ref = ref.permute(0, 2, 3, 1)
    assert y.shape == ref.shape and y.is_contiguous() and torch.isfinite(y).all(), "NaN left: an output not written"
    rel = ((y.double() - ref).norm() / ref.norm()).item()
    assert rel < (5e-3 if dtype == "fp16" else 2e-2), rel
