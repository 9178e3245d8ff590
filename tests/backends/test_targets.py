"""The built-in targets and the eager backend."""

from __future__ import annotations

import json

import pytest
import torch
from torch import fx, nn

from sparsec.backends.eager import EagerBackend
from sparsec.backends.target import SparseLimits, Supported, Target, Unsupported
from sparsec.errors import TargetError
from sparsec.registry import registry

GPU_TARGETS = ["a100", "a100-sparse", "h100", "h100-sparse"]


def test_builtin_targets():
    reg = registry()
    assert set(reg.names("target")) >= {"cpu", *GPU_TARGETS}
    cpu = reg.get("target", "cpu")
    assert isinstance(cpu, Target)
    assert (cpu.backend, cpu.arch, cpu.dtypes, cpu.is_sparse) == ("eager", None, ("fp32", "fp16", "bf16"), False)
    for name, arch in [("a100", "sm_80"), ("a100-sparse", "sm_80"), ("h100", "sm_90a"), ("h100-sparse", "sm_90a")]:
        t = reg.get("target", name)
        assert t.name == name and t.arch == arch and t.backend == "cutlass"
        assert t.dtypes == ("fp16", "bf16")
        assert t.is_sparse == name.endswith("-sparse")
        assert t.round_to == (32 if t.is_sparse else 16)


@pytest.mark.parametrize("name", ["a100-sparse", "h100-sparse"])
def test_sparse_limits_are_the_kernels_alignment(name):
    """The limits are sparsec's kernels' (they pad): 16-byte alignment for 16-bit types, one sparse MMA step."""
    from sparsec.backends.cutlass.packing import pad_shape

    t = registry().get("target", name)
    assert set(t.sparse) == {"fp16", "bf16"}
    for dtype in ("fp16", "bf16"):
        lim = t.sparse[dtype]
        assert isinstance(lim, SparseLimits)
        assert (lim.n_multiple, lim.k_multiple, lim.min_n, lim.min_k) == (8, 8, 16, 32)
        assert t.round_to % lim.n_multiple == 0
        mp, kp = pad_shape(t.arch, 40, 72)  # an aligned but not tile-sized layer is padded, not refused
        assert mp >= 40 and kp >= 72


def test_summary_is_json():
    for name in ["cpu", *GPU_TARGETS]:
        s = registry().get("target", name).summary()
        assert json.loads(json.dumps(s)) == s
        assert s["name"] == name


def _traced():
    from sparsec.ir.trace import trace

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1)).eval()
    return trace(model, (torch.randn(1, 3, 8, 8),))


def test_eager_supports_every_node_of_an_export():
    mod = _traced()
    be = EagerBackend()
    verdicts = {n.name: be.support(n) for n in mod.graph.nodes}
    assert all(isinstance(v, Supported) for v in verdicts.values()), verdicts
    guards = [n for n in mod.graph.nodes if n.op == "call_module" and n.target == "_guards_fn"]
    assert guards and "guard" in be.support(guards[0]).note


def test_eager_getitem_supported():
    g = fx.Graph()
    x = g.placeholder("x")
    mx = g.call_function(torch.ops.aten.max.dim, (x, 1))
    item = g.call_function(__import__("operator").getitem, (mx, 0))
    g.output(item)
    assert isinstance(EagerBackend().support(item), Supported)


def test_eager_rejects_non_aten():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)

        def forward(self, x):
            return torch.sin(self.lin(x))

    gm = fx.symbolic_trace(M())
    be = EagerBackend()
    sin = next(n for n in gm.graph.nodes if n.target is torch.sin)
    v = be.support(sin)
    assert isinstance(v, Unsupported) and not v
    assert "'torch.sin' is not an ATen op" in v.reason
    lin = next(n for n in gm.graph.nodes if n.op == "call_module")
    assert "submodule call 'lin'" in be.support(lin).reason


def test_eager_backend_hooks():
    be = registry().get("backend", "eager")()
    cpu = registry().get("target", "cpu")
    assert be.name == "eager"
    assert be.supports(cpu)
    assert not be.supports(registry().get("target", "a100"))
    assert be.pipeline(cpu) == registry().get("pipeline", "default")
    mod = _traced()
    assert be.lower(mod, cpu) is mod


@pytest.mark.parametrize("name", GPU_TARGETS)
def test_gpu_targets_run_on_the_cutlass_backend(name):
    from sparsec.api import resolve_backend, working_targets

    t = registry().get("target", name)
    assert resolve_backend(t).name == "cutlass"
    assert name in working_targets()