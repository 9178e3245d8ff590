"""``sparsec finetune`` and ``sparsec eval``: accuracy recovery and measurement from the command line.

    sparsec finetune pruned.pt2 --data fashion-mnist --teacher dense.pt2 --kd-weight 1 --epochs 3 -o ft.pt2
    sparsec eval ft.pt2 --data fashion-mnist
    torchrun --nproc-per-node 2 -m sparsec.cli.main finetune ...   # DDP; only rank 0 writes

Importing this module imports click only; torch loads inside the commands.
cli/main.py adds the commands with ``make_commands(load_options, LoadFlags, note)``:
this module never imports cli/main.py, so ``python -m sparsec.cli.main`` (and
torchrun's ``-m``) does not import it twice.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from sparsec.errors import UsageError

data_options = [
    click.option("--data", "data", required=True, metavar="NAME|DIR",
                 help="A known dataset (fashion-mnist) or an ImageFolder directory (with train/ and val/ inside)."),
    click.option("--data-dir", type=click.Path(file_okay=False), default=None,
                 help="Where the fashion-mnist IDX files are (default: the sparsec cache, then /usr/share/datasets)."),
    click.option("--image-size", type=click.IntRange(min=1), default=None,
                 help="Resize images to this size (default: the model's input size, else 28 for fashion-mnist)."),
    click.option("--channels", type=click.IntRange(min=1), default=None,
                 help="Input channels; grayscale is repeated (default: the model's, else 3)."),
    click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True),
    click.option("--limit", type=click.IntRange(min=1), default=None, help="Use only the first N samples."),
    click.option("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)."),
]


def _apply(decorators):
    def deco(f):
        for d in reversed(decorators):
            f = d(f)
        return f
    return deco


def _load(load, spec: str, image_size: int | None, channels: int | None):
    """Load SPEC with a dynamic batch; a program file keeps its own input shape (and batch).

    Returns (module, image size, channels): the model's input geometry, which the data is resized to.
    """
    import dataclasses

    if not spec.endswith(".pt2") and not load.input_shape:
        load = dataclasses.replace(load, input_shape=f"2,{channels or 3},{image_size or 28},{image_size or 28}")
    if not spec.endswith(".pt2"):
        load = dataclasses.replace(load, dynamic_batch=True)
    mod = load.load(spec)
    shape = tuple(mod.example_inputs[0].shape)
    if len(shape) != 4:
        raise UsageError(f"'{spec}' does not take images", expected="one input shaped [N, C, H, W]",
                         actual=f"input shape {list(shape)}")
    return mod, image_size or shape[-1], channels or shape[1]


def _mark_24(mod) -> int:
    """Mark weights that already hold an exact 2:4 pattern (half zeros) so fine-tuning keeps them."""
    from sparsec.ir import meta as M
    from sparsec.passes.finetune.masks import is_24

    n = 0
    for node in mod.nodes("get_attr"):
        w = mod.get_param(node.target)
        if M.get(node, M.Sparsity24) is None and w.dim() >= 2 and w.shape[1] % 4 == 0 and w.is_floating_point() \
                and float((w == 0).float().mean()) >= 0.5 and is_24(w, 1):
            M.put(node, M.Sparsity24(dim=1))
            n += 1
    return n


def make_commands(load_options, LoadFlags, note) -> list[click.Command]:
    """The ``finetune`` and ``eval`` commands, built with cli/main.py's model-loading options."""

    @click.command("finetune")
    @click.argument("spec")
    @_apply(data_options)
    @click.option("--val-data", default=None, metavar="NAME|DIR", help="Validation data (default: --data's val/test split).")
    @click.option("--teacher", default=None, metavar="SPEC", help="The dense model to distil from (any SPEC).")
    @click.option("--kd-weight", type=float, default=0.0, show_default=True, help="Weight of the KD term (needs --teacher).")
    @click.option("--temperature", type=float, default=4.0, show_default=True, help="KD temperature.")
    @click.option("--epochs", type=float, default=1.0, show_default=True)
    @click.option("--lr", type=float, default=0.01, show_default=True)
    @click.option("--optimizer", type=click.Choice(["sgd", "adamw"]), default="sgd", show_default=True)
    @click.option("--momentum", type=float, default=0.9, show_default=True)
    @click.option("--weight-decay", type=float, default=5e-5, show_default=True)
    @click.option("--schedule", type=click.Choice(["cosine", "onecycle"]), default="cosine", show_default=True)
    @click.option("--warmup-epochs", type=float, default=0.0, show_default=True)
    @click.option("--grad-clip", type=float, default=5.0, show_default=True, help="Max grad norm; 0 disables.")
    @click.option("--label-smoothing", type=float, default=0.0, show_default=True)
    @click.option("--no-amp", is_flag=True, help="Do not use bf16 autocast on CUDA.")
    @click.option("--channels-last", is_flag=True, help="Train in channels-last memory format.")
    @click.option("--seed", type=int, default=0, show_default=True)
    @click.option("--max-steps", type=click.IntRange(min=1), default=None, help="Stop after N optimiser steps.")
    @click.option("--checkpoint-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                  help="Write checkpoints (last.pt; interrupted.pt on Ctrl-C) here.")
    @click.option("--checkpoint-every", type=click.IntRange(min=0), default=0, show_default=True,
                  help="Steps between checkpoints (0: each epoch).")
    @click.option("--resume", is_flag=True, help="Continue from --checkpoint-dir/last.pt.")
    @click.option("--metrics", "metrics_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
                  help="Write train/val metrics as JSON here.")
    @click.option("--tensorboard", "tensorboard_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                  help="Also log to TensorBoard here (if installed).")
    @click.option("--keep-24/--no-keep-24", default=True, show_default=True,
                  help="Hold weights that are already exactly 2:4 at their zero pattern.")
    @click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
                  help="Save the fine-tuned program with torch.export.save (e.g. ft.pt2).")
    @load_options
    def finetune_cmd(spec: str, data: str, data_dir: str | None, image_size: int | None, channels: int | None,
                     batch_size: int, limit: int | None, device: str | None, val_data: str | None, teacher: str | None,
                     kd_weight: float, temperature: float, epochs: float, lr: float, optimizer: str, momentum: float,
                     weight_decay: float, schedule: str, warmup_epochs: float, grad_clip: float, label_smoothing: float,
                     no_amp: bool, channels_last: bool, seed: int, max_steps: int | None, checkpoint_dir: Path | None,
                     checkpoint_every: int, resume: bool, metrics_path: Path | None, tensorboard_dir: Path | None,
                     keep_24: bool, output: Path | None, **flags: Any) -> None:
        """Fine-tune a (pruned, 2:4) model on a dataset: CE + KD from a dense teacher.

        2:4 weights keep their zero pattern; pruned shapes stay pruned. Under
        torchrun it trains with DDP and only rank 0 writes.

        Example:
          sparsec finetune pruned.pt2 --data fashion-mnist --teacher dense.pt2 --kd-weight 1 -o ft.pt2
        """
        load = LoadFlags.pop(flags)
        if kd_weight > 0 and teacher is None:
            raise UsageError("--kd-weight needs a --teacher", fix="pass --teacher DENSE_SPEC, or drop --kd-weight")
        from sparsec.cli._io import check_output_path
        from sparsec.passes.finetune import FinetuneConfig, finetune
        from sparsec.passes.finetune.data import check_dataset, open_dataset

        cfg = FinetuneConfig(epochs=epochs, lr=lr, optimizer=optimizer, momentum=momentum, weight_decay=weight_decay,
                             schedule=schedule, warmup_epochs=warmup_epochs, grad_clip=grad_clip or None,
                             label_smoothing=label_smoothing, kd_weight=kd_weight, temperature=temperature,
                             amp=not no_amp, channels_last=channels_last, device=device, seed=seed,
                             checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every, resume=resume,
                             metrics_path=metrics_path, tensorboard_dir=tensorboard_dir, max_steps=max_steps)
        if output is not None:
            check_output_path(output, force=True)
        check_dataset(data, data_dir)
        if val_data is not None:
            check_dataset(val_data, data_dir)
        mod, size, ch = _load(load, spec, image_size, channels)
        if mod.dynamic_shapes is None:
            raise UsageError(f"'{spec}' was exported with a static batch size, which fine-tuning cannot feed",
                             expected="a program whose input has a dynamic dim 0",
                             actual=f"input shape {list(mod.example_inputs[0].shape)}",
                             fix='re-export it with dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, '
                                 "or pass the Python model (FILE.py:FACTORY, zoo:...)")
        train = open_dataset(data, "train", size=size, channels=ch, data_dir=data_dir, limit=limit)
        val = open_dataset(val_data or data, "val", size=size, channels=ch, data_dir=data_dir, limit=limit)
        if keep_24:
            n = _mark_24(mod)
            if n:
                note(f"holding {n} 2:4 weights at their zero pattern")
        teacher_mod = _load(load, teacher, size, ch)[0] if teacher is not None else None
        res = finetune(mod, train, val, teacher=teacher_mod, config=cfg, batch_size=batch_size)
        if res.val is not None:
            note(f"val top-1 {res.val['top1']:.4f}  top-5 {res.val['top5']:.4f}  loss {res.val['loss']:.4f} "
                  f"after {res.steps} steps ({res.seconds:.1f} s)")
        from sparsec.passes.finetune.loop import dist_setup

        if output is not None and dist_setup(device).main:
            import torch

            from sparsec.cli._io import write_atomic

            program = mod.export()
            write_atomic(output, lambda tmp: torch.export.save(program, tmp))
            note(f"wrote {output}")


    @click.command("eval")
    @click.argument("spec")
    @_apply(data_options)
    @click.option("--split", type=click.Choice(["train", "val"]), default="val", show_default=True,
                  help="val = the test split of fashion-mnist, or DIR/val (DIR/test).")
    @click.option("--no-amp", is_flag=True, help="Do not use bf16 autocast on CUDA.")
    @click.option("-f", "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
    @load_options
    def eval_cmd(spec: str, data: str, data_dir: str | None, image_size: int | None, channels: int | None,
                 batch_size: int, limit: int | None, device: str | None, split: str, no_amp: bool, fmt: str,
                 **flags: Any) -> None:
        """Top-1, top-5 and loss of a model or compiled artifact on a dataset.

        Example:
          sparsec eval out/ft.sparsec --data fashion-mnist
        """
        load = LoadFlags.pop(flags)
        from sparsec.passes.finetune import evaluate
        from sparsec.passes.finetune.data import check_dataset, open_dataset

        check_dataset(data, data_dir)
        path = Path(spec)
        fixed = None
        if path.is_dir() and (path / "manifest.json").is_file():
            from sparsec.cli import running

            model, manifest = running.load(path)
            ins = running.input_spec(manifest)
            if ins and len(ins[0].shape) == 4:
                image_size = image_size or ins[0].shape[-1]
                channels = channels or ins[0].shape[1]
                fixed = ins[0].shape[0] if isinstance(ins[0].shape[0], int) else None
            size, ch = image_size or 28, channels or 3
        else:
            model, size, ch = _load(load, spec, image_size, channels)
            if model.dynamic_shapes is None:
                fixed = int(model.example_inputs[0].shape[0])
        ds = open_dataset(data, split, size=size, channels=ch, data_dir=data_dir, limit=limit)
        from sparsec.passes.finetune.loop import check_shapes

        import torch

        x, y = next(iter(torch.utils.data.DataLoader(ds, batch_size=fixed or 2)))
        check_shapes(model.gm if hasattr(model, "gm") else model, x, y, getattr(model, "example_inputs", None)
                     and tuple(model.example_inputs[0].shape))
        res = evaluate(model, ds, batch_size=batch_size, device=device, amp=not no_amp, fixed_batch=fixed)
        res = {"model": spec, "data": data, "split": split, "image_size": size, "channels": ch, **res}
        if fmt == "json":
            click.echo(json.dumps(res, indent=2))
        else:
            click.echo(f"top1 {res['top1']:.4f}  top5 {res['top5']:.4f}  loss {res['loss']:.4f}  n {res['n']}")

    return [finetune_cmd, eval_cmd]
