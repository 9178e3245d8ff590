"""MACs versus real GPU speedup of structured channel pruning, uniform and latency-aware.

For each model: trace it with sparsec, measure its per-layer latency table
on this GPU (``sparsec.passes.prune.latency.profile``, the code behind
``sparsec profile``), then make the variants

- dense;
- ``prune-channels{ratio=R,importance=l2,round-to=8}`` for each ratio (uniform);
- ``prune-channels{objective=latency,budget=B,lut=...,round-to=16,batch=256,max-ratio=M}``
  for each budget (HALP-style: widths chosen so the table predicts at most
  B x the dense latency at batch 256);

each followed by ``fold-bn,dce``. Every variant is timed on the GPU in fp16,
channels-last, at each batch size, as eager PyTorch captured in a CUDA graph,
and compiled with ``torch.compile`` (Inductor, ``--compile-mode``), also
replayed from a CUDA graph. Dense and pruned variants of a model are timed
side by side in one process; speedups are ratios of those medians. Each
record also carries the latency the table predicts for the variant's widths
(the sum over conv/linear layers only: norms, activations, adds and pools
are not in the table), next to the measured one.

``flops`` and ``params`` are those of the traced program (batch 2, 224x224):
per image, halve ``flops``; ``flops_removed_frac`` does not depend on it.

The compiled timings come last, in priority order (batch 256 first; dense,
latency, then uniform variants), and stop being started once the run has
used ``--time-budget-s``: a skipped one is recorded as null, and the JSON's
``trimmed`` says what was skipped.

    python benchmarks/pruning.py --models resnet50,mobilenet_v2,efficientnet_b0 --ratios 0.3,0.5,0.7 --budgets 0.5

Writes benchmarks/results/pruning_<gpu>.json, a PNG beside it, and the latency
tables as luts/lut_<model>_<gpu>.json under the output directory (they are
inputs to the pruner, not results: the repo keeps them in benchmarks/luts/).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, gpu_short_name, median, p90, time_cuda_graph, write_results  # noqa: E402

log = logging.getLogger("bench.pruning")
DEVICE = "cuda"
T0 = time.perf_counter()


def elapsed() -> float:
    return time.perf_counter() - T0


def trace(model_name: str, seed: int = 0):
    import torchvision

    import sparsec
    from sparsec.passes import PassManager

    torch.manual_seed(seed)
    model = torchvision.models.get_model(model_name, weights=None).eval()
    mod = sparsec.trace(model, torch.randn(2, 3, 224, 224), name=model_name)
    PassManager.parse("canonicalize").run(mod)
    return mod


def variant(dense, prune: str | None, lut, batches: list[int]) -> dict:
    """Prune a clone of ``dense`` with the ``prune`` pass text (None: dense), then fold BN;
    the table's prediction for the plan's widths at each batch size."""
    from sparsec.ir import Cost
    from sparsec.passes import PassManager
    from sparsec.passes.prune.latency import plan_widths

    mod = dense.clone()
    widths = {}
    if prune is not None:
        p = PassManager.parse(prune).passes[0]
        widths = plan_widths(mod, p.make_plan(mod))
    predicted = {b: lut.predict(dense, b, widths) for b in batches} if lut is not None else {}
    pipeline = ",".join(x for x in ("canonicalize", prune, "fold-bn", "dce") if x)
    records = PassManager.parse(",".join(x for x in (prune, "fold-bn", "dce") if x)).run(mod)
    cost = mod.analysis(Cost)
    return {"gm": mod.gm, "macs": cost.total_macs, "params": cost.total_params, "pipeline": pipeline,
            "predicted": predicted, "stats": dict(records[0].stats) if prune else {}}


def to_gpu(gm):
    """fp16 channels-last on the GPU, without export's input guard (it pins the traced batch size)."""
    from sparsec.ir.module import is_valueless

    for n in list(gm.graph.nodes):
        if n.op != "output" and is_valueless(n) and not n.users:  # the guard, and metadata asserts
            gm.graph.erase_node(n)
    gm.recompile()
    return gm.to(DEVICE, torch.float16 if DEVICE == "cuda" else torch.float32).to(memory_format=torch.channels_last)


def inputs(batch: int):
    return torch.randn(batch, 3, 224, 224, device="cuda", dtype=torch.float16).to(memory_format=torch.channels_last)


