"""``to-dtype`` and ``to-channels-last``: structure, numerics, idempotence, option errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsec
from sparsec.errors import PassFailedError, PipelineError, PipelineFailure
from sparsec.ir import Cost, print_module
from sparsec.passes import PassContext, PassManager
from sparsec.passes.convert import ToDtype

from .conftest import ints, randomise_bn, rel_err, run, run_twice_is_once


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.lin = nn.Conv2d(8, 4, 3), nn.Linear(4, 5)

    def forward(self, x):
        y = self.conv2(torch.relu(self.bn(self.conv(x)))).mean((2, 3))
        return self.lin(y) + torch.zeros(5, dtype=torch.float32) + torch.full((5,), 0.5, dtype=torch.float32)


class Masked(nn.Module):
    """``(y > 0).to(torch.float32)``: export guards the bool input with _assert_tensor_metadata."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 6)

    def forward(self, x):
        y = self.lin(x)
        return y * (y > 0).to(torch.float32)


def _small():
    torch.manual_seed(0)
    model = randomise_bn(Small(), torch.Generator().manual_seed(0)).eval()
    return model, sparsec.trace(model, torch.randn(2, 3, 16, 16))


# -- to-dtype -------------------------------------------------------------------------


def test_to_dtype_structure_keeps_io(filecheck):
    _, mod = _small()
    (rec,) = run(mod, "to-dtype{dtype=fp16}")
    # every floating tensor but not num_batches_tracked; x; zeros and full; the result
    assert rec.stats == {"params_cast": 10, "inputs_cast": 1, "dtype_args": 2, "outputs_cast": 1}
    filecheck(print_module(mod), r"""
        CHECK-LABEL: module @small(%x: f32[2,3,16,16])
        CHECK: @bn.num_batches_tracked: i64[]
        CHECK: @conv.weight: f16[8,3,3,3]
        CHECK: [[X:%[a-z_0-9]+]]: f16[2,3,16,16] = aten._to_copy(%x, dtype=f16)
        CHECK-NEXT: aten.conv2d([[X]], @conv.weight, @conv.bias, padding=[1,1])
        CHECK-NOT: dtype=f32
        CHECK: aten.zeros(size=[5], dtype=f16
        CHECK-NOT: dtype=f32
        CHECK: aten.full(size=[5], fill_value=0.5, dtype=f16
        CHECK-NOT: dtype=f32
        CHECK: [[Y:%[a-z_0-9]+]]: f16[2,5] = aten.add.Tensor(
        CHECK-NEXT: [[O:%[a-z_0-9]+]]: f32[2,5] = aten._to_copy([[Y]], dtype=f32)
        CHECK-NEXT: return {{\[}}[[O]]{{\]}}
    """)


@pytest.mark.parametrize("dtype, tol", [("fp16", 1e-2), ("bf16", 5e-2)])
@pytest.mark.parametrize("keep_io", [True, False])
def test_to_dtype_numerics(dtype, tol, keep_io):
    model, mod = _small()
    run(mod, f"to-dtype{{dtype={dtype},keep-io={'true' if keep_io else 'false'}}}")
    want_dtype = sparsec.ir.parse_dtype(dtype)
    io_dtype = torch.float32 if keep_io else want_dtype
    assert mod.example_inputs[0].dtype == io_dtype
    assert mod.gm.conv.weight.dtype == want_dtype and mod.gm.bn.running_var.dtype == want_dtype
    for seed in range(2):
        x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(10 + seed))
        with torch.no_grad():
            got, ref = mod(x.to(io_dtype)), model(x)
        assert got.shape == ref.shape and got.dtype == io_dtype
        assert rel_err(got, ref) <= tol


