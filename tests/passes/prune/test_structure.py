"""prune-channels structure on the canonical printer (FileCheck): weights, BN
statistics and the downstream conv's input are sliced, the producers are marked, the classifier's outputs are not."""

from __future__ import annotations

import torch
from torch import nn

from sparsec.ir import print_module
from sparsec.ir.trace import trace

from ..conftest import run
from .util import randomise


class Res(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.c1 = nn.Conv2d(16, 32, 1)
        self.bn1 = nn.BatchNorm2d(32)
        self.c2 = nn.Conv2d(32, 16, 1)
        self.fc = nn.Linear(16 * 2 * 2, 3)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.c2(torch.relu(self.bn1(self.c1(x))))
        return self.fc(x.flatten(1))


def test_pruned_ir(filecheck):
    torch.manual_seed(0)
    mod = trace(randomise(Res().eval()), torch.randn(1, 3, 2, 2))
    run(mod, "prune-channels{ratio=0.5,round-to=8}")
    filecheck(print_module(mod), """
        CHECK-LABEL: module @res
        CHECK:     @bn1.running_mean: f32[16]
        CHECK:     @c1.weight: f32[16,8,1,1]
        CHECK:     @c2.weight: f32[8,16,1,1]
        CHECK:     @fc.weight: f32[3,32]
        CHECK:     @stem.weight: f32[8,3,3,3]
        CHECK:     %[[STEM:[a-z0-9_]+]]: f32[1,8,2,2] = aten.conv2d(%{{.*}}) {sparsec.pruned = 16->8}
        CHECK:     %[[C1:[a-z0-9_]+]]: f32[1,16,2,2] = aten.conv2d(%[[STEM]], @c1.weight, @c1.bias) {sparsec.pruned = 32->16}
        CHECK:     aten.batch_norm(%[[C1]]
        CHECK:     %[[C2:[a-z0-9_]+]]: f32[1,8,2,2] = aten.conv2d({{.*}}) {sparsec.pruned = 16->8}
        CHECK:     %[[ADD:[a-z0-9_]+]]: f32[1,8,2,2] = aten.add.Tensor(%[[STEM]], %[[C2]])
        CHECK:     %[[FLAT:[a-z0-9_]+]]: f32[1,32] = aten.flatten.using_ints(%[[ADD]]
        CHECK-NOT: sparsec.pruned
        CHECK:     f32[1,3] = aten.linear(%[[FLAT]], @fc.weight, @fc.bias)
    """)
