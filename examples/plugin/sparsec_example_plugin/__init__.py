"""An example sparsec plugin: the ``count-ops`` pass.

sparsec finds this package through its ``sparsec.plugins`` entry point
(see ``pyproject.toml``) and calls :func:`register` with a registry view
that records this distribution as the provider of everything it adds.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from sparsec.errors import PipelineError
from sparsec.passes import Pass, PassResult

__all__ = ["CountOps", "op_name", "register"]


def register(registry) -> None:
    """The entry point: add this plugin's passes (lazily, by import path)."""
    registry.add("pass", "count-ops", "sparsec_example_plugin:CountOps")


def op_name(node) -> str:
    """``aten.relu_.default`` for an ATen op; ``module.name`` for other callables."""
    target = node.target
    if hasattr(target, "_schema"):  # an OpOverload: str() gives ns.op.overload
        return str(target)
    return f"{getattr(target, '__module__', None) or 'builtins'}.{getattr(target, '__name__', repr(target))}"


def _packets(name: str) -> set[str]:
    """The names that ``op=`` may use for an op: itself, its packet, and the
    packet of its functional form (``aten.relu_.default`` -> ``aten.relu``)."""
    out = {name}
    ns, _, rest = name.partition(".")
    packet, _, _overload = rest.partition(".")
    if packet:
        out.add(f"{ns}.{packet}")
        if packet.endswith("_") and not packet.endswith("__"):
            out.add(f"{ns}.{packet[:-1]}")
    return out


@dataclass(frozen=True)
class CountOps(Pass):
    """Count the operator calls in the graph; report them as pass statistics.

    Without options, every op kind gets a counter (``aten.conv2d.default: 20``)
    and ``total`` counts all calls. With ``op``, only that op is counted;
    ``op`` may name an overload (``aten.relu_.default``) or a packet
    (``aten.relu``), and a packet also counts its in-place form
    (``aten.relu`` counts ``aten.relu_.default``). The graph is never changed.

    Example:
        sparsec opt model.pt2 --pipeline 'count-ops{op=aten.relu}' --pass-statistics
    """

    name = "count-ops"
    summary = "count operator calls (all, or one op with op=aten.relu); changes nothing"

    op: str | None = None

    def validate(self) -> None:
        if self.op is not None and "." not in self.op.strip("."):
            raise PipelineError(
                f"option 'op' of pass '{self.name}' must be a qualified op name",
                expected="namespace.op or namespace.op.overload, like aten.relu or aten.conv2d.default",
                actual=repr(self.op),
            )

    def run(self, mod, ctx) -> PassResult:
        names = [op_name(n) for n in mod.graph.nodes if n.op == "call_function"]
        if self.op is None:
            stats = dict(Counter(names))
        else:
            stats = {self.op: sum(1 for name in names if self.op in _packets(name))}
        stats["total"] = len(names)
        return PassResult(modified=False, stats=stats)
