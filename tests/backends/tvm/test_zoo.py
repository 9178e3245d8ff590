"""cpu-tvm builds of torchvision models at a small input match PyTorch eager within 1e-4 relative error."""

from __future__ import annotations

import pytest
import torch

import sparsec

from .conftest import live_bn, rel_err


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "efficientnet_b0"])
def test_zoo_model_matches_eager(tvm, name, tmp_path):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    net = live_bn(getattr(torchvision.models, name)(weights=None))
    res = sparsec.compile(net, (torch.randn(1, 3, 64, 64),), target="cpu-tvm", output=str(tmp_path / f"{name}.sparsec"))
    model = sparsec.load(res.artifact)
    with torch.no_grad():
        for _ in range(2):
            x = torch.randn(1, 3, 64, 64)
            y, ref = model(x), net(x)
            assert y.shape == ref.shape == (1, 1000) and y.dtype == ref.dtype
            assert ref.abs().max() > 1e-2  # live activations: the relative error means something
            assert rel_err(y, ref) < 1e-4
