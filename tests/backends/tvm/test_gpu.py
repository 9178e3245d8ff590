"""On a CUDA GPU: a *-tvm artifact built here runs with the TVM runtime and matches PyTorch eager.

Needs the TVM compiler beside the GPU; the GPU host has only the runtime, so there
test_gpu_prebuilt.py runs artifacts built on the CPU machine instead, and the same check at full size
(ResNet-50 and friends, fp16) is `sparsec bench`'s tvm variants (benchmarks/tvm_device_run.sh).
"""

from __future__ import annotations

import pytest
import torch

import sparsec

from .conftest import rel_err

pytestmark = pytest.mark.gpu


def _target() -> str:
    major, _ = torch.cuda.get_device_capability()
    if major not in (8, 9):
        pytest.skip(f"no *-tvm target for sm_{major}x")
    return "h100-tvm" if major == 9 else "a100-tvm"


@pytest.mark.parametrize("pipeline,tol", [("default", 1e-4), ("canonicalize,fold-bn,dce,to-dtype{dtype=fp16}", 5e-3)])
def test_tvm_artifact_matches_eager_on_the_gpu(tvm, nvcc, small_net, tmp_path, pipeline, tol):
    x = torch.randn(2, 3, 32, 32)
    res = sparsec.compile(small_net, (x,), target=_target(), pipeline=pipeline, output=str(tmp_path / "g.sparsec"))
    model = sparsec.load(res.artifact)
    eager = res.module.gm.cuda()
    with torch.no_grad():
        for _ in range(2):
            xc = torch.randn(2, 3, 32, 32, device="cuda")
            y = model(xc)
            assert y.is_cuda and y.shape == (2, 10)
            assert rel_err(y, eager(xc)) < tol
