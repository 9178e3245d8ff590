"""The loop: learning on real data, resume equivalence, NaN stop, Ctrl-C, shape and data errors."""

from __future__ import annotations

import json

import pytest
import torch

from sparsec.passes.finetune import DatasetError, FinetuneConfig, Interrupted, TrainingError, evaluate, finetune
from sparsec.passes.finetune import data as D
from sparsec.passes.finetune.schedule import agp_ratios, gradual_prune, relative_ratios

from .util import Batches, SmallCNN, synthetic, traced

CPU = dict(device="cpu", progress=False, log_every=1)


def _fashion():
    try:
        D.find_fashion_mnist()
    except DatasetError:
        pytest.skip("Fashion-MNIST is not installed (python -m sparsec.passes.finetune.data fashion-mnist)")
    xi, yi = D.load_fashion_mnist("train")
    xt, yt = D.load_fashion_mnist("test")
    return xi, yi, xt, yt


def test_few_steps_learn_on_real_fashion_mnist_subset():
    xi, yi, xt, yt = _fashion()
    assert xi.shape == (60000, 28, 28) and xt.shape == (10000, 28, 28) and xi.dtype == torch.uint8
    assert sorted(torch.bincount(yt).tolist()) == [1000] * 10  # the standard balanced test split
    train = D.TensorBatches(xi[:512], yi[:512], 32, size=14, channels=1, shuffle=True, drop_last=True)
    test = D.TensorBatches(xt[:256], yt[:256], 128, size=14, channels=1)
    torch.manual_seed(0)
    net = SmallCNN(1, 10)
    before = evaluate(net, test, device="cpu")
    res = finetune(net, train, test, config=FinetuneConfig(epochs=3, lr=0.01, optimizer="adamw", **CPU))
    after = res.val
    assert after["n"] == 256
    assert after["loss"] < before["loss"] - 0.3  # held-out loss falls
    assert after["top1"] > 0.35 > before["top1"]  # held-out accuracy far above chance (0.1) after 48 steps
    assert [h["loss"] for h in res.history if "loss" in h][-1] < res.history[0]["loss"]


def test_idx_reader_matches_torchvision_and_handmade_file(tmp_path):
    raw = bytes([0, 0, 0x08, 3]) + (2).to_bytes(4, "big") + (3).to_bytes(4, "big") + (2).to_bytes(4, "big") \
        + bytes(range(12))
    (tmp_path / "a-idx3-ubyte").write_bytes(raw)
    a = D.read_idx(tmp_path / "a-idx3-ubyte")
    assert a.shape == (2, 3, 2) and a.dtype.name == "uint8" and a.ravel().tolist() == list(range(12))
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(DatasetError, match="not an IDX file"):
        D.read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(raw[:-1])
    with pytest.raises(DatasetError, match="truncated"):
        D.read_idx(tmp_path / "short")
    try:
        d = D.find_fashion_mnist()
    except DatasetError:
        return
    from torchvision.datasets.mnist import read_image_file

    import gzip
    import shutil

    with gzip.open(d / "t10k-images-idx3-ubyte.gz") as src, open(tmp_path / "t10k", "wb") as dst:
        shutil.copyfileobj(src, dst)
    assert torch.equal(torch.from_numpy(D.read_idx(d / "t10k-images-idx3-ubyte.gz").copy()),
                       read_image_file(str(tmp_path / "t10k")))


def test_missing_dataset_says_how_to_get_it(tmp_path, monkeypatch):
    from sparsec import knobs

    monkeypatch.setattr(D, "SYSTEM_DIRS", ())
    with knobs.scope(cache_dir=tmp_path), pytest.raises(DatasetError) as err:
        D.load_fashion_mnist("train", tmp_path / "nowhere")
    msg = str(err.value)
    assert "Fashion-MNIST dataset was not found" in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "python -m sparsec.passes.finetune.data" in msg


def _run(tmp_path, name, steps, **kw):
    torch.manual_seed(0)
    net = SmallCNN(1, 10)
    x, y = synthetic(96, seed=3)
    cfg = FinetuneConfig(epochs=3, lr=0.05, checkpoint_dir=tmp_path / name, **CPU, **kw)
    data = D.TensorBatches((x[:, 0] * 40 + 100).clamp(0, 255).to(torch.uint8), y, 24, size=12, channels=1,
                           shuffle=True, augment=True, drop_last=True)
    res = finetune(net, data, None, config=cfg.replace(max_steps=steps) if steps else cfg)
    return net, res, cfg, data


