"""``FinetuneConfig``: every option of a fine-tuning run, validated once."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

from sparsec.errors import UsageError

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "onecycle")


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """Options of :func:`sparsec.finetune`.

    Loss: ``CE(label_smoothing) + kd_weight * T^2 * KL(softmax(teacher/T) || softmax(student/T))``
    (the KD term only when a teacher is given). LR: linear warm-up over
    ``warmup_epochs`` then cosine decay to 0 (``schedule="cosine"``), or
    torch's ``OneCycleLR`` with ``pct_start = warmup / total`` (``"onecycle"``).
    ``amp`` runs the forward pass under bf16 autocast on CUDA (ignored on CPU).

    Example: FinetuneConfig(epochs=3, lr=0.01, optimizer="sgd", kd_weight=1.0, temperature=4.0)
    """

    epochs: float = 1.0
    lr: float = 0.01
    optimizer: Literal["sgd", "adamw"] = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-5
    schedule: Literal["cosine", "onecycle"] = "cosine"
    warmup_epochs: float = 0.0
    grad_clip: float | None = 5.0
    label_smoothing: float = 0.0
    kd_weight: float = 0.0
    temperature: float = 4.0
    amp: bool = True
    channels_last: bool = False
    device: str | None = None  # None: cuda when available (the local rank's GPU under torchrun), else cpu
    seed: int = 0
    checkpoint_dir: Path | None = None
    checkpoint_every: int = 0  # steps between checkpoints; 0 = at the end of each epoch only
    resume: bool = False  # continue from checkpoint_dir/last.pt
    metrics_path: Path | None = None  # train/val metrics as JSON (rank 0 only)
    tensorboard_dir: Path | None = None  # written when tensorboard is installed
    progress: bool = True
    log_every: int = 20  # steps between metric records
    max_steps: int | None = None  # stop after this many optimiser steps (tests, smoke runs)
    divergence_factor: float = 50.0  # loss above factor * (first logged loss) counts as divergent

    def __post_init__(self) -> None:
        checks = [
            (self.epochs > 0, "epochs", "> 0"),
            (self.lr > 0, "lr", "> 0"),
            (self.optimizer in OPTIMIZERS, "optimizer", " or ".join(OPTIMIZERS)),
            (self.schedule in SCHEDULES, "schedule", " or ".join(SCHEDULES)),
            (0 <= self.warmup_epochs < self.epochs, "warmup_epochs", "0 <= warmup_epochs < epochs"),
            (self.grad_clip is None or self.grad_clip > 0, "grad_clip", "> 0 or None"),
            (0 <= self.label_smoothing < 1, "label_smoothing", "0 <= label_smoothing < 1"),
            (self.kd_weight >= 0, "kd_weight", ">= 0"),
            (self.temperature > 0, "temperature", "> 0"),
            (self.checkpoint_every >= 0, "checkpoint_every", ">= 0"),
            (self.log_every >= 1, "log_every", ">= 1"),
            (self.max_steps is None or self.max_steps >= 1, "max_steps", ">= 1 or None"),
            (self.divergence_factor > 1, "divergence_factor", "> 1"),
        ]
        for ok, name, expected in checks:
            if not ok:
                raise UsageError(f"fine-tuning option '{name}' is out of range", expected=expected,
                                 actual=repr(getattr(self, name)))
        if self.resume and self.checkpoint_dir is None:
            raise UsageError("resume needs a checkpoint directory", fix="pass checkpoint_dir= (--checkpoint-dir)")

    def replace(self, **changes) -> "FinetuneConfig":
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}


__all__ = ["FinetuneConfig"]
