"""A custom pass, end to end: define it, register it, run it, look at the IR.

    python examples/custom_pass.py

``drop-mul-one`` removes multiplications by the constant one (``x * 1 -> x``),
the pass from the README's "Writing a pass" section. This script runs it in a
pass manager with two stock instruments, the ones behind the CLI's
``--pass-statistics`` and ``--print-ir-before``/``--print-ir-after-change``
flags, so it prints the IR before the pass and after it, and checks the
result against the original model on fresh random inputs.

To make a pass available to the ``sparsec`` command itself, ship it in a
package with a ``sparsec.plugins`` entry point: see ``examples/plugin``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

import sparsec
from sparsec.passes import Pass, PassContext, PassManager, PassResult
from sparsec.passes.instruments import PassStatistics, PrintIR

MUL = torch.ops.aten.mul.Tensor


@dataclass(frozen=True)
class DropMulOne(Pass):
    """Remove multiplications by one: ``x * 1 -> x``.

    Only where the product has the input's shape and dtype: ``x * 1`` can
    broadcast, or promote an integer tensor to float, and then it is not a no-op.

    Example:
        sparsec opt model.pt2 --pipeline drop-mul-one,dce
    """

    name = "drop-mul-one"
    summary = "remove x * 1 where that changes neither shape nor dtype"

    def run(self, mod, ctx) -> PassResult:
        removed = 0
        for node in mod.nodes("call_function", MUL):
            x, y = node.args
            if y == 1 and isinstance(x, torch.fx.Node) and _same_type(x, node):
                node.replace_all_uses_with(x)  # x * 1 -> x
                mod.graph.erase_node(node)
                removed += 1
        return PassResult(modified=removed > 0, stats={"removed": removed})


def _same_type(a: torch.fx.Node, b: torch.fx.Node) -> bool:
    va, vb = a.meta["val"], b.meta["val"]
    return va.shape == vb.shape and va.dtype == vb.dtype


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(16, 32)
        self.fc2 = torch.nn.Linear(32, 4)

    def forward(self, x):
        h = torch.relu(self.fc1(x) * 1.0)  # a no-op: removed
        return self.fc2(h) * 2.0  # a real scale: kept


def main() -> None:
    sparsec.register_pass(DropMulOne)
    torch.manual_seed(0)
    model = Net().eval()
    mod = sparsec.trace(model, (torch.randn(8, 16),))

    stats = PassStatistics(sys.stderr)
    show_ir = PrintIR(sys.stdout, before=frozenset({"drop-mul-one"}), after=frozenset({"*"}), only_change=True)
    ctx = PassContext(instruments=[show_ir, stats])
    pm = PassManager.parse("drop-mul-one,dce")
    pm.run(mod, ctx)

    assert dict(stats.stats)["drop-mul-one"] == {"removed": 1}
    assert len(mod.nodes("call_function", MUL)) == 1
    x = torch.randn(8, 16)  # fresh inputs, not the example ones
    torch.testing.assert_close(mod(x), model(x), rtol=0, atol=0)
    print(f"ok: '{pm}' removed one multiplication; outputs match the original model exactly")


if __name__ == "__main__":
    main()
