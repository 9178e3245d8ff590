"""The fine-tuning loop (:func:`finetune`) and evaluation (:func:`evaluate`).

One loop serves a plain ``nn.Module``, an ``ir.Module`` (its GraphModule is
trained in place, so pruned shapes stay pruned and the IR stays valid) and
DDP under ``torchrun``. Every optimiser step:

    forward (bf16 autocast on CUDA) -> CE + KD loss -> backward
    -> mask 2:4 grads -> clip -> step -> LR schedule -> re-apply 2:4 masks

and the loss is checked: NaN/inf, or a loss ``divergence_factor`` times the
first logged one, stops the run with a :class:`TrainingError` naming the step
and the last good checkpoint. Ctrl-C saves ``interrupted.pt`` (and
``last.pt``) and raises :class:`Interrupted`. ``resume=True`` continues from
``last.pt``: model, optimiser, LR schedule, RNG state, step and the position
inside the epoch, so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn.functional as F

from sparsec.passes.finetune.config import FinetuneConfig
from sparsec.passes.finetune.errors import DatasetError, Interrupted, TrainingError
from sparsec.passes.finetune.loss import finetune_loss
from sparsec.passes.finetune.masks import MaskSet
from sparsec.passes.finetune.trainable import make_trainable

log = logging.getLogger("sparsec.finetune")

CHECKPOINT_VERSION = 1


@dataclasses.dataclass
class FinetuneResult:
    model: torch.nn.Module
    steps: int
    epochs: float
    history: list[dict]
    val: dict | None
    checkpoint: Path | None
    stopped: str  # "completed" | "max_steps"
    seconds: float

    def summary(self) -> dict:
        return {"steps": self.steps, "epochs": self.epochs, "val": self.val, "stopped": self.stopped,
                "checkpoint": str(self.checkpoint) if self.checkpoint else None, "seconds": self.seconds}


# -- distributed -------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def on(self) -> bool:
        return self.world > 1


def dist_setup(device_hint: str | None) -> Dist:
    """Join the process group that ``torchrun`` describes in the environment (or one already made)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return Dist()
    use_cuda = torch.cuda.is_available() and not (device_hint or "").startswith("cpu")
    dist.init_process_group("nccl" if use_cuda else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def _device(cfg: FinetuneConfig, d: Dist) -> torch.device:
    if cfg.device is not None:
        dev = torch.device(cfg.device)
        if dev.type == "cuda" and dev.index is None and d.on:
            dev = torch.device("cuda", d.local_rank)
        return dev
    return torch.device("cuda", d.local_rank) if torch.cuda.is_available() else torch.device("cpu")


def _all_sum(values: list[float], d: Dist, device: torch.device) -> list[float]:
    if not d.on:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


# -- data ----------------------------------------------------------------------------------------

def as_batches(data: Any, *, batch_size: int, shuffle: bool, seed: int, d: Dist, drop_last: bool,
               num_workers: int = 0) -> Iterable:
    """A Dataset becomes a DataLoader (DistributedSampler under DDP, seeded); iterables pass through."""
    if isinstance(data, torch.utils.data.Dataset) and not isinstance(data, torch.utils.data.IterableDataset):
        sampler = torch.utils.data.DistributedSampler(data, num_replicas=d.world, rank=d.rank, shuffle=shuffle,
                                                      seed=seed, drop_last=drop_last)
        return torch.utils.data.DataLoader(data, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                                           num_workers=num_workers)
    if isinstance(data, torch.utils.data.DataLoader) and d.on and not isinstance(
            data.sampler, torch.utils.data.DistributedSampler):
        log.warning("DDP: the DataLoader has no DistributedSampler, so every rank sees all of the data; "
                    "pass the Dataset instead and sparsec shards it")
    if hasattr(data, "world") and d.on and getattr(data, "world") == 1:
        data.rank, data.world = d.rank, d.world  # TensorBatches shards itself
    return data


def _set_epoch(loader: Any, epoch: int) -> None:
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    elif hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)


