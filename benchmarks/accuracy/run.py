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

Opt-in stages, run after the four above in the same process, from the same
dense model (its teacher too), with the same fine-tuning recipe and seeds:
  --extra-ratios 0.4,0.5   per channel ratio r: pruned@r, pruned-ft@r, pruned-24-ft@r (Taylor,
            uniform, round-to 8, as above); per model: "resnet50=0.4,0.5;mobilenet_v2=0.2,0.25"
  --stages lat   lat-pruned, lat-pruned-ft, lat-pruned-24-ft: prune-channels{objective=latency}
            (Taylor importance, round-to --lat-round-to, max-ratio --lat-max-ratio) to --lat-budget
            x the dense model's predicted conv/linear latency at batch --batch, from a latency table
            (sparsec.passes.prune.latency.profile: bf16 channels-last, at the training input
            size) measured on this GPU once per model and process, or loaded from --lut-dir when
            one with the same model fingerprint is there (written to OUT/luts/ when measured).
            --lat-budget match: the budget the table predicts for the uniform plan of the base
            ratio (equal predicted latency, so the two criteria compare). Without CUDA (smoke
            tests only) the table is a MACs proxy, labelled as such in the records.
The summary's "ratio_search" gives, per model, the largest tested channel ratio
whose final stage (pruned-24-ft[@r]) loses <= 0.3 pt top-1 against dense (mean
over seeds, paired t-test, 95% CI of the drop), and whether it removes >= 50% of
the FLOPs.

