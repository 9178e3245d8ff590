"""The KD + CE loss against a hand-computed float64 reference."""

from __future__ import annotations

import math

import torch

from sparsec.passes.finetune import finetune_loss, kd_loss


def _softmax(row, t):
    e = [math.exp(v / t) for v in row]
    s = sum(e)
    return [v / s for v in e]


def test_kd_loss_matches_hand_computation():
    torch.manual_seed(0)
    s, t = torch.randn(5, 7) * 3, torch.randn(5, 7) * 3
    T = 2.5
    ref = 0.0
    for srow, trow in zip(s.double().tolist(), t.double().tolist()):
        p, q = _softmax(trow, T), _softmax(srow, T)
        ref += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))
    ref = ref / 5 * T * T
    got = kd_loss(s, t, T)
    assert got.shape == () and got.dtype == torch.float32
    assert math.isclose(float(got), ref, rel_tol=1e-5)
    assert float(kd_loss(s, s, T)) < 1e-6  # identical logits: no KD loss


def test_total_loss_is_smoothed_ce_plus_weighted_kd():
    torch.manual_seed(1)
    s, t = torch.randn(4, 6), torch.randn(4, 6)
    y = torch.tensor([0, 5, 2, 2])
    eps, w, T = 0.1, 0.7, 3.0
    ce = 0.0
    for row, label in zip(s.double().tolist(), y.tolist()):
        logq = [math.log(v) for v in _softmax(row, 1.0)]
        ce += (1 - eps) * -logq[label] + eps * sum(-v for v in logq) / len(logq)
    ref = ce / 4 + w * float(kd_loss(s.double(), t.double(), T))
    got = finetune_loss(s, y, t, kd_weight=w, temperature=T, label_smoothing=eps)
    assert math.isclose(float(got), ref, rel_tol=1e-5)
    no_teacher = finetune_loss(s, y, None, kd_weight=w, temperature=T, label_smoothing=eps)
    assert math.isclose(float(no_teacher), ce / 4, rel_tol=1e-5)
