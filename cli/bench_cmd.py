"""``sparsec bench``: time eager, torch.compile and sparsec variants of a model on this GPU.

Click only at import time; torch and the benchmark load inside the command, which validates the lists
(``sparsec.backends.bench.plan``) before it looks for a GPU.
"""

from __future__ import annotations

import click

_VARIANTS = "eager,inductor,sparsec-dense,sparsec-24,sparsec-pruned,sparsec-pruned-24"


@click.command("bench", context_settings={"show_default": True})
@click.option("--models", default="resnet50", help="Comma-separated torchvision model names.")
@click.option("--batches", default="1,32,256", help="Comma-separated batch sizes.")
@click.option("--dtypes", default="fp16", help="Comma-separated, from fp16,bf16 (sparsec variants compiled in each).")
@click.option("--prune-ratio", default="0.3",
              help="prune-channels ratio of the pruned variants: one (0.3) or per model (resnet50=0.5,mobilenet_v2=0.32).")
@click.option("--round-to", type=click.IntRange(min=1), default=8,
              help="prune-channels round-to (8: the widths of the accuracy experiment).")
@click.option("--variants", default=_VARIANTS,
              help="Comma-separated variants, side by side; 'inductor' is one variant per --inductor-modes entry; "
                   "a sparsec variant with +nopdl (or +pdl) is compiled with SPARSEC_CUTLASS_PDL off (on).")
@click.option("--artifacts", default=None,
              help="Comma-separated artifacts from `sparsec compile` (input B,3,224,224), each timed as variant "
                   "artifact:<dir name> in the group of its model, batch and dtype.")
@click.option("--inductor-modes", default="default",
              help="Comma-separated torch.compile modes, from default,max-autotune,max-autotune-no-cudagraphs,"
                   "reduce-overhead (max-autotune takes minutes per shape).")
@click.option("--baseline", default=None,
              help="Variant the speedups are against [default: inductor-max-autotune if measured, else the first "
                   "inductor variant, else eager].")
@click.option("--pruned-cost-model", type=click.Choice(["measured", "shape", "off"]), default="shape",
              help="sparsify-2-4 cost model of sparsec-pruned-24.")
@click.option("--inductor-cache-dir", type=click.Path(file_okay=False), default=None,
              help="TORCHINDUCTOR_CACHE_DIR; a warm one skips max-autotune's benchmarking (same code).")
@click.option("--accuracy", type=click.Path(dir_okay=False), default=None,
              help="Accuracy results for the stages figure [default: benchmarks/results/accuracy_<gpu>.json].")
@click.option("--repeats", type=click.IntRange(min=1), default=5, help="Rounds per variant (for the 95% CI and t-test).")
@click.option("--iters", type=click.IntRange(min=1), default=20, help="Timed calls per round.")
@click.option("--warmup", type=click.IntRange(min=0), default=5, help="Untimed calls first.")
@click.option("--out-dir", default="benchmarks/results", help="Where e2e_<gpu>[_TAG].json and its figures go.")
@click.option("--tag", default="", help="Suffix of the output file name: e2e_<gpu>[_TAG].json.")
@click.option("--from-json", type=click.Path(dir_okay=False), default=None,
              help="Measure nothing: redraw the figures beside this e2e results file and print its table (no GPU).")
def bench_cmd(**opts) -> None:
    """Latency, throughput, memory and speedup (95% CI, paired t-test vs a baseline) of a model's variants.

    Variants, in each dtype: eager, torch.compile (one per mode), and sparsec artifacts for h100
    (fusion), pruned, 2:4 and pruned + 2:4, each loaded with sparsec.load and replayed as one CUDA
    graph, checked against its own reference. Writes BENCHMARKS.md `e2e` records (rewritten after
    every variant), a table, a bar chart and, with accuracy results, the stages figure.

    Example:
      sparsec bench --models resnet50 --batches 1,32,256 --dtypes fp16,bf16 --inductor-modes default,max-autotune

      sparsec compile zoo:torchvision/resnet50 --target h100-sparse --input-shape 256,3,224,224 -o r50.sparsec
      sparsec bench --models resnet50 --batches 256 --artifacts r50.sparsec --inductor-modes max-autotune
    """
    from sparsec.backends.bench import main

    argv = []
    for key, value in opts.items():
        if value is not None and value != "":
            argv += [f"--{key.replace('_', '-')}", str(value)]
    main(argv)
