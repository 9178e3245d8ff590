"""2:4 masks survive fine-tuning; pruned shapes stay pruned."""

from __future__ import annotations

import torch

import sparsec
from sparsec.ir import meta as M
from sparsec.ir.verify import is_24_sparse
from sparsec.passes.finetune import FinetuneConfig, MaskSet, finetune, magnitude_24_mask

from .util import Batches, SmallCNN, mark_24, synthetic, traced

# AdamW with a large LR and weight decay moves every weight that is free to move.
AGGRESSIVE = FinetuneConfig(epochs=2, lr=0.05, optimizer="adamw", weight_decay=0.1, progress=False, log_every=1,
                            device="cpu")


def test_magnitude_mask_keeps_two_largest_of_four():
    w = torch.randn(6, 8, 3, 3)
    m = magnitude_24_mask(w, 1)
    assert m.shape == w.shape and m.dtype == torch.bool
    groups = w.movedim(1, -1).reshape(-1, 4).abs()
    kept = m.movedim(1, -1).reshape(-1, 4)
    assert bool((kept.sum(-1) == 2).all())
    # every kept |w| is >= every dropped |w| of its group
    assert bool((groups.masked_fill(~kept, float("inf")).min(-1).values >=
                 groups.masked_fill(kept, -1.0).max(-1).values).all())


def test_ir_masks_hold_through_training_and_shapes_stay():
    net, mod = traced()
    sparsec.PassManager.parse("prune-channels{ratio=0.5,importance=l2,round-to=4}").run(mod)
    masks = mark_24(mod)
    shapes = {k: tuple(v.shape) for k, v in mod.gm.state_dict().items()}
    before = {k: mod.get_param(k).detach().clone() for k in masks}
    x, y = synthetic(128)
    res = finetune(mod, Batches(x, y, 16), None, config=AGGRESSIVE)
    assert res.steps == 16
    for k, m in masks.items():
        w = mod.get_param(k).detach()
        assert int((w[~m] != 0).sum()) == 0, f"{k}: a masked weight became non-zero"
        assert not torch.equal(w, before[k]), f"{k} did not train"
        assert is_24_sparse(w, 1)
    assert {k: tuple(v.shape) for k, v in mod.gm.state_dict().items()} == shapes
    mod.verify()  # the verifier re-checks every weight marked 2:4


def test_without_masks_the_same_training_revives_zeros():
    """The control: the masked entries move when nothing holds them, so the test above is not vacuous."""
    net, mod = traced()
    masks = mark_24(mod)
    for node in mod.nodes("get_attr"):
        M.drop(node, M.Sparsity24)
    x, y = synthetic(128)
    finetune(mod, Batches(x, y, 16), None, config=AGGRESSIVE)
    assert sum(int((mod.get_param(k).detach()[~m] != 0).sum()) for k, m in masks.items()) > 0


def test_nn_module_masks_by_name():
    torch.manual_seed(1)
    net = SmallCNN()
    with torch.no_grad():
        net.c2.weight.mul_(magnitude_24_mask(net.c2.weight, 1))
    zeros = net.c2.weight.detach() == 0
    x, y = synthetic(64)
    finetune(net, Batches(x, y, 16), None, config=AGGRESSIVE, masks={"c2.weight": 1})
    assert int((net.c2.weight.detach()[zeros] != 0).sum()) == 0
    assert is_24_sparse(net.c2.weight, 1)


def test_maskset_violations_counts_revived_weights():
    net, mod = traced()
    mark_24(mod)
    ms = MaskSet.from_module(mod.gm, mod)
    assert len(ms) == 2 and ms.violations() == 0
    with torch.no_grad():
        for name in ("c2.weight", "fc.weight"):
            mod.get_param(name).add_(1.0)  # revive every masked weight
    assert ms.violations() == sum(int((~m).sum()) for _, m in ms.masks.values())
    ms.apply()
    assert ms.violations() == 0


def test_teacher_sharing_tensors_with_the_student_stays_frozen():
    """A teacher whose parameters are the student's own tensors (say, a module rebuilt around the
    traced graph's weights) must be distilled from as it was, not as the student trains."""
    net, mod = traced()
    assert mod.gm.c1.weight.data_ptr() != net.c1.weight.data_ptr()  # sparsec.trace copies the weights
    for name, p in mod.gm.named_parameters():  # now make the teacher share them
        owner, _, leaf = name.rpartition(".")
        setattr(net.get_submodule(owner), leaf, p)
    assert mod.gm.c1.weight.data_ptr() == net.c1.weight.data_ptr()
    w0 = net.c1.weight.detach().clone()
    seen = []
    net.register_forward_pre_hook(lambda m, args: seen.append(m.c1.weight.detach().clone()))
    x, y = synthetic(64)
    finetune(mod, Batches(x, y, 16), None, config=AGGRESSIVE.replace(kd_weight=1.0, epochs=1), teacher=net)
    assert not torch.equal(mod.get_param("c1.weight").cpu(), w0)  # the student trained
    assert len(seen) >= 4 and all(torch.equal(w, w0) for w in seen)  # every teacher call saw the original