def _prep(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def _logits(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def _expected_input(model: Any) -> tuple | None:
    ex = getattr(model, "example_inputs", None)
    if ex:
        return tuple(ex[0].shape)
    return None


def _check_input_shape(x: torch.Tensor, expected: tuple | None) -> None:
    """A DatasetError naming both shapes when samples differ from the traced model's input."""
    if expected is not None and tuple(x.shape[1:]) != tuple(expected[1:]):
        raise DatasetError("the dataset's inputs do not fit the model",
                           expected=f"inputs shaped [N, {', '.join(str(s) for s in expected[1:])}] (the model's)",
                           actual=f"dataset samples shaped {list(x.shape[1:])}",
                           fix="resize the data (--image-size / --channels) or trace the model with a matching "
                               "--input-shape")


def _unfit(x: torch.Tensor, expected: tuple | None, exc: Exception) -> DatasetError:
    """The model raised on a dataset batch: a DatasetError naming the batch's shape and the model's."""
    return DatasetError("the dataset's inputs do not fit the model",
                        expected=f"an input the model accepts{f' ({list(expected)})' if expected else ''}",
                        actual=f"dataset batch shaped {list(x.shape)}; the model said: "
                               f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                        fix="resize the data (--image-size / --channels) or use a model made for this input")


def check_shapes(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, expected: tuple | None) -> None:
    """Run one batch; a model/dataset shape mismatch raises a DatasetError naming both shapes."""
    _check_input_shape(x, expected)
    try:
        with torch.no_grad():
            out = _logits(model(x))
    except Exception as exc:
        raise _unfit(x, expected, exc) from exc
    classes = out.shape[-1]
    if y.numel() and int(y.max()) >= classes:
        raise DatasetError("the dataset has more classes than the model outputs",
                           expected=f"labels in [0, {classes}) (model output shape {list(out.shape)})",
                           actual=f"a label {int(y.max())} (dataset label shape {list(y.shape)})",
                           fix="rebuild the model's classifier for this dataset's classes")


# -- evaluation ----------------------------------------------------------------------------------

@torch.no_grad()
def evaluate(model: Any, data: Any, *, batch_size: int = 256, device: str | torch.device | None = None,
             amp: bool = True, channels_last: bool = False, fixed_batch: int | None = None,
             num_workers: int = 0) -> dict:
    """Top-1, top-5 and mean cross-entropy of ``model`` on ``data`` (a Dataset or batches).

    ``model`` may be an ``nn.Module`` or an ``ir.Module``. ``fixed_batch``
    feeds the model batches of exactly that size (the last padded, its padding
    ignored), for programs exported with a static batch. Under DDP a Dataset
    is sharded and the sums reduced over ranks.
    """
    from sparsec.ir.module import Module

    net = model.gm if isinstance(model, Module) else model
    make_trainable(net)
    d = dist_setup(str(device) if device else None)
    dev = torch.device(device) if device is not None else (
        torch.device("cuda", d.local_rank) if torch.cuda.is_available() else torch.device("cpu"))
    net.to(dev)
    if channels_last:
        net.to(memory_format=torch.channels_last)
    net.eval()
    sharded = isinstance(data, torch.utils.data.Dataset)
    loader = as_batches(data, batch_size=fixed_batch or batch_size, shuffle=False, seed=0,
                        d=d if sharded else Dist(), drop_last=False, num_workers=num_workers)
    use_amp = amp and dev.type == "cuda"
    expected = _expected_input(model)
    sums = [0.0, 0.0, 0.0, 0.0]  # loss*n, top1, top5, n
    for x, y in loader:
        n = x.shape[0]
        x, y = _prep(x, dev, channels_last), y.to(dev)
        if fixed_batch is not None and n < fixed_batch:
            x = torch.cat([x, x[-1:].expand(fixed_batch - n, *x.shape[1:])])
        first = not sums[3]
        if first:
            _check_input_shape(x, expected)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_amp):
            try:
                out = net(x)
            except Exception as exc:
                if not first:  # the first batch ran: not a shape mismatch of the dataset
                    raise
                raise _unfit(x, expected, exc) from exc
            logits = _logits(out)[:n].float()
        sums[0] += float(F.cross_entropy(logits, y, reduction="sum"))
        top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
        hit = top == y[:, None]
        sums[1] += float(hit[:, :1].sum())
        sums[2] += float(hit.any(-1).sum())
        sums[3] += n
    if sharded:
        sums = _all_sum(sums, d, dev)
    n = max(sums[3], 1.0)
    return {"top1": sums[1] / n, "top5": sums[2] / n, "loss": sums[0] / n, "n": int(sums[3])}


# -- optimiser and schedule -------------------------------------------------------------------------

def make_optimizer(model: torch.nn.Module, cfg: FinetuneConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() > 1 else no_decay).append(p)  # no weight decay on norms and biases
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)


