"""The ``eager`` backend: the transformed graph, run by PyTorch itself.

It is the reference every other backend is checked against. ``lower``
returns the module unchanged; the artifact stores its re-exported program.
"""

from __future__ import annotations

import operator

from torch import fx

from sparsec.backends.target import Backend, Supported, Target, Unsupported
from sparsec.ir import ops

_STRUCTURAL = {"placeholder", "get_attr", "output"}


class EagerBackend(Backend):
    """Runs every ATen op with PyTorch; the reference backend of ``cpu``.

    Example:
        >>> EagerBackend().support(node)
        Supported(note='')
    """

    name = "eager"
    description = "PyTorch eager execution of the transformed ATen graph (the reference)"

    def support(self, node: fx.Node) -> Supported | Unsupported:
        if node.op in _STRUCTURAL:
            return Supported()
        if node.op == "call_module" and node.target == "_guards_fn":
            return Supported("export's input guard")
        if node.op == "call_function":
            if ops.is_aten(node):
                return Supported()
            if node.target is operator.getitem:
                return Supported("tuple element")
            if getattr(node.target, "__module__", None) in ("_operator", "operator"):
                return Supported("symbolic size arithmetic")
            return Unsupported(f"'{ops.op_name(node.target)}' is not an ATen op; export the model to ATen first")
        if node.op == "call_module":
            return Unsupported(f"submodule call '{node.target}': the graph must be flat ATen ops")
        return Unsupported(f"'{node.op}' nodes are not ATen ops")

    def pipeline(self, target: Target) -> str:
        from sparsec.registry import registry

        return registry().get("pipeline", "default")

    def lower(self, mod, target: Target):
        return mod
