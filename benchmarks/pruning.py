"""MACs versus real GPU speedup of structured channel pruning.

For each model and ratio: trace with sparsec, prune with ``prune-channels``
(uniform, l2), fold BN, then time the dense and pruned programs on the GPU in
fp16, channels-last, at each batch size, both as eager PyTorch captured in a
CUDA graph and compiled with ``torch.compile`` (Inductor, ``--compile-mode``),
also replayed from a CUDA graph. Dense and pruned variants of a model are
timed side by side in one process; speedups are ratios of those medians.

    python benchmarks/pruning.py --models resnet50,mobilenet_v2,efficientnet_b0 --ratios 0.3,0.5,0.7

Writes benchmarks/results/pruning_<gpu>.json and a PNG beside it.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median, p90, time_cuda_graph, write_results  # noqa: E402

log = logging.getLogger("bench.pruning")


def build(model_name: str, ratio: float | None, seed: int = 0):
    import torchvision

    import sparsec
    from sparsec.ir import Cost
    from sparsec.passes import PassManager

    torch.manual_seed(seed)
    model = torchvision.models.get_model(model_name, weights=None).eval()
    mod = sparsec.trace(model, torch.randn(2, 3, 224, 224), name=model_name)
    pipeline = "canonicalize,fold-bn,dce" if ratio is None else (
        f"canonicalize,prune-channels{{ratio={ratio},importance=l2,round-to=8}},fold-bn,dce"
    )
    PassManager.parse(pipeline).run(mod)
    cost = mod.analysis(Cost)
    return mod.gm, cost.total_macs, cost.total_params, pipeline


def measure(gm, batch: int, compile_mode: str | None, iters: int) -> dict:
    gm = gm.to("cuda", torch.float16).to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, 224, 224, device="cuda", dtype=torch.float16).to(memory_format=torch.channels_last)
    out = {}
    with torch.no_grad():
        eager = time_cuda_graph(lambda: gm(x), iters=iters)
        out["eager_graph"] = eager
        if compile_mode:
            t0 = time.perf_counter()
            compiled = torch.compile(gm, mode=compile_mode, dynamic=False)
            compiled(x)
            torch.cuda.synchronize()
            out["compile_s"] = time.perf_counter() - t0
            out["compiled"] = time_cuda_graph(lambda: compiled(x), iters=iters)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet50,mobilenet_v2,efficientnet_b0")
    ap.add_argument("--ratios", default="0.3,0.5,0.7")
    ap.add_argument("--batches", default="1,256")
    ap.add_argument("--compile-mode", default="default", help="torch.compile mode, or 'none' to skip")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--out", type=Path, default=None, help="results directory (default benchmarks/results)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks/pruning.py needs a CUDA GPU")
    compile_mode = None if args.compile_mode == "none" else args.compile_mode
    ratios = [float(r) for r in args.ratios.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    records = []
    for name in args.models.split(","):
        variants = [(None, *build(name, None))] + [(r, *build(name, r)) for r in ratios]
        dense_macs = variants[0][2]
        for batch in batches:
            base = None
            for ratio, gm, macs, params, pipeline in variants:
                m = measure(gm, batch, compile_mode, args.iters)
                rec = {
                    "model": name, "ratio": ratio, "objective": "uniform", "batch": batch, "dtype": "fp16",
                    "flops": 2 * macs, "params": params, "flops_removed_frac": 1 - macs / dense_macs,
                    "latency_ms_eager_graph": median(m["eager_graph"]),
                    "latency_ms_eager_graph_p90": p90(m["eager_graph"]),
                    "latency_ms_compiled": median(m["compiled"]) if "compiled" in m else None,
                    "compile_s": m.get("compile_s"), "pipeline": pipeline, "predicted_latency_ms": None,
                }
                if ratio is None:
                    base = rec
                rec["speedup_eager_graph"] = base["latency_ms_eager_graph"] / rec["latency_ms_eager_graph"]
                rec["speedup_compiled"] = (
                    base["latency_ms_compiled"] / rec["latency_ms_compiled"] if rec["latency_ms_compiled"] else None
                )
                records.append(rec)
                print(f"{name:16s} bs{batch:<4d} ratio={ratio}  MACs -{rec['flops_removed_frac']:.0%}  "
                      f"eager-graph {rec['latency_ms_eager_graph']:.3f} ms (x{rec['speedup_eager_graph']:.2f})  "
                      f"compiled {rec['latency_ms_compiled'] or float('nan'):.3f} ms (x{rec['speedup_compiled'] or float('nan'):.2f})",
                      flush=True)
    method = (f"fp16 NHWC, random init weights (seed 0), random inputs; median of {args.iters} CUDA-event timings of "
              f"CUDA-graph replays after 10 warm-ups; compiled = torch.compile(mode={compile_mode!r}) replayed from a CUDA graph; "
              "dense and pruned variants timed side by side in one process")
    path = write_results("pruning", method, records, args.out)
    plot(records, path.with_suffix(".png"))
    print(f"wrote {path}")


def plot(records: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib missing: no plot")
        return
    pruned = [r for r in records if r["ratio"] is not None]
    batches = sorted({r["batch"] for r in pruned})
    fig, axes = plt.subplots(1, len(batches), figsize=(6 * len(batches), 4), squeeze=False)
    for ax, batch in zip(axes[0], batches):
        rs = [r for r in pruned if r["batch"] == batch]
        labels = [f"{r['model']}\n{r['ratio']}" for r in rs]
        xs = range(len(rs))
        ax.bar([x - 0.27 for x in xs], [1 / (1 - r["flops_removed_frac"]) for r in rs], 0.27, label="MAC reduction (x)")
        ax.bar(list(xs), [r["speedup_eager_graph"] for r in rs], 0.27, label="speedup eager+graph")
        ax.bar([x + 0.27 for x in xs], [r["speedup_compiled"] or 0 for r in rs], 0.27, label="speedup compiled")
        ax.axhline(1.0, color="k", lw=0.5)
        ax.set_xticks(list(xs), labels, fontsize=7)
        ax.set_title(f"batch {batch}, fp16")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
