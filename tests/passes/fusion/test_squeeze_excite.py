"""``fuse-squeeze-excite``: which blocks fuse, bit-exact numerics on fresh inputs, near misses with reasons,
idempotence, and the EfficientNet-B0 from torchvision."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsec
from sparsec.ir import print_module

from ..conftest import ints, run, run_twice_is_once
from .nets import integer_weights

X = (2, 16, 6, 6)


class SE(nn.Module):
    """``x * gate(fc2(act(fc1(squeeze(x)))))`` after a conv, in the spellings models use."""

    def __init__(self, c=16, r=4, squeeze="pool", act=nn.SiLU(), gate=nn.Sigmoid(), scale_other=False):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.fc1, self.fc2 = nn.Conv2d(c, r, 1), nn.Conv2d(r, c, 1)
        self.squeeze, self.act, self.gate, self.scale_other = squeeze, act, gate, scale_other

    def forward(self, x):
        y = self.conv(x)
        s = {"pool": lambda t: nn.functional.adaptive_avg_pool2d(t, 1), "mean": lambda t: t.mean((2, 3), keepdim=True),
             "mean_neg": lambda t: t.mean((-1, -2), keepdim=True)}[self.squeeze](y)
        s = self.gate(self.fc2(self.act(self.fc1(s))))
        return (x if self.scale_other else y) * s


def _fused(model, pipeline="fuse-epilogue,fuse-squeeze-excite,dce"):
    model = integer_weights(model).eval()
    mod = sparsec.trace(model, (ints(*X),))
    records = run(mod, pipeline)
    return model, mod, records


def _exact(mod, model):
    for seed in (30, 31):  # fresh inputs, after tracing
        x = torch.randn(*X, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(mod(x), model(x))


@pytest.mark.parametrize("squeeze", ["pool", "mean", "mean_neg"])
@pytest.mark.parametrize("act", [nn.SiLU(), nn.ReLU(), nn.Identity()], ids=["silu", "relu", "none"])
def test_a_block_fuses_into_one_op_exactly(filecheck, squeeze, act):
    model, mod, records = _fused(SE(squeeze=squeeze, act=act))
    se = next(r for r in records if r.name == "fuse-squeeze-excite")
    assert se.stats == {"squeeze-excite": 1, "fused": 1, "declined": 0}
    name = {"SiLU": "silu", "ReLU": "relu", "Identity": "none"}[type(act).__name__]
    act_text = "" if name == "none" else f', act="{name}"'
    sq_text = "" if squeeze == "pool" else ', squeeze="mean"'
    filecheck(print_module(mod), rf"""
        CHECK: %[[Y:.*]]: f32[2,16,6,6] = aten.conv2d
        CHECK-NEXT: f32[2,16,6,6] = sparsec.squeeze_excite(%[[Y]], @fc1.weight, @fc1.bias, @fc2.weight, @fc2.bias{act_text}{sq_text})  {{sparsec.fused = squeeze-excite[
        CHECK-NOT: aten.mul
    """)
    _exact(mod, model)


def test_a_gate_on_another_tensor_is_a_near_miss_with_the_reason():
    model, mod, records = _fused(SE(scale_other=True))
    se = next(r for r in records if r.name == "fuse-squeeze-excite")
    assert se.stats == {"fused": 0, "declined": 1}
    text = print_module(mod)
    assert "fuse-squeeze-excite/squeeze-excite: 'mul' scales 'x', not the squeezed 'conv2d'" in text
    _exact(mod, model)


def test_a_gate_the_fused_ops_lack_leaves_the_block_unfused_and_says_why():
    """hardsigmoid (MobileNetV3's gate) has no fused-op activation: fuse-epilogue says so at the fc."""
    model, mod, records = _fused(SE(gate=nn.Hardsigmoid()))
    assert records[1].stats == {"fused": 0, "declined": 0}
    text = print_module(mod)
    assert "sparsec.squeeze_excite" not in text and "unsupported activation aten.hardsigmoid" in text
    _exact(mod, model)


def test_idempotent():
    _, mod, _ = _fused(SE())
    run_twice_is_once(mod, "fuse-epilogue,fuse-squeeze-excite")


def test_efficientnet_b0_fuses_all_sixteen_blocks_bit_exactly():
    tv = pytest.importorskip("torchvision")
    model = tv.models.efficientnet_b0().eval()
    x = torch.randn(1, 3, 64, 64)
    mod = sparsec.trace(model, (x,))
    run(mod, "canonicalize,fold-bn,dce,fuse-epilogue")
    ref = mod.clone()
    records = run(mod, "fuse-squeeze-excite,dce")
    assert records[0].stats == {"squeeze-excite": 16, "fused": 16, "declined": 0}
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(mod(x), ref(x))
