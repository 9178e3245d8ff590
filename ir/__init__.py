"""sparsec's IR: an ATen-level fx graph with typed metadata and cached analyses."""

from sparsec.ir.analysis import Cost, NodeCost, ShapeInfo
from sparsec.ir.meta import TensorMeta, dtype_name, parse_dtype
from sparsec.ir.module import Module
from sparsec.ir.printer import print_module
from sparsec.ir.trace import trace

__all__ = ["Cost", "Module", "NodeCost", "ShapeInfo", "TensorMeta", "dtype_name", "parse_dtype", "print_module", "trace"]
