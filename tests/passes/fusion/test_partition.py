"""``partition`` and the cutlass support table: assignments, reasons, cycles, options, verify."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsec
from sparsec.backends.cutlass_support import CutlassSupport
from sparsec.errors import PipelineFailure, RegistryError, VerificationError
from sparsec.ir import meta as M
from sparsec.ir import print_module
from sparsec.passes import PassContext
from sparsec.passes.partition import PartitionId

from ..conftest import ints, run, run_twice_is_once
from .nets import integer_weights


class Net(nn.Module):
    """stem (Cin=5) -> conv3x3 -> maxpool -> 1x1 conv (+ skip around the pool) -> grouped conv -> fc.

    Five input channels: not a multiple of 8 for the tensor-core kernels, and more than the stem kernel
    takes (1 to 4, tests/backends/cutlass/test_stem.py), so the stem stays in PyTorch."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(5, 16, 3, padding=1)
        self.c1 = nn.Conv2d(16, 16, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.c2 = nn.Conv2d(16, 16, 1)
        self.down = nn.Conv2d(16, 16, 1, stride=2)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.fc = nn.Linear(16, 8)

    def forward(self, x):
        y = torch.relu(self.c1(torch.relu(self.stem(x))))
        y = torch.relu(self.c2(self.pool(y)) + self.down(y))
        y = torch.relu(self.dw(self.grouped(y)))
        return self.fc(y.mean((2, 3)))


def _fp16_fused():
    model = integer_weights(Net())
    mod = sparsec.trace(model, (ints(2, 5, 8, 8),))
    run(mod, "fusion,to-dtype{dtype=fp16}")
    return model, mod


def _by_name(mod):
    return {n.name: n for n in mod.graph.nodes}


def test_support_table_declarations():
    _, mod = _fp16_fused()
    table = CutlassSupport()
    got = {n.name: str(table.support(n)) for n in mod.graph.nodes if n.op == "call_function"}
    text = "\n".join(f"{k}: {v}" for k, v in got.items())
    assert "no: Cin=5, Cout=16: 16-bit tensor-core kernels need channel counts that are multiples of 8" in text
    assert "yes (cutlass: implicit-GEMM 3x3 conv, fused epilogue (act=relu))" in text
    assert "yes (cutlass: 1x1 conv as a GEMM (NHWC), fused epilogue (residual, act2=relu))" in text
    assert "yes (cutlass: strided 1x1 conv: gather (stride [2, 2]) + GEMM, identity epilogue)" in text
    assert "no: grouped conv (groups=4, Cin=16, Cout=16) that is not depthwise" in text
    assert "yes (cutlass: depthwise conv, dense direct kernel, fused epilogue (act=relu))" in text
    assert "no: aten.max_pool2d: pooling is not a CUTLASS kernel" in text
    assert "yes (cutlass: GEMM (linear), identity epilogue)" in text


def test_support_table_refuses_fp32():
    mod = sparsec.trace(integer_weights(Net()), (ints(2, 5, 8, 8),))
    conv = next(n for n in mod.graph.nodes if n.name == "conv2d_1")
    assert str(CutlassSupport().support(conv)) == ("no: f32: the CUTLASS kernels compute in fp16/bf16; "
                                                   "run to-dtype{dtype=fp16} first")


def test_support_table_checks_24_limits():
    _, mod = _fp16_fused()
    fc = next(n for n in mod.graph.nodes if n.target is torch.ops.aten.linear.default)
    w = fc.args[1]
    M.put(w, M.Sparsity24(dim=1))
    assert str(CutlassSupport().support(fc)) == ("no: 2:4 weight with N=8, K=16: the sparse kernels need N%8, "
                                                 "K%8, N>=16, K>=32")


@pytest.fixture
def kxk_all():
    """The cutlass backend lowers dense kxk convs too (by default they stay cuDNN)."""
    from sparsec import knobs

    with knobs.scope(cutlass_kxk="all"):
        yield


def test_partition_assigns_supported_nodes(filecheck, kxk_all):
    model, mod = _fp16_fused()
    rec = run(mod, "partition{target=h100}")
    stats = rec[0].stats
    assert stats["assigned"] == 5 and stats["too_small"] == 0  # the depthwise conv too (sparsec::dwconv2d)
    nodes = _by_name(mod)
    assigned = {n.name for n in mod.graph.nodes if M.get(n, M.BackendAssignment) is not None}
    assert all(M.get(nodes[n], M.BackendAssignment).backend == "cutlass" for n in assigned)
    assert stats == {"partitions": 4, "assigned": 5, "pytorch": 6, "too_small": 0}
    part = {n.name: (p.id if (p := M.get(n, PartitionId)) else None) for n in mod.graph.nodes}
    assert part["fused_conv2d"] is None  # the stem: Cin=5
    assert part["max_pool2d"] is None and part["conv2d_4"] is None  # pooling; the grouped conv
    # c1 -> pool -> c2 with c1 -> down -> c2: c1 and c2 in one partition would need the pool inside it
    assert part["fused_conv2d_1"] != part["fused_conv2d_2"] == part["conv2d_3"]
    assert sorted({v for v in part.values() if v is not None}) == [0, 1, 2, 3]
    filecheck(print_module(mod), r"""
        CHECK-LABEL: module @net(
        CHECK: sparsec.fused_conv2d(%_to_copy, @stem.weight, @stem.bias, padding=[1,1], act="relu")  {sparsec.fused = conv2d-act[conv2d,relu]}{{$}}
        CHECK-NEXT: sparsec.fused_conv2d({{.*}}act="relu")  {sparsec.backend = cutlass, {{.*}}, sparsec.partition = 0}
        CHECK-NEXT: = aten.max_pool2d(%fused_conv2d_1, kernel_size=[2,2], stride=[2,2]){{$}}
        CHECK-NEXT: = aten.conv2d({{.*}})  {sparsec.backend = cutlass, sparsec.partition = 1}
    """)
    x = ints(2, 5, 8, 8, gen=torch.Generator().manual_seed(9))
    assert mod(x).dtype == torch.float32  # to-dtype casts back; partitioning changed no node


def test_partition_for_cpu_takes_everything_in_one_partition():
    mod = sparsec.trace(integer_weights(Net()), (ints(2, 5, 8, 8),))
    rec = run(mod, "partition{target=cpu}")
    ops = [n for n in mod.graph.nodes if n.op == "call_function"]
    assert rec[0].stats == {"partitions": 1, "assigned": len(ops), "pytorch": 0, "too_small": 0}
    assert all(M.get(n, M.BackendAssignment).backend == "eager" for n in ops)


def test_partition_takes_the_target_from_the_context(kxk_all):
    _, mod = _fp16_fused()
    ctx = PassContext(target=sparsec.registry().get("target", "h100-sparse"))
    rec = sparsec.PassManager.parse("partition").run(mod, ctx)
    assert rec[0].stats["assigned"] == 5


def test_partition_min_size_and_idempotence():
    _, mod = _fp16_fused()
    run_twice_is_once(mod, "partition{target=h100,min-size=2}")
    parts = {}
    for n in mod.graph.nodes:
        p = M.get(n, PartitionId)
        if p is not None:
            parts.setdefault(p.id, []).append(n)
    assert parts and all(len(v) >= 2 for v in parts.values())


def test_partition_errors():
    _, mod = _fp16_fused()
    with pytest.raises(PipelineFailure, match="partition needs a target") as e:
        run(mod, "partition")
    assert "partition{target=NAME}" in str(e.value)
    with pytest.raises(RegistryError, match="unknown target 'h200'"):
        sparsec.PassManager.parse("partition{target=h200}")
    with pytest.raises(Exception, match="option 'min-size' of pass 'partition' must be at least 1"):
        sparsec.PassManager.parse("partition{target=h100,min-size=0}")


def test_verifier_rejects_an_assignment_the_backend_refuses():
    _, mod = _fp16_fused()
    pool = next(n for n in mod.graph.nodes if n.target is torch.ops.aten.max_pool2d.default)
    M.put(pool, M.BackendAssignment("cutlass"))
    with pytest.raises(VerificationError, match="node assigned to backend 'cutlass', which does not support it"):
        mod.verify()


class MatMul(nn.Module):
    def __init__(self, k: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(k, 16))

    def forward(self, x):
        return torch.mm(x, self.w * 2)


@pytest.mark.parametrize("k, verdict", [(16, "yes (cutlass: GEMM aten.mm)"),
                                        (12, "no: K=12, N=16: not multiples of 8; stays in PyTorch")])
def test_support_table_takes_aligned_mm_with_a_computed_operand(k, verdict):
    mod = sparsec.trace(MatMul(k).half(), (torch.ones(4, k, dtype=torch.float16),))
    mm = next(n for n in mod.graph.nodes if n.target is torch.ops.aten.mm.default)
    assert str(CutlassSupport().support(mm)) == verdict


def test_unknown_backend_has_no_checker():
    from sparsec.backends.support import checker_for_backend

    assert checker_for_backend("cutlass").declared is False  # registered: the backend answers itself
    assert checker_for_backend("eager").declared is False
    with pytest.raises(RegistryError, match="unknown backend 'no-such-backend'"):
        checker_for_backend("no-such-backend")
