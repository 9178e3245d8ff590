"""``sparsec.load(path, cuda_graph=True)`` / :class:`CudaGraphModule`: capture once per input signature, replay
after; and its refusals (no GPU, a module left on the CPU, a CPU input)."""

from __future__ import annotations

import pytest
import torch

import sparsec
from sparsec.backends import cuda_graph as cg
from sparsec.backends.cuda_graph import CudaGraphModule
from sparsec.errors import TargetError, UsageError


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
                               torch.nn.Conv2d(16, 32, 1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(32, 10)).eval()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_load_with_cuda_graph_without_a_gpu_says_so(tmp_path):
    res = sparsec.compile(_net(), (torch.randn(2, 3, 16, 16),), target="cpu", output=tmp_path / "m.sparsec")
    with pytest.raises(TargetError, match="cuda_graph=True needs a CUDA GPU") as err:
        sparsec.load(res.artifact, cuda_graph=True)
    assert "load without cuda_graph=True" in str(err.value)
    y = sparsec.load(res.artifact)(torch.randn(2, 3, 16, 16))  # the plain load still works
    assert y.shape == (2, 10)


def _rel(y, ref):
    return ((y.double() - ref.double()).norm() / ref.double().norm()).item()


@pytest.mark.gpu
def test_replays_each_new_input_and_captures_once_per_shape():
    net = _net().cuda().half()
    m = CudaGraphModule(net)
    g = torch.Generator(device="cuda").manual_seed(1)
    x1, x2 = (torch.randn(4, 3, 16, 16, device="cuda", generator=g).half() for _ in range(2))
    y1 = m(x1)
    assert y1.shape == (4, 10) and y1.dtype == torch.float16
    y1 = y1.clone()
    with torch.no_grad():
        assert _rel(y1, net(x1)) < 1e-3
        y2 = m(x2)  # a replay: the captured graph on the new input
        assert _rel(y2, net(x2)) < 1e-3 and _rel(y2, y1) > 1e-2
        assert len(m.graphs) == 1
        x3 = torch.randn(1, 3, 16, 16, device="cuda", generator=g).half()
        assert _rel(m(x3), net(x3)) < 1e-3 and len(m.graphs) == 2
        assert m(x1).data_ptr() == y2.data_ptr()  # outputs are the graph's static buffers


@pytest.mark.gpu
def test_refuses_a_module_on_the_cpu_and_a_cpu_input():
    with pytest.raises(UsageError, match="cuda_graph=True needs a module on the GPU"):
        CudaGraphModule(_net())
    m = CudaGraphModule(_net().cuda())
    with pytest.raises(UsageError, match="input 0 of a CUDA-graph module is not a CUDA tensor"):
        m(torch.randn(2, 3, 16, 16))


@pytest.mark.gpu
def test_sparsec_load_cuda_graph_matches_the_plain_loaded_program(tmp_path):
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("h100 artifacts need an sm_90 GPU")
    from sparsec.backends.bench import make_model

    shape = (8, 3, 64, 64)  # the shapes of test_e2e_gpu's resnet18: kernels in the device's cache
    res = sparsec.compile(make_model("resnet18"), (torch.randn(shape),), target="h100", output=tmp_path / "m.sparsec")
    plain, graphed = sparsec.load(res.artifact), sparsec.load(res.artifact, cuda_graph=True)
    g = torch.Generator(device="cuda").manual_seed(5)
    for _ in range(2):
        x = torch.randn(shape, device="cuda", generator=g)
        with torch.no_grad():
            assert _rel(graphed(x)[0], plain(x)[0]) < 1e-3
    assert len(graphed.graphs) == 1


def test_buckets_are_checked_and_a_batch_takes_the_smallest_that_fits():
    assert cg.check_buckets([8, 1, 8, 32]) == (1, 8, 32)
    for bad in ((), (0, 8), (-1,), (True, 8), (2.5,)):
        with pytest.raises(UsageError, match="batch buckets must be positive integers"):
            cg.check_buckets(bad)
    assert [cg.bucket_for(n, (1, 8, 32)) for n in (1, 2, 8, 9, 32, 33)] == [1, 8, 8, 32, 32, None]


def test_pad_batch_keeps_the_rows_and_the_memory_format():
    x = torch.randn(3, 4, 5, 6).to(memory_format=torch.channels_last)
    p = cg.pad_batch(x, 8)
    assert p.shape == (8, 4, 5, 6) and p.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(p[:3], x) and torch.equal(p[3:], x[-1:].expand(5, 4, 5, 6))
    y = torch.randn(2, 7)
    assert cg.pad_batch(y, 4).is_contiguous() and torch.equal(cg.pad_batch(y, 4)[:2], y)


