"""``sparsec.load(path, cuda_graph=True)`` / :class:`CudaGraphModule`: capture once per input signature, replay
after; and its refusals (no GPU, a module left on the CPU, a CPU input)."""

from __future__ import annotations

import pytest
import torch

import sparsec
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
