"""The fine-tuning loss: label-smoothed cross-entropy plus distillation.

    loss = CE(student, y; label_smoothing) + kd_weight * T^2 * KL(p_T || q_T)

with ``p_T = softmax(teacher / T)`` and ``q_T = softmax(student / T)`` (Hinton
et al. 2015; the ``T^2`` keeps the KD gradients' scale independent of T).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher/T) || softmax(student/T))``, averaged over the batch."""
    t = temperature
    log_q = F.log_softmax(student.float() / t, dim=-1)
    log_p = F.log_softmax(teacher.float() / t, dim=-1)
    return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True) * (t * t)


def finetune_loss(student: torch.Tensor, target: torch.Tensor, teacher: torch.Tensor | None = None, *,
                  kd_weight: float = 0.0, temperature: float = 4.0, label_smoothing: float = 0.0) -> torch.Tensor:
    loss = F.cross_entropy(student.float(), target, label_smoothing=label_smoothing)
    if teacher is not None and kd_weight > 0:
        loss = loss + kd_weight * kd_loss(student, teacher, temperature)
    return loss
