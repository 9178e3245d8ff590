"""Accuracy of dense -> pruned -> pruned+fine-tuned -> pruned+2:4+fine-tuned, on Fashion-MNIST.

Models: torchvision ResNet-50, MobileNetV2, EfficientNet-B0, topology unchanged
except the classifier's output count (10 classes), trained from scratch.
Input: Fashion-MNIST 28x28 grayscale, resized (bilinear) to --size and
repeated to 3 channels, normalised; training augmentation: random flip and a
translation of up to size/8 px. Data lives on the GPU as uint8
(sparsec.passes.finetune.data.TensorBatches).

Per (model, seed), within one process:
  dense     train from scratch (SGD-Nesterov, cosine, warm-up, label smoothing, bf16, channels-last)
  pruned    trace with sparsec, prune-channels (importance=taylor from real training batches, the
            pruner's first-order criterion; uniform scope, round-to 8) at the smallest channel ratio
            of --ratios that removes >= --min-flops-removed of the FLOPs; no fine-tuning
  pruned-ft fine-tune the pruned IR graph: CE + KD from the dense model (kd-weight, T)
  pruned-24-ft  2:4 on top of pruned-ft (the registered sparsify-2-4 pass, cost-model=shape, min-k=64,
            else magnitude masks), masks held while fine-tuning again with the same recipe

Seeds run seed-major (every model's seed 0 first) and a seed is started only
when the time it took last time still fits in --budget-s; what did not run is
listed in the JSON. Results are written after every (model, seed).

    python benchmarks/accuracy/run.py --models resnet50 --seeds 0,1,2 --data .devcache/fashion-mnist --out $OUT
    python benchmarks/accuracy/run.py --report A.json B.json      # merge runs -> results JSON + PNGs

The second form writes benchmarks/results/accuracy_<gpu>.json (summary: mean
and std of top-1 per stage, drop versus dense, paired t-tests over seeds) and
accuracy_<gpu>.png beside it.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import ROOT, environment, gpu_short_name, median, time_cuda_graph  # noqa: E402

log = logging.getLogger("bench.accuracy")
STAGES = ("dense", "pruned", "pruned-ft", "pruned-24-ft")


def recipe(args) -> dict:
    return {
        "input": f"fashion-mnist 28x28 gray -> bilinear {args.size}x{args.size}, repeated to 3 channels, "
                 "normalised (0.2860, 0.3530); train aug: flip + translate <= size/8",
        "batch": args.batch, "dense_epochs": args.dense_epochs, "ft_epochs": args.ft_epochs,
        "dense": {"optimizer": "sgd-nesterov", "momentum": 0.9, "lr": args.lr, "weight_decay": 5e-4,
                  "schedule": "cosine", "warmup_epochs": 1, "label_smoothing": 0.1, "grad_clip": 5.0},
        "finetune": {"optimizer": "sgd-nesterov", "momentum": 0.9, "lr": args.ft_lr, "weight_decay": 5e-5,
                     "schedule": "cosine", "warmup_epochs": 0, "label_smoothing": 0.1, "grad_clip": 5.0,
                     "kd_weight": args.kd_weight, "temperature": 4.0},
        "prune": {"importance": "taylor |w*dL/dw| (2 real training batches of 128, CE loss, eval-mode BN, fp32)", "scope": "uniform",
                  "round_to": 8, "ratio": f"smallest of {args.ratios} removing >= {args.min_flops_removed} FLOPs"},
        "sparse24": "sparsify-2-4{cost-model=shape,min-k=64} if registered and working, else magnitude 2:4 masks",
        "amp": "bf16 autocast", "channels_last": True, "cudnn_benchmark": True,
    }


def configs(args, seed: int):
    from sparsec.passes.finetune import FinetuneConfig

    dense = FinetuneConfig(epochs=args.dense_epochs, lr=args.lr, optimizer="sgd", weight_decay=5e-4,
                           warmup_epochs=1.0 if args.dense_epochs > 1 else 0.0, label_smoothing=0.1,
                           grad_clip=5.0, amp=True, channels_last=True, seed=seed, progress=False, log_every=100)
    ft = FinetuneConfig(epochs=args.ft_epochs, lr=args.ft_lr, optimizer="sgd", weight_decay=5e-5,
                        label_smoothing=0.1, grad_clip=5.0, kd_weight=args.kd_weight, temperature=4.0, amp=True,
                        channels_last=True, seed=seed + 1000, progress=False, log_every=100)
    return dense, ft


def load_data(args, device):
    from sparsec.passes.finetune.data import TensorBatches, load_fashion_mnist

    xi, yi = load_fashion_mnist("train", args.data)
    xt, yt = load_fashion_mnist("test", args.data)
    if args.train_limit:
        xi, yi = xi[:args.train_limit], yi[:args.train_limit]
    xi, yi, xt, yt = (t.to(device) for t in (xi, yi, xt, yt))

    def train(seed: int) -> TensorBatches:
        return TensorBatches(xi, yi, args.batch, size=args.size, channels=3, shuffle=True, augment=True,
                             drop_last=True, seed=seed)

    test = TensorBatches(xt, yt, 500, size=args.size, channels=3)
    calib = [(xi[i * 128:(i + 1) * 128].cpu(), yi[i * 128:(i + 1) * 128].cpu()) for i in range(2)]
    return train, test, calib, (int(xi.shape[0]), int(xt.shape[0]))


def choose_ratio(name: str, args) -> tuple[float, float]:
    """The smallest channel ratio (of --ratios) whose pruned graph removes >= min_flops_removed."""
    import torchvision

    import sparsec
    from sparsec.ir import Cost

    m = torchvision.models.get_model(name, weights=None, num_classes=10).eval()
    mod = sparsec.trace(m, torch.randn(2, 3, args.size, args.size), dynamic_batch=True)
    base = mod.analysis(Cost).total_macs
    removed = 0.0
    for r in [float(x) for x in args.ratios.split(",")]:
        c = mod.clone()
        sparsec.PassManager.parse(f"prune-channels{{ratio={r},importance=l2,round-to=8}}").run(c)
        removed = 1 - c.analysis(Cost).total_macs / base
        if removed >= args.min_flops_removed:
            return r, removed
    return r, removed


def prune_taylor(mod, ratio: float, calib, device):
    """Taylor plan (|w * dL/dw|) from real training batches, applied with apply_plan.

    The planner reads gradients off the CPU graph. The gradient is computed on
    ``device`` (fp32, eval-mode BN) and handed back through the surrogate loss
    sum(w * g), whose gradient with respect to w is exactly g.
    """
    from sparsec.passes.finetune.data import prepare_images
    from sparsec.passes.prune.apply import apply_plan
    from sparsec.passes.prune.planner import ChannelPrunePlanner

    size = mod.example_inputs[0].shape[-1]

    def surrogate(gm):
        g = copy.deepcopy(gm).to(device)
        names, params = zip(*[(k, p) for k, p in g.named_parameters() if p.is_floating_point()])
        for p in params:
            p.requires_grad_(True)
        total = sum(torch.nn.functional.cross_entropy(g(prepare_images(x.to(device), size, 3)), y.to(device))
                    for x, y in calib)
        grads = torch.autograd.grad(total, params, allow_unused=True)
        cpu = dict(gm.named_parameters())
        return sum((cpu[k] * gr.detach().cpu()).sum() for k, gr in zip(names, grads) if gr is not None)

    plan = ChannelPrunePlanner(ratio, "taylor", round_to=8, calibration=surrogate).plan(mod)
    stats = apply_plan(mod, plan)
    mod.recompile()
    mod.verify()
    return plan, stats


def latency(model: torch.nn.Module, size: int, batch: int = 256, rotate: int = 8, iters: int = 30) -> dict | None:
    """Inference latency of a bf16 channels-last copy: CUDA-graph replays over ``rotate`` random input
    batches (> L2 in total), CUDA-event median per batch. None on the CPU or on failure."""
    if not torch.cuda.is_available():
        return None
    try:
        from sparsec.passes.finetune.trainable import make_trainable

        m = make_trainable(copy.deepcopy(model)).eval().to("cuda", torch.bfloat16).to(memory_format=torch.channels_last)
        xs = [torch.randn(batch, 3, size, size, device="cuda", dtype=torch.bfloat16)
              .contiguous(memory_format=torch.channels_last) for _ in range(rotate)]

        def run():
            for x in xs:
                m(x)

        with torch.no_grad():
            times = time_cuda_graph(run, warmup=5, iters=iters)
        ms = median(times) / rotate
        del m, xs
        return {"latency_ms_median": ms, "throughput_img_s": batch / ms * 1e3, "latency_batch": batch,
                "latency_method": f"bf16 NHWC eager graph in a CUDA graph, {rotate} rotated random batches, "
                                  f"median of {iters} CUDA-event timings after 5 warm-ups"}
    except Exception as exc:  # timing is extra: never lose the accuracy numbers to it
        log.warning("latency measurement failed: %s", exc)
        return {"latency_error": f"{type(exc).__name__}: {str(exc)[:200]}"}


def run_seed(name: str, seed: int, ratio: float, data, args, device, timed: bool = False) -> list[dict]:
    import torchvision

    import sparsec
    from sparsec.ir import Cost
    from sparsec.passes.finetune import evaluate, finetune, sparsify_24

    train, test, calib, _ = data
    dense_cfg, ft_cfg = configs(args, seed)
    torch.manual_seed(seed)
    model = torchvision.models.get_model(name, weights=None, num_classes=10)
    recs, times = [], {}

    def record(stage: str, ev: dict, cost, extra=None):
        rec = {"model": name, "dataset": "fashion-mnist", "input_size": args.size, "stage": stage, "seed": seed,
               "top1": ev["top1"], "top5": ev["top5"], "loss": ev["loss"], "n_test": ev["n"],
               "flops": cost.total_macs, "params": cost.total_params,  # 2 x MACs / the traced batch of 2
               "epochs": {"dense": args.dense_epochs, "pruned": 0, "pruned-ft": args.ft_epochs,
                          "pruned-24-ft": args.ft_epochs}[stage], "recipe": "see top-level 'recipe'",
               **(extra or {})}
        recs.append(rec)
        print(f"  {name:16s} seed {seed} {stage:13s} top1 {ev['top1']:.4f} top5 {ev['top5']:.4f} "
              f"loss {ev['loss']:.4f}  GFLOPs/img {rec['flops'] / 1e9:.3f}  params {rec['params'] / 1e6:.2f}M"
              f"  {extra or ''}", flush=True)
        return rec

    t0 = time.perf_counter()
    res = finetune(model, train(seed), None, config=dense_cfg, batch_size=args.batch)
    times["dense_train_s"] = time.perf_counter() - t0
    img_s = [h["img_s"] for h in res.history if "img_s" in h]
    ev = evaluate(model, test, device=device, amp=True, channels_last=True)
    model = model.eval().cpu()
    # sparsec.trace shares tensors with the nn.Module; trace a copy so the teacher stays dense
    mod = sparsec.trace(copy.deepcopy(model), torch.randn(2, 3, args.size, args.size), name=name, dynamic_batch=True)
    dense_cost = mod.analysis(Cost)
    lat_dense = latency(model, args.size) if timed else None
    record("dense", ev, dense_cost, {**(lat_dense or {}), "train_s": round(times["dense_train_s"], 1),
                                      "train_img_s_median": sorted(img_s)[len(img_s) // 2] if img_s else None,
                                      "final_train_loss": res.history[-1]["loss"] if res.history else None})

    t0 = time.perf_counter()
    plan, stats = prune_taylor(mod, ratio, calib, device)
    cost = mod.analysis(Cost)
    removed = 1 - cost.total_macs / dense_cost.total_macs
    prune_extra = {"channel_ratio": ratio, "flops_removed_frac": removed, "groups_pruned": stats["groups_pruned"],
                   "channels_removed": stats["channels_removed"]}
    prune_s = time.perf_counter() - t0
    ev = evaluate(mod, test, device=device, amp=True, channels_last=True)
    lat = latency(mod.gm, args.size) if timed else None
    if lat is not None:  # the same graph shapes in every later stage (2:4 runs on dense kernels in eager)
        prune_extra.update(lat)
    record("pruned", ev, cost, {**prune_extra, "prune_s": round(prune_s, 1)})

    teacher = model.to(device)
    t0 = time.perf_counter()
    res = finetune(mod, train(seed + 100), None, teacher=teacher, config=ft_cfg, batch_size=args.batch)
    ev = evaluate(mod, test, device=device, amp=True, channels_last=True)
    record("pruned-ft", ev, cost, {**prune_extra, "train_s": round(time.perf_counter() - t0, 1)})

    t0 = time.perf_counter()
    mod.gm.cpu()
    how, n24 = sparsify_24(mod)
    mod.verify()
    masked = total = 0
    from sparsec.ir import meta as M

    for node in mod.nodes("get_attr"):
        p = mod.get_param(node.target)
        if p.dim() >= 2:
            total += p.numel()
            if M.get(node, M.Sparsity24) is not None:
                masked += p.numel()
    res = finetune(mod, train(seed + 200), None, teacher=teacher, config=ft_cfg.replace(seed=seed + 2000),
                   batch_size=args.batch)
    from sparsec.ir.verify import count_24_violations

    viol = sum(count_24_violations(mod.get_param(n.target), M.get(n, M.Sparsity24).dim)
               for n in mod.nodes("get_attr") if M.get(n, M.Sparsity24) is not None)
    ev = evaluate(mod, test, device=device, amp=True, channels_last=True)
    record("pruned-24-ft", ev, cost, {**prune_extra, "sparse24": how, "sparse24_weights": n24,
                                      "sparse24_weight_frac": masked / max(total, 1), "sparse24_violations": viol,
                                      "train_s": round(time.perf_counter() - t0, 1)})
    return recs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet50")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--jobs", default=None, help="explicit order, e.g. resnet50:0,resnet50:1,mobilenet_v2:0 "
                                                 "(overrides --models/--seeds)")
    ap.add_argument("--data", default=None, help="directory with the four Fashion-MNIST IDX .gz files")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--dense-epochs", type=float, default=10)
    ap.add_argument("--ft-epochs", type=float, default=3)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--ft-lr", type=float, default=0.02)
    ap.add_argument("--kd-weight", type=float, default=1.0)
    ap.add_argument("--ratios", default="0.25,0.3,0.32,0.35,0.4,0.45,0.5")
    ap.add_argument("--min-flops-removed", type=float, default=0.5)
    ap.add_argument("--budget-s", type=float, default=1e9, help="start no seed that would end past this")
    ap.add_argument("--train-limit", type=int, default=0, help="use only the first N training images (smoke)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--report", nargs="+", type=Path, help="merge these run JSONs into the results file + PNG")
    args = ap.parse_args()
    if args.report:
        report(args.report, args.out)
        return
    t_start = time.perf_counter()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("sparsec.finetune").setLevel(logging.INFO)  # a line every 100 steps: loss, acc, img/s
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    data = load_data(args, device)
    if args.jobs:
        jobs = [(j.split(":")[0], int(j.split(":")[1])) for j in args.jobs.split(",")]
    else:  # seed-major: every model's seed 0 first
        jobs = [(m, int(sd)) for sd in args.seeds.split(",") for m in args.models.split(",")]
    ratios, timed = {}, set()
    records, not_run, seed_s = [], [], {}
    out = args.out or ROOT / "benchmarks" / "results"
    for name, seed in jobs:
        elapsed = time.perf_counter() - t_start
        # a model not yet run is expected to take as long as the slowest seed so far
        need = seed_s.get(name, max(seed_s.values(), default=None))
        if need is not None and elapsed + need > args.budget_s:
            not_run.append({"model": name, "seed": seed,
                            "why": f"budget: {elapsed:.0f} s used, expected {need:.0f} s for this seed, "
                                   f"budget {args.budget_s:.0f} s"})
            print(f"skip {name} seed {seed}: {not_run[-1]['why']}", flush=True)
            continue
        t0 = time.perf_counter()
        try:
            if name not in ratios:
                ratios[name] = choose_ratio(name, args)
                print(f"{name}: channel ratio {ratios[name][0]} removes {ratios[name][1]:.3f} of the FLOPs", flush=True)
            records += run_seed(name, seed, ratios[name][0], data, args, device, timed=name not in timed)
            timed.add(name)
        except Exception as exc:  # a diverged run is a result too: say so, go on with the next
            log.exception("%s seed %d failed", name, seed)
            not_run.append({"model": name, "seed": seed, "why": f"failed: {type(exc).__name__}: {exc}"})
        seed_s[name] = time.perf_counter() - t0
        print(f"{name} seed {seed}: {seed_s[name]:.0f} s", flush=True)
        write_run(out, args, records, not_run, seed_s, data[3])
    path = write_run(out, args, records, not_run, seed_s, data[3])
    print(f"wrote {path}")
    print_table(summarize(records))


def write_run(out: Path, args, records, not_run, seed_s, sizes) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    doc = {"kind": "accuracy", **environment(),
           "method": "top-1/top-5 on the full 10k Fashion-MNIST test set after training on the 60k train set; "
                     "FLOPs = 2 x MACs per image from sparsec's Cost analysis (2:4 zeros not subtracted); "
                     "params = all parameters of the (pruned) graph",
           "recipe": recipe(args), "train_test_sizes": list(sizes), "seconds_per_seed": seed_s,
           "not_run": not_run, "records": records, "summary": summarize(records)}
    path = out / f"accuracy_run_{gpu_short_name()}_{'-'.join(sorted({r['model'] for r in records})) or 'none'}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, path)
    return path


# -- summary, t-tests, plots ---------------------------------------------------------------------

def summarize(records: list[dict]) -> list[dict]:
    import statistics

    try:
        from scipy import stats as st
    except ImportError:  # the device has scipy via torch's deps only sometimes
        st = None
    out = []
    for model in dict.fromkeys(r["model"] for r in records):
        by = {s: {r["seed"]: r for r in records if r["model"] == model and r["stage"] == s} for s in STAGES}
        for stage in STAGES:
            rs = by[stage]
            if not rs:
                continue
            top1 = [r["top1"] for r in rs.values()]
            row = {"model": model, "stage": stage, "seeds": sorted(rs), "n": len(top1),
                   "top1_mean": statistics.fmean(top1), "top1_std": statistics.stdev(top1) if len(top1) > 1 else None,
                   "top5_mean": statistics.fmean(r["top5"] for r in rs.values()),
                   "flops": statistics.fmean(r["flops"] for r in rs.values()),
                   "params": statistics.fmean(r["params"] for r in rs.values()),
                   "flops_removed_frac": statistics.fmean(r.get("flops_removed_frac", 0.0) for r in rs.values())}
            lat = [r["latency_ms_median"] for r in rs.values() if r.get("latency_ms_median")]
            row["latency_ms_median"] = statistics.fmean(lat) if lat else None
            row["throughput_img_s"] = statistics.fmean(r["throughput_img_s"] for r in rs.values()
                                                       if r.get("throughput_img_s")) if lat else None
            for ref in ("dense", "pruned-ft"):
                if ref == stage or ref == "pruned-ft" and stage != "pruned-24-ft":
                    continue
                common = sorted(set(rs) & set(by[ref]))
                a = [by[ref][s]["top1"] for s in common]
                b = [rs[s]["top1"] for s in common]
                if not common:
                    continue
                row[f"drop_vs_{ref}_pt"] = 100 * statistics.fmean(x - y for x, y in zip(a, b))
                p = None
                if st is not None and len(common) >= 2 and any(x != y for x, y in zip(a, b)):
                    p = float(st.ttest_rel(a, b).pvalue)
                row[f"p_vs_{ref}"] = None if p is None or math.isnan(p) else p
            out.append(row)
    return out


def print_table(summary: list[dict]) -> None:
    print(f"{'model':16s} {'stage':13s} {'n':>2s} {'top1 % (mean±std)':>18s} {'drop pt':>8s} {'p(dense)':>9s} "
          f"{'GFLOPs':>7s} {'-FLOPs':>7s} {'params M':>8s} {'ms/b256':>8s}")
    for r in summary:
        std = f"±{100 * r['top1_std']:.2f}" if r["top1_std"] is not None else "±n/a"
        drop = r.get("drop_vs_dense_pt")
        p = r.get("p_vs_dense")
        lat = r.get("latency_ms_median")
        print(f"{r['model']:16s} {r['stage']:13s} {r['n']:2d} {100 * r['top1_mean']:11.2f}{std:>7s} "
              f"{'' if drop is None else f'{drop:.2f}':>8s} {'' if p is None else f'{p:.3g}':>9s} "
              f"{r['flops'] / 1e9:7.3f} {100 * r['flops_removed_frac']:6.1f}% {r['params'] / 1e6:8.2f} "
              f"{'' if lat is None else f'{lat:.3f}':>8s}")


def report(paths: list[Path], out_dir: Path | None) -> Path:
    docs = [json.loads(p.read_text()) for p in paths]
    records = [r for d in docs for r in d["records"]]
    first = docs[0]
    doc = {"kind": "accuracy", "device": first["device"], "capability": first["capability"],
           "versions": first["versions"], "date": max(d["date"] for d in docs),
           "command": " ".join([os.path.relpath(sys.argv[0], ROOT) if sys.argv[0].startswith(str(ROOT))
                                else sys.argv[0], *sys.argv[1:]]),
           "git_commit": first["git_commit"], "method": first["method"],
           "runs": [{k: d[k] for k in ("device", "date", "command", "git_commit", "seconds_per_seed", "not_run",
                                       "recipe", "train_test_sizes")} for d in docs],
           "scope": scope(records, docs), "records": records, "summary": summarize(records)}
    short = next((s for s in ("h200", "h100", "a100") if s in first["device"].lower()), "cpu")
    out_dir = out_dir or ROOT / "benchmarks" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"accuracy_{short}.json"
    path.write_text(json.dumps(doc, indent=1) + "\n")
    plot(doc["summary"], path.with_suffix(".png"))
    print_table(doc["summary"])
    print(f"wrote {path} and {path.with_suffix('.png')}")
    return path


def scope(records: list[dict], docs: list[dict]) -> dict:
    """What ran and what did not, from the records themselves."""
    ran = {}
    for r in records:
        ran.setdefault(r["model"], {}).setdefault(r["stage"], []).append(r["seed"])
    summary = summarize(records)
    goal = {row["model"]: {"drop_vs_dense_pt": row.get("drop_vs_dense_pt"),
                           "meets_0.3pt_goal": row.get("drop_vs_dense_pt") is not None
                           and row["drop_vs_dense_pt"] <= 0.3}
            for row in summary if row["stage"] == "pruned-24-ft"}
    return {
        "seeds_run": {m: {st: sorted(v) for st, v in stages.items()} for m, stages in ran.items()},
        # a (model, seed) skipped in one run and run in another counts as run
        "not_run": list({(x["model"], x["seed"]): x for d in docs for x in d.get("not_run", [])
                         if x["seed"] not in {sd for sds in ran.get(x["model"], {}).values() for sd in sds}
                         }.values()),
        "final_stage_vs_goal": goal,
        "not_in_this_experiment": [
            "the latency-budget pruning variant", "a search for the largest ratio meeting the 0.3 pt goal",
            "2:4 latency with sparse kernels (eager runs 2:4 weights on dense kernels)", "a 2-GPU DDP run",
        ],
    }


def plot(summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in summary))
    fig, axes = plt.subplots(1, 3, figsize=(18, 4.2))
    width = 0.8 / len(STAGES)
    colors = ("#4c72b0", "#dd8452", "#55a868", "#c44e52")
    for k, stage in enumerate(STAGES):
        rows = [next((r for r in summary if r["model"] == m and r["stage"] == stage), None) for m in models]
        xs = [i + (k - 1.5) * width for i in range(len(models))]
        acc = [100 * r["top1_mean"] if r else 0 for r in rows]
        err = [100 * (r["top1_std"] or 0) if r else 0 for r in rows]
        axes[0].bar(xs, acc, width, yerr=err, capsize=3, label=stage, color=colors[k])
        for x, r in zip(xs, rows):
            if r:
                axes[0].text(x, 100 * r["top1_mean"] + 0.3, f"{100 * r['top1_mean']:.1f}\nn={r['n']}",
                             ha="center", fontsize=6)
        axes[1].bar(xs, [r["flops"] / 1e9 if r else 0 for r in rows], width, label=stage, color=colors[k])
        axes[2].bar(xs, [(r.get("throughput_img_s") or 0) / 1e3 if r else 0 for r in rows], width, label=stage,
                    color=colors[k])
    lo = min((100 * r["top1_mean"] for r in summary), default=0)
    axes[0].set_ylim(max(0, lo - 5), 100)
    axes[0].set_ylabel("top-1 % (Fashion-MNIST test, mean ± std over seeds)")
    axes[1].set_ylabel("GFLOPs per image (2:4 zeros not subtracted)")
    axes[2].set_ylabel("inference k img/s (bf16 eager, batch 256)")
    for ax in axes:
        ax.set_xticks(range(len(models)), models)
        ax.legend(fontsize=7)
    fig.suptitle("sparsec accuracy recovery (from benchmarks/accuracy/run.py)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
