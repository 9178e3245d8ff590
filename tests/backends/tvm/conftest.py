"""Fixtures of the TVM backend tests: TVM itself (or a clean skip), nets with live activations.

Every test module that needs the TVM compiler asks for the ``tvm`` fixture,
which skips, with the reason, where ``apache-tvm`` is not installed (CI
installs ``.[dev,zoo]``; add ``tvm`` to get these tests). Random-init
torchvision nets have vanishing activations (mobilenet_v2's logits are
~1e-9), which would make relative errors meaningless; ``live_bn`` gives
BatchNorm random statistics so the outputs are O(1).
"""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

from .prebuilt import live_bn  # noqa: F401 - random BatchNorm statistics, shared with the prebuilt nets


def _tvm_or_skip():
    try:
        import tvm  # noqa: F401
        from tvm.relax.frontend.torch import from_exported_program  # noqa: F401
    except (ImportError, OSError) as exc:
        pytest.skip(f"apache-tvm is not installed ({exc}); pip install 'sparsec[tvm]' to run the TVM tests")
    return tvm


@pytest.fixture
def tvm():
    return _tvm_or_skip()


@pytest.fixture
def nvcc():
    from sparsec import knobs

    path = knobs.get("nvcc") or shutil.which("nvcc") or (shutil.which("/usr/local/cuda/bin/nvcc"))
    if not path:
        pytest.skip("nvcc is not installed: CUDA builds need it (set SPARSEC_NVCC or put nvcc on PATH)")
    if not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("no C compiler for the stub libcuda")
    return path


class SmallNet(nn.Module):
    """conv-BN-relu, a residual block, depthwise conv, global pool, linear: the ops the zoo models use."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                   nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16))
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.Hardswish())
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        y = torch.relu(y + self.block(y))
        y = self.dw(y)
        return self.head(y.mean((2, 3)))


@pytest.fixture
def small_net() -> nn.Module:
    torch.manual_seed(0)
    return live_bn(SmallNet())


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.detach().double() - ref.detach().double()).norm() / ref.detach().double().norm())
