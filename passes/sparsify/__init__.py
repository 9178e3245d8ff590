"""2:4 semi-structured sparsity: the ``sparsify-2-4`` pass and its parts.

- :mod:`.mask`: magnitude masks in the canonical (Cout, kh, kw, Cin) grouping;
- :mod:`.layers`: eligibility and the per-layer :class:`Decision`;
- :mod:`.costmodel`: the tuning-DB reader and the measured cost model;
- :mod:`.permute`: the channel-permutation search, folded through the channel groups;
- :mod:`.apply`: the pass, :class:`Sparsify24`.
"""

from sparsec.passes.sparsify.apply import Sparsify24, shapes_to_tune
from sparsec.passes.sparsify.costmodel import GemmShape, TuningDB
from sparsec.passes.sparsify.layers import Decision, Limits, Settings, decide
from sparsec.passes.sparsify.mask import apply_mask, magnitude_mask, retained_fraction
from sparsec.passes.sparsify.permute import permute_for_24

__all__ = [
    "Decision", "GemmShape", "Limits", "Settings", "Sparsify24", "TuningDB", "apply_mask", "decide",
    "magnitude_mask", "permute_for_24", "retained_fraction", "shapes_to_tune",
]
