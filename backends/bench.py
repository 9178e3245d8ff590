"""``sparsec bench``: eager, torch.compile and sparsec variants of a CNN, side by side on one GPU.

    sparsec bench --models resnet50 --batches 1,32,256 --dtypes fp16,bf16 --inductor-modes default,max-autotune
    python benchmarks/e2e.py ...        (the same, with the same options)

Variants (each in every ``--dtypes`` dtype; the PyTorch ones channels-last), in one process:

* ``eager``: the torchvision model, cast to the dtype, channels-last;
* ``inductor``: ``torch.compile(model, mode=M, dynamic=False)`` of the same, one variant
  ``inductor-<M>`` per ``--inductor-modes`` entry (max-autotune takes minutes per shape);
* ``sparsec-dense``: ``sparsec.compile(target=h100)`` (fold-bn, fusion, CUTLASS dense GEMMs) with
  ``to-dtype{dtype=D,keep-io=false}`` (so it takes the same fp16/bf16 input as the others), loaded and
  replayed as one CUDA graph (:mod:`sparsec.backends.cuda_graph`);
* ``sparsec-pruned``: the same after ``prune-channels{ratio=R}``;
* ``sparsec-24``: ``h100-sparse`` (``sparsify-2-4`` with the measured cost model: 2:4 where the tuned
  sparse kernel beats the tuned dense one on that shape);
* ``sparsec-pruned-24``: pruned, then ``sparsify-2-4{cost-model=--pruned-cost-model}`` on ``h100-sparse``
  (default ``shape``: the tuning DB holds the unpruned shapes only, so ``measured`` would keep every
  pruned layer dense);
* ``<sparsec variant>+nopdl`` / ``+pdl`` (e.g. ``sparsec-pruned-24+nopdl``): the same variant compiled with
  ``SPARSEC_CUTLASS_PDL`` off / on (sm_90a GEMMs launched with programmatic dependent launch, the default), to
  time the knob against the plain variant in one process;
* ``artifact:<name>``: each ``--artifacts`` entry, an artifact ``sparsec compile`` wrote, loaded with
  ``sparsec.load`` and replayed as one CUDA graph, in the group of its model, batch and compute dtype
  (its weights are its own, so it is timed but not compared with a reference here).

Speedups are against ``--baseline`` (default: ``inductor-max-autotune`` when measured, else the first
inductor variant, else ``eager``).

Weights: torchvision's random init with randomised BN statistics (no pretrained weights offline), so
that folding BN is not the identity and the logits are not degenerate.

Method (the device tool's METHOD.md): per variant, ``--repeats`` rounds of ``--iters`` timed calls after
warm-up, each timed by CUDA events; inputs (random, never zeros) rotate over enough copies to exceed L2;
a CUDA-graph variant gets its input copied into the graph's static buffer before the start event.
Latency median and p90 over all calls; throughput = batch / median; speedup vs the baseline with a 95%
t-interval over the per-round ratios and a paired t-test (scipy) over the per-round medians.
Memory: ``peak_mem_mb`` is the running peak (weights, activations, CUDA-graph pool, workspaces: warm-up,
capture and timed calls) above what was allocated before the variant (the shared inputs), with the
reference model freed (an inductor variant's window opens after its compile, so the CUDA-graph modes'
recording call counts); ``peak_mem_setup_mb`` is the peak while compiling, loading and checking it
(autotuning, cuDNN benchmarking and the reference model included).
Correctness: each variant's logits against its own reference (the eager model for eager/inductor, the
pruned / masked graph before lowering for sparsec), relative error and top-1 agreement.
Writes ``e2e_<gpu>[_TAG].json`` (BENCHMARKS.md ``e2e`` records; rewritten after every variant, so a run
cut short keeps what finished), prints a rich table, draws ``e2e_<gpu>[_TAG].png`` (throughput bars) and,
where ``--accuracy`` holds results for a model, ``..._stages.png`` (accuracy, latency and throughput
across the stages dense / pruned / pruned-ft / pruned-24-ft, as in the seed paper's figures 1-3).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import gc
import itertools
import json
import math
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from sparsec import knobs
from sparsec.errors import TargetError, UsageError

L2_BYTES = 50 << 20
VARIANTS = ("eager", "inductor", "sparsec-dense", "sparsec-24", "sparsec-pruned", "sparsec-pruned-24")
PDL = {"+pdl": True, "+nopdl": False}  # a sparsec variant's suffix: compiled with SPARSEC_CUTLASS_PDL on / off
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
INDUCTOR_MODES = ("default", "max-autotune", "max-autotune-no-cudagraphs", "reduce-overhead")
# accuracy stage (accuracy_<gpu>.json) -> the variant whose latency it runs at
STAGE_VARIANT = {"dense": "sparsec-dense", "pruned": "sparsec-pruned", "pruned-ft": "sparsec-pruned",
                 "pruned-24-ft": "sparsec-pruned-24"}


def _gpu_short(name: str) -> str:
    for key in ("H200", "H100", "A100", "L40", "A10"):
        if key in name:
            return key.lower()
    return name.split()[-1].lower()


# ---------------------------------------------------------------- options

@dataclasses.dataclass(frozen=True)
class Plan:
    """What one run measures, from the validated options."""

    models: tuple[str, ...]
    dtypes: tuple[str, ...]
    batches: tuple[int, ...]
    variants: tuple[str, ...]  # expanded: inductor -> inductor-<mode> per mode
    baseline: str
    artifacts: tuple["ArtifactVariant", ...] = ()


@dataclasses.dataclass(frozen=True)
class ArtifactVariant:
    """A compiled artifact (``sparsec compile ... -o PATH``) timed as variant ``artifact:<name>``, in the group of
    its model, batch and compute dtype, read from its manifest."""

    variant: str
    path: str
    model: str
    batch: int
    dtype: str  # the 16-bit dtype its program computes in
    input_dtype: str  # what its program takes: "f32" (cast inside) or the compute dtype
    flops: int | None = None  # per image, of its (possibly pruned) graph: the manifest's total / batch


def read_artifact(path: str, models: list[str], batches: list[int]) -> ArtifactVariant:
    """``--artifacts`` entry -> :class:`ArtifactVariant`, or UsageError naming what does not fit the run."""
    from collections import Counter

    where = Path(path)
    try:
        manifest = json.loads((where / "manifest.json").read_text())
        tensors = manifest["inputs"]["tensors"]
        name = manifest["name"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"--artifacts entry '{path}' is not a sparsec artifact", where=str(where / "manifest.json"),
                         actual=f"{type(exc).__name__}: {exc}",
                         fix="give the directory `sparsec compile ... -o PATH` wrote") from None
    if len(tensors) != 1 or list(tensors[0]["shape"])[1:] != [3, 224, 224]:
        raise UsageError(f"artifact '{path}' takes {[t['shape'] for t in tensors]}", expected="one [B, 3, 224, 224] input",
                         fix="compile it with --input-shape B,3,224,224 (the bench's inputs)")
    batch = int(tensors[0]["shape"][0])
    if name not in models or batch not in batches:
        raise UsageError(f"artifact '{path}' is {name} at batch {batch}, which this run does not measure",
                         expected=f"--models with {name} and --batches with {batch}",
                         actual=f"--models {','.join(models)} --batches {','.join(map(str, batches))}",
                         fix=f"add {name} to --models and {batch} to --batches")
    half = Counter(n["output"].split("[")[0] for n in manifest.get("nodes", [])
                   if n.get("output", "").startswith(("f16[", "bf16[")))
    dtype = {"f16": "fp16", "bf16": "bf16"}[half.most_common(1)[0][0]] if half else "fp16"
    total = manifest.get("totals", {}).get("flops")
    return ArtifactVariant(f"artifact:{where.name}", str(where), name, batch, dtype, tensors[0]["dtype"],
                           int(total) // batch if total else None)


def _split(text: str, what: str, allowed=None) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        choices = f", from {','.join(allowed)}" if allowed else ""
        raise UsageError(f"{what} is empty", fix=f"give a comma-separated list{choices}")
    dup = sorted({t for t in items if items.count(t) > 1})
    if dup:
        raise UsageError(f"{what} repeats {', '.join(dup)}", actual=text, fix="name each entry once")
    prefixes = tuple(a[:-1] for a in allowed or () if a.endswith("*"))  # "tvm*": any name with that prefix
    unknown = [t for t in items if allowed is not None and t not in allowed and not t.startswith(prefixes)]
    if unknown:
        raise UsageError(f"unknown {what} {', '.join(unknown)}", expected=f"some of {','.join(allowed)}", actual=text)
    return items


def expand_variants(variants: list[str], modes: list[str]) -> list[str]:
    """``inductor`` becomes one ``inductor-<mode>`` per mode; the rest stay, in order."""
    out: list[str] = []
    for v in variants:
        for name in ([f"inductor-{m}" for m in modes] if v == "inductor" else [v]):
            if name not in out:
                out.append(name)
    return out


def choose_baseline(variants: list[str], baseline: str | None) -> str:
    """``baseline`` if given (it must be measured), else inductor-max-autotune, the first inductor-*, eager, the first."""
    if baseline:
        if baseline not in variants:
            raise UsageError(f"--baseline {baseline} is not among the variants measured", expected=", ".join(variants),
                             actual=baseline, fix="name one of the variants (inductor-<mode> for torch.compile)")
        return baseline
    inductor = [v for v in variants if v.startswith("inductor-")]
    for pick in ("inductor-max-autotune", *inductor, "eager"):
        if pick in variants:
            return pick
    return variants[0]


def plan(args) -> Plan:
    """Validate the options (UsageError naming the bad one) into a :class:`Plan`."""
    allowed = (*VARIANTS, *(v + sfx for v in VARIANTS if v.startswith("sparsec-") for sfx in PDL),
               *(f"inductor-{m}" for m in INDUCTOR_MODES), "tvm*")  # tvm*: backends/tvm/bench.py checks
    modes = _split(args.inductor_modes, "--inductor-modes", INDUCTOR_MODES)
    variants = expand_variants(_split(args.variants, "--variants", allowed), modes)
    batches = []
    for b in _split(args.batches, "--batches"):
        if not b.isdigit() or int(b) < 1:
            raise UsageError(f"--batches entry {b!r} is not a positive integer", actual=args.batches, fix="e.g. --batches 1,32,256")
        batches.append(int(b))
    prune_ratios(args.prune_ratio, _split(args.models, "--models"))  # checked before any GPU work
    models = _split(args.models, "--models")
    dtypes = _split(args.dtypes, "--dtypes", tuple(DTYPES))
    artifacts = tuple(read_artifact(a, models, batches) for a in _split(args.artifacts, "--artifacts")) \
        if args.artifacts else ()
    for a in artifacts:
        if a.dtype not in dtypes:
            raise UsageError(f"artifact '{a.path}' computes in {a.dtype}, which this run does not measure",
                             expected=f"--dtypes with {a.dtype}", actual=args.dtypes)
    variants = [*variants, *(a.variant for a in artifacts)]
    return Plan(models=tuple(models), dtypes=tuple(dtypes), batches=tuple(batches), variants=tuple(variants),
                baseline=choose_baseline(variants, args.baseline), artifacts=artifacts)


# ---------------------------------------------------------------- measuring

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
    """Capture ``module(example)`` once as a CUDA graph (:mod:`sparsec.backends.cuda_graph`); returns
    (run(x), prepare(x), the captured graph): prepare copies x into the static input, run replays."""
    from sparsec.backends.cuda_graph import CudaGraphModule

    graph = CudaGraphModule(module, check_device=False).capture(example)  # any CUDA callable, as loaded
    return (lambda x: graph.replay()), graph.copy_in, graph


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


def prune_ratios(spec: str, models: list[str]) -> dict[str, float]:
    """``--prune-ratio``: one ratio for every model (``0.3``) or one per model (``resnet50=0.5,mobilenet_v2=0.32``)."""
    out = {}
    try:
        if "=" not in spec:
            out = dict.fromkeys(models, float(spec))
        else:
            out = {k.strip(): float(v) for k, v in (item.split("=", 1) for item in spec.split(",") if item.strip())}
    except ValueError:
        out = {}
    if not out or any(not 0 < r < 1 for r in out.values()) or set(models) - set(out):
        raise UsageError(f"--prune-ratio '{spec}' does not give a ratio in (0, 1) for every model",
                         expected="one ratio (0.3) or model=ratio for each of " + ",".join(models), actual=spec)
    return out


def sparsec_pipeline(pipeline: str, *, dtype: str = "fp16", prune_ratio: float | None = None,
                     cost_model: str | None = None, round_to: int = 8) -> str:
    """The backend's pipeline with the bench's changes: I/O in ``dtype``, optional prune and sparsify cost model.

    Pruning is ``prune-channels{ratio,round-to}`` with round-to 8 by default: the widths of the accuracy
    experiment (benchmarks/accuracy/run.py), whose accuracy the headline ratio must meet; 8 is also the
    fp16/bf16 tensor-core alignment the kernels need."""
    new, n = re.subn(r"to-dtype(\{[^}]*\})?", f"to-dtype{{dtype={dtype},keep-io=false}}", pipeline)
    if n != 1:
        raise UsageError("the backend's pipeline has no single to-dtype pass to set the dtype in", actual=pipeline)
    if prune_ratio:
        new = new.replace("fold-bn,dce,", f"fold-bn,dce,prune-channels{{ratio={prune_ratio},round-to={round_to}}},dce,",
                          1)
    if cost_model:
        new = new.replace("sparsify-2-4,", f"sparsify-2-4{{cost-model={cost_model}}},")
    return new


def sparsec_spec(variant: str) -> tuple[str, bool, bool | None]:
    """(target, pruned, pdl) of a ``sparsec-*`` variant: ``-24`` compiles for h100-sparse, ``pruned`` prunes,
    a ``+pdl`` / ``+nopdl`` suffix sets SPARSEC_CUTLASS_PDL (None: the environment's setting holds)."""
    plain, pdl = variant, None
    for sfx, on in PDL.items():
        if variant.endswith(sfx):
            plain, pdl = variant.removesuffix(sfx), on
    return ("h100-sparse" if plain.endswith("-24") else "h100"), "pruned" in plain, pdl


def sparsec_variant(model, batch: int, target: str, prune_ratio: float | None, workdir: Path,
                    cost_model: str | None = None, dtype: str = "fp16", round_to: int = 8):
    """Compile + load one sparsec variant; returns (loaded module, reference module, compile s, info).

    The steps of ``sparsec.compile`` (trace, the backend's pipeline, lower, write the artifact) then
    ``sparsec.load``, with the module kept before lowering as the reference (pruned / masked graph in ``dtype``).
    """
    import sparsec
    from sparsec.api import resolve_backend, resolve_target
    from sparsec.backends.artifact import write_artifact
    from sparsec.ir import Cost
    from sparsec.passes.manager import PassContext, PassManager

    tgt = resolve_target(target)
    backend = resolve_backend(tgt)
    pipeline = sparsec_pipeline(backend.pipeline(tgt), dtype=dtype, prune_ratio=prune_ratio, cost_model=cost_model,
                                round_to=round_to)
    t0 = time.perf_counter()
    mod = sparsec.trace(model, (torch.randn(batch, 3, 224, 224),))
    pm = PassManager.parse(pipeline)
    records = tuple(pm.run(mod, PassContext(target=tgt)))
    t_clone = time.perf_counter()
    cost = mod.analysis(Cost)  # of the pruned graph; 2:4 zeros are not subtracted
    ref = mod.clone()
    t1 = time.perf_counter()
    lowered = backend.lower(mod, tgt)
    # a fresh folder per compile: the same (target, dtype, ratio, batch) recurs across models and memprobe steps
    where = Path(tempfile.mkdtemp(dir=workdir, prefix=f"{type(model).__name__}-{target}-{dtype}-{prune_ratio}-{batch}-"))
    path = write_artifact(where / "model.sparsec", lowered, target=tgt,
                          pipeline=str(pm), records=records)
    loaded = sparsec.load(path)
    compile_s = (t_clone - t0) + (time.perf_counter() - t1)
    manifest = json.loads((Path(path) / "manifest.json").read_text())
    layers = manifest["payload"]["layers"]
    info = {"pipeline": str(pm), "layers_lowered": len(layers), "layers_24": sum(r["sparse"] for r in layers),
            "kernels": len(manifest["payload"]["kernels"]), "flops": cost.total_flops // batch, "params": cost.total_params}
    return loaded, ref.gm.cuda().eval(), compile_s, info


@functools.lru_cache(maxsize=None)
def dense_cost(name: str) -> tuple[int, int]:
    """(FLOPs per 224x224 image = 2 x MACs, parameters) of the unpruned model (sparsec's Cost analysis)."""
    import sparsec
    from sparsec.ir import Cost

    cost = sparsec.trace(make_model(name), (torch.randn(1, 3, 224, 224),)).analysis(Cost)
    return cost.total_flops, cost.total_params


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


def attach_speedups(group: list[dict], baseline: str) -> None:
    """Speedup (95% CI, paired t-test) of every record of one (model, dtype, batch) against ``baseline``'s."""
    base = next((r for r in group if r["variant"] == baseline), None)
    for r in group:
        r["baseline"] = baseline
        if base is None:
            r.update(speedup_vs_baseline=None, ci95=None, p_value_vs_baseline=None)
            continue
        sp, ci, p = _vs(base["round_medians"], r["round_medians"])
        r.update(speedup_vs_baseline=sp, ci95=ci, p_value_vs_baseline=p)
    # BENCHMARKS.md's e2e fields: against torch.compile (the baseline when it is one, else the first inductor-*)
    ind = base if baseline.startswith("inductor") else next((r for r in group if r["variant"].startswith("inductor")), None)
    for r in group if ind is not None else ():
        sp, _, p = _vs(ind["round_medians"], r["round_medians"])
        r.update(speedup_vs_inductor=sp, p_value_vs_inductor=p, inductor_variant=ind["variant"])


def _mb(nbytes: int) -> float:
    return round(nbytes / 2**20, 1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet50", help="comma-separated torchvision model names")
    ap.add_argument("--batches", default="1,32,256")
    ap.add_argument("--dtypes", default="fp16", help="comma-separated, from fp16,bf16")
    ap.add_argument("--prune-ratio", default="0.3", help="one ratio, or model=ratio,... (see prune_ratios)")
    ap.add_argument("--round-to", type=int, default=8, help="prune-channels round-to of the pruned variants")
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help="comma-separated; 'inductor' expands to one variant per --inductor-modes entry")
    ap.add_argument("--pruned-cost-model", default="shape", choices=["measured", "shape", "off"])
    ap.add_argument("--inductor-modes", default="default", help=f"comma-separated, from {','.join(INDUCTOR_MODES)}")
    ap.add_argument("--baseline", default=None, help="variant the speedups are against (default: see above)")
    ap.add_argument("--inductor-cache-dir", default=None,
                    help="TORCHINDUCTOR_CACHE_DIR: a warm cache (FX graphs, autotune results) skips max-autotune's "
                         "benchmarking and compiles the same code; whether it was warm goes into the JSON")
    ap.add_argument("--accuracy", default=None,
                    help="accuracy results JSON for the stages figure (default: benchmarks/results/accuracy_<gpu>.json)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--out-dir", default="benchmarks/results")
    ap.add_argument("--tag", default="", help="suffix of the output file name: e2e_<gpu>[_TAG].json")
    ap.add_argument("--from-json", default=None, metavar="JSON",
                    help="measure nothing: redraw the figures beside JSON (an e2e results file) and print its table")
    ap.add_argument("--artifacts", default=None,
                    help="comma-separated artifacts from `sparsec compile` (B x 3 x 224 x 224 input), each timed as "
                         "variant artifact:<dir name> beside the others in the group of its model, batch and dtype")
    ap.add_argument("--tvm-artifacts", default=None,
                    help="folder of prebuilt tvm artifacts for the tvm* variants (backends/tvm/bench.py)")
    args = ap.parse_args(argv)
    if args.from_json:
        return redraw(Path(args.from_json), args.accuracy)
    p = plan(args)
    if not torch.cuda.is_available():
        raise TargetError("sparsec bench needs a CUDA GPU", actual="torch.cuda.is_available() is False",
                          fix="run it on the GPU machine the numbers are for; `sparsec compile` works without one")
    if args.inductor_cache_dir:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(args.inductor_cache_dir).resolve())
    inductor = _inductor_settings(p)
    torch.backends.cudnn.benchmark = True
    records: list[dict] = []
    failures: list[dict] = []
    work = Path(tempfile.mkdtemp(prefix="sparsec-e2e-"))
    t_start = time.perf_counter()
    n_groups, i_group = len(p.models) * len(p.dtypes) * len(p.batches), 0
    for name in p.models:
        for dtype, batch in itertools.product(p.dtypes, p.batches):
            i_group += 1
            dt = DTYPES[dtype]
            base = make_model(name)
            flops, params = dense_cost(name)
            inputs = _inputs(batch, dt)
            check_x = torch.randn(batch, 3, 224, 224, device="cuda",
                                  generator=torch.Generator(device="cuda").manual_seed(99)).to(dt)
            group: list[dict] = []
            for v in p.variants:
                art = next((a for a in p.artifacts if a.variant == v), None)
                if art is not None and (art.model, art.batch, art.dtype) != (name, batch, dtype):
                    continue  # an artifact runs in the group of its own model, batch and dtype only
                print(f"{_clock(t_start)} ({i_group}/{n_groups}) {name} {dtype} bs{batch} {v}: building"
                      + (" (max-autotune: minutes)" if "max-autotune" in v else ""), flush=True)
                # The last variant's model, artifact and CUDA graph go before mem0 is read: alive, they counted in
                # mem0 and, freed during this variant, made its peak come out low (negative, once).
                fn = prepare = m = ref = loaded = holder = rounds = None  # noqa: F841
                torch._dynamo.reset()  # the last compile's graphs and pools likewise; and each compile is static, per batch
                gc.collect()
                # cuBLAS keeps a workspace per handle in the caching allocator, and a CUDA-graph capture frees it:
                # alive in mem0, it made the peak of a variant that captures come out low (-23 MB, once).
                # A variant that uses cuBLAS allocates it again inside its own window.
                if hasattr(torch._C, "_cuda_clearCublasWorkspaces"):
                    torch._C._cuda_clearCublasWorkspaces()
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                mem0 = torch.cuda.memory_allocated()
                info, compile_s, prune = {}, 0.0, None
                inputs_v = inputs
                setup_peak = None  # set where a variant opens its running-peak window early
                try:
                    if v == "eager" or v.startswith("inductor-"):
                        m = make_model(name).to("cuda", dt).to(memory_format=torch.channels_last)
                        with torch.no_grad():
                            ref = m(check_x)  # the eager model's logits
                        if v != "eager":
                            mode = v.removeprefix("inductor-")
                            t0 = time.perf_counter()
                            m = torch.compile(m, mode=None if mode == "default" else mode, dynamic=False)
                            with torch.no_grad(), _heartbeat(f"{name} {dtype} bs{batch} {v}: compiling", t_start):
                                m(inputs[0])
                            torch.cuda.synchronize()
                            compile_s = time.perf_counter() - t0
                            # The CUDA-graph modes (max-autotune, reduce-overhead) record on the next call: its pool
                            # counts in the running peak, as sparsec's own capture does (graphed() below). Opened
                            # after the recording, the window saw only the outputs (16 MB for ResNet-50 bs256).
                            setup_peak = torch.cuda.max_memory_allocated() - mem0
                            torch.cuda.reset_peak_memory_stats()
                        fn = torch.no_grad()(m)
                        with torch.no_grad():
                            rel, top1 = compare(m(check_x), ref)
                    elif v.startswith("artifact:"):  # a user's artifact: its own model, batch and dtype only
                        import sparsec

                        t0 = time.perf_counter()
                        loaded = sparsec.load(art.path)
                        compile_s = time.perf_counter() - t0  # loading (kernels from the cache); compiled earlier
                        cast = torch.float32 if art.input_dtype == "f32" else dt
                        inputs_v = [x.to(cast) for x in inputs]
                        with torch.no_grad():  # its weights are not the bench's: no reference to compare with
                            y = _first(loaded(check_x.to(cast)))
                        rel = top1 = None
                        info = {"artifact": art.path, "flops": art.flops, "finite_output": bool(torch.isfinite(y).all())}
                    elif v.startswith("tvm"):  # tvm, tvm-24 (+ -graph): prebuilt artifacts, backends/tvm/bench.py
                        from sparsec.backends.tvm.bench import tvm_variant

                        loaded, ref, compile_s, info = tvm_variant(base, name, batch, v, args.tvm_artifacts, work)
                        with torch.no_grad():  # built with fp16 I/O (bench.sparsec_pipeline): the same inputs
                            rel, top1 = compare(loaded(check_x), ref(check_x))
                        fn = loaded
                        if v.endswith("-graph"):
                            fn, prepare, holder = graphed(loaded, inputs[0])
                    else:
                        target, pruned, pdl = sparsec_spec(v)
                        prune = prune_ratios(args.prune_ratio, [name])[name] if pruned else None
                        cm = args.pruned_cost_model if (prune and target == "h100-sparse") else None
                        with knobs.scope(**({} if pdl is None else {"cutlass_pdl": pdl})):  # kernels: chosen at compile
                            loaded, ref, compile_s, info = sparsec_variant(base, batch, target, prune, work, cm, dtype,
                                                                           args.round_to)
                        with torch.no_grad():
                            rel, top1 = compare(loaded(check_x), ref(check_x))
                    ref = None  # the reference does not count in the running peak
                    if setup_peak is None:
                        setup_peak = torch.cuda.max_memory_allocated() - mem0
                        gc.collect()
                        torch.cuda.reset_peak_memory_stats()
                    if v.startswith(("sparsec-", "artifact:")):
                        fn, prepare, holder = graphed(loaded, inputs_v[0])
                    rounds = time_variant(fn, inputs_v, repeats=args.repeats, iters=args.iters, warmup=args.warmup,
                                          prepare=prepare)
                except Exception as exc:  # noqa: BLE001 -- one failing variant must not lose the others
                    msg = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                    print(f"{_clock(t_start)} {name} {dtype} bs{batch} {v}: FAILED {msg}", flush=True)
                    failures.append({"model": name, "variant": v, "batch": batch, "dtype": dtype, "error": msg})
                    fn = prepare = m = ref = loaded = holder = None  # noqa: F841
                    continue
                rec = {"model": name, "variant": v, "batch": batch, "dtype": dtype, **_stats(rounds, batch),
                       "peak_mem_mb": _mb(torch.cuda.max_memory_allocated() - mem0), "peak_mem_setup_mb": _mb(setup_peak),
                       "compile_s": round(compile_s, 2), "prune_ratio": prune, "params": params, "flops": flops,
                       "max_rel_err_vs_reference": rel, "top1_agreement_vs_reference": top1, **info}
                group.append(rec)
                records.append(rec)
                attach_speedups(group, p.baseline)
                check = "not checked" if rel is None else f"rel err {rel:.2e}, top-1 {top1:.3f}"
                print(f"{_clock(t_start)} {name} {dtype} bs{batch} {v}: {rec['latency_ms_median']:.3f} ms "
                      f"(p90 {rec['latency_ms_p90']:.3f}), {rec['throughput_img_s']:.0f} img/s, {check}, "
                      f"compile {compile_s:.1f} s, peak {rec['peak_mem_mb']:.0f} MB "
                      f"(setup {rec['peak_mem_setup_mb']:.0f} MB)", flush=True)
                fn = prepare = m = ref = loaded = holder = None  # noqa: F841 -- free this variant's memory
                write(records, failures, args, p, inductor, final=False)  # a run cut short keeps what finished
            write(records, failures, args, p, inductor, final=False, draw=True)  # figures after each group
    out = write(records, failures, args, p, inductor)
    table(records, p.baseline)
    print(f"{_clock(t_start)} wrote {out}")
    return 0


def _clock(t0: float) -> str:
    return f"[{time.perf_counter() - t0:6.0f} s]"


@contextlib.contextmanager
def _heartbeat(label: str, t0: float, every_s: float = 60.0):
    """Print ``label`` every ``every_s`` seconds while the block runs (max-autotune compiles for minutes)."""
    stop = threading.Event()

    def beat():
        while not stop.wait(every_s):
            print(f"{_clock(t0)} {label}", flush=True)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def redraw(path: Path, accuracy: str | None) -> int:
    """``--from-json``: the figures and the table of an existing e2e results file (no GPU needed)."""
    if not path.is_file():
        raise UsageError(f"--from-json {path}: no such file", fix="give an e2e_<gpu>[_TAG].json written by sparsec bench")
    doc = json.loads(path.read_text())
    if doc.get("kind") != "e2e":
        raise UsageError(f"--from-json {path} is not an e2e results file", expected='"kind": "e2e"', actual=str(doc.get("kind")))
    baseline = doc.get("baseline") or choose_baseline(list(dict.fromkeys(r["variant"] for r in doc["records"])), None)
    records = [dict(r, dtype=r.get("dtype", "fp16")) for r in doc["records"]]
    for key in {(r["model"], r["dtype"], r["batch"]) for r in records}:  # speedups vs this baseline, from round medians
        attach_speedups([r for r in records if (r["model"], r["dtype"], r["batch"]) == key], baseline)
    figures(records, path, _gpu_short(doc["device"]), accuracy, baseline)
    table(records, baseline)
    return 0


def _inductor_settings(p: Plan) -> dict | None:
    """The torch._inductor settings in force (compile threads, caches): what makes max-autotune faster to
    compile without changing the code it picks. None when no inductor variant runs."""
    modes = [v.removeprefix("inductor-") for v in p.variants if v.startswith("inductor-")]
    if not modes:
        return None
    import torch._inductor.config as cfg

    keys = ("compile_threads", "fx_graph_cache", "autotune_local_cache", "autotune_in_subproc",
            "max_autotune_gemm_backends", "max_autotune_conv_backends", "max_autotune_gemm_search_space")
    out = {k: getattr(cfg, k, None) for k in keys}
    try:
        from torch._inductor.runtime.cache_dir_utils import cache_dir

        out["cache_dir"] = cache_dir()
    except ImportError:
        out["cache_dir"] = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    out["cache_warm_at_start"] = bool(out["cache_dir"]) and Path(out["cache_dir"]).is_dir() and any(Path(out["cache_dir"]).iterdir())
    out["modes"] = {m: torch._inductor.list_mode_options(None if m == "default" else m) for m in modes}
    out["dynamic"] = False
    return out


@functools.lru_cache(maxsize=None)
def _versions() -> dict:
    import sparsec

    try:
        from sparsec.backends.cutlass.build import toolchain

        cutlass = toolchain().cutlass_version
    except Exception:  # noqa: BLE001 -- no CUTLASS here: the JSON says null
        cutlass = None
    return {"sparsec": sparsec.__version__, "torch": torch.__version__, "cuda": torch.version.cuda, "cutlass": cutlass}


def write(records, failures, args, p: Plan, inductor: dict | None = None, final: bool = True,
          draw: bool = False) -> Path:
    dev = torch.cuda.get_device_name()
    doc = {
        "kind": "e2e", "device": dev, "capability": list(torch.cuda.get_device_capability()), "versions": _versions(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": " ".join(sys.argv),
        "git_commit": os.environ.get("SPARSEC_GIT_COMMIT"),
        "method": (f"{args.repeats} rounds x {args.iters} CUDA-event timings after {args.warmup} warm-ups; inputs rotated "
                   "beyond L2, the same fp16/bf16 tensors for every variant (sparsec compiled with keep-io=false); "
                   "sparsec variants replayed as one CUDA graph (input copied in before the start event); "
                   "torch.compile with dynamic=False after torch._dynamo.reset(); speedup vs the baseline: t-interval "
                   "over per-round ratios; p: paired t-test over per-round medians; peak_mem_mb: running peak above the "
                   "inputs (reference freed), peak_mem_setup_mb: compile + load + check"),
        "baseline": p.baseline,
        "plan": dataclasses.asdict(p),
        "kernel_configs": os.environ.get("SPARSEC_CUTLASS_CONFIGS", "tuned"),
        "kxk_policy": knobs.get("cutlass_kxk"),
        "depthwise_policy": knobs.get("cutlass_depthwise"),
        "inductor": inductor,
        "complete": final,
        "failures": failures,
        "records": records,
    }
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"e2e_{_gpu_short(dev)}{'_' + args.tag if args.tag else ''}.json"
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, out)  # a run killed mid-write leaves the previous complete file
    if final or draw:
        figures(records, out, _gpu_short(dev), args.accuracy, p.baseline)
    return out


def figures(records, out: Path, gpu: str, accuracy: str | None, baseline: str) -> list[Path]:
    """The bar chart beside ``out`` and, where the accuracy results cover a measured model, the stages figure."""
    made = []
    if records:
        plot(records, out.with_suffix(".png"))
        made.append(out.with_suffix(".png"))
    acc = Path(accuracy) if accuracy else Path("benchmarks/results") / f"accuracy_{gpu}.json"
    stages = out.with_name(out.stem + "_stages.png")
    if acc.is_file() and plot_stages(records, json.loads(acc.read_text()), stages, baseline):
        made.append(stages)
    return made


# ---------------------------------------------------------------- table and figures

def table(records, baseline: str) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"sparsec e2e (speedup vs {baseline})")
    for c in ("model", "dtype", "batch", "variant", "median ms", "p90 ms", "img/s", "speedup", "95% CI", "p", "rel err",
              "top-1", "compile s", "peak MB", "setup MB"):
        t.add_column(c)
    for r in records:
        ci, sp, p = r.get("ci95"), r.get("speedup_vs_baseline"), r.get("p_value_vs_baseline")
        t.add_row(r["model"], r["dtype"], str(r["batch"]), r["variant"], f"{r['latency_ms_median']:.3f}",
                  f"{r['latency_ms_p90']:.3f}", f"{r['throughput_img_s']:.0f}", _fmt(sp, ".2f"),
                  f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "-", _fmt(p, ".1e"),
                  _fmt(r['max_rel_err_vs_reference'], '.1e'), _fmt(r['top1_agreement_vs_reference'], '.3f'),
                  f"{r['compile_s']:.1f}", f"{r['peak_mem_mb']:.0f}", _fmt(r.get("peak_mem_setup_mb"), ".0f"))
    Console(width=220).print(t)


