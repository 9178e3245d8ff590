"""Gradual pruning: prune -> fine-tune -> prune ... to the final ratio (AGP), then 2:4.

AGP (Zhu & Gupta 2017) raises sparsity along a cubic:
``r_k = r_f + (r_0 - r_f) * (1 - k/n)^3`` for ``k = 1..n``. Each step prunes the
already-pruned model, so ``prune-channels`` gets the *relative* ratio
``1 - (1 - r_k) / (1 - r_{k-1})`` of the channels that are left.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from sparsec.errors import UsageError
from sparsec.passes.finetune.config import FinetuneConfig
from sparsec.passes.finetune.loop import FinetuneResult, finetune
from sparsec.passes.finetune.masks import sparsify_24

log = logging.getLogger("sparsec.finetune")


def agp_ratios(final: float, steps: int, initial: float = 0.0) -> list[float]:
    """The cumulative channel ratio after each of ``steps`` AGP steps (the last is ``final``)."""
    if not 0 <= initial <= final < 1 or steps < 1:
        raise UsageError("bad gradual-pruning schedule", expected="0 <= initial <= final < 1 and steps >= 1",
                         actual=f"initial={initial}, final={final}, steps={steps}")
    return [final + (initial - final) * (1 - k / steps) ** 3 for k in range(1, steps + 1)]


def relative_ratios(cumulative: list[float]) -> list[float]:
    out, kept = [], 1.0
    for r in cumulative:
        out.append(1 - (1 - r) / kept)
        kept = 1 - r
    return out


@dataclasses.dataclass
class GradualStep:
    kind: str  # "prune" | "2:4"
    ratio: float | None  # cumulative channel ratio after this step
    pipeline: str | None
    result: FinetuneResult


def gradual_prune(mod, train_data: Any, val_data: Any = None, *, final_ratio: float, steps: int = 3,
                  config: FinetuneConfig | None = None, teacher: Any = None, importance: str = "l2",
                  round_to: int = 8, then_24: bool = False, batch_size: int = 128) -> list[GradualStep]:
    """Prune ``mod`` (an ``ir.Module``) in ``steps`` AGP steps, fine-tuning ``config.epochs`` after each;
    then, with ``then_24``, make it 2:4 (the ``sparsify-2-4`` pass if registered, else magnitude masks)
    and fine-tune once more with the masks held. Returns one record per step.

    Example:
        >>> gradual_prune(mod, train, val, final_ratio=0.5, steps=3, teacher=dense, then_24=True)
    """
    from sparsec.passes.manager import PassManager

    cfg = config or FinetuneConfig()
    out = []
    cumulative = agp_ratios(final_ratio, steps)
    for k, (cum, rel) in enumerate(zip(cumulative, relative_ratios(cumulative))):
        pipeline = f"prune-channels{{ratio={rel:.6f},importance={importance},round-to={round_to}}}"
        PassManager.parse(pipeline).run(mod)
        res = finetune(mod, train_data, val_data, teacher=teacher, config=cfg.replace(seed=cfg.seed + k),
                       batch_size=batch_size)
        log.info("gradual step %d/%d: ratio %.3f -> val %s", k + 1, steps, cum, res.val)
        out.append(GradualStep("prune", cum, pipeline, res))
    if then_24:
        how, n = sparsify_24(mod)
        mod.verify()
        res = finetune(mod, train_data, val_data, teacher=teacher, config=cfg.replace(seed=cfg.seed + steps),
                       batch_size=batch_size)
        out.append(GradualStep("2:4", None, how + f" ({n} weights)", res))
    return out