def make_scheduler(opt: torch.optim.Optimizer, cfg: FinetuneConfig, total: int, warmup: int):
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(total, 2),
                                                   pct_start=min(max(warmup / max(total, 1), 0.01), 0.99),
                                                   cycle_momentum=False)

    def factor(step: int) -> float:  # linear warm-up, then cosine to 0
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(total - warmup, 1)
        return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


# -- checkpoints ---------------------------------------------------------------------------------

def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, state: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: Path) -> dict:
    if not path.is_file():
        raise DatasetError(f"no checkpoint to resume from at '{path}'",
                           fix="drop --resume, or point --checkpoint-dir at the run's directory")
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("version") != CHECKPOINT_VERSION:
        raise DatasetError(f"'{path}' is not a sparsec fine-tuning checkpoint (version {state.get('version')})")
    return state


# -- progress --------------------------------------------------------------------------------------

class _Progress:
    """A rich progress bar (loss, accuracy, img/s) when stderr is a terminal; log lines otherwise."""

    def __init__(self, enabled: bool, total: int, start: int) -> None:
        self.bar = None
        if enabled:
            from rich.console import Console

            console = Console(stderr=True)
            if console.is_terminal:
                from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

                self.bar = Progress(TextColumn("fine-tune"), BarColumn(), MofNCompleteColumn(),
                                    TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=console)
                self.task = self.bar.add_task("train", total=total, completed=start, info="")
                self.bar.start()

    def update(self, step: int, info: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=step, info=info)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


class _Writer:
    """Metrics JSON (and TensorBoard when installed), written by rank 0 only."""

    def __init__(self, cfg: FinetuneConfig, main: bool) -> None:
        self.path = cfg.metrics_path if main else None
        self.tb = None
        if main and cfg.tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(cfg.tensorboard_dir))
            except ImportError:
                log.info("tensorboard is not installed: metrics go to JSON only")

    def record(self, rec: dict) -> None:
        if self.tb is not None:
            for k, v in rec.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k, v, rec["step"])

    def flush(self, doc: dict) -> None:
        if self.path is not None:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(str(self.path) + ".tmp")
            tmp.write_text(json.dumps(doc, indent=1))
            os.replace(tmp, self.path)
        if self.tb is not None:
            self.tb.flush()


# -- the loop --------------------------------------------------------------------------------------