def test_default_buckets_follow_the_exported_batch_range():
    def manifest(dynamic, lo=1, hi=65536):
        dims = {"0": {"name": "batch", "min": lo, "max": hi}} if dynamic else {}
        return {"inputs": {"dynamic_batch": dynamic, "tensors": [{"dynamic_dims": dims}]}}

    assert cg.default_buckets(manifest(False)) == ()
    assert cg.default_buckets(manifest(True)) == cg.DEFAULT_BATCH_BUCKETS
    assert cg.default_buckets(manifest(True, hi=20)) == (1, 2, 4, 8, 16)
    assert cg.default_buckets(manifest(True, lo=3, hi=64)) == (4, 8, 16, 32, 64)


def test_load_refuses_buckets_it_cannot_use(tmp_path):
    res = sparsec.compile(_net(), (torch.randn(2, 3, 16, 16),), target="cpu", output=tmp_path / "m.sparsec")
    with pytest.raises(UsageError, match="batch_buckets sizes the CUDA graphs of cuda_graph=True"):
        sparsec.load(res.artifact, batch_buckets=(1, 8))
    with pytest.raises(UsageError, match="has a static batch: it runs at its compiled shape only") as err:
        sparsec.load(res.artifact, cuda_graph=True, batch_buckets=(1, 8))
    assert "compile with --dynamic-batch" in str(err.value)


class _Seen(torch.nn.Module):
    """A module that records the batch sizes it is called at."""

    def __init__(self, net):
        super().__init__()
        self.net, self.batches = net, []

    def forward(self, x):
        self.batches.append(x.shape[0])
        return self.net(x), x.shape[0]


def test_batch_buckets_pad_to_the_bucket_and_return_the_callers_rows(caplog):
    """Batches 3 and 4 run at bucket 4, 1 at 2, 8 at 8, and 11, above the largest, at its own size with one
    warning; every call matches the unpadded model on its own rows, and non-batch outputs pass through."""
    net = _net()
    m = cg.BatchBuckets(_Seen(net), (2, 4, 8))
    torch.manual_seed(2)
    with torch.no_grad(), caplog.at_level("WARNING", logger="sparsec.backends.cuda_graph"):
        for n in (3, 4, 1, 8, 11, 11):
            x = torch.randn(n, 3, 16, 16).to(memory_format=torch.channels_last)
            y, seen = m(x)
            assert y.shape == (n, 10) and torch.allclose(y, net(x), atol=1e-5), n
            assert seen == {3: 4, 4: 4, 1: 2, 8: 8, 11: 11}[n]
    assert m.module.batches == [4, 4, 2, 8, 11, 11]
    assert [r.message for r in caplog.records] == [
        "batch 11 is above the largest bucket 8: it runs at its own size (under a CUDA graph: one more graph "
        "and memory pool)"]


def test_load_puts_buckets_around_the_graphs_of_a_dynamic_batch_artifact(tmp_path, monkeypatch):
    monkeypatch.setattr(cg, "CudaGraphModule", lambda module: module)  # no GPU here: the wiring alone
    dyn = sparsec.trace(_net(), (torch.randn(4, 3, 16, 16),), dynamic_batch=True)
    res = sparsec.compile(dyn, target="cpu", output=tmp_path / "dyn.sparsec")
    m = sparsec.load(res.artifact, cuda_graph=True)
    assert isinstance(m, cg.BatchBuckets) and m.buckets == cg.DEFAULT_BATCH_BUCKETS
    x = torch.randn(3, 3, 16, 16)
    assert torch.allclose(m(x), sparsec.load(res.artifact)(x), atol=1e-5) and m(x).shape == (3, 10)
    assert sparsec.load(res.artifact, cuda_graph=True, batch_buckets=(2, 16)).buckets == (2, 16)
    assert not isinstance(sparsec.load(res.artifact, cuda_graph=True, batch_buckets=()), cg.BatchBuckets)
    static = sparsec.compile(_net(), (torch.randn(2, 3, 16, 16),), target="cpu", output=tmp_path / "s.sparsec")
    assert not isinstance(sparsec.load(static.artifact, cuda_graph=True), cg.BatchBuckets)


@pytest.mark.gpu
def test_batch_buckets_around_cuda_graphs_keep_one_graph_per_bucket():
    net = _net().cuda().half()
    m = cg.BatchBuckets(CudaGraphModule(net), (2, 4, 8))
    g = torch.Generator(device="cuda").manual_seed(2)
    with torch.no_grad():
        for n in (3, 4, 1, 3, 8):
            x = torch.randn(n, 3, 16, 16, device="cuda", generator=g).half()
            y = m(x)
            assert y.shape == (n, 10) and _rel(y, net(x)) < 1e-3, n
    assert sorted(k[0][0][0] for k in m.module.graphs) == [2, 4, 8]
