"""``partition``: split the graph between a target's backend and PyTorch.

fx's ``CapabilityBasedPartitioner`` groups the nodes the backend supports
(``support(node)``, through :class:`~sparsec.backends.support.BackendOperatorSupport`)
into maximal partitions that create no cycles. The graph stays flat: each
node of a partition is annotated ``sparsec.backend = NAME`` and
``sparsec.partition = ID`` (IDs number partitions in graph order); every
other node stays in PyTorch, and ``sparsec inspect --target`` says why.
Lowering groups the annotated nodes (``fuse_by_partitions``) when it
builds kernels.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import ClassVar

from torch.fx.passes.infra.partitioner import CapabilityBasedPartitioner

from sparsec.errors import PassFailedError, PipelineError
from sparsec.ir import meta as M
from sparsec.passes.base import Pass, PassResult

log = logging.getLogger("sparsec.passes.partition")


@M.metadata
class PartitionId:
    """The backend partition this node belongs to (see ``sparsec.backend`` for the backend)."""

    key: ClassVar[str] = "sparsec.partition"
    id: int

    def __str__(self) -> str:
        return str(self.id)


@dataclasses.dataclass(frozen=True)
class BackendPartition(Pass):
    """Assign the nodes a target's backend supports to it, in cycle-free partitions; the rest stays PyTorch.

    ``target`` names the target (default: the pipeline's target, e.g.
    ``sparsec compile --target h100``). The backend answers
    ``support(node)``; a backend that is declared but not yet built answers
    from its declared support table (``backends/cutlass_support.py``).
    Partitions with fewer than ``min-size`` compute nodes stay in PyTorch
    too (a one-node partition still pays its layout conversions).

    Statistics: ``partitions``, ``assigned`` (nodes given to the backend),
    ``pytorch`` (compute nodes left in PyTorch), ``too_small``.

    Example: sparsec opt m.pt2 --pipeline 'fusion,to-dtype{dtype=fp16},partition{target=h100}'
    """

    name: ClassVar[str] = "partition"
    summary: ClassVar[str] = "assign supported nodes to the target's backend in cycle-free partitions"
    changes_numerics: ClassVar[bool] = False
    idempotent: ClassVar[bool] = True

    target: str | None = None
    min_size: int = 1

    def validate(self) -> None:
        if self.min_size < 1:
            raise PipelineError(f"option 'min-size' of pass '{self.name}' must be at least 1",
                                actual=str(self.min_size))
        if self.target is not None:
            from sparsec.registry import registry

            registry().get("target", self.target)  # RegistryError listing the targets

    def run(self, mod, ctx) -> PassResult:
        from sparsec.backends.support import BackendOperatorSupport, checker_for_target

        target = self.target if self.target is not None else getattr(ctx, "target", None)
        if target is None:
            raise PassFailedError(
                "partition needs a target", where="pass 'partition'",
                fix="write partition{target=NAME}, or run it from `sparsec compile --target NAME`",
            )
        checker = checker_for_target(target)
        support = BackendOperatorSupport(checker)
        partitioner = CapabilityBasedPartitioner(mod.gm, support, allows_single_node_partition=True)
        parts = partitioner.propose_partitions()
        order = {n: i for i, n in enumerate(mod.graph.nodes)}
        parts = sorted((p for p in parts if p.nodes), key=lambda p: min(order[n] for n in p.nodes))
        before = {n: (M.get(n, M.BackendAssignment), M.get(n, PartitionId)) for n in mod.graph.nodes}
        for n in mod.graph.nodes:
            M.drop(n, M.BackendAssignment)
            M.drop(n, PartitionId)
        kept = too_small = assigned = 0
        for p in parts:
            compute = [n for n in p.nodes if n.op == "call_function"]
            if len(compute) < self.min_size:
                too_small += 1
                continue
            for n in compute:
                M.put(n, M.BackendAssignment(checker.name))
                M.put(n, PartitionId(kept))
            assigned += len(compute)
            kept += 1
        left = 0
        for n, verdict in support.verdicts.items():
            if not verdict:
                left += 1
                log.debug("partition: '%s' stays in PyTorch: %s", n.name, verdict.reason)
        left += sum(1 for p in parts for n in p.nodes if M.get(n, PartitionId) is None and n.op == "call_function")
        if checker.declared:
            log.info("partition: backend '%s' is not built yet; assigned from its declared support table", checker.name)
        changed = any(before[n] != (M.get(n, M.BackendAssignment), M.get(n, PartitionId)) for n in mod.graph.nodes)
        return PassResult(modified=changed, stats={"partitions": kept, "assigned": assigned, "pytorch": left,
                                                   "too_small": too_small})
