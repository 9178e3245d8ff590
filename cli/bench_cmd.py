"""``sparsec bench``: time eager, torch.compile and sparsec variants of a model on this GPU.

Click only at import time; torch and the benchmark load inside the command.
"""

from __future__ import annotations

import click

_VARIANTS = "eager,inductor,sparsec-dense,sparsec-24,sparsec-pruned,sparsec-pruned-24"


@click.command("bench", context_settings={"show_default": True})
@click.option("--models", default="resnet50", help="Comma-separated torchvision model names.")
@click.option("--batches", default="1,256", help="Comma-separated batch sizes.")
@click.option("--prune-ratio", type=click.FloatRange(0, 1, max_open=True), default=0.3,
              help="prune-channels ratio of the pruned variants.")
@click.option("--variants", default=_VARIANTS, help="Comma-separated variants to time, side by side.")
@click.option("--inductor-mode", type=click.Choice(["default", "max-autotune", "reduce-overhead"]), default="default",
              help="torch.compile mode of the inductor variant (max-autotune takes minutes per shape).")
@click.option("--repeats", type=click.IntRange(min=1), default=5, help="Rounds per variant (for the 95% CI and t-test).")
@click.option("--iters", type=click.IntRange(min=1), default=20, help="Timed calls per round.")
@click.option("--warmup", type=click.IntRange(min=0), default=5, help="Untimed calls first.")
@click.option("--out-dir", default="benchmarks/results", help="Where e2e_<gpu>.json and its PNG go.")
@click.option("--tag", default="", help="Suffix of the output file name: e2e_<gpu>[_TAG].json.")
def bench_cmd(models: str, batches: str, prune_ratio: float, variants: str, inductor_mode: str, repeats: int,
              iters: int, warmup: int, out_dir: str, tag: str) -> None:
    """Latency, throughput, memory and speedup (95% CI, paired t-test vs torch.compile) of a model's variants.

    Variants (fp16): eager, torch.compile, and sparsec artifacts for h100 (fusion), pruned, 2:4 and
    pruned + 2:4, each loaded with sparsec.load and replayed as one CUDA graph, checked against its
    own eager reference. Writes BENCHMARKS.md `e2e` records, a table and a bar chart.

    Example:
      sparsec bench --models resnet50 --batches 1,256 --prune-ratio 0.3
    """
    from sparsec.errors import UsageError

    unknown = sorted(set(variants.split(",")) - set(_VARIANTS.split(",")))
    if unknown:
        raise UsageError(f"unknown --variants {', '.join(unknown)}", expected=f"some of {_VARIANTS}")
    from sparsec.backends.bench import main

    argv = ["--models", models, "--batches", batches, "--prune-ratio", str(prune_ratio), "--variants", variants,
            "--inductor-mode", inductor_mode, "--repeats", str(repeats), "--iters", str(iters),
            "--warmup", str(warmup), "--out-dir", out_dir]
    main(argv + (["--tag", tag] if tag else []))