def time_compiled(gm, batch: int, mode: str, iters: int) -> tuple[list[float], float]:
    x = inputs(batch)
    torch._dynamo.reset()
    with torch.no_grad():
        t0 = time.perf_counter()
        compiled = torch.compile(gm, mode=mode, dynamic=False)
        compiled(x)
        torch.cuda.synchronize()
        compile_s = time.perf_counter() - t0
        return time_cuda_graph(lambda: compiled(x), iters=iters), compile_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet50,mobilenet_v2,efficientnet_b0")
    ap.add_argument("--ratios", default="0.3,0.5,0.7")
    ap.add_argument("--budgets", default="0.5", help="latency budgets (fractions of dense); '' for none")
    ap.add_argument("--max-ratio", type=float, default=0.8, help="latency objective: the most any group loses")
    ap.add_argument("--batches", default="1,256")
    ap.add_argument("--compile-mode", default="default", help="torch.compile mode, or 'none' to skip")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--points", type=int, default=5, help="latency table: widths per prunable dim")
    ap.add_argument("--time-budget-s", type=float, default=330.0,
                    help="start no new torch.compile once the run has taken this long")
    ap.add_argument("--out", type=Path, default=None, help="results directory (default benchmarks/results)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks/pruning.py needs a CUDA GPU")
    from sparsec.api import resolve_target
    from sparsec.passes.prune.latency import profile

    out_dir = args.out or ROOT / "benchmarks" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    compile_mode = None if args.compile_mode == "none" else args.compile_mode
    ratios = [float(r) for r in args.ratios.split(",") if r]
    budgets = [float(b) for b in args.budgets.split(",") if b]
    batches = [int(b) for b in args.batches.split(",")]
    target = resolve_target("h100")
    gpu = gpu_short_name()
    method = (f"fp16 NHWC, random init weights (seed 0), random inputs; median of {args.iters} CUDA-event timings of "
              f"CUDA-graph replays after 10 warm-ups; compiled = torch.compile(mode={compile_mode!r}, dynamic=False) "
              "replayed from a CUDA graph; dense and pruned variants timed side by side in one process. "
              "predicted_latency_ms: the sum over conv/linear layers of the latency table measured by this run "
              "(lut_<model>_<gpu>.json), interpolated at the variant's widths; it leaves out every other op")
    records: list[dict] = []
    trimmed: list[str] = []
    luts: dict[str, str] = {}

    def save():
        path = write_results("pruning", method, records, out_dir, trimmed=trimmed, luts=luts,
                             time_budget_s=args.time_budget_s, elapsed_s=round(elapsed(), 1))
        plot(records, path.with_suffix(".png"))
        return path

    models: dict[str, dict] = {}
    for name in args.models.split(","):
        t = elapsed()
        dense = trace(name)
        lut = profile(dense, target, batches=batches, points=args.points)
        lut_path = out_dir / "luts" / f"lut_{name}_{gpu}.json"
        lut_path.parent.mkdir(exist_ok=True)
        lut_path.write_text(lut.to_json())
        luts[name] = f"luts/{lut_path.name}"
        print(f"[{elapsed():6.1f}s] {name}: traced and profiled {len(lut.tables)} layer shapes "
              f"({elapsed() - t:.1f} s)", flush=True)
        specs = [(None, "dense", None)]
        specs += [(r, "uniform", f"prune-channels{{ratio={r},importance=l2,round-to=8}}") for r in ratios]
        specs += [(b, "latency", f"prune-channels{{objective=latency,budget={b},lut={os.path.relpath(lut_path)},round-to=16,"
                                 f"batch=256,max-ratio={args.max_ratio},importance=l2}}") for b in budgets]
        vs = []
        for value, objective, prune in specs:
            try:
                v = variant(dense, prune, lut, batches)
            except Exception as exc:  # keep the other variants: record what failed
                traceback.print_exc()
                trimmed.append(f"{name} {objective} {value}: failed to build: {type(exc).__name__}: {exc}")
                continue
            v.update(value=value, objective=objective, gm=to_gpu(v["gm"]))
            vs.append(v)
        models[name] = {"variants": vs}
        base = vs[0]
        for batch in batches:
            for v in vs:
                x = inputs(batch)
                with torch.no_grad():
                    eager = time_cuda_graph(lambda: v["gm"](x), iters=args.iters)
                pred, pred0 = v["predicted"].get(batch), base["predicted"].get(batch)
                rec = {
                    "model": name, "ratio": v["value"] if v["objective"] == "uniform" else None,
                    "budget": v["value"] if v["objective"] == "latency" else None,
                    "objective": v["objective"] if v["value"] is not None else "dense",
                    "batch": batch, "dtype": "fp16",
                    "flops": 2 * v["macs"], "params": v["params"], "flops_removed_frac": 1 - v["macs"] / base["macs"],
                    "params_removed_frac": 1 - v["params"] / base["params"],
                    "latency_ms_eager_graph": median(eager), "latency_ms_eager_graph_p90": p90(eager),
                    "latency_ms_compiled": None, "compile_s": None,
                    "predicted_latency_ms": pred, "predicted_dense_latency_ms": pred0,
                    "predicted_speedup": pred0 / pred if pred else None,
                    "pipeline": v["pipeline"], "pass_stats": v["stats"],
                }
                rec["speedup_eager_graph"] = (base.get("eager", {}).get(batch) or rec["latency_ms_eager_graph"]) \
                    / rec["latency_ms_eager_graph"]
                v.setdefault("eager", {})[batch] = rec["latency_ms_eager_graph"]
                rec["speedup_compiled"] = None
                v.setdefault("records", {})[batch] = rec
                records.append(rec)
                print(f"[{elapsed():6.1f}s] {name:16s} bs{batch:<4d} {rec['objective']:8s} {v['value']}  "
                      f"FLOPs -{rec['flops_removed_frac']:.0%}  eager-graph {rec['latency_ms_eager_graph']:.3f} ms "
                      f"(x{rec['speedup_eager_graph']:.2f}; predicted x{rec['predicted_speedup'] or float('nan'):.2f})",
                      flush=True)
        save()

    # torch.compile, in priority order, while the time budget lasts
    if compile_mode:
        order = {"dense": 0, "latency": 1, "uniform": 2}
        todo = sorted(((batch, name, v) for name, m in models.items() for v in m["variants"] for batch in batches),
                      key=lambda t: (-t[0], order[t[2]["objective"] if t[2]["value"] is not None else "dense"],
                                     abs((t[2]["value"] or 0.5) - 0.5), list(models).index(t[1])))
        for batch, name, v in todo:
            rec = v["records"][batch]
            label = f"{name} bs{batch} {rec['objective']} {v['value']}"
            if elapsed() > args.time_budget_s:
                trimmed.append(f"compiled {label}: not run (time budget {args.time_budget_s:.0f} s used)")
                continue
            try:
                times, compile_s = time_compiled(v["gm"], batch, compile_mode, args.iters)
            except Exception as exc:
                traceback.print_exc()
                trimmed.append(f"compiled {label}: failed: {type(exc).__name__}: {str(exc)[:200]}")
                continue
            rec["latency_ms_compiled"], rec["compile_s"] = median(times), round(compile_s, 1)
            v.setdefault("compiled", {})[batch] = rec["latency_ms_compiled"]
            print(f"[{elapsed():6.1f}s] compiled {label}: {rec['latency_ms_compiled']:.3f} ms "
                  f"(compile {compile_s:.0f} s)", flush=True)
            save()
        for name, m in models.items():  # speedups where both dense and the variant were compiled
            dense_c = m["variants"][0].get("compiled", {})
            for v in m["variants"]:
                for batch, rec in v["records"].items():
                    if rec["latency_ms_compiled"] and dense_c.get(batch):
                        rec["speedup_compiled"] = dense_c[batch] / rec["latency_ms_compiled"]
    else:
        trimmed.append("compiled: not run (--compile-mode none)")
    path = save()
    print(f"wrote {path}")
    table(records)


