"""Accuracy recovery: fine-tune pruned and 2:4 models, with distillation, DDP and checkpoints.

- :func:`finetune` trains a model (``nn.Module`` or ``ir.Module``) with 2:4 masks held;
- :func:`evaluate` gives top-1, top-5 and loss;
- :func:`gradual_prune` runs prune -> fine-tune -> ... (AGP) and optionally 2:4 last;
- :mod:`.data` reads Fashion-MNIST (IDX) and image folders.
"""

from sparsec.passes.finetune.config import FinetuneConfig
from sparsec.passes.finetune.errors import DatasetError, Interrupted, TrainingError
from sparsec.passes.finetune.loop import FinetuneResult, evaluate, finetune
from sparsec.passes.finetune.loss import finetune_loss, kd_loss
from sparsec.passes.finetune.masks import MaskSet, magnitude_24_mask, sparsify_24
from sparsec.passes.finetune.schedule import agp_ratios, gradual_prune

__all__ = ["FinetuneConfig", "FinetuneResult", "DatasetError", "Interrupted", "TrainingError", "MaskSet",
           "agp_ratios", "evaluate", "finetune", "finetune_loss", "gradual_prune", "kd_loss",
           "magnitude_24_mask", "sparsify_24"]
