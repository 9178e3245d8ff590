"""On the GPU host, with the TVM runtime alone: GPU tvm artifacts built on the CPU machine run and match PyTorch.

The artifacts come from ``benchmarks/tvm_bench.py build`` (``prebuilt/``, see prebuilt.py); point
``SPARSEC_TVM_PREBUILT`` at that folder. They call sparsec's CUTLASS kernels (dense and 2:4, built
or loaded through the kernel cache at load time) and cuDNN through TVM packed functions; the
reference is the same net after the artifact's pipeline, run by PyTorch on the GPU.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

import sparsec

from .conftest import rel_err
from .prebuilt import PIPELINES, SHAPE, artifact, reference

pytestmark = pytest.mark.gpu


@pytest.fixture
def folder() -> Path:
    path = os.environ.get("SPARSEC_TVM_PREBUILT")
    if not path or not Path(path).is_dir():
        pytest.skip("SPARSEC_TVM_PREBUILT names no folder of prebuilt tvm artifacts (python benchmarks/tvm_bench.py build)")
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the prebuilt artifacts hold sm_90a code: an H100 runs them")
    return Path(path)


@pytest.mark.parametrize("target", sorted(PIPELINES))
def test_prebuilt_artifact_matches_pytorch(folder, target):
    from sparsec.backends.cutlass import runtime

    path = artifact(folder, target)
    manifest = json.loads((path / "manifest.json").read_text())
    layers = manifest["payload"]["cutlass"]["layers"]
    assert layers and (any(r["sparse"] for r in layers) == target.startswith("h100-sparse"))
    model = sparsec.load(path)
    loaded = {k.cfg.name for k in runtime._kernels.values()}
    assert set(manifest["payload"]["cutlass"]["kernels"]) <= loaded  # preloaded before the first call
    ref = reference(manifest).gm.cuda()
    with torch.no_grad():
        for _ in range(2):
            x = torch.randn(*SHAPE, device="cuda")
            y, want = model(x), ref(x)
            assert y.shape == want.shape == (SHAPE[0], 16) and y.dtype == want.dtype and y.is_cuda
            assert want.abs().max() > 1e-2
            assert rel_err(y, want) < 5e-3  # fp16 both ways, different kernels


def test_prebuilt_artifact_replays_as_a_cuda_graph(folder):
    """The tvm-graph benchmark variants: the VM, its packed calls and the kernels capture into one CUDA graph."""
    from sparsec.backends.cuda_graph import CudaGraphModule

    model = sparsec.load(artifact(folder, "h100-tvm"))
    graphed = CudaGraphModule(model)
    for _ in range(3):  # capture, then replays with new inputs copied in
        x = torch.randn(*SHAPE, device="cuda")
        y = graphed(x).clone()
        torch.cuda.synchronize()
        with torch.no_grad():
            assert rel_err(y, model(x)) < 1e-3  # the same kernels; cuDNN may pick another algorithm
    assert len(graphed.graphs) == 1
