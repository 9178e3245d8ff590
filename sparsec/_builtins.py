"""The built-in registry entries, as lazy ``module:attr`` strings.

Importing this module imports nothing heavy: each entry is loaded on lookup.
"""

from __future__ import annotations

PASSES = {
    "canonicalize": "sparsec.passes.cleanup:Canonicalize",
    "dce": "sparsec.passes.cleanup:DeadCodeElimination",
    "fold-bn": "sparsec.passes.fold_bn:FoldBatchNorm",
    "to-dtype": "sparsec.passes.convert:ToDtype",
    "to-channels-last": "sparsec.passes.convert:ToChannelsLast",
    "prune-channels": "sparsec.passes.prune.apply:PruneChannels",
}

# Named pipelines: a name standing for a pipeline text.
PIPELINES = {
    "default": "canonicalize,fold-bn,dce",
    "cleanup": "canonicalize,dce",
}

TARGETS = {
    "cpu": "sparsec.backends.targets:CPU",
    "a100": "sparsec.backends.targets:A100",
    "a100-sparse": "sparsec.backends.targets:A100_SPARSE",
    "h100": "sparsec.backends.targets:H100",
    "h100-sparse": "sparsec.backends.targets:H100_SPARSE",
}

BACKENDS = {
    "eager": "sparsec.backends.eager:EagerBackend",
}


def register(reg) -> None:
    for kind, table in (("pass", PASSES), ("pipeline", PIPELINES), ("target", TARGETS), ("backend", BACKENDS)):
        for name, factory in table.items():
            reg.add(kind, name, factory, provider="sparsec")
