"""Exported graphs switch BatchNorm between training and eval modes."""

from __future__ import annotations

import torch

from sparsec.passes.finetune.trainable import make_trainable

from .util import SmallCNN, traced

aten = torch.ops.aten


def test_train_mode_updates_running_stats_and_eval_uses_them():
    net, mod = traced()
    gm = make_trainable(mod.gm)
    x = torch.randn(8, 1, 12, 12) * 2 + 1
    before = gm.b1.running_mean.clone()
    gm.train()
    y_train = gm(x)
    assert not torch.equal(gm.b1.running_mean, before)  # batch statistics were folded in
    net.train()
    net.b1.running_mean.copy_(before)
    net.b1.running_var.fill_(1.0)
    assert torch.allclose(y_train, net(x), atol=1e-5)  # train-mode graph == train-mode eager model
    gm.eval()
    net.eval()
    net.load_state_dict(gm.state_dict())
    assert torch.allclose(gm(x), net(x), atol=1e-5)  # eval-mode graph uses the running statistics


def test_decomposed_eval_batch_norm_becomes_trainable():
    torch.manual_seed(0)
    net = SmallCNN().eval()
    x = torch.randn(4, 1, 12, 12)
    gm = torch.export.export(net, (x,)).run_decompositions().module()
    start = gm.b1.running_mean.clone()
    legit = aten._native_batch_norm_legit_no_training.default
    assert any(n.target is legit for n in gm.graph.nodes)
    ref = gm(x)
    make_trainable(gm)
    assert not any(n.target is legit for n in gm.graph.nodes)
    assert torch.allclose(gm(x), ref, atol=1e-6)  # the same function in eval mode
    gm.train()
    gm(x * 3)
    assert not torch.equal(gm.b1.running_mean, start)