def _fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot(records, path: Path) -> None:
    """Throughput bars, one panel per (model, dtype, batch)."""
    groups = sorted({(r["model"], r["dtype"], r["batch"]) for r in records})
    if not groups:
        return
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(groups), figsize=(4.5 * len(groups), 4), squeeze=False)
    for ax, (model, dtype, batch) in zip(axes[0], groups):
        rs = [r for r in records if (r["model"], r["dtype"], r["batch"]) == (model, dtype, batch)]
        ax.bar([r["variant"] for r in rs], [r["throughput_img_s"] for r in rs], color="tab:blue")
        ax.set_title(f"{model} bs{batch} {dtype}")
        ax.set_ylabel("throughput (img/s)")
        ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def stage_rows(records, accuracy: dict, model: str) -> tuple[list[dict], dict | None]:
    """Per accuracy stage of ``model``: top-1 mean/std (accuracy summary) beside the latency and throughput of the
    variant that runs it (:data:`STAGE_VARIANT`), at the largest batch measured, fp16 if measured; and that key."""
    mine = [r for r in records if r["model"] == model]
    if not mine:
        return [], None
    dtype = "fp16" if any(r["dtype"] == "fp16" for r in mine) else mine[0]["dtype"]
    batch = max(r["batch"] for r in mine if r["dtype"] == dtype)
    by_variant = {r["variant"]: r for r in mine if (r["dtype"], r["batch"]) == (dtype, batch)}
    # the accuracy of the channel ratio the pruned variants ran at: the base stages, or the extra-ratio
    # stages ``pruned-ft@0.5`` of benchmarks/accuracy/run.py when the bench ran another ratio
    ratio = next((r["prune_ratio"] for r in by_variant.values() if r.get("prune_ratio")), None)
    base = next((r.get("channel_ratio") for r in accuracy.get("records", [])
                 if r.get("model") == model and r.get("stage") == "pruned"), None)
    suffix = f"@{ratio:g}" if ratio is not None and base is not None and not math.isclose(ratio, base) else ""
    found = {s.get("stage"): s for s in accuracy.get("summary", []) if s.get("model") == model}
    summary = [{**found[st + ("" if st == "dense" else suffix)], "stage": st} for st in STAGE_VARIANT
               if st + ("" if st == "dense" else suffix) in found]
    if not summary:
        return [], None
    rows = []
    for s in summary:
        r = by_variant.get(STAGE_VARIANT[s["stage"]])
        rows.append({"stage": s["stage"], "variant": STAGE_VARIANT[s["stage"]], "top1": s["top1_mean"],
                     "top1_std": s.get("top1_std") or 0.0, "flops_removed_frac": s.get("flops_removed_frac"),
                     "latency_ms": r["latency_ms_median"] if r else None, "throughput": r["throughput_img_s"] if r else None})
    return rows, {"dtype": dtype, "batch": batch, "variants": by_variant}


