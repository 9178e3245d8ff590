"""What the hand-written kernels' ops share (handlib, runtime.poison): their input checks, their errors for a
launcher's return code, and the NaN poisoning of outputs the GPU tests rely on. CPU-only."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from sparsec.backends.cutlass import conv_pool as CP  # noqa: E402
from sparsec.backends.cutlass import handlib  # noqa: E402
from sparsec.backends.cutlass.runtime import poison, poisoned_outputs  # noqa: E402
from sparsec.errors import KernelError  # noqa: E402

CFG = CP.ConvPoolConfig("sm_90a", "fp16", 3, 7, 2, 64, "relu", "max", 3, 2, 1)


def test_configs_name_their_library_symbol_and_source():
    assert CFG.lib_name == CFG.name and CFG.symbol == "sparsec_" + CFG.name
    src = CFG.to_source()
    assert (src.name, src.arch) == (CFG.name, "sm_90a") and f'extern "C" int {CFG.symbol}(' in src.text


def test_check_inputs_names_each_tensor_that_is_wrong():
    x, w = torch.randn(1, 3, 8, 8), torch.randn(64, 208)
    with pytest.raises(KernelError, match="conv\\+pool kernel cpool_.* takes fp16 CUDA tensors") as exc:
        handlib.check_inputs("conv+pool", CFG, x.half(), weight=w)
    assert "x torch.float16 on cpu, weight torch.float32" in str(exc.value)


@pytest.mark.parametrize("rc,what", [(1, "shape refused"), (4, "launch failed")])
def test_check_rc_says_what_failed(rc, what):
    handlib.check_rc(0, "stem", CFG, "x (1, 3, 8, 8)")
    with pytest.raises(KernelError, match=what) as exc:
        handlib.check_rc(rc, "stem", CFG, "x (1, 3, 8, 8)", fix="give a larger input")
    assert "x (1, 3, 8, 8)" in str(exc.value) and "give a larger input" in str(exc.value)


def test_poison_fills_outputs_only_inside_poisoned_outputs():
    assert torch.equal(poison(torch.zeros(3)), torch.zeros(3))
    with poisoned_outputs():
        assert torch.isnan(poison(torch.zeros(3))).all()
    assert not torch.isnan(poison(torch.zeros(3))).any()