def test_to_dtype_without_io_casts(filecheck):
    _, mod = _small()
    run(mod, "to-dtype{dtype=bf16,keep-io=false}")
    filecheck(print_module(mod), r"""
        CHECK-LABEL: module @small(%x: bf16[2,3,16,16])
        CHECK-NOT: _to_copy
        CHECK-NOT: dtype=f32
        CHECK: aten.full(size=[5], fill_value=0.5, dtype=bf16
        CHECK-NEXT: [[Y:%[a-z_0-9]+]]: bf16[2,5] = aten.add.Tensor(
        CHECK-NEXT: return {{\[}}[[Y]]{{\]}}
    """)


def test_to_dtype_rewrites_explicit_casts_and_their_guards(filecheck):
    torch.manual_seed(0)
    model = Masked().eval()
    mod = sparsec.trace(model, torch.randn(4, 6))
    PassManager.parse("to-dtype{keep-io=false}").run(mod)  # verifies after the pass
    filecheck(print_module(mod), r"""
        CHECK-LABEL: module @masked(%x: f16[4,6])
        CHECK: [[Y:%[a-z_0-9]+]]: f16[4,6] = aten.linear(%x, @lin.weight, @lin.bias)
        CHECK: [[G:%[a-z_0-9]+]]: i1[4,6] = aten.gt.Scalar([[Y]], other=0)
        CHECK: aten._assert_tensor_metadata([[G]], dtype=i1
        CHECK: [[M:%[a-z_0-9]+]]: f16[4,6] = aten.to.dtype([[G]], dtype=f16)
        CHECK: aten.mul.Tensor([[Y]], [[M]])
    """)
    x = torch.randn(4, 6)
    with torch.no_grad():
        got = mod(x.half())
    assert got.dtype == torch.float16 and rel_err(got, model(x)) <= 1e-2