def table(records: list[dict]) -> None:
    print(f"{'model':16s} {'bs':>4s} {'variant':12s} {'GFLOPs':>7s} {'Mparams':>7s} {'eager ms':>9s} {'x':>5s} "
          f"{'comp ms':>8s} {'x':>5s} {'pred ms':>8s} {'pred x':>6s}")
    for r in records:
        v = r["objective"] + ("" if r["objective"] == "dense" else f" {r['ratio'] or r['budget']}")
        f = lambda x, spec: format(x, spec) if x is not None else "-"  # noqa: E731
        print(f"{r['model']:16s} {r['batch']:>4d} {v:12s} {r['flops'] / 1e9:7.2f} {r['params'] / 1e6:7.2f} "
              f"{r['latency_ms_eager_graph']:9.3f} {r['speedup_eager_graph']:5.2f} {f(r['latency_ms_compiled'], '8.3f'):>8s} "
              f"{f(r['speedup_compiled'], '5.2f'):>5s} {f(r['predicted_latency_ms'], '8.3f'):>8s} "
              f"{f(r['predicted_speedup'], '6.2f'):>6s}")


def plot(records: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib missing: no plot")
        return
    pruned = [r for r in records if r["objective"] != "dense"]
    batches = sorted({r["batch"] for r in pruned})
    fig, axes = plt.subplots(1, len(batches), figsize=(7 * len(batches), 4.5), squeeze=False)
    w = 0.2
    for ax, batch in zip(axes[0], batches):
        rs = [r for r in pruned if r["batch"] == batch]
        labels = [f"{r['model']}\n{'r' if r['objective'] == 'uniform' else 'lat'}={r['ratio'] or r['budget']}" for r in rs]
        xs = list(range(len(rs)))
        ax.bar([x - 1.5 * w for x in xs], [1 / (1 - r["flops_removed_frac"]) for r in rs], w, label="FLOP reduction (x)")
        ax.bar([x - 0.5 * w for x in xs], [r["predicted_speedup"] or 0 for r in rs], w, label="predicted speedup (LUT)")
        ax.bar([x + 0.5 * w for x in xs], [r["speedup_eager_graph"] for r in rs], w, label="measured eager+graph")
        ax.bar([x + 1.5 * w for x in xs], [r["speedup_compiled"] or 0 for r in rs], w, label="measured compiled")
        ax.axhline(1.0, color="k", lw=0.5)
        ax.set_xticks(xs, labels, fontsize=6)
        ax.set_title(f"batch {batch}, fp16, dense = 1")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
