"""The canonical printer: a golden snapshot, determinism, params and metadata."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import sparsec
from sparsec.ir import meta as M
from sparsec.ir.module import Module
from sparsec.ir.printer import print_module, print_node

from .nets import SmallNet, small_net

GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture(scope="module")
def mod() -> Module:
    return sparsec.trace(small_net(), torch.randn(1, 3, 8, 8), name="small_net")


def _node(mod: Module, name: str):
    return next(n for n in mod.graph.nodes if n.name == name)


def test_golden_small_net(mod) -> None:
    expected = (GOLDEN / "small_net.txt").read_text()
    assert print_module(mod) == expected


def test_printing_is_deterministic() -> None:
    model = SmallNet().eval()
    a = sparsec.trace(model, torch.randn(1, 3, 8, 8))
    b = sparsec.trace(model, torch.randn(1, 3, 8, 8))
    c = sparsec.trace(SmallNet().eval(), torch.randn(1, 3, 8, 8))  # other weights, other inputs
    assert print_module(a) == print_module(b) == print_module(a) == print_module(c)
    assert print_module(a.clone()) == print_module(a)


def test_params_print_types_never_values() -> None:
    net = small_net()
    with torch.no_grad():
        net.fc.bias.fill_(123.5)
    text = print_module(sparsec.trace(net, torch.randn(1, 3, 8, 8)))
    assert "    @fc.bias: f32[10]\n" in text
    assert "    @conv.weight: f32[8,3,3,3]\n" in text
    assert "    @bn.num_batches_tracked: i64[]\n" in text
    assert "123.5" not in text and "tensor(" not in text
    assert print_module(sparsec.trace(net, torch.randn(1, 3, 8, 8)), params=False).count("params {") == 0


def test_params_are_sorted_by_name(mod) -> None:
    lines = print_module(mod).splitlines()
    start = lines.index("  params {") + 1
    params = lines[start : lines.index("  }", start)]
    assert params == sorted(params) and len(params) == 10


def test_metadata_prints_sorted_by_key() -> None:
    mod = sparsec.trace(small_net(), torch.randn(1, 3, 8, 8))
    conv = _node(mod, "conv2d")
    M.put(conv, M.Pruned(before=16, after=8))  # written first, sorts last
    M.put(conv, M.FoldedFrom(("batch_norm",)))
    M.put(_node(mod, "conv2_weight"), M.Sparsity24(dim=1))
    text = print_module(mod)
    assert (
        "  %conv2d: f32[1,8,8,8] = aten.conv2d(%x, @conv.weight, padding=[1,1])"
        "  {sparsec.folded = [batch_norm], sparsec.pruned = 16->8}\n" in text
    )
    assert "    @conv2.weight: f32[8,8,3,3]  {sparsec.sparsity = 2:4(dim=1)}\n" in text
    assert print_node(conv).endswith("{sparsec.folded = [batch_norm], sparsec.pruned = 16->8}")
    M.drop(conv, M.Pruned)
    assert print_node(conv).endswith("{sparsec.folded = [batch_norm]}")


def test_non_sparsec_metadata_is_not_printed() -> None:
    mod = sparsec.trace(small_net(), torch.randn(1, 3, 8, 8))
    _node(mod, "relu").meta["custom_key"] = "hidden"
    assert "hidden" not in print_module(mod)


def test_meta_put_rejects_unregistered_values() -> None:
    mod = sparsec.trace(small_net(), torch.randn(1, 3, 8, 8))
    with pytest.raises(TypeError, match="dict is not registered sparsec metadata"):
        M.put(_node(mod, "relu"), {"key": "sparsec.x"})


def test_keyword_normalised_arguments() -> None:
    """Positional and keyword spellings of the same call print the same; defaults are left out."""

    class Conv(torch.nn.Module):
        def __init__(self, kw: bool) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(4, 3, 3, 3))
            self.kw = kw

        def forward(self, x):
            if self.kw:
                return torch.nn.functional.conv2d(x, self.w, stride=1, padding=1, dilation=1, groups=1)
            return torch.nn.functional.conv2d(x, self.w, None, 1, 1)

    a = sparsec.trace(Conv(True), torch.randn(1, 3, 8, 8), name="c")
    b = sparsec.trace(Conv(False), torch.randn(1, 3, 8, 8), name="c")
    assert print_module(a) == print_module(b)
    assert "aten.conv2d(%x, @w, padding=[1,1])" in print_module(a)


def test_symbolic_dims_and_other_dtypes() -> None:
    mod = sparsec.trace(small_net().half(), torch.randn(2, 3, 8, 8).half(), dynamic_batch=True, name="h")
    text = print_module(mod)
    assert re.match(r"module @h\(%x: f16\[s\d+,3,8,8\]\) \{\n", text)
    assert re.search(r"%linear: f16\[s\d+,10\] = aten.linear", text)
    assert "@conv.weight: f16[8,3,3,3]" in text
    # printing must not guard on the symbol (that would specialise the graph to batch 2)
    assert print_module(mod) == text
    x = mod.placeholders()[0]
    assert isinstance(x.meta["val"].shape[0], torch.SymInt)


def test_multi_output_nodes_print_a_tuple_type() -> None:
    class Split(torch.nn.Module):
        def forward(self, x):
            a, b = torch.split(x, [1, 2], dim=1)
            return a * 2, b

    text = print_module(sparsec.trace(Split(), torch.randn(1, 3, 4, 4), name="s"))
    assert "(f32[1,1,4,4], f32[1,2,4,4]) = aten.split_with_sizes(%x, split_sizes=[1,2], dim=1)" in text
    assert "= getitem(%split_with_sizes, 0)" in text