class PassThrough(nn.Module):
    """Returns its input as is, next to a computed output."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, x):
        return self.lin(x), x


def test_to_dtype_keeps_a_returned_input_in_its_dtype(filecheck):
    torch.manual_seed(0)
    model = PassThrough().eval()
    mod = sparsec.trace(model, torch.randn(2, 3))
    run(mod, "to-dtype")
    filecheck(print_module(mod), r"""
        CHECK-LABEL: module @passthrough(%x: f32[2,3])
        CHECK: [[X:%[a-z_0-9]+]]: f16[2,3] = aten._to_copy(%x, dtype=f16)
        CHECK: [[L:%[a-z_0-9]+]]: f16[2,3] = aten.linear([[X]], @lin.weight, @lin.bias)
        CHECK: [[A:%[a-z_0-9]+]]: f32[2,3] = aten._to_copy([[L]], dtype=f32)
        CHECK-NEXT: [[B:%[a-z_0-9]+]]: f32[2,3] = aten._to_copy([[X]], dtype=f32)
        CHECK-NEXT: return {{\[}}[[A]],[[B]]{{\]}}
    """)
    x = torch.randn(2, 3)
    got, same = mod(x)
    assert same.dtype == torch.float32 and torch.equal(same, x.half().float())
    assert got.dtype == torch.float32 and rel_err(got, model(x)[0]) <= 1e-2
    run_twice_is_once(mod, "to-dtype")


@pytest.mark.parametrize("pipeline", [
    "to-dtype", "to-dtype{dtype=bf16,keep-io=false}",
    "to-channels-last,to-dtype", "to-dtype,to-channels-last",
])
def test_conversions_are_idempotent(pipeline):
    _, mod = _small()
    run_twice_is_once(mod, pipeline)


def test_conversions_preserve_cost():
    _, mod = _small()
    before = Cost.run(mod)
    run(mod, "to-channels-last,to-dtype{dtype=bf16}")
    assert Cost.run(mod) == before and before.total_macs > 0


@pytest.mark.parametrize("text, message", [
    ("to-dtype{dtype=fp8}", r"option 'dtype' of pass 'to-dtype' has a bad value\n  expected: one of fp16, bf16\n  actual:   fp8"),
    ("to-dtype{keep-io=maybe}", r"option 'keep-io' of pass 'to-dtype' has a bad value\n  expected: bool"),
    ("to-dtype{dtype=fp16,float=1}", r"pass 'to-dtype' has no option 'float'"),
])
def test_to_dtype_option_errors(text, message):
    with pytest.raises(PipelineError, match=message):
        PassManager.parse(text)


def test_to_dtype_constructor_validates():
    with pytest.raises(PipelineError, match=r"option 'dtype' of pass 'to-dtype' has a bad value"):
        ToDtype(dtype="fp8")
    assert str(ToDtype(dtype="bf16", keep_io=False)) == "to-dtype{dtype=bf16,keep-io=false}"


def test_to_dtype_fp16_overflow_fails_and_names_the_parameter():
    model = nn.Sequential(nn.Linear(4, 4)).eval()
    with torch.no_grad():
        model[0].weight[1, 2] = 1e5
    mod = sparsec.trace(model, torch.randn(2, 4))
    with pytest.raises(PipelineFailure, match=r"pass 'to-dtype' \(#1 of 1\) failed: parameter '0.weight' does not fit in fp16") as info:
        run(mod, "to-dtype{dtype=fp16}")
    cause = info.value.__cause__
    assert isinstance(cause, PassFailedError)
    assert "node '" in cause.where and "max |value| = 100000" in cause.actual and "dtype=bf16" in cause.fix
    assert mod.gm.get_parameter("0.weight").dtype == torch.float32, "a failed pass must not half-convert"
    run(mod, "to-dtype{dtype=bf16}")  # bf16 has fp32's range
    x = torch.randn(2, 4)
    with torch.no_grad():
        assert rel_err(mod(x), model(x)) <= 5e-2


# -- to-channels-last -------------------------------------------------------------------


class IntNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.conv2, self.lin = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 3, padding=1), nn.Linear(4, 3)

    def forward(self, x):
        y = self.conv2(torch.relu(self.conv(x)))
        return self.lin(y.amax((2, 3))), y


@torch.no_grad()
def _int_net():
    gen = torch.Generator().manual_seed(0)
    model = IntNet().eval()
    for p in model.parameters():
        p.copy_(ints(*p.shape, lo=-2, hi=3, gen=gen))
    return model


def test_to_channels_last_structure_and_exact_numerics(filecheck):
    model = _int_net()
    mod = sparsec.trace(model, ints(2, 3, 8, 8))
    (rec,) = run(mod, "to-channels-last")
    assert rec.stats == {"weights": 2, "inputs": 1}
    filecheck(print_module(mod), r"""
        CHECK-LABEL: module @intnet(%x: f32[2,3,8,8])
        CHECK: [[X:%[a-z_0-9]+]]: f32[2,3,8,8] = aten.clone(%x, memory_format=channels_last)
        CHECK-NEXT: aten.conv2d([[X]], @conv.weight, @conv.bias, padding=[1,1])
        CHECK-NOT: memory_format
        CHECK: return
    """)
    cl = torch.channels_last
    assert mod.gm.conv.weight.is_contiguous(memory_format=cl) and not mod.gm.conv.weight.is_contiguous()
    assert isinstance(mod.gm.conv.weight, nn.Parameter)
    for seed in range(3):
        x = ints(2, 3, 8, 8, gen=torch.Generator().manual_seed(seed))
        (got, got_y), (want, want_y) = mod(x), model(x)
        assert torch.equal(got, want) and torch.equal(got_y, want_y)
        assert got_y.is_contiguous(memory_format=cl)
    run_twice_is_once(mod, "to-channels-last")


def test_to_channels_last_close_on_random_data():
    model, mod = _small()
    run(mod, "to-channels-last")
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert rel_err(mod(x), model(x)) <= 1e-6


def test_to_channels_last_leaves_non_image_models_alone():
    mod = sparsec.trace(nn.Sequential(nn.Linear(4, 4)).eval(), torch.randn(2, 4))
    before = print_module(mod)
    (rec,) = run(mod, "to-channels-last")
    assert not rec.modified and print_module(mod) == before