Seeds run seed-major (every model's seed 0 first) and a seed is started only
when the time it took last time (or --expect-s) still fits in --budget-s; within
a seed, an opt-in stage group is started only when the time the base
prune/fine-tune took still fits. What did not run is listed in the JSON.
Results are written after every stage.

    python benchmarks/accuracy/run.py --models resnet50 --seeds 0,1,2 --data .devcache/fashion-mnist --out $OUT
    python benchmarks/accuracy/run.py --jobs resnet50:0 --extra-ratios 0.4,0.5 --stages lat --data ... --out $OUT
    python benchmarks/accuracy/run.py --report A.json B.json      # merge runs -> results JSON + PNGs

--report takes run JSONs and earlier results JSONs (their runs and records); a
(model, stage, seed) found twice keeps the record of the later run. It writes
benchmarks/results/accuracy_<gpu>.json (summary: mean and std of top-1 per
stage, drop versus dense, paired t-tests over seeds; ratio_search) and
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
STAGES = ("dense", "pruned", "pruned-ft", "pruned-24-ft")  # the base four: always run
LAT = "lat-"  # prefix of the latency-budget variant's stages (--stages lat)
GROUPS = ("lat",)  # opt-in stage groups of --stages
BAR_PT = 0.3  # the goal: the final stage loses <= 0.3 pt top-1 against dense ...
BAR_FLOPS = 0.5  # ... at >= 50% of the FLOPs removed


def ratio_tag(r: float) -> str:
    return f"@{r:g}"


def stage_kind(stage: str) -> str:
    """'pruned-24-ft@0.4' and 'lat-pruned-24-ft' -> 'pruned-24-ft'."""
    return stage.split("@")[0].removeprefix(LAT)


def stage_order(stage: str) -> tuple:
    """Base stages first, then the latency variant, then the extra ratios by ratio."""
    kind = STAGES.index(stage_kind(stage))
    if "@" in stage:
        return (2, float(stage.split("@")[1]), kind)
    return (1 if stage.startswith(LAT) else 0, 0.0, kind)


def ft_reference(stage: str) -> str | None:
    """The stage a 2:4 stage is also tested against: its own pruned-ft."""
    return stage.replace("pruned-24-ft", "pruned-ft") if stage_kind(stage) == "pruned-24-ft" else None


def parse_extra_ratios(spec: str | None) -> dict[str | None, list[float]]:
    """'0.4,0.5' (every model) or 'resnet50=0.4,0.5;mobilenet_v2=0.2' -> {model or None: ratios}."""
    out: dict[str | None, list[float]] = {}
    for part in filter(None, (x.strip() for x in (spec or "").split(";"))):
        model, _, ratios = part.rpartition("=")
        try:
            rs = [float(r) for r in ratios.split(",") if r.strip()]
        except ValueError:
            raise SystemExit(f"--extra-ratios: bad ratio list {ratios!r} (expected e.g. 0.4,0.5)") from None
        if any(not 0 < r < 1 for r in rs):
            raise SystemExit(f"--extra-ratios: ratios must be in (0, 1), got {rs}")
        out[model.strip() or None] = rs
    return out


def extra_ratios_for(args, model: str) -> list[float]:
    table = parse_extra_ratios(args.extra_ratios)
    return table.get(model, table.get(None, []))


def parse_groups(spec: str | None) -> list[str]:
    groups = [g.strip() for g in (spec or "").split(",") if g.strip()]
    bad = [g for g in groups if g not in GROUPS]
    if bad:
        raise SystemExit(f"--stages: unknown stage group(s) {bad}; known: {', '.join(GROUPS)} "
                         f"(the base stages {', '.join(STAGES)} always run)")
    return groups


def parse_expect(spec: str | None) -> dict[str, float]:
    """'resnet50=330,mobilenet_v2=200' -> expected seconds per seed, before a seed of that model ran here."""
    out = {}
    for part in filter(None, (x.strip() for x in (spec or "").split(","))):
        model, _, sec = part.partition("=")
        out[model.strip()] = float(sec)
    return out


def recipe(args) -> dict:
    out = {
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
    # opt-in stages: only when asked, so the recipes of earlier runs read the same
    if args.extra_ratios:
        out["extra_ratios"] = {"ratios": args.extra_ratios, "stages": "pruned@r, pruned-ft@r, pruned-24-ft@r",
                               "how": "the base prune/fine-tune/2:4/fine-tune recipe and seeds at channel ratio r, "
                                      "from the same dense model and teacher"}
    if "lat" in parse_groups(args.stages):
        out["latency_variant"] = {
            "stages": "lat-pruned, lat-pruned-ft, lat-pruned-24-ft",
            "prune": f"prune-channels{{objective=latency,importance=taylor,round-to={args.lat_round_to},"
                     f"batch={args.batch},max-ratio={args.lat_max_ratio},budget=B}}",
            "budget": (f"B = {args.lat_budget} x the table's predicted dense conv/linear latency"
                       if args.lat_budget != "match" else
                       "B = the table's prediction for the uniform plan of the base ratio / its dense prediction"),
            "unreachable_budget": "raised to the least reachable one the solver names (the budget used is in "
                                  "each record)",
            "lut": f"sparsec.passes.prune.latency.profile(batches=({args.batch},), points={args.lut_points}, "
                   f"dtype=bf16) of the dense traced model at {args.size}x{args.size}, or a matching table "
                   f"from --lut-dir",
            "finetune": "the base recipe and seeds",
        }
    return out


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
    if args.test_limit:
        xt, yt = xt[:args.test_limit], yt[:args.test_limit]
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


def prune_taylor(mod, ratio: float, calib, device, **planner):
    """Taylor plan (|w * dL/dw|) from real training batches, applied with apply_plan.

    The planner reads gradients off the CPU graph. The gradient is computed on
    ``device`` (fp32, eval-mode BN) and handed back through the surrogate loss
    sum(w * g), whose gradient with respect to w is exactly g. ``planner``:
    more ChannelPrunePlanner options (the latency objective), over round_to=8.
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

    plan = ChannelPrunePlanner(ratio, "taylor", calibration=surrogate, **{"round_to": 8, **planner}).plan(mod)
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


def macs_proxy_ms(s, cin: int, cout: int, batch: int) -> float:
    """NOT a latency: MACs/1e9 of a layer at these widths, for the CPU smoke test of the latency
    variant only (profiling needs a GPU). Records made with it say so."""
    k = math.prod(s.kernel) if s.kind == "conv" else 1
    hw = math.prod(s.spatial) // (math.prod(s.stride) if s.kind == "conv" else 1)
    return batch * max(hw, 1) * k * cin * cout / s.groups_at(cin) * 1e-9


def latency_table(name: str, mod, args, cache: dict) -> tuple:
    """(LatencyLUT, how it was got) for ``mod``: cached per process, else a file of --lut-dir or
    OUT/luts with the same fingerprint and batch, else measured on this GPU (and written to OUT/luts)."""
    from sparsec.errors import SparsecError
    from sparsec.passes.prune.latency import LatencyLUT, build_lut, profile

    if name in cache:
        return cache[name]
    fname = f"lut_{name}_{gpu_short_name()}_{args.size}px_b{args.batch}.json"
    out_dir = (args.out or ROOT / "benchmarks" / "results") / "luts"
    for d in (args.lut_dir, out_dir):
        path = Path(d) / fname if d is not None else None
        if path is None or not path.is_file():
            continue
        try:
            lut = LatencyLUT.load(path)
            lut.check_model(mod)
            lut.check_batch(args.batch)
        except SparsecError as exc:
            log.warning("not using %s: %s", path, str(exc).splitlines()[0])
            continue
        made = (f"measured {lut.info['date']} on {lut.info['device']}" if lut.info.get("device")
                else lut.info.get("method", "no device recorded"))
        cache[name] = (lut, f"loaded {os.path.relpath(path, ROOT) if str(path).startswith(str(ROOT)) else path} ({made})")
        return cache[name]
    t0 = time.perf_counter()
    if torch.cuda.is_available():
        from sparsec.api import resolve_target

        lut = profile(mod, resolve_target("h100"), batches=(args.batch,), points=args.lut_points, dtype=torch.bfloat16)
        how = f"measured in this run ({time.perf_counter() - t0:.0f} s), written to luts/{fname}"
    else:
        lut = build_lut(mod, "h100", 16, (args.batch,), macs_proxy_ms, points=args.lut_points,
                        info={"method": "MACs proxy (no CUDA): a CPU smoke test of the code path, NOT a latency"})
        how = "MACs proxy (no CUDA: smoke test only, NOT a latency)"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / fname).write_text(lut.to_json())
    cache[name] = (lut, how)
    return cache[name]


def prune_latency(mod, lut, budget: float, calib, device, args) -> tuple:
    """prune_taylor with the latency objective; an unreachable budget is raised to the least reachable
    one the solver names (else by 0.1), up to 1."""
    import re

    from sparsec.errors import PassFailedError

    asked = budget
    while True:
        try:
            plan, stats = prune_taylor(mod, 0.0, calib, device, objective="latency", budget=round(budget, 4),
                                       lut=lut, batch=args.batch, max_ratio=args.lat_max_ratio,
                                       round_to=args.lat_round_to)
            return plan, stats, {"lat_budget": plan.latency.budget, "lat_budget_asked": asked}
        except PassFailedError as exc:
            if "unreachable" not in str(exc) or budget >= 1.0:
                raise
            least = re.search(r"raise budget to at least ([0-9.]+)", str(exc))
            new = min(1.0, max(budget + 0.01, float(least.group(1)) if least else budget + 0.1))
            log.warning("latency budget %.3g unreachable; trying %.3g", budget, new)
            budget = new


def run_seed(name: str, seed: int, ratio: float, data, args, device, records: list, not_run: list,
             flush=lambda: None, deadline: float = math.inf, luts: dict | None = None,
             timed: bool = False) -> list[dict]:
    """The base stages, then the opt-in ones (--extra-ratios, --stages lat) while ``deadline``
    allows; appends to ``records`` (and calls ``flush``) after every stage; returns this seed's."""
    import torchvision

    import sparsec
    from sparsec.ir import Cost
    from sparsec.passes.finetune import evaluate, finetune, sparsify_24

    train, test, calib, _ = data
    dense_cfg, ft_cfg = configs(args, seed)
    torch.manual_seed(seed)
    model = torchvision.models.get_model(name, weights=None, num_classes=10)
    recs, times = [], {}
    epochs = {"dense": args.dense_epochs, "pruned": 0, "pruned-ft": args.ft_epochs, "pruned-24-ft": args.ft_epochs}

    def record(stage: str, ev: dict, cost, extra=None):
        rec = {"model": name, "dataset": "fashion-mnist", "input_size": args.size, "stage": stage, "seed": seed,
               "top1": ev["top1"], "top5": ev["top5"], "loss": ev["loss"], "n_test": ev["n"],
               "flops": cost.total_macs, "params": cost.total_params,  # 2 x MACs / the traced batch of 2
               "epochs": epochs[stage_kind(stage)], "recipe": "see top-level 'recipe'",
               **(extra or {})}
        recs.append(rec)
        records.append(rec)
        print(f"  {name:16s} seed {seed} {stage:13s} top1 {ev['top1']:.4f} top5 {ev['top5']:.4f} "
              f"loss {ev['loss']:.4f}  GFLOPs/img {rec['flops'] / 1e9:.3f}  params {rec['params'] / 1e6:.2f}M"
              f"  {extra or ''}", flush=True)
        flush()
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
    extra_ratios = extra_ratios_for(args, name)
    groups = parse_groups(args.stages)
    dense_mod = mod.clone() if extra_ratios or groups else None  # unpruned, for the opt-in variants
    teacher = None

    def recover(mod, prune, prefix: str = "", suffix: str = ""):
        """prune(mod) -> (plan, stats, extra); then the pruned, pruned-ft and pruned-24-ft stages."""
        nonlocal teacher
        t0 = time.perf_counter()
        plan, stats, extra = prune(mod)
        cost = mod.analysis(Cost)
        removed = 1 - cost.total_macs / dense_cost.total_macs
        prune_extra = {**extra, "flops_removed_frac": removed, "groups_pruned": stats["groups_pruned"],
                       "channels_removed": stats["channels_removed"]}
        prune_s = time.perf_counter() - t0
        ev = evaluate(mod, test, device=device, amp=True, channels_last=True)
        lat = latency(mod.gm, args.size) if timed else None
        if lat is not None:  # the same graph shapes in every later stage (2:4 runs on dense kernels in eager)
            prune_extra.update(lat)
        record(f"{prefix}pruned{suffix}", ev, cost, {**prune_extra, "prune_s": round(prune_s, 1)})

        if teacher is None:
            teacher = model.to(device)
        t0 = time.perf_counter()
        res = finetune(mod, train(seed + 100), None, teacher=teacher, config=ft_cfg, batch_size=args.batch)
        ev = evaluate(mod, test, device=device, amp=True, channels_last=True)
        record(f"{prefix}pruned-ft{suffix}", ev, cost, {**prune_extra, "train_s": round(time.perf_counter() - t0, 1)})

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
        record(f"{prefix}pruned-24-ft{suffix}", ev, cost,
               {**prune_extra, "sparse24": how, "sparse24_weights": n24,
                "sparse24_weight_frac": masked / max(total, 1), "sparse24_violations": viol,
                "train_s": round(time.perf_counter() - t0, 1)})
        return plan

    t_base = time.perf_counter()
    base_plan = recover(mod, lambda m: (*prune_taylor(m, ratio, calib, device), {"channel_ratio": ratio}))
    base_s = time.perf_counter() - t_base

    def optional(label: str, need: float, fn) -> None:
        """Run an opt-in stage group if ``need`` seconds still fit before the deadline; a failure is
        recorded in not_run (the base stages are already written)."""
        left = deadline - time.perf_counter()
        if need > left:
            not_run.append({"model": name, "seed": seed, "stage": label,
                            "why": f"budget: {left:.0f} s left, expected {need:.0f} s for these stages"})
            print(f"skip {name} seed {seed} {label}: {not_run[-1]['why']}", flush=True)
            return
        try:
            fn()
        except Exception as exc:  # keep the seed's other stages
            log.exception("%s seed %d %s failed", name, seed, label)
            not_run.append({"model": name, "seed": seed, "stage": label,
                            "why": f"failed: {type(exc).__name__}: {str(exc)[:500]}"})

    for r in extra_ratios:
        if r == ratio:
            print(f"  {name}: extra ratio {r:g} is the base ratio; its stages are the base ones", flush=True)
            continue
        optional(f"pruned-24-ft{ratio_tag(r)}", base_s, lambda r=r: recover(
            dense_mod.clone(), lambda m: (*prune_taylor(m, r, calib, device), {"channel_ratio": r}),
            suffix=ratio_tag(r)))
    if "lat" in groups:
        def lat_variant():
            lut, how = latency_table(name, dense_mod, args, luts if luts is not None else {})
            dense_ms = lut.predict(dense_mod, args.batch)
            from sparsec.passes.prune.latency import plan_widths

            uniform_ms = lut.predict(dense_mod, args.batch, plan_widths(dense_mod, base_plan))
            budget = min(1.0, uniform_ms / dense_ms) if args.lat_budget == "match" else float(args.lat_budget)

            def prune(m):
                plan, stats, extra = prune_latency(m, lut, budget, calib, device, args)
                return plan, stats, {"channel_ratio": None, **extra, "lut": how, "lut_dense_ms": dense_ms,
                                     "lut_predicted_ms": plan.latency.predicted_ms,
                                     "lut_predicted_frac": plan.latency.predicted_ms / dense_ms,
                                     "lut_predicted_frac_uniform": uniform_ms / dense_ms}

            recover(dense_mod.clone(), prune, prefix=LAT)

        # the table is measured once per model and process: allow a minute for it
        optional(f"{LAT}pruned-24-ft", base_s + (0 if luts and name in luts else args.lut_expect_s), lat_variant)
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
    ap.add_argument("--extra-ratios", default="", help="opt-in: more channel ratios per seed, from the same dense "
                    "model: '0.4,0.5' or 'resnet50=0.4,0.5;mobilenet_v2=0.2,0.25' (stages pruned*@r)")
    ap.add_argument("--stages", default="", help=f"opt-in stage groups after the base four: {', '.join(GROUPS)} "
                    "(lat: lat-pruned, lat-pruned-ft, lat-pruned-24-ft)")
    ap.add_argument("--lat-budget", default="0.5", help="latency variant: fraction of the dense model's predicted "
                    "conv/linear latency, or 'match' (the uniform base plan's predicted fraction)")
    ap.add_argument("--lat-max-ratio", type=float, default=0.8, help="latency variant: most any group loses")
    ap.add_argument("--lat-round-to", type=int, default=16, help="latency variant: channel multiple")
    ap.add_argument("--lut-dir", type=Path, default=ROOT / "benchmarks" / "luts",
                    help="latency tables to reuse (lut_<model>_<gpu>_<size>px_b<batch>.json, fingerprint-checked)")
    ap.add_argument("--lut-points", type=int, default=5, help="latency table: widths timed per prunable dim")
    ap.add_argument("--lut-expect-s", type=float, default=60.0, help="time allowed for measuring a latency table")
    ap.add_argument("--budget-s", type=float, default=1e9, help="start no seed (or opt-in stage group) that would "
                    "end past this")
    ap.add_argument("--expect-s", default="", help="seconds per seed expected before one ran in this process, "
                    "e.g. resnet50=330,mobilenet_v2=200 (from earlier calls)")
    ap.add_argument("--train-limit", type=int, default=0, help="use only the first N training images (smoke)")
    ap.add_argument("--test-limit", type=int, default=0, help="evaluate on the first N test images only (smoke; "
                    "not an accuracy)")
    ap.add_argument("--no-latency", action="store_true", help="time no stage: for runs sharing the GPU with other "
                    "processes, whose timings would be wrong (latency tables then come from --lut-dir)")
    ap.add_argument("--luts-only", action="store_true", help="only measure (or load) the latency tables of --models "
                    "at --size/--batch, into OUT/luts, and exit: run it alone, before concurrent --no-latency runs")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--report", nargs="+", type=Path, help="merge these run JSONs into the results file + PNG")
    args = ap.parse_args()
    if args.report:
        report(args.report, args.out)
        return
    if args.luts_only:
        measure_luts(args)
        return
    parse_groups(args.stages), parse_extra_ratios(args.extra_ratios)  # bad options fail before any training
    if args.lat_budget != "match" and not 0 < float(args.lat_budget) <= 1:
        raise SystemExit(f"--lat-budget must be in (0, 1] or 'match', got {args.lat_budget}")
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
    ratios, timed, luts = {}, set(), {}
    records, not_run, seed_s = [], [], {}
    expect = parse_expect(args.expect_s)
    out = args.out or ROOT / "benchmarks" / "results"
    for name, seed in jobs:
        elapsed = time.perf_counter() - t_start
        # a model not yet run is expected to take --expect-s, else as long as the slowest seed so far
        need = seed_s.get(name, expect.get(name, max(seed_s.values(), default=None)))
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
            run_seed(name, seed, ratios[name][0], data, args, device, records, not_run,
                     flush=lambda: write_run(out, args, records, not_run, seed_s, data[3]),
                     deadline=t_start + args.budget_s, luts=luts, timed=name not in timed and not args.no_latency)
            timed.add(name)
        except Exception as exc:  # a diverged run is a result too: say so, go on with the next
            log.exception("%s seed %d failed", name, seed)
            done = [r["stage"] for r in records if r["model"] == name and r["seed"] == seed]
            not_run.append({"model": name, "seed": seed, "why": f"failed: {type(exc).__name__}: {exc}"
                                                               + (f" (after {', '.join(done)})" if done else "")})
        seed_s[name] = time.perf_counter() - t0
        print(f"{name} seed {seed}: {seed_s[name]:.0f} s", flush=True)
        write_run(out, args, records, not_run, seed_s, data[3])
    path = write_run(out, args, records, not_run, seed_s, data[3])
    print(f"wrote {path}")
    print_table(summarize(records))
    print_search(ratio_search(records))


def measure_luts(args) -> None:
    """--luts-only: each model's latency table (the shapes are those of the untrained model)."""
    import torchvision

    import sparsec

    torch.backends.cudnn.benchmark = True
    cache: dict = {}
    for name in args.models.split(","):
        model = torchvision.models.get_model(name, weights=None, num_classes=10).eval()
        mod = sparsec.trace(model, torch.randn(2, 3, args.size, args.size), name=name, dynamic_batch=True)
        _, how = latency_table(name, mod, args, cache)
        print(f"{name}: latency table {how}", flush=True)


def write_run(out: Path, args, records, not_run, seed_s, sizes) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    doc = {"kind": "accuracy", **environment(),
           "method": "top-1/top-5 on the full 10k Fashion-MNIST test set after training on the 60k train set; "
                     "FLOPs = 2 x MACs per image from sparsec's Cost analysis (2:4 zeros not subtracted); "
                     "params = all parameters of the (pruned) graph",
           "recipe": recipe(args), "train_test_sizes": list(sizes), "seconds_per_seed": seed_s,
           "not_run": not_run, "records": records, "summary": summarize(records),
           "ratio_search": ratio_search(records)}
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
        mine = [r for r in records if r["model"] == model]
        stages = sorted({r["stage"] for r in mine}, key=stage_order)
        by = {s: {r["seed"]: r for r in mine if r["stage"] == s} for s in stages}
        for stage in stages:
            rs = by[stage]
            top1 = [r["top1"] for r in rs.values()]
            row = {"model": model, "stage": stage, "seeds": sorted(rs), "n": len(top1),
                   "top1_mean": statistics.fmean(top1), "top1_std": statistics.stdev(top1) if len(top1) > 1 else None,
                   "top5_mean": statistics.fmean(r["top5"] for r in rs.values()),
                   "flops": statistics.fmean(r["flops"] for r in rs.values()),
                   "params": statistics.fmean(r["params"] for r in rs.values()),
                   "flops_removed_frac": statistics.fmean(r.get("flops_removed_frac", 0.0) for r in rs.values())}
            for key in ("channel_ratio", "lat_budget"):
                vals = [r[key] for r in rs.values() if r.get(key) is not None]
                if vals:
                    row[key] = vals[0] if len(set(vals)) == 1 else statistics.fmean(vals)
            lat = [r["latency_ms_median"] for r in rs.values() if r.get("latency_ms_median")]
            row["latency_ms_median"] = statistics.fmean(lat) if lat else None
            row["throughput_img_s"] = statistics.fmean(r["throughput_img_s"] for r in rs.values()
                                                       if r.get("throughput_img_s")) if lat else None
            for ref in ("dense", ft_reference(stage)):
                if ref is None or ref == stage or ref not in by:
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
                if ref == "dense":
                    row["drop_vs_dense_ci95_pt"] = _ci95([100 * (x - y) for x, y in zip(a, b)], st)
            out.append(row)
    return out


def _ci95(diffs: list[float], st) -> list[float] | None:
    """95% confidence interval of the mean of paired differences (Student t), or None."""
    import statistics

    if st is None or len(diffs) < 2:
        return None
    mean, sem = statistics.fmean(diffs), statistics.stdev(diffs) / math.sqrt(len(diffs))
    half = float(st.t.ppf(0.975, len(diffs) - 1)) * sem
    return [mean - half, mean + half]


def ratio_search(records: list[dict], summary: list[dict] | None = None) -> list[dict]:
    """Per model: every tested final stage (pruned-24-ft at each channel ratio, and the latency variant),
    whether it meets the goal (mean drop vs dense <= BAR_PT), and the largest channel ratio that does.

    ``largest_ratio_meeting_bar`` is the headline ratio for the end-to-end benchmark; ``meets_goal``
    says whether the model meets the issue's goal (the bar at >= BAR_FLOPS of the FLOPs removed)."""
    summary = summary if summary is not None else summarize(records)
    out = []
    for model in dict.fromkeys(r["model"] for r in summary):
        tested = []
        for row in summary:
            if row["model"] != model or stage_kind(row["stage"]) != "pruned-24-ft" or "drop_vs_dense_pt" not in row:
                continue
            drop = row["drop_vs_dense_pt"]
            tested.append({"stage": row["stage"], "objective": "latency" if row["stage"].startswith(LAT) else "uniform",
                           "channel_ratio": row.get("channel_ratio"), "lat_budget": row.get("lat_budget"),
                           "flops_removed_frac": row["flops_removed_frac"], "n": row["n"],
                           "top1_mean": row["top1_mean"], "drop_vs_dense_pt": drop,
                           "drop_vs_dense_ci95_pt": row.get("drop_vs_dense_ci95_pt"), "p_vs_dense": row.get("p_vs_dense"),
                           "meets_bar": drop <= BAR_PT,
                           "meets_goal": drop <= BAR_PT and row["flops_removed_frac"] >= BAR_FLOPS})
        if not tested:
            continue
        tested.sort(key=lambda t: (t["objective"] != "uniform", t["channel_ratio"] or 0.0))
        uniform = [t for t in tested if t["objective"] == "uniform" and t["channel_ratio"] is not None]
        best = max((t for t in uniform if t["meets_bar"]), key=lambda t: t["channel_ratio"], default=None)
        out.append({"model": model, "bar_pt": BAR_PT, "min_flops_removed": BAR_FLOPS,
                    "meets_goal": any(t["meets_goal"] for t in tested),
                    "largest_ratio_meeting_bar": None if best is None else {
                        k: best[k] for k in ("stage", "channel_ratio", "flops_removed_frac", "n", "drop_vs_dense_pt",
                                             "drop_vs_dense_ci95_pt", "p_vs_dense")},
                    "largest_ratio_tested": max((t["channel_ratio"] for t in uniform), default=None),
                    "tested": tested})
    return out


def print_table(summary: list[dict]) -> None:
    print(f"{'model':16s} {'stage':19s} {'n':>2s} {'top1 % (mean±std)':>18s} {'drop pt':>8s} {'p(dense)':>9s} "
          f"{'GFLOPs':>7s} {'-FLOPs':>7s} {'params M':>8s} {'ms/b256':>8s}")
    for r in summary:
        std = f"±{100 * r['top1_std']:.2f}" if r["top1_std"] is not None else "±n/a"
        drop = r.get("drop_vs_dense_pt")
        p = r.get("p_vs_dense")
        lat = r.get("latency_ms_median")
        print(f"{r['model']:16s} {r['stage']:19s} {r['n']:2d} {100 * r['top1_mean']:11.2f}{std:>7s} "
              f"{'' if drop is None else f'{drop:.2f}':>8s} {'' if p is None else f'{p:.3g}':>9s} "
              f"{r['flops'] / 1e9:7.3f} {100 * r['flops_removed_frac']:6.1f}% {r['params'] / 1e6:8.2f} "
              f"{'' if lat is None else f'{lat:.3f}':>8s}")


def print_search(search: list[dict]) -> None:
    for m in search:
        best = m["largest_ratio_meeting_bar"]
        line = (f"{m['model']}: largest channel ratio meeting the {m['bar_pt']} pt bar: "
                + ("none of " + ", ".join(f"{t['channel_ratio']:g}" for t in m["tested"] if t["channel_ratio"])
                   if best is None else
                   f"{best['channel_ratio']:g} ({100 * best['flops_removed_frac']:.1f}% FLOPs removed, drop "
                   f"{best['drop_vs_dense_pt']:.2f} pt, n={best['n']}, p="
                   f"{'n/a' if best['p_vs_dense'] is None else format(best['p_vs_dense'], '.3g')})")
                + f"; goal (>= {100 * m['min_flops_removed']:.0f}% FLOPs + 2:4, <= {m['bar_pt']} pt) "
                + ("met" if m["meets_goal"] else "NOT met"))
        print(line)


RUN_KEYS = ("device", "date", "command", "git_commit", "seconds_per_seed", "not_run", "recipe", "train_test_sizes")


def merge(docs: list[dict]) -> tuple[list[dict], list[dict], list[dict]]:
    """(runs, records, replaced) of run JSONs and earlier results JSONs (which hold ``runs``).

    Runs are taken oldest first; a (model, stage, seed) seen again replaces the older record
    (``replaced`` lists both top-1s), and a run seen twice (same date and command) counts once."""
    runs, seen = [], set()
    recs: dict[tuple, dict] = {}
    replaced = []
    for d in sorted(docs, key=lambda d: d.get("date", "")):
        for run in d["runs"] if "runs" in d else [{k: d.get(k) for k in RUN_KEYS}]:
            key = (run.get("date"), run.get("command"))
            if key not in seen:
                seen.add(key)
                runs.append(run)
        for r in d["records"]:
            key = (r["model"], r["stage"], r["seed"])
            old = recs.pop(key, None)
            if old is not None and old != r:
                replaced.append({"model": r["model"], "stage": r["stage"], "seed": r["seed"],
                                 "old_top1": old["top1"], "new_top1": r["top1"], "new_run_date": d.get("date")})
            recs[key] = r
    return runs, list(recs.values()), replaced


def report(paths: list[Path], out_dir: Path | None) -> Path:
    docs = [json.loads(p.read_text()) for p in paths]
    runs, records, replaced = merge(docs)
    last = max(docs, key=lambda d: d.get("date", ""))
    devices = sorted({r["device"] for r in runs if r.get("device")})
    if len(devices) > 1:
        log.warning("merging runs from different devices: %s", devices)
    summary = summarize(records)
    doc = {"kind": "accuracy", "device": last["device"], "capability": last["capability"],
           "versions": last["versions"], "date": last["date"],
           "command": " ".join([os.path.relpath(sys.argv[0], ROOT) if sys.argv[0].startswith(str(ROOT))
                                else sys.argv[0], *sys.argv[1:]]),
           "git_commit": last["git_commit"], "method": last["method"], "runs": runs,
           "scope": scope(records, runs, summary), "records": records, "summary": summary,
           "ratio_search": ratio_search(records, summary)}
    if replaced:
        doc["replaced_records"] = replaced
    if len(devices) > 1:
        doc["devices"] = devices
    short = next((s for s in ("h200", "h100", "a100") if s in last["device"].lower()), "cpu")
    out_dir = out_dir or ROOT / "benchmarks" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"accuracy_{short}.json"
    path.write_text(json.dumps(doc, indent=1) + "\n")
    plot(doc["summary"], path.with_suffix(".png"), doc["ratio_search"])
    print_table(doc["summary"])
    print_search(doc["ratio_search"])
    print(f"wrote {path} and {path.with_suffix('.png')}")
    return path


def scope(records: list[dict], runs: list[dict], summary: list[dict]) -> dict:
    """What ran and what did not, from the records themselves."""
    ran = {}
    for r in records:
        ran.setdefault(r["model"], {}).setdefault(r["stage"], []).append(r["seed"])
    have = {(r["model"], r["stage"], r["seed"]) for r in records}

    def done(x: dict) -> bool:  # a (model, seed[, stage]) skipped in one run and run in another counts as run
        if x.get("stage"):
            return (x["model"], x["stage"], x["seed"]) in have
        if x.get("why", "").startswith("failed"):  # a seed may fail after some stages: done if all base ones ran
            return all((x["model"], st, x["seed"]) in have for st in STAGES)
        return x["seed"] in {sd for sds in ran.get(x["model"], {}).values() for sd in sds}

    goal = {row["model"]: {"drop_vs_dense_pt": row.get("drop_vs_dense_pt"),
                           "meets_0.3pt_goal": row.get("drop_vs_dense_pt") is not None
                           and row["drop_vs_dense_pt"] <= BAR_PT}
            for row in summary if row["stage"] == "pruned-24-ft"}
    stages = {r["stage"] for r in records}
    missing = ["2:4 latency with sparse kernels (eager runs 2:4 weights on dense kernels)", "a 2-GPU DDP run"]
    if not any(s.startswith(LAT) for s in stages):
        missing.insert(0, "the latency-budget pruning variant")
    if not any("@" in s for s in stages):
        missing.insert(0, "a search for the largest ratio meeting the 0.3 pt goal")
    return {
        "seeds_run": {m: {st: sorted(v) for st, v in sorted(sts.items(), key=lambda kv: stage_order(kv[0]))}
                      for m, sts in ran.items()},
        "not_run": list({(x["model"], x["seed"], x.get("stage")): x for run in runs for x in run.get("not_run") or []
                         if not done(x)}.values()),
        "final_stage_vs_goal": goal,
        "not_in_this_experiment": missing,
    }


def plot(summary: list[dict], path: Path, search: list[dict] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in summary))
    stages = sorted({r["stage"] for r in summary}, key=stage_order)
    fig, axes = plt.subplots(1, 4, figsize=(24, 4.6))
    width = 0.8 / len(stages)
    cmap = plt.get_cmap("tab20")
    for k, stage in enumerate(stages):
        color = ("#4c72b0", "#dd8452", "#55a868", "#c44e52")[k] if k < 4 else cmap(k % 20)
        rows = [next((r for r in summary if r["model"] == m and r["stage"] == stage), None) for m in models]
        xs = [i + (k - (len(stages) - 1) / 2) * width for i in range(len(models))]
        acc = [100 * r["top1_mean"] if r else 0 for r in rows]
        err = [100 * (r["top1_std"] or 0) if r else 0 for r in rows]
        axes[0].bar(xs, acc, width, yerr=err, capsize=2, label=stage, color=color)
        for x, r in zip(xs, rows):
            if r:
                axes[0].text(x, 100 * r["top1_mean"] + 0.3, f"{100 * r['top1_mean']:.1f}\nn={r['n']}",
                             ha="center", fontsize=max(3, 6 - len(stages) // 5))
        axes[1].bar(xs, [r["flops"] / 1e9 if r else 0 for r in rows], width, label=stage, color=color)
        axes[2].bar(xs, [(r.get("throughput_img_s") or 0) / 1e3 if r else 0 for r in rows], width, label=stage,
                    color=color)
    lo = min((100 * r["top1_mean"] for r in summary), default=0)
    axes[0].set_ylim(max(0, lo - 5), 100)
    axes[0].set_ylabel("top-1 % (Fashion-MNIST test, mean ± std over seeds)")
    axes[1].set_ylabel("GFLOPs per image (2:4 zeros not subtracted)")
    axes[2].set_ylabel("inference k img/s (bf16 eager, batch 256)")
    if not any(r.get("throughput_img_s") for r in summary):  # runs sharing the GPU (--no-latency) time nothing
        axes[2].text(0.5, 0.5, "not timed in these runs (concurrent, --no-latency):\ndeployment latency is in "
                     "e2e_<gpu>.json (sparsec bench)", ha="center", va="center", transform=axes[2].transAxes,
                     fontsize=8)
    for ax in axes[:3]:
        ax.set_xticks(range(len(models)), models)
        ax.legend(fontsize=6)
    # the ratio search: the final stage's drop versus the FLOPs removed, per model
    ax = axes[3]
    for k, m in enumerate(search or []):
        for objective, marker in (("uniform", "o-"), ("latency", "s")):
            ts = sorted((t for t in m["tested"] if t["objective"] == objective), key=lambda t: t["flops_removed_frac"])
            if not ts:
                continue
            err = [[t["drop_vs_dense_pt"] - t["drop_vs_dense_ci95_pt"][0] if t["drop_vs_dense_ci95_pt"] else 0
                    for t in ts],
                   [t["drop_vs_dense_ci95_pt"][1] - t["drop_vs_dense_pt"] if t["drop_vs_dense_ci95_pt"] else 0
                    for t in ts]]
            what = ("uniform r=" + ",".join(f"{t['channel_ratio']:g}" for t in ts) if objective == "uniform"
                    else "latency budget")
            ax.errorbar([100 * t["flops_removed_frac"] for t in ts], [t["drop_vs_dense_pt"] for t in ts], yerr=err,
                        fmt=marker, capsize=3, color=f"C{k}", label=f"{m['model']} {what}")
    ax.axhline(BAR_PT, color="k", ls="--", lw=0.8, label=f"goal: drop <= {BAR_PT} pt")
    ax.axvline(100 * BAR_FLOPS, color="grey", ls=":", lw=0.8, label=f">= {100 * BAR_FLOPS:.0f}% FLOPs removed")
    ax.set_xlabel("FLOPs removed %")
    ax.set_ylabel("final stage (pruned+2:4+ft) top-1 drop vs dense, pt (95% CI)")
    ax.legend(fontsize=6)
    fig.suptitle("sparsec accuracy recovery (from benchmarks/accuracy/run.py)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
