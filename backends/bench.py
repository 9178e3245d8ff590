"""``sparsec bench``: eager, torch.compile and sparsec variants of a CNN, side by side on one GPU.

    sparsec bench --models resnet50 --batches 1,256 --prune-ratio 0.3 --out-dir benchmarks/results
    python benchmarks/e2e.py ...        (the same, with the same options)

Variants (fp16, channels-last for the PyTorch ones), in one process:

* ``eager``: the torchvision model, ``.half()``, channels-last;
* ``inductor-<mode>``: ``torch.compile(model, mode=--inductor-mode)`` of the same (``default`` unless
  ``--inductor-mode max-autotune`` is given: max-autotune takes minutes per shape);
* ``sparsec-dense``: ``sparsec.compile(target=h100)`` (fold-bn, fusion, CUTLASS dense GEMMs), loaded
  and replayed as one CUDA graph;
* ``sparsec-pruned``: the same after ``prune-channels{ratio=R}``;
* ``sparsec-24``: ``h100-sparse`` (``sparsify-2-4`` with the measured cost model: 2:4 where the tuned
  sparse kernel beats the tuned dense one on that shape);
* ``sparsec-pruned-24``: pruned, then ``sparsify-2-4{cost-model=--pruned-cost-model}`` on ``h100-sparse``
  (default ``shape``: the tuning DB holds the unpruned shapes only, so ``measured`` would keep every
  pruned layer dense).

Weights: torchvision's random init with randomised BN statistics (no pretrained weights offline), so
that folding BN is not the identity and the logits are not degenerate.

Method (the device tool's METHOD.md): per variant, ``--repeats`` rounds of ``--iters`` timed calls after
warm-up, each timed by CUDA events; inputs (random, never zeros) rotate over enough copies to exceed L2;
a CUDA-graph variant gets its input copied into the graph's static buffer before the start event.
Latency median and p90 over all calls; throughput = batch / median; speedup vs inductor with a 95%
t-interval over the per-round ratios and a paired t-test (scipy) over the per-round medians.
Correctness: each variant's logits against its own eager reference (the model for eager/inductor, the
pruned / masked fp16 graph before lowering for sparsec), relative error and top-1 agreement.
Writes ``e2e_<gpu>.json`` (BENCHMARKS.md ``e2e`` records), prints a rich table, draws ``e2e_<gpu>.png``.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

L2_BYTES = 50 << 20


def _gpu_short(name: str) -> str:
    for key in ("H200", "H100", "A100", "L40", "A10"):
        if key in name:
            return key.lower()
    return name.split()[-1].lower()


def _inputs(batch: int, dtype, copies: int | None = None):
    per = batch * 3 * 224 * 224 * 2
    n = copies or max(2, min(8, math.ceil(2 * L2_BYTES / per)))
    g = torch.Generator(device="cuda").manual_seed(batch)
    return [torch.randn(batch, 3, 224, 224, device="cuda", generator=g).to(dtype) for _ in range(n)]


def time_variant(fn, inputs, *, repeats: int, iters: int, warmup: int, prepare=None):
    """Per-round lists of ms per call (CUDA events)."""
    for i in range(warmup):
        if prepare:
            prepare(inputs[i % len(inputs)])
        fn(inputs[i % len(inputs)])
    torch.cuda.synchronize()
    rounds = []
    for _ in range(repeats):
        times = []
        for i in range(iters):
            x = inputs[i % len(inputs)]
            if prepare:
                prepare(x)
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn(x)
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        rounds.append(times)
    return rounds


def graphed(module, example):
    """Capture ``module(static_x)`` once as a CUDA graph; returns (run(x), prepare(x))."""
    static_x = example.clone()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s), torch.no_grad():
        for _ in range(3):
            module(static_x)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g), torch.no_grad():
        out = module(static_x)
    holder = {"out": out}
    return (lambda x: g.replay()), (lambda x: static_x.copy_(x)), holder


def _first(y):
    return y[0] if isinstance(y, (tuple, list)) else y


def compare(y, ref) -> tuple[float, float]:
    y, ref = _first(y).double(), _first(ref).double()
    rel = ((y - ref).norm() / ref.norm()).item()
    top1 = (y.argmax(-1) == ref.argmax(-1)).double().mean().item()
    return rel, top1


def make_model(name: str):
    import torchvision

    torch.manual_seed(0)
    m = getattr(torchvision.models, name)().eval()
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 1.5)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.2, 0.2)
    return m


def sparsec_variant(model, batch: int, target: str, prune_ratio: float | None, workdir: Path,
                    cost_model: str | None = None):
    """Compile + load one sparsec variant; returns (loaded module, eager reference module, compile s, info).

    The steps of ``sparsec.compile`` (trace, the backend's pipeline, lower, write the artifact) then
    ``sparsec.load``, with the module kept before lowering as the reference (pruned / masked fp16 graph).
    """
    import sparsec
    from sparsec.api import resolve_backend, resolve_target
    from sparsec.backends.artifact import write_artifact
    from sparsec.passes.manager import PassContext, PassManager

    tgt = resolve_target(target)
    backend = resolve_backend(tgt)
    pipeline = backend.pipeline(tgt)
    if prune_ratio:
        pipeline = pipeline.replace("fold-bn,dce,", f"fold-bn,dce,prune-channels{{ratio={prune_ratio},round-to=32}},dce,", 1)
    if cost_model:
        pipeline = pipeline.replace("sparsify-2-4,", f"sparsify-2-4{{cost-model={cost_model}}},")
    t0 = time.perf_counter()
    mod = sparsec.trace(model, (torch.randn(batch, 3, 224, 224),))
    pm = PassManager.parse(pipeline)
    records = tuple(pm.run(mod, PassContext(target=tgt)))
    t_clone = time.perf_counter()
    ref = mod.clone()
    t1 = time.perf_counter()
    lowered = backend.lower(mod, tgt)
    path = write_artifact(workdir / f"{target}-{prune_ratio}-{batch}.sparsec", lowered, target=tgt, pipeline=str(pm),
                          records=records)
    loaded = sparsec.load(path)
    compile_s = (t_clone - t0) + (time.perf_counter() - t1)
    manifest = json.loads((Path(path) / "manifest.json").read_text())
    layers = manifest["payload"]["layers"]
    info = {"pipeline": str(pm), "layers_lowered": len(layers), "layers_24": sum(r["sparse"] for r in layers),
            "kernels": len(manifest["payload"]["kernels"])}
    return loaded, ref.gm.cuda().eval(), compile_s, info


def _stats(rounds, batch):
    flat = sorted(t for r in rounds for t in r)
    med = statistics.median(flat)
    p90 = flat[min(len(flat) - 1, int(math.ceil(0.9 * len(flat))) - 1)]
    return {"latency_ms_median": round(med, 4), "latency_ms_p90": round(p90, 4),
            "throughput_img_s": round(batch / med * 1e3, 1), "round_medians": [statistics.median(r) for r in rounds]}


def _vs(base_rounds: list[float], rounds: list[float]):
    from scipy import stats

    ratios = [b / v for b, v in zip(base_rounds, rounds)]
    mean = statistics.mean(ratios)
    if len(ratios) > 1:
        half = stats.t.ppf(0.975, len(ratios) - 1) * statistics.stdev(ratios) / math.sqrt(len(ratios))
        p = stats.ttest_rel(base_rounds, rounds).pvalue
    else:
        half, p = float("nan"), float("nan")
    return round(mean, 4), [round(float(mean - half), 4), round(float(mean + half), 4)], (None if p != p else float(p))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet50")
    ap.add_argument("--batches", default="1,256")
    ap.add_argument("--dtype", default="fp16", choices=["fp16"])
    ap.add_argument("--prune-ratio", type=float, default=0.3)
    ap.add_argument("--variants", default="eager,inductor,sparsec-dense,sparsec-24,sparsec-pruned,sparsec-pruned-24")
    ap.add_argument("--pruned-cost-model", default="shape", choices=["measured", "shape", "off"])
    ap.add_argument("--inductor-mode", default="default", choices=["default", "max-autotune", "reduce-overhead"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--out-dir", default="benchmarks/results")
    ap.add_argument("--tag", default="", help="suffix of the output file name: e2e_<gpu>[_TAG].json")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        from sparsec.errors import TargetError

        raise TargetError("sparsec bench needs a CUDA GPU", actual="torch.cuda.is_available() is False",
                          fix="run it on the GPU machine the numbers are for; `sparsec compile` works without one")

    torch.backends.cudnn.benchmark = True
    dt = torch.float16
    variants = args.variants.split(",")
    inductor_name = f"inductor-{args.inductor_mode}"
    records = []
    work = Path(tempfile.mkdtemp(prefix="sparsec-e2e-"))
    for name in args.models.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            base = make_model(name)
            params = sum(p.numel() for p in base.parameters())
            inputs = _inputs(batch, dt)
            check_x = torch.randn(batch, 3, 224, 224, device="cuda", generator=torch.Generator(device="cuda").manual_seed(99))
            results: dict = {}
            for v in variants:
                gc.collect()
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                mem0 = torch.cuda.memory_allocated()
                prepare, info, compile_s, prune = None, {}, 0.0, None
                m = ref = loaded = holder = None
                try:
                    if v in ("eager", "inductor"):
                        m = make_model(name)
                        m = m.to("cuda", dt).to(memory_format=torch.channels_last)
                        ref = m
                        if v == "inductor":
                            t0 = time.perf_counter()
                            m = torch.compile(m, mode=None if args.inductor_mode == "default" else args.inductor_mode)
                            with torch.no_grad():
                                m(inputs[0])
                            torch.cuda.synchronize()
                            compile_s = time.perf_counter() - t0
                        fn = torch.no_grad()(m)
                        with torch.no_grad():
                            rel, top1 = compare(m(check_x.to(dt)), ref(check_x.to(dt)))
                    else:
                        target = "h100-sparse" if v.endswith("-24") else "h100"
                        prune = args.prune_ratio if "pruned" in v else None
                        cm = args.pruned_cost_model if (prune and target == "h100-sparse") else None
                        loaded, ref, compile_s, info = sparsec_variant(base, batch, target, prune, work, cm)
                        with torch.no_grad():
                            rel, top1 = compare(loaded(check_x.float()), ref(check_x.float()))
                        fn, prepare, holder = graphed(loaded, inputs[0].float())
                        fp32_inputs = [x.float() for x in inputs]
                        inputs_v = fp32_inputs
                    rounds = time_variant(fn, inputs if v in ("eager", "inductor") else inputs_v, repeats=args.repeats,
                                          iters=args.iters, warmup=args.warmup, prepare=prepare)
                except Exception as exc:  # noqa: BLE001 -- one failing variant must not lose the others
                    print(f"{name} bs{batch} {v}: FAILED {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                          flush=True)
                    continue
                st = _stats(rounds, batch)
                vname = inductor_name if v == "inductor" else v
                results[vname] = st
                records.append({"model": name, "variant": vname, "batch": batch, "dtype": args.dtype, **st,
                                "peak_mem_mb": round((torch.cuda.max_memory_allocated() - mem0) / 2**20, 1),
                                "compile_s": round(compile_s, 2), "prune_ratio": prune, "params": params, "flops": None,
                                "max_rel_err_vs_reference": rel, "top1_agreement_vs_reference": top1, **info})
                print(f"{name} bs{batch} {vname}: {st['latency_ms_median']:.3f} ms (p90 {st['latency_ms_p90']:.3f}), "
                      f"{st['throughput_img_s']:.0f} img/s, rel err {rel:.2e}, top-1 {top1:.3f}, compile {compile_s:.1f} s",
                      flush=True)
                fn = prepare = m = ref = loaded = holder = None  # noqa: F841 -- free this variant's memory
            if inductor_name in results:
                for r in records:
                    if r["model"] == name and r["batch"] == batch:
                        sp, ci, p = _vs(results[inductor_name]["round_medians"], r["round_medians"])
                        r.update(speedup_vs_inductor=sp, ci95=ci, p_value_vs_inductor=p)
            out = write(records, args, variants, final=False)  # after each (model, batch): a cut-off run keeps these
    out = write(records, args, variants)
    print(f"wrote {out}")
    return 0


def write(records, args, variants, final: bool = True) -> Path:
    import sparsec

    dev = torch.cuda.get_device_name()
    try:
        from sparsec.backends.cutlass.build import toolchain

        cutlass = toolchain().cutlass_version
    except Exception:  # noqa: BLE001
        cutlass = None
    doc = {
        "kind": "e2e", "device": dev, "capability": list(torch.cuda.get_device_capability()),
        "versions": {"sparsec": sparsec.__version__, "torch": torch.__version__, "cuda": torch.version.cuda,
                     "cutlass": cutlass},
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": " ".join(sys.argv),
        "git_commit": os.environ.get("SPARSEC_GIT_COMMIT"),
        "method": (f"{args.repeats} rounds x {args.iters} CUDA-event timings after {args.warmup} warm-ups; inputs rotated "
                   "beyond L2; sparsec variants replayed as one CUDA graph (input copied in before the start event); "
                   f"inductor mode {args.inductor_mode}; speedup CI: t-interval over per-round ratios; p: paired t-test"),
        "kernel_configs": os.environ.get("SPARSEC_CUTLASS_CONFIGS", "tuned"),
        "kxk_policy": os.environ.get("SPARSEC_CUTLASS_KXK", "sparse"),
        "records": records,
    }
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"e2e_{_gpu_short(dev)}{'_' + args.tag if args.tag else ''}.json"
    out.write_text(json.dumps(doc, indent=1) + "\n")
    _plot(records, out.with_suffix(".png"))
    if final:
        _table(records)
    return out


def _table(records) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="sparsec e2e (fp16)")
    for c in ("model", "batch", "variant", "median ms", "p90 ms", "img/s", "x inductor", "95% CI", "p", "rel err",
              "top-1", "compile s", "peak MB"):
        t.add_column(c)
    for r in records:
        ci = r.get("ci95")
        t.add_row(r["model"], str(r["batch"]), r["variant"], f"{r['latency_ms_median']:.3f}", f"{r['latency_ms_p90']:.3f}",
                  f"{r['throughput_img_s']:.0f}", f"{r.get('speedup_vs_inductor', float('nan')):.2f}",
                  f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "-",
                  f"{r['p_value_vs_inductor']:.1e}" if r.get("p_value_vs_inductor") is not None else "-",
                  f"{r['max_rel_err_vs_reference']:.1e}", f"{r['top1_agreement_vs_reference']:.3f}",
                  f"{r['compile_s']:.1f}", f"{r['peak_mem_mb']:.0f}")
    Console(width=200).print(t)


def _plot(records, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["model"], r["batch"]) for r in records})
    if not groups:
        return
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4), squeeze=False)
    for ax, (model, batch) in zip(axes[0], groups):
        rs = [r for r in records if r["model"] == model and r["batch"] == batch]
        ax.bar([r["variant"] for r in rs], [r["throughput_img_s"] for r in rs], color="tab:blue")
        ax.set_title(f"{model} bs{batch} fp16")
        ax.set_ylabel("throughput (img/s)")
        ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