def plot_stages(records, accuracy: dict, path: Path, baseline: str) -> bool:
    """The seed paper's figures 1-3 in one figure: accuracy, latency and throughput across the stages
    (dense, pruned, pruned-ft, pruned-24-ft), a row per model with accuracy results. False if none has any."""
    models = [m for m in dict.fromkeys(r["model"] for r in records) if stage_rows(records, accuracy, m)[0]]
    if not models:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(len(models), 3, figsize=(15, 3.8 * len(models)), squeeze=False)
    for row, model in zip(axes, models):
        rows, key = stage_rows(records, accuracy, model)
        stages = [r["stage"] for r in rows]
        colors = ["tab:gray", "tab:red", "tab:blue", "tab:green"][: len(stages)]
        bars = row[0].bar(stages, [100 * r["top1"] for r in rows], yerr=[100 * r["top1_std"] for r in rows],
                          color=colors, capsize=3)
        row[0].bar_label(bars, fmt="%.1f", fontsize=8)
        lo = min(100 * r["top1"] for r in rows)
        row[0].set_ylim(max(0, lo - 5), 100)
        row[0].set_ylabel("top-1 (%)")
        fr = next((r["flops_removed_frac"] for r in rows if r["flops_removed_frac"]), None)
        dataset = next((r.get("dataset") for r in accuracy.get("records", []) if r.get("model") == model), "?")
        row[0].set_title(f"{model}: accuracy ({dataset}"
                         + (f", {fr:.0%} FLOPs removed" if fr else "") + ")")
        for ax, field, label in ((row[1], "latency_ms", "latency (ms)"), (row[2], "throughput", "throughput (img/s)")):
            bars = ax.bar(stages, [r[field] or 0 for r in rows], color=colors)
            ax.bar_label(bars, fmt="%.3g", fontsize=8)
            base = key["variants"].get(baseline)
            if base is not None:
                ax.axhline(base["latency_ms_median"] if field == "latency_ms" else base["throughput_img_s"],
                           color="k", ls="--", lw=1, label=baseline)
                ax.legend(loc="best", fontsize=8)
            ax.set_ylabel(label)
            ax.set_title(f"{model} bs{key['batch']} {key['dtype']}: {label.split(' ')[0]} (sparsec, prune ratio "
                         f"{next((r.get('prune_ratio') for r in key['variants'].values() if r.get('prune_ratio')), '-')})",
                         fontsize=9)
        for ax in row:
            ax.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
