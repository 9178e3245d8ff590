"""The CUTLASS kernels on the GPU: numerics against float64 masked references, and the custom ops
under export, torch.compile and CUDA-graph capture. Outputs are NaN-poisoned before every run."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sparsec.backends.cutlass.config import KernelConfig, candidates  # noqa: E402

pytestmark = pytest.mark.gpu

TOL = {"fp16": 5e-3, "bf16": 2e-2}
DT = {"fp16": torch.float16, "bf16": torch.bfloat16}
ACT = {
    "identity": lambda y: y, "relu": torch.relu, "relu6": lambda y: y.clamp(0, 6), "silu": torch.nn.functional.silu,
    "gelu": torch.nn.functional.gelu, "hardswish": torch.nn.functional.hardswish, "sigmoid": torch.sigmoid,
}
BASE = KernelConfig()
EPILOGUES = [BASE.with_epilogue(a) for a in ("relu", "relu6", "gelu", "sigmoid", "silu", "hardswish")] + [
    BASE.with_epilogue("silu", residual=True), BASE.with_epilogue("hardswish", scale=True),
    KernelConfig(dtype="bf16").with_epilogue("gelu", residual=True),
    KernelConfig(sparse=False, tile=(128, 128, 64)).with_epilogue("relu", residual=True, scale=True),
]
MAINLOOPS = [c for dt in ("fp16", "bf16") for sp in (True, False) for c in candidates("sm_90a", dt, sp)]
# sm_80 kernels run on Hopper through their compute_80 PTX (JIT-compiled by the driver)
SM80 = [candidates("sm_80", dt, sp)[0].with_epilogue(act) for dt, sp, act in
        (("fp16", True, "relu"), ("bf16", True, "gelu"), ("fp16", False, "relu"), ("bf16", False, "identity"))]


def _needs_sm90():
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("sm_90a kernels need a Hopper GPU")


def _masked(m, k, dtype, g):
    return _mask(torch.randn(m, k, device="cuda", generator=g).to(dtype))


def _mask(w):
    """Keep the two largest magnitudes of every group of four along K."""
    m, k = w.shape
    grp = w.float().abs().reshape(m, k // 4, 4)
    keep = torch.zeros_like(grp, dtype=torch.bool).scatter_(-1, grp.topk(2, dim=-1).indices, True)
    return (w.reshape(m, k // 4, 4) * keep).reshape(m, k)


def _rel(y, ref):
    y = y.double()
    assert torch.isfinite(y).all(), "NaN/inf in the output: some element was not written"
    return ((y - ref).norm() / ref.norm()).item()


def _run(cfg, m, n, k, seed=0, lead=None):
    from sparsec.backends.cutlass import runtime

    g = torch.Generator(device="cuda").manual_seed(seed)
    dt = DT[cfg.dtype]
    w = _masked(m, k, dt, g)
    x = torch.randn(*(lead or (n,)), k, device="cuda", generator=g).to(dt)
    bias = torch.randn(m, device="cuda", generator=g).to(dt)
    res = torch.randn(*x.shape[:-1], m, device="cuda", generator=g).to(dt) if cfg.residual else None
    scale = (torch.rand(m, device="cuda", generator=g) + 0.5) if cfg.scale else None
    acc = x.double() @ w.double().t()
    if scale is not None:
        acc = acc * scale.double()
    acc = acc + bias.double()
    if res is not None:
        acc = acc + res.double()
    ref = ACT[cfg.activation](acc)
    with runtime.poisoned_outputs():
        if cfg.sparse:
            values, meta = runtime.pack_weight(w, cfg)
            y = torch.ops.sparsec.gemm24(x, values, meta, bias, res, scale, cfg.name, m)
        else:
            y = torch.ops.sparsec.gemm_dense(x, runtime.pad_dense_weight(w, cfg), bias, res, scale, cfg.name, m)
    torch.cuda.synchronize()
    assert y.shape == (*x.shape[:-1], m) and y.dtype == dt
    return _rel(y, ref)


@pytest.mark.parametrize("cfg", MAINLOOPS, ids=lambda c: c.name)
def test_mainloop_configs_match_the_masked_reference(cfg):
    _needs_sm90()
    assert _run(cfg, 256, 384, 512) <= TOL[cfg.dtype]


@pytest.mark.parametrize("cfg", SM80, ids=lambda c: c.name)
def test_sm80_kernels_through_ptx(cfg):
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("sm_80 kernels need an Ampere or newer GPU")
    assert _run(cfg, 256, 200, 512, seed=3) <= TOL[cfg.dtype]
    # residual and scale: unfused on sm_80 (after the kernel), so every shape and epilogue still runs
    assert _run(dataclasses.replace(cfg, residual=True, scale=True), 96, 77, 192, seed=4) <= TOL[cfg.dtype]


@pytest.mark.parametrize("cfg", EPILOGUES, ids=lambda c: c.name)
def test_epilogues_match_the_reference(cfg):
    _needs_sm90()
    assert _run(cfg, 192, 200, 256, seed=1) <= TOL[cfg.dtype]


@pytest.mark.parametrize("m,n,k", [(200, 77, 208), (72, 1, 64), (64, 1000, 200), (1000, 33, 1040)])
def test_unaligned_shapes_are_padded_not_refused(m, n, k):
    _needs_sm90()
    assert _run(BASE, m, n, k, seed=2) <= TOL["fp16"]
    assert _run(KernelConfig(sparse=False, tile=(128, 128, 64)), m, n, k, seed=2) <= TOL["fp16"]


@pytest.mark.parametrize("k", [8, 24, 40, 264])
def test_dense_sm90_takes_k_a_multiple_of_8_unpadded(k):
    """Pruned widths are multiples of 8: the dense kernel takes such K as is (TMA zero-fills the last K tile)."""
    _needs_sm90()
    from sparsec.backends.cutlass import runtime

    for cfg in (KernelConfig(sparse=False, tile=(128, 128, 64)), KernelConfig(dtype="bf16", sparse=False)):
        assert runtime.pad_dense_weight(torch.ones(96, k), cfg).shape == (96, k)
        assert _run(cfg, 96, 300, k, seed=k) <= TOL[cfg.dtype]


def test_n_varies_per_call_and_leading_dims_are_kept():
    _needs_sm90()
    for n in (1, 5, 4096):
        assert _run(BASE, 128, n, 256, seed=n) <= TOL["fp16"]
    assert _run(BASE, 128, 0, 256, lead=(2, 3, 7)) <= TOL["fp16"]


@pytest.mark.parametrize("dtype,tile_k", [("fp16", 128), ("bf16", 128), ("fp16", 64)])
def test_numpy_packer_matches_cutlass_gpu_compressor(dtype, tile_k):
    _needs_sm90()
    import ctypes

    from sparsec.backends.cutlass import build
    from sparsec.backends.cutlass.codegen import compressor_symbol
    from sparsec.backends.cutlass.packing import pack

    lib = ctypes.CDLL(str(build.build_one(build.compressor_source(dtype, tile_k))))
    fn = getattr(lib, compressor_symbol(dtype, tile_k))
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int] * 2 + [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    m, k = 192, 3 * tile_k
    g = torch.Generator(device="cuda").manual_seed(5)
    w = torch.randn(m, k, device="cuda", generator=g).to(DT[dtype])
    w = _mask(torch.where(w == 0, torch.ones_like(w), w))  # exactly two nonzeros in every group
    p = pack(w.cpu().view(torch.int16).numpy().view(np.uint16), "sm_90a", tile_k)
    ac = torch.zeros(m, k // 2, dtype=w.dtype, device="cuda")
    e = torch.zeros(p.meta.size, dtype=torch.uint8, device="cuda")
    ws = torch.empty(16 << 20, dtype=torch.uint8, device="cuda")
    assert fn(w.data_ptr(), ac.data_ptr(), e.data_ptr(), m, k, ws.data_ptr(), ws.numel(), torch.cuda.current_stream().cuda_stream) == 0
    torch.cuda.synchronize()
    assert np.array_equal(ac.cpu().view(torch.int16).numpy().view(np.uint16), p.values)
    assert np.array_equal(e.cpu().numpy(), p.meta)


class _Linear24(torch.nn.Module):
    def __init__(self, w, bias, cfg):
        super().__init__()
        from sparsec.backends.cutlass import runtime

        values, meta = runtime.pack_weight(w, cfg)
        self.register_buffer("values", values)
        self.register_buffer("metadata", meta)
        self.register_buffer("bias", bias)
        self.cfg, self.m = cfg.name, w.shape[0]

    def forward(self, x):
        return torch.ops.sparsec.gemm24(x, self.values, self.metadata, self.bias, None, None, self.cfg, self.m) * 2


def _module():
    g = torch.Generator(device="cuda").manual_seed(7)
    cfg = BASE.with_epilogue("relu")
    w = _masked(256, 512, torch.float16, g)
    b = torch.randn(256, device="cuda", generator=g).half()
    x = torch.randn(64, 512, device="cuda", generator=g).half()
    ref = torch.relu(x.double() @ w.double().t() + b.double()) * 2
    return _Linear24(w, b, cfg).cuda(), x, ref


def test_custom_op_exports():
    _needs_sm90()
    mod, x, ref = _module()
    ep = torch.export.export(mod, (x,))
    assert any("sparsec.gemm24" in str(n.target) for n in ep.graph.nodes)
    assert _rel(ep.module()(x), ref) <= TOL["fp16"]


def test_custom_op_under_torch_compile():
    _needs_sm90()
    mod, x, ref = _module()
    compiled = torch.compile(mod, fullgraph=True)
    assert _rel(compiled(x), ref) <= TOL["fp16"]


def test_custom_op_in_a_cuda_graph():
    _needs_sm90()
    mod, x, ref = _module()
    static_x = x.clone()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        mod(static_x)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = mod(static_x)
    out.fill_(math.nan)
    graph.replay()
    torch.cuda.synchronize()
    assert _rel(out, ref) <= TOL["fp16"]
    static_x.copy_(x * 0.5)
    graph.replay()
    torch.cuda.synchronize()
    ref_half = torch.relu(static_x.double() @ _unpacked(mod).t() + mod.bias.double()) * 2
    assert _rel(out, ref_half) <= TOL["fp16"]  # the replay read the new input


def _unpacked(mod):
    from sparsec.backends.cutlass.packing import PackedWeight, unpack

    values = mod.values.cpu().view(torch.int16).numpy().view(np.uint16)
    meta = mod.metadata.cpu().numpy()
    p = PackedWeight("sm_90a", 128, mod.m, values.shape[1] * 2, values.shape[0], values.shape[1] * 2, values, meta)
    return torch.from_numpy(unpack(p).view(np.int16)).view(torch.float16).cuda().double()


def test_pdl_kernels_chain_in_a_cuda_graph_with_the_plain_kernels_bits():
    """SPARSEC_CUTLASS_PDL's kernels: four dense GEMMs, each reading the one before's output, launched with
    programmatic dependent launch and replayed as one CUDA graph on fresh inputs, give the plain kernels' bits
    (griddepcontrol.wait keeps each kernel's reads after the kernel before has finished and flushed)."""
    from sparsec.backends.cutlass import runtime

    _needs_sm90()
    plain = KernelConfig(sparse=False, tile=(128, 128, 64)).with_epilogue("relu")
    pdl = dataclasses.replace(plain, pdl=True)
    runtime.preload([plain, pdl])
    g = torch.Generator(device="cuda").manual_seed(7)
    ws = [runtime.pad_dense_weight((torch.randn(512, 512, device="cuda", generator=g) / 23).half(), plain)
          for _ in range(4)]

    def chain(cfg, x):
        for w in ws:
            x = torch.ops.sparsec.gemm_dense(x, w, None, None, None, cfg.name, 512)
        return x

    static_x = torch.randn(96, 512, device="cuda", generator=g).half()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        chain(pdl, static_x)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = chain(pdl, static_x)
    for seed in range(3):
        static_x.copy_(torch.randn(96, 512, device="cuda", generator=torch.Generator(device="cuda").manual_seed(seed)))
        out.fill_(math.nan)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, chain(plain, static_x)), seed
