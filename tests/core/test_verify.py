"""``Module.verify()``: one test per invariant, each matching its message."""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import sparsec
from sparsec.backends.target import Backend, Supported, Unsupported
from sparsec.errors import VerificationError
from sparsec.ir import meta as M
from sparsec.ir.module import Module
from sparsec.ir.verify import count_24_violations, is_24_sparse
from sparsec.registry import reset_registry

from .nets import small_net


@pytest.fixture(scope="module")
def traced() -> Module:
    return sparsec.trace(small_net(), torch.randn(2, 3, 8, 8))


@pytest.fixture
def mod(traced: Module) -> Module:
    m = traced.clone()
    m.verify()  # the traced module is valid to begin with
    return m


def _node(mod: Module, name: str):
    return next(n for n in mod.graph.nodes if n.name == name)


def _fake(*shape: int) -> torch.Tensor:
    with FakeTensorMode():
        return torch.empty(*shape)


def test_lint_failure(mod) -> None:
    relu, conv = _node(mod, "relu"), _node(mod, "conv2d")
    conv.prepend(relu)  # relu now runs before its input exists
    with pytest.raises(VerificationError, match=r"the graph is malformed \(fx lint failed\)") as info:
        mod.verify()
    assert "relu" in str(info.value) and "--print-ir-after-all" in str(info.value)


def test_missing_shape_metadata_names_the_node(mod) -> None:
    del _node(mod, "add").meta["val"]
    with pytest.raises(VerificationError, match="a node has no shape metadata") as info:
        mod.verify()
    assert "node 'add' (aten.add.Tensor) at " in str(info.value)
    assert "nets.py:" in str(info.value)  # the user's source line


def test_guard_node_needs_no_metadata(mod) -> None:
    guards = [n for n in mod.graph.nodes if n.op == "call_module" and n.target == "_guards_fn"]
    assert guards and "val" not in guards[0].meta
    mod.verify()


