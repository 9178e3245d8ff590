"""Small GPU tvm artifacts built here (TVM + nvcc + the stub libcuda) and run on the GPU host (runtime only).

``build_prebuilt(DIR)`` (called by ``benchmarks/tvm_bench.py build``) compiles :class:`GemmNet` for
``h100-tvm`` and ``h100-sparse-tvm`` (2:4 on every eligible layer: ``cost-model=off``), weights
included; test_gpu_prebuilt.py loads them where ``SPARSEC_TVM_PREBUILT`` names that folder and
compares them with the same net through the same pipeline in PyTorch. No pytest import: the
benchmark script imports this module too.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

SEED = 0
SHAPE = (4, 3, 16, 16)
# target -> pipeline: the target's own, with 2:4 forced on the sparse one so the 2:4 im2col path runs
PIPELINES = {
    "h100-tvm": None,
    "h100-sparse-tvm": "canonicalize,fold-bn,dce,sparsify-2-4{cost-model=off},fuse-epilogue,dce,to-dtype{dtype=fp16},partition",
}


class GemmNet(nn.Module):
    """Every route of the GPU tvm targets: a cuDNN stem (Cin=3), 1x1 convs and a linear on CUTLASS (one
    with a fused residual), a kxk conv (cuDNN when dense, 2:4 im2col + CUTLASS when sparse), a depthwise
    conv on cuDNN (NHWC), pooling and elementwise ops in TVM."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.expand = nn.Sequential(nn.Conv2d(32, 32, 1), nn.BatchNorm2d(32), nn.ReLU())
        self.kxk = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.project = nn.Sequential(nn.Conv2d(32, 32, 1), nn.BatchNorm2d(32))
        self.dw = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.BatchNorm2d(32), nn.ReLU())
        self.head = nn.Linear(32, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(self.stem(x))
        y = torch.relu(self.project(self.kxk(y)) + y)
        return self.head(self.dw(y).mean((2, 3)))


def live_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm statistics and affine terms, so activations neither vanish nor explode; eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=gen) * 0.5 + 0.75)
                m.weight.copy_(torch.rand(c, generator=gen) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(c, generator=gen) * 0.1)
    return model.eval()


def make_net() -> nn.Module:
    """GemmNet with seeded weights and live BatchNorm statistics (outputs O(1), not vanishing)."""
    torch.manual_seed(SEED)
    return live_bn(GemmNet(), SEED + 1)


def artifact(folder: Path, target: str) -> Path:
    return Path(folder) / f"gemmnet-{target}.sparsec"


def build_prebuilt(folder: Path) -> list[Path]:
    """SPARSEC_CUTLASS_KXK=sparse: the 2:4 3x3 conv takes the im2col path (Relax strided slices), so the GPU
    test runs it (by default every kxk conv stays cuDNN)."""
    import sparsec
    from sparsec import knobs

    with knobs.scope(cutlass_kxk="sparse"):
        return [sparsec.compile(make_net(), (torch.randn(*SHAPE),), target=t, pipeline=p,
                                output=str(artifact(folder, t)), force=True).artifact for t, p in PIPELINES.items()]


def reference(manifest: dict):
    """The net after the artifact's pipeline, in PyTorch (the fp16 graph the artifact was lowered from)."""
    import sparsec
    from sparsec.api import resolve_target
    from sparsec.passes.manager import PassContext, PassManager

    mod = sparsec.trace(make_net(), (torch.randn(*SHAPE),))
    PassManager.parse(manifest["pipeline"]).run(mod, PassContext(target=resolve_target(manifest["target"]["name"])))
    return mod