def test_resume_equals_an_uninterrupted_run(tmp_path):
    full, res_full, _, _ = _run(tmp_path, "full", None)
    assert res_full.steps == 12
    part, res_part, cfg, data = _run(tmp_path, "part", 6)  # stops inside epoch 1 (4 steps per epoch)
    assert res_part.steps == 6 and res_part.stopped == "max_steps"
    torch.manual_seed(123)  # a different RNG state and fresh weights: resume must restore both
    fresh = SmallCNN(1, 10)
    res = finetune(fresh, data, None, config=cfg.replace(resume=True))
    assert res.steps == 12
    for (k, a), b in zip(full.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k
    assert [h["loss"] for h in res.history] == [h["loss"] for h in res_full.history]


def test_nan_loss_stops_naming_the_step_and_checkpoint(tmp_path):
    x, y = synthetic(96)
    cfg = FinetuneConfig(epochs=1, lr=0.01, checkpoint_dir=tmp_path, checkpoint_every=1, **CPU)
    with pytest.raises(TrainingError) as err:
        finetune(SmallCNN(), Batches(x, y, 16, nan_at=3), None, config=cfg)
    msg = str(err.value)
    assert "NaN/inf at step 4" in msg and str(tmp_path / "last.pt") in msg
    assert torch.load(tmp_path / "last.pt", weights_only=False)["step"] == 3  # the last good step


def test_divergent_loss_stops(tmp_path):
    x, y = synthetic(160)
    cfg = FinetuneConfig(epochs=1, lr=1e4, grad_clip=None, divergence_factor=3.0, checkpoint_dir=tmp_path, **CPU)
    with pytest.raises(TrainingError, match="became (divergent|NaN/inf) at step"):
        finetune(SmallCNN(), Batches(x, y, 16), None, config=cfg)


def test_ctrl_c_saves_a_checkpoint_and_resumes(tmp_path):
    x, y = synthetic(96)
    cfg = FinetuneConfig(epochs=1, lr=0.01, checkpoint_dir=tmp_path, metrics_path=tmp_path / "m.json", **CPU)
    with pytest.raises(Interrupted) as err:
        finetune(SmallCNN(), Batches(x, y, 16, interrupt_at=4), None, config=cfg)
    assert err.value.exit_code == 130 and "interrupted at step 4" in str(err.value)
    assert torch.load(tmp_path / "interrupted.pt", weights_only=False)["step"] == 4
    assert json.loads((tmp_path / "m.json").read_text())["interrupted_at"] == 4
    res = finetune(SmallCNN(), Batches(x, y, 16), None, config=cfg.replace(resume=True))
    assert res.steps == 6


def test_shape_mismatch_names_both_shapes():
    _, mod = traced(in_ch=3, size=12)
    x, y = synthetic(32, in_ch=1, size=12)
    with pytest.raises(DatasetError) as err:
        finetune(mod, Batches(x, y, 16), None, config=FinetuneConfig(**CPU))
    assert "[N, 3, 12, 12]" in str(err.value) and "[1, 12, 12]" in str(err.value)
    net = SmallCNN(1, classes=4)
    x, y = synthetic(32, classes=10, seed=1)
    with pytest.raises(DatasetError, match="more classes than the model outputs"):
        finetune(net, Batches(x, y, 16), None, config=FinetuneConfig(**CPU))


def test_evaluate_shape_mismatch_names_both_shapes():
    _, mod = traced(in_ch=3, size=12)
    x, y = synthetic(32, in_ch=1, size=12)
    with pytest.raises(DatasetError) as err:  # the traced input shape is known: checked before running
        evaluate(mod, Batches(x, y, 16), device="cpu")
    assert "[N, 3, 12, 12]" in str(err.value) and "[1, 12, 12]" in str(err.value)
    with pytest.raises(DatasetError) as err:  # a plain nn.Module: the model's own error, with the batch's shape
        evaluate(SmallCNN(3).eval(), Batches(x, y, 16), device="cpu")
    msg = str(err.value)
    assert "do not fit the model" in msg and "[16, 1, 12, 12]" in msg and "RuntimeError" in msg
    assert isinstance(err.value.__cause__, RuntimeError)


def test_agp_cubic_schedule():
    r = agp_ratios(0.5, 3)
    assert r[-1] == pytest.approx(0.5)
    assert r == pytest.approx([0.5 - 0.5 * (1 - k / 3) ** 3 for k in (1, 2, 3)])
    assert r[0] > r[1] - r[0] > r[2] - r[1] > 0  # front-loaded: most pruning early
    kept = 1.0
    for rel in relative_ratios(r):
        kept *= 1 - rel
    assert kept == pytest.approx(0.5)


def test_gradual_prune_then_24_keeps_masks():
    _, mod = traced()
    x, y = synthetic(64)
    width = mod.get_param("c1.weight").shape[0]
    steps = gradual_prune(mod, Batches(x, y, 16), None, final_ratio=0.5, steps=2, round_to=2, then_24=True,
                          config=FinetuneConfig(epochs=1, lr=0.01, **CPU))
    assert [s.kind for s in steps] == ["prune", "prune", "2:4"]
    assert mod.get_param("c1.weight").shape[0] == width // 2
    assert all(s.result.steps == 4 for s in steps)
    mod.verify()  # shapes consistent, every 2:4-marked weight still 2:4
    from sparsec.ir import meta as M

    assert any(M.get(n, M.Sparsity24) is not None for n in mod.nodes("get_attr"))


def test_tensor_batches_shard_like_distributed_sampler():
    x = torch.arange(20, dtype=torch.uint8).view(20, 1, 1).expand(20, 4, 4).contiguous()
    y = torch.arange(20)
    seen = []
    for rank in (0, 1):
        tb = D.TensorBatches(x, y, 5, size=4, channels=1, shuffle=True, seed=7, rank=rank, world=2)
        tb.set_epoch(3)
        assert len(tb) == 2
        seen.append(torch.cat([b for _, b in tb]))
    assert sorted(torch.cat(seen).tolist()) == list(range(20))  # disjoint, and together all samples
    again = D.TensorBatches(x, y, 5, size=4, channels=1, shuffle=True, seed=7, rank=0, world=2)
    again.set_epoch(3)
    assert torch.equal(torch.cat([b for _, b in again]), seen[0])  # the same epoch, the same order
    xb, ys = next(iter(again))  # pixel value == label here
    assert xb.shape == (5, 1, 4, 4) and xb.dtype == torch.float32
    assert torch.allclose(xb[:, 0, 0, 0], (ys.float() / 255 - D.FASHION_MEAN) / D.FASHION_STD)


def _lrs(cfg, steps=20, warmup=5):
    from sparsec.passes.finetune.loop import make_optimizer, make_scheduler

    opt = make_optimizer(SmallCNN(), cfg)
    sched = make_scheduler(opt, cfg, total=steps, warmup=warmup)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return opt, lrs


def test_lr_schedules_warm_up_then_decay():
    import math

    cfg = FinetuneConfig(epochs=2, lr=0.1, warmup_epochs=0.5, **CPU)
    opt, lrs = _lrs(cfg)
    assert [g["weight_decay"] for g in opt.param_groups] == [cfg.weight_decay, 0.0]  # none on norms/biases
    assert lrs[:5] == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1])  # linear warm-up
    assert lrs[5:] == pytest.approx([0.05 * (1 + math.cos(math.pi * t / 15)) for t in range(15)])  # cosine
    opt, lrs = _lrs(cfg.replace(schedule="onecycle", optimizer="adamw"))
    assert isinstance(opt, torch.optim.AdamW)
    assert max(lrs) == pytest.approx(0.1) and lrs.index(max(lrs)) in (4, 5) and lrs[-1] < 1e-3


def test_config_rejects_bad_options():
    from sparsec.errors import UsageError

    with pytest.raises(UsageError, match="'warmup_epochs' is out of range"):
        FinetuneConfig(epochs=1, warmup_epochs=1)
    with pytest.raises(UsageError, match="resume needs a checkpoint directory"):
        FinetuneConfig(resume=True)