def _make_24(w: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Keep the 2 largest of every 4 along ``dim``."""
    g = w.movedim(dim, -1)
    shape = g.shape
    g = g.reshape(-1, 4)
    idx = g.abs().topk(2, dim=-1).indices
    mask = torch.zeros_like(g, dtype=torch.bool).scatter_(-1, idx, True)
    return (g * mask).reshape(shape).movedim(-1, dim)


def test_weight_marked_24_must_be_24(mod) -> None:
    w = _node(mod, "conv2_weight")
    M.put(w, M.Sparsity24(dim=1))
    with pytest.raises(VerificationError, match="a weight marked 2:4 is not 2:4 sparse") as info:
        mod.verify()
    msg = str(info.value)
    assert "node 'conv2_weight'" in msg
    assert "expected: at most 2 non-zeros in every 4 consecutive elements along dim 1" in msg
    assert f"actual:   {8 * 2 * 9} groups with more" in msg  # dense: every group of 4 has 4 non-zeros
    mod.set_param("conv2.weight", _make_24(mod.get_param("conv2.weight")))
    mod.verify()


def test_24_along_another_dim(mod) -> None:
    w = _node(mod, "fc_weight")  # [10, 8]: dim 1 groups, dim 0 is not a multiple of 4
    mod.set_param("fc.weight", _make_24(mod.get_param("fc.weight"), dim=1))
    M.put(w, M.Sparsity24(dim=1))
    mod.verify()
    M.put(w, M.Sparsity24(dim=0))
    with pytest.raises(VerificationError, match="a weight marked 2:4 is not 2:4 sparse") as info:
        mod.verify()
    assert "actual:   dim 0 of size 10 is not a multiple of 4 (weight shape (10, 8))" in str(info.value)


def test_24_helpers() -> None:
    w = torch.tensor([[1.0, 0.0, 2.0, 0.0, 3.0, 4.0, 5.0, 0.0]])
    assert count_24_violations(w, 1) == 1 and not is_24_sparse(w, 1)
    assert is_24_sparse(torch.tensor([[0.0, 1.0, 0.0, 2.0]]), 1)
    assert not is_24_sparse(torch.zeros(3, 6), 1)  # not a multiple of 4
    with pytest.raises(ValueError, match="dim 1 of size 6 is not a multiple of 4"):
        count_24_violations(torch.zeros(3, 6), 1)


def test_24_metadata_on_a_non_weight(mod) -> None:
    M.put(_node(mod, "relu"), M.Sparsity24())
    with pytest.raises(VerificationError, match="2:4 metadata on a node that is not a weight"):
        mod.verify()


def test_conv_channel_mismatch(mod) -> None:
    _node(mod, "conv2_weight").meta["val"] = _fake(8, 5, 3, 3)
    with pytest.raises(VerificationError, match="conv input channels disagree with its weight") as info:
        mod.verify()
    msg = str(info.value)
    assert "node 'conv2d_1' (aten.conv2d.default)" in msg
    assert "expected: 5 input channels (weight (8, 5, 3, 3), groups=1)" in msg
    assert "actual:   input (2, 8, 8, 8)" in msg


def test_conv_bias_mismatch(mod) -> None:
    _node(mod, "conv2_bias").meta["val"] = _fake(7)
    with pytest.raises(VerificationError, match="conv bias length disagrees with its output channels") as info:
        mod.verify()
    assert "expected: 8" in str(info.value) and "actual:   7" in str(info.value)


def test_linear_feature_mismatch(mod) -> None:
    _node(mod, "fc_weight").meta["val"] = _fake(10, 9)
    with pytest.raises(VerificationError, match="linear input features disagree with its weight") as info:
        mod.verify()
    assert "node 'linear'" in str(info.value) and "expected: 9 features" in str(info.value)


def test_batch_norm_length_mismatch(mod) -> None:
    _node(mod, "bn_running_var").meta["val"] = _fake(6)
    with pytest.raises(VerificationError, match="batch norm running_var length disagrees with its input channels") as info:
        mod.verify()
    assert "expected: 8" in str(info.value) and "actual:   6" in str(info.value)


def test_zero_channels(mod) -> None:
    _node(mod, "relu").meta["val"] = _fake(2, 0, 8, 8)
    with pytest.raises(VerificationError, match="a layer has zero channels") as info:
        mod.verify()
    msg = str(info.value)
    assert "node 'relu'" in msg and "shape (2, 0, 8, 8)" in msg and "min_channels" in msg


def test_zero_channels_through_a_real_edit() -> None:
    """An actual pruning bug: a conv keeps none of its output channels. Propagation already rejects it."""
    mod = sparsec.trace(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.ReLU()), torch.randn(1, 3, 4, 4))
    mod.set_param("0.weight", torch.randn(0, 3, 1, 1))
    mod.set_param("0.bias", torch.randn(0))
    with pytest.raises(VerificationError, match="shape propagation failed") as info:
        mod.recompile()
    assert "node 'conv2d' (aten.conv2d.default)" in str(info.value)
    assert "weight of size [0, 3, 1, 1]" in str(info.value)


def test_zero_channels_from_a_slice() -> None:
    class Slice(torch.nn.Module):
        def forward(self, x):
            return x[:, 2:] * 2

    mod = sparsec.trace(Slice(), torch.randn(1, 4, 3, 3))
    sl = next(n for n in mod.graph.nodes if n.target == torch.ops.aten.slice.Tensor)
    sl.update_arg(2, 4)  # start=4: keeps nothing
    mod.recompile()
    with pytest.raises(VerificationError, match="a layer has zero channels") as info:
        mod.verify()
    assert f"node '{sl.name}' (aten.slice.Tensor)" in str(info.value) and "shape (1, 0, 3, 3)" in str(info.value)


class PickyBackend(Backend):
    """Takes relu only."""

    name = "picky"

    def support(self, node):
        if node.target == torch.ops.aten.relu.default:
            return Supported("fused")
        return Unsupported(f"picky runs relu only, not {node.target}")


def test_backend_assignment_must_be_supported(mod) -> None:
    reg = reset_registry(load_plugins=False)
    reg.add("backend", "picky", PickyBackend, provider="tests")
    M.put(_node(mod, "relu"), M.BackendAssignment("picky"))
    mod.verify()
    M.put(_node(mod, "conv2d_1"), M.BackendAssignment("picky"))
    with pytest.raises(VerificationError, match="node assigned to backend 'picky', which does not support it") as info:
        mod.verify()
    msg = str(info.value)
    assert "node 'conv2d_1' (aten.conv2d.default)" in msg
    assert "actual:   picky runs relu only, not aten.conv2d.default" in msg
    assert "re-run the partitioner" in msg


def test_verify_passes_on_a_clean_module(mod) -> None:
    M.put(_node(mod, "conv2d"), M.Pruned(16, 8))
    M.put(_node(mod, "conv2d"), M.FoldedFrom(("batch_norm",)))
    mod.verify()


def test_ops_that_return_nothing_need_no_metadata() -> None:
    # A dtype cast exports as aten._assert_tensor_metadata + aten.to: the assert
    # returns nothing, so it has no "val" and verify must accept it.
    class Cast(torch.nn.Module):
        def forward(self, x):
            return x.to(torch.float64) * 2

    mod = sparsec.trace(Cast(), torch.randn(2, 3))
    asserts = [n for n in mod.graph.nodes if "assert_tensor_metadata" in str(n.target)]
    assert asserts, "the export is expected to contain an _assert_tensor_metadata node"
    assert all("val" not in n.meta or n.meta["val"] is None for n in asserts)
    mod.verify()
    x = torch.randn(2, 3)
    torch.testing.assert_close(mod.gm(x), x.double() * 2)