def finetune(model_or_module: Any, train_data: Any, val_data: Any = None, *, teacher: Any = None,
             config: FinetuneConfig | None = None, masks: MaskSet | dict[str, int] | None = None,
             batch_size: int = 128, num_workers: int = 0) -> FinetuneResult:
    """Fine-tune a (pruned and/or 2:4) model; returns a :class:`FinetuneResult`.

    ``model_or_module``: an ``nn.Module``, or an ``ir.Module`` whose graph is
    trained in place (its 2:4 masks come from ``sparsec.sparsity`` metadata).
    ``train_data``/``val_data``: a Dataset (batched and, under DDP, sharded
    here) or any iterable of ``(inputs, labels)`` batches (a DataLoader,
    :class:`~sparsec.passes.finetune.data.TensorBatches`). ``teacher``: the
    dense model for distillation. ``masks``: extra 2:4 masks for a plain
    ``nn.Module`` (a :class:`MaskSet`, or ``{param name: dim}`` read from the
    weights' current zeros).

    Example:
        >>> res = sparsec.finetune(mod, train_ds, val_ds, teacher=dense,
        ...                        config=sparsec.FinetuneConfig(epochs=2, lr=0.01, kd_weight=1.0))
    """
    from sparsec.ir.module import Module

    cfg = config or FinetuneConfig()
    t_start = time.perf_counter()
    mod = model_or_module if isinstance(model_or_module, Module) else None
    model = make_trainable(mod.gm if mod is not None else model_or_module)
    d = dist_setup(cfg.device)
    dev = _device(cfg, d)
    torch.manual_seed(cfg.seed)
    model.to(dev)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    mask_set = MaskSet.from_module(model, mod)
    if isinstance(masks, MaskSet):
        mask_set.masks.update(masks.masks)
    elif masks:
        mask_set.masks.update(MaskSet.from_names(model, masks).masks)
    mask_set.rebind(model)
    mask_set.apply()
    if teacher is not None:
        teacher = teacher.gm if isinstance(teacher, Module) else teacher
        student_storage = {p.data_ptr() for p in model.parameters()} | {b.data_ptr() for b in model.buffers()}
        if any(t.data_ptr() in student_storage for t in (*teacher.parameters(), *teacher.buffers())):
            # sparsec.trace shares tensors with the traced nn.Module: training the student in place
            # would move the teacher too
            log.info("the teacher shares tensors with the student; distilling from a copy")
            teacher = copy.deepcopy(teacher)
        teacher = make_trainable(teacher).to(dev).eval()
        if cfg.channels_last:
            teacher.to(memory_format=torch.channels_last)

    loader = as_batches(train_data, batch_size=batch_size, shuffle=True, seed=cfg.seed, d=d, drop_last=True,
                        num_workers=num_workers)
    steps_per_epoch = len(loader)  # type: ignore[arg-type]
    if steps_per_epoch == 0:
        raise DatasetError("the training data yields no batch", expected=f"at least {batch_size * d.world} samples",
                           fix="use more data or a smaller --batch-size")
    total = max(1, math.ceil(cfg.epochs * steps_per_epoch))
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))

    x0, y0 = next(iter(loader))
    model.eval()
    check_shapes(model, _prep(x0, dev, cfg.channels_last), y0.to(dev), _expected_input(mod))

    opt = make_optimizer(model, cfg)
    sched = make_scheduler(opt, cfg, total, warmup)
    net: torch.nn.Module = model
    if d.on:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, device_ids=[dev.index] if dev.type == "cuda" else None)

    ckdir = Path(cfg.checkpoint_dir) if cfg.checkpoint_dir is not None else None
    step, history, ref_loss, last_ckpt = 0, [], None, None
    if cfg.resume:
        state = load_checkpoint(ckdir / "last.pt")  # type: ignore[operator]
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        for name, m in state["masks"].items():
            if name in mask_set.masks:
                mask_set.masks[name] = (mask_set.masks[name][0], m.to(dev))
        step, history, ref_loss = state["step"], state["history"], state["ref_loss"]
        _set_rng_state(state["rng"])
        last_ckpt = ckdir / "last.pt"  # type: ignore[operator]
        log.info("resumed from %s at step %d", last_ckpt, step)

    def checkpoint(name: str = "last.pt") -> Path | None:
        nonlocal last_ckpt
        if ckdir is None:
            return None
        if d.main:
            state = {"version": CHECKPOINT_VERSION, "model": model.state_dict(), "optimizer": opt.state_dict(),
                     "scheduler": sched.state_dict(), "step": step, "history": history, "ref_loss": ref_loss,
                     "masks": {k: m.cpu() for k, (_, m) in mask_set.masks.items()}, "rng": _rng_state(),
                     "config": cfg.to_json()}
            save_checkpoint(ckdir / name, state)
            if name != "last.pt":
                save_checkpoint(ckdir / "last.pt", state)
        last_ckpt = ckdir / "last.pt"
        return ckdir / name

    writer = _Writer(cfg, d.main)
    use_amp = cfg.amp and dev.type == "cuda"
    stop_at = min(total, cfg.max_steps) if cfg.max_steps is not None else total
    progress = _Progress(cfg.progress and d.main, stop_at, step)
    window = [0.0, 0.0, 0.0, 0.0, time.perf_counter()]  # loss*n, correct, n, steps, t0
    val = None
    net.train()
    try:
        while step < stop_at:
            epoch, skip = divmod(step, steps_per_epoch)
            _set_epoch(loader, epoch)
            epoch_start = step
            for i, (x, y) in enumerate(loader):
                if i < skip:
                    continue  # resuming inside an epoch: same order, same augmentation draws
                if step >= stop_at:
                    break
                x, y = _prep(x, dev, cfg.channels_last), y.to(dev, non_blocking=True)
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_amp):
                    out = _logits(net(x))
                    t_out = None
                    if teacher is not None and cfg.kd_weight > 0:
                        with torch.no_grad():
                            t_out = _logits(teacher(x))
                loss = finetune_loss(out, y, t_out, kd_weight=cfg.kd_weight, temperature=cfg.temperature,
                                     label_smoothing=cfg.label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                mask_set.mask_grads()
                if cfg.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                stats = torch.stack([loss.detach().float() * x.shape[0], (out.detach().argmax(-1) == y).sum().float(),
                                     torch.tensor(float(x.shape[0]), device=dev)])
                lval, correct, n = _all_sum(stats.tolist(), d, dev)  # one host sync per step
                lval /= n
                if not math.isfinite(lval) or (ref_loss is not None and lval > cfg.divergence_factor * ref_loss):
                    kind = "NaN/inf" if not math.isfinite(lval) else "divergent"
                    raise TrainingError(
                        f"training stopped: the loss became {kind} at step {step + 1} (epoch {epoch})",
                        expected=f"a finite loss below {cfg.divergence_factor} x the first logged "
                                 f"({ref_loss:.4g})" if ref_loss else "a finite loss",
                        actual=f"loss {lval}",
                        fix=(f"the last good checkpoint is {last_ckpt}; resume from it with a lower --lr "
                             "(or --grad-clip)") if last_ckpt else
                            "no checkpoint was written yet (set --checkpoint-dir / --checkpoint-every); "
                            "lower --lr or set --grad-clip")
                opt.step()
                sched.step()
                mask_set.apply()
                step += 1
                window[0] += lval * n
                window[1] += correct
                window[2] += n
                window[3] += 1
                if step % cfg.log_every == 0 or step == stop_at:
                    dt = max(time.perf_counter() - window[4], 1e-9)
                    rec = {"step": step, "epoch": step / steps_per_epoch, "lr": opt.param_groups[0]["lr"],
                           "loss": window[0] / window[2], "acc": window[1] / window[2], "img_s": window[2] / dt}
                    if ref_loss is None:
                        ref_loss = rec["loss"]
                    history.append(rec)
                    writer.record(rec)
                    progress.update(step, f"loss {rec['loss']:.4f}  acc {rec['acc']:.3f}  {rec['img_s']:.0f} img/s")
                    if progress.bar is None and d.main:
                        log.info("step %d/%d  loss %.4f  acc %.3f  %.0f img/s", step, stop_at, rec["loss"],
                                 rec["acc"], rec["img_s"])
                    window = [0.0, 0.0, 0.0, 0.0, time.perf_counter()]
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                    checkpoint()
            if step == epoch_start:
                raise DatasetError(f"the training data yielded no batch in epoch {epoch}",
                                   expected=f"{steps_per_epoch} batches per epoch (its len())",
                                   fix="make the data re-iterable (a Dataset, DataLoader or list), not a one-shot generator")
            if step % steps_per_epoch == 0 or step == stop_at:
                if val_data is not None:
                    val = evaluate(model, val_data, batch_size=batch_size, device=dev, amp=cfg.amp,
                                   channels_last=cfg.channels_last)
                    rec = {"step": step, "epoch": step / steps_per_epoch, **{f"val_{k}": v for k, v in val.items()}}
                    history.append(rec)
                    writer.record(rec)
                    net.train()
                checkpoint()
                writer.flush({"config": cfg.to_json(), "history": history})
    except KeyboardInterrupt:
        progress.close()
        path = checkpoint("interrupted.pt")
        writer.flush({"config": cfg.to_json(), "history": history, "interrupted_at": step})
        raise Interrupted(f"fine-tuning interrupted at step {step}",
                          actual=f"checkpoint saved to {path}" if path else "no --checkpoint-dir: nothing saved",
                          fix="resume with --resume (resume=True) and the same --checkpoint-dir" if path else
                              "set --checkpoint-dir to keep progress on Ctrl-C") from None
    finally:
        progress.close()
        model.eval()
    writer.flush({"config": cfg.to_json(), "history": history, "final_val": val})
    if mod is not None:
        model.to("cpu")  # the IR's example inputs and passes live on the CPU
        mask_set.rebind(model)
    return FinetuneResult(model, step, step / steps_per_epoch, history, val, last_ckpt,
                          "completed" if step >= total else "max_steps", time.perf_counter() - t_start)
