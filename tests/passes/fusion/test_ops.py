"""The sparsec:: fused ops: reference semantics, fake shapes, export/save/load."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as Fn

from sparsec.passes.fusion import ops as F

from ..conftest import ints

ACT_REF = {
    "none": lambda y: y,
    "relu": torch.relu,
    "relu6": lambda y: Fn.hardtanh(y, 0.0, 6.0),
    "silu": Fn.silu,
    "gelu": Fn.gelu,
    "gelu_tanh": lambda y: Fn.gelu(y, approximate="tanh"),
    "hardswish": Fn.hardswish,
    "sigmoid": torch.sigmoid,
}


def test_activation_table_is_the_documented_one():
    assert list(F.ACTIVATIONS) == list(ACT_REF)


@pytest.mark.parametrize("act", list(ACT_REF))
@pytest.mark.parametrize("act2", ["none", "relu", "sigmoid"])
def test_fused_conv2d_is_act2_of_act_plus_residual(act, act2):
    gen = torch.Generator().manual_seed(1)
    x, w, b = ints(2, 4, 7, 7, gen=gen), ints(6, 2, 3, 3, gen=gen), ints(6, gen=gen)
    r = ints(2, 6, 4, 4, gen=gen)
    got = torch.ops.sparsec.fused_conv2d(x, w, b, r, [2, 2], [1, 1], [1, 1], 2, act, act2)
    want = ACT_REF[act2](ACT_REF[act](Fn.conv2d(x, w, b, 2, 1, 1, 2)) + r)
    assert got.shape == want.shape == (2, 6, 4, 4)
    assert got.dtype == torch.float32
    assert torch.equal(got, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_fused_linear_without_residual(dtype):
    gen = torch.Generator().manual_seed(2)
    x, w = ints(3, 5, 8, gen=gen, dtype=dtype), ints(4, 8, gen=gen, dtype=dtype)
    got = torch.ops.sparsec.fused_linear(x, w, None, None, "relu", "none")
    want = torch.relu(Fn.linear(x, w))
    assert got.shape == (3, 5, 4) and got.dtype == dtype
    assert torch.equal(got, want)


@pytest.mark.parametrize("pool", ["max", "avg"])
def test_conv2d_pool_is_pool_of_act_conv(pool):
    gen = torch.Generator().manual_seed(3)
    x, w, b = ints(1, 3, 9, 9, gen=gen), ints(4, 3, 3, 3, gen=gen), ints(4, gen=gen)
    got = torch.ops.sparsec.conv2d_pool(x, w, b, [1, 1], [1, 1], [1, 1], 1, "relu", pool, [3, 3], [2, 2], [1, 1],
                                        [1, 1], True, False, None)
    y = torch.relu(Fn.conv2d(x, w, b, 1, 1))
    want = Fn.max_pool2d(y, 3, 2, 1, ceil_mode=True) if pool == "max" else Fn.avg_pool2d(y, 3, 2, 1, True, False)
    assert got.shape == want.shape == (1, 4, 5, 5)
    assert torch.equal(got, want)


def test_bad_arguments_are_named():
    x, w = torch.randn(1, 2, 4, 4), torch.randn(2, 2, 1, 1)
    with pytest.raises(ValueError, match="unknown activation 'tanh'"):
        torch.ops.sparsec.fused_conv2d(x, w, act="tanh")
    with pytest.raises(ValueError, match=r"residual shape \(1, 2, 1, 1\) != output \(1, 2, 4, 4\)"):
        torch.ops.sparsec.fused_conv2d(x, w, None, torch.randn(1, 2, 1, 1))
    with pytest.raises(ValueError, match="unknown pool 'median'"):
        torch.ops.sparsec.conv2d_pool(x, w, pool="median")


def test_fake_impl_gives_shapes_without_computing():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x, w = torch.empty(8, 16, 32, 32, dtype=torch.float16), torch.empty(32, 16, 3, 3, dtype=torch.float16)
        y = torch.ops.sparsec.conv2d_pool(x, w, None, [1, 1], [1, 1], [1, 1], 1, "relu", "max", [2, 2])
        z = torch.ops.sparsec.fused_linear(torch.empty(4, 16), torch.empty(8, 16))
    assert tuple(y.shape) == (8, 32, 16, 16) and y.dtype == torch.float16
    assert tuple(z.shape) == (4, 8)


class _Calls(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(8, 4, 3, 3))
        self.b = torch.nn.Parameter(torch.randn(8))
        self.fc = torch.nn.Parameter(torch.randn(5, 8))

    def forward(self, x):
        y = torch.ops.sparsec.fused_conv2d(x, self.w, self.b, None, [1, 1], [1, 1], [1, 1], 1, "silu", "none")
        y = torch.ops.sparsec.conv2d_pool(y, self.w[:, :4].repeat(1, 2, 1, 1), None, [1, 1], [1, 1], [1, 1], 1,
                                          "none", "avg", [2, 2])
        return torch.ops.sparsec.fused_linear(y.mean((2, 3)), self.fc, None, None, "gelu", "none")


def test_ops_export_save_and_load(tmp_path):
    model, x = _Calls().eval(), torch.randn(2, 4, 8, 8)
    ep = torch.export.export(model, (x,))
    targets = {n.target for n in ep.graph.nodes if n.op == "call_function"}
    assert {F.fused_conv2d, F.conv2d_pool, F.fused_linear} <= targets  # kept whole, not decomposed
    torch.export.save(ep, tmp_path / "m.pt2")
    loaded = torch.export.load(tmp_path / "m.pt2").module()
    x2 = torch.randn(2, 4, 8, 8)
    assert torch.equal(loaded(x2), model(x2))


@pytest.mark.parametrize("op", ["fused_conv2d", "fused_linear", "conv2d_pool"])
def test_gradients_match_the_unfused_ops(op):
    gen = torch.Generator().manual_seed(4)
    if op == "fused_linear":
        x, w, b = torch.randn(3, 8, generator=gen), torch.randn(8, 8, generator=gen), torch.randn(8, generator=gen)
        r = torch.randn(3, 8, generator=gen)
        fused = lambda x, w, b, r: torch.ops.sparsec.fused_linear(x, w, b, r, "silu", "relu")  # noqa: E731
        ref = lambda x, w, b, r: torch.relu(Fn.silu(Fn.linear(x, w, b)) + r)  # noqa: E731
    else:
        x, w, b = torch.randn(2, 4, 6, 6, generator=gen), torch.randn(4, 4, 3, 3, generator=gen), torch.randn(4, generator=gen)
        r = torch.randn(2, 4, 6, 6, generator=gen)
        if op == "fused_conv2d":
            fused = lambda x, w, b, r: torch.ops.sparsec.fused_conv2d(x, w, b, r, [1, 1], [1, 1], [1, 1], 1, "gelu", "none")  # noqa: E731
            ref = lambda x, w, b, r: Fn.gelu(Fn.conv2d(x, w, b, 1, 1)) + r  # noqa: E731
        else:
            fused = lambda x, w, b, r: torch.ops.sparsec.conv2d_pool(x, w, b, [1, 1], [1, 1], [1, 1], 1, "relu", "max", [2, 2]) * r[:, :, :3, :3]  # noqa: E731
            ref = lambda x, w, b, r: Fn.max_pool2d(torch.relu(Fn.conv2d(x, w, b, 1, 1)), 2) * r[:, :, :3, :3]  # noqa: E731
    grads = []
    for fn in (fused, ref):
        leaves = [t.clone().requires_grad_() for t in (x, w, b, r)]
        fn(*leaves).square().sum().backward()
        grads.append([t.grad for t in leaves])
    for g, want in zip(*grads):
        assert g is not None and g.shape == want.shape
        torch.testing.assert_close(g, want, rtol=1e-5, atol=1e-5)


def test_fused_conv2d_has_a_cuda_kernel_and_cpu_keeps_the_reference():
    """The CUDA key has its own kernel (cuDNN's fused conv where it applies); other devices run the reference."""
    assert torch._C._dispatch_has_kernel_for_dispatch_key("sparsec::fused_conv2d", "CUDA")
    x, w = torch.randn(1, 2, 4, 4), torch.randn(2, 2, 1, 1)
    assert F._cudnn_fusable(x, None, "relu", "none") is None  # a CPU tensor: never cuDNN


# (act, act2, residual) -> what cuDNN's fused convs take: relu alone, or the residual add then relu
CUDNN_CASES = [("relu", "none", False, "relu"), ("none", "relu", False, "relu"), ("relu", "relu", False, "relu"),
               ("none", "relu", True, "add_relu"), ("relu", "relu", True, None), ("silu", "none", False, None),
               ("none", "none", False, None), ("relu", "none", True, None)]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("act,act2,res,how", CUDNN_CASES)
def test_fused_conv2d_on_cuda_matches_the_reference(act, act2, res, how, dtype):
    """Fresh random fp16/bf16 NHWC data (a ResNet 3x3 conv, and a 7x7 stride-2 stem): the CUDA kernel is within
    the dtype's tolerance of a float64 reference, keeps the reference's layout, and where cuDNN's fused conv
    applies, launches no separate add or ReLU kernel."""
    from torch.profiler import ProfilerActivity, profile

    g = torch.Generator(device="cuda").manual_seed(5)
    for cin, cout, k, s, hw in ((64, 64, 3, 1, 28), (3, 64, 7, 2, 56)):
        x = torch.randn(2, cin, hw, hw, device="cuda", generator=g).to(dtype).to(memory_format=torch.channels_last)
        w = (torch.randn(cout, cin, k, k, device="cuda", generator=g) / (cin * k * k) ** 0.5).to(dtype)
        w = w.to(memory_format=torch.channels_last)
        b = torch.randn(cout, device="cuda", generator=g).to(dtype)
        args = ([s, s], [k // 2, k // 2], [1, 1], 1, act, act2)
        ho = (hw + 2 * (k // 2) - k) // s + 1
        r = torch.randn(2, cout, ho, ho, device="cuda", generator=g).to(dtype).to(memory_format=torch.channels_last)
        r = r if res else None
        assert F._cudnn_fusable(x, r, act, act2) == how
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            y = torch.ops.sparsec.fused_conv2d(x, w, b, r, *args)
            torch.cuda.synchronize()
        ref = F.fused_conv2d_ref(x.double(), w.double(), b.double(), None if r is None else r.double(), *args)
        assert y.dtype == dtype and y.shape == ref.shape
        assert y.stride() == F.fused_conv2d_ref(x, w, b, r, *args).stride()
        rel = ((y.double() - ref).norm() / ref.norm()).item()
        assert rel <= (1e-2 if dtype == torch.float16 else 2e-2), rel
        kernels = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        elementwise = [n for n in kernels if "elementwise" in n.lower() and ("add" in n.lower() or "clamp" in n.lower()
                                                                               or "relu" in n.lower())]
        if how is not None:
            assert not elementwise, kernels  # cuDNN computed the epilogue


@pytest.mark.gpu
def test_the_knob_turns_cudnn_fusion_off():
    from sparsec import knobs

    g = torch.Generator(device="cuda").manual_seed(6)
    x = torch.randn(2, 16, 8, 8, device="cuda", generator=g).half()
    w, b = torch.randn(16, 16, 3, 3, device="cuda", generator=g).half(), torch.randn(16, device="cuda", generator=g).half()
    with knobs.scope(cudnn_fused=False):
        assert F._cudnn_fusable(x, None, "relu", "none") is None
        y = torch.ops.sparsec.fused_conv2d(x, w, b, None, [1, 1], [1, 1], [1, 1], 1, "relu", "none")
    assert torch.equal(y, F.fused_conv2d_ref(x, w, b, None, [1, 1], [1, 1], [1, 1], 1, "relu", "none"))
