"""Where one sparsec variant's GPU memory goes, step by step: compile + load, first call, reference call,
CUDA-graph capture, replay (the peak of each step, above what was allocated before the variant).

Why: ``e2e_h100.json`` showed sparsec-pruned-24 at bs1 peaking at 643 MB against 58 MB for sparsec-pruned,
while its whole program holds about 14 MB of weights and 86 MB of activations (FakeTensorProp on the CPU),
so the extra is a transient outside the program. Running the same variant twice tells a first-time cost
(cuDNN benchmarking a new shape, lazy init) from a per-variant one.

    python benchmarks/e2e_memprobe.py --model resnet50 --batch 1 --variants sparsec-pruned-24,sparsec-pruned,sparsec-pruned-24
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
from pathlib import Path

import torch

from sparsec.backends import bench


def probe(name: str, batch: int, variant: str, dtype: str, prune_ratio: float, work: Path) -> list[dict]:
    base = bench.make_model(name)
    x = torch.randn(batch, 3, 224, 224, device="cuda", generator=torch.Generator(device="cuda").manual_seed(3))
    x = x.to(bench.DTYPES[dtype])
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    mem0 = torch.cuda.memory_allocated()
    steps = []

    def mark(step: str) -> None:
        torch.cuda.synchronize()
        steps.append({"step": step, "allocated_mb": bench._mb(torch.cuda.memory_allocated() - mem0),
                      "peak_mb": bench._mb(torch.cuda.max_memory_allocated() - mem0)})
        torch.cuda.reset_peak_memory_stats()

    target = "h100-sparse" if variant.endswith("-24") else "h100"
    prune = prune_ratio if "pruned" in variant else None
    cm = "shape" if (prune and target == "h100-sparse") else None
    loaded, ref, _, _ = bench.sparsec_variant(base, batch, target, prune, work, cm, dtype)
    mark("compile + load + reference .cuda()")
    with torch.no_grad():
        y = loaded(x)
    mark("first call of the loaded program")
    with torch.no_grad():
        r = ref(x)
    mark("reference call")
    del ref, r, y
    gc.collect()
    mark("reference freed")
    run, prepare, _graph = bench.graphed(loaded, x)
    mark("CUDA-graph warm-up + capture")
    prepare(x)
    run(x)
    mark("replay")
    return steps


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--dtype", default="fp16", choices=sorted(bench.DTYPES))
    ap.add_argument("--prune-ratio", type=float, default=0.3)
    ap.add_argument("--variants", default="sparsec-pruned-24,sparsec-pruned,sparsec-pruned-24")
    ap.add_argument("--out", default=None, help="write the steps as JSON here")
    args = ap.parse_args(argv)
    torch.backends.cudnn.benchmark = True  # as in sparsec bench
    work = Path(tempfile.mkdtemp(prefix="sparsec-memprobe-"))
    runs = []
    for i, v in enumerate(args.variants.split(",")):
        steps = probe(args.model, args.batch, v, args.dtype, args.prune_ratio, work)
        runs.append({"order": i, "variant": v, "steps": steps})
        for s in steps:
            print(f"{i} {v:18s} {s['step']:36s} peak {s['peak_mb']:8.1f} MB  allocated {s['allocated_mb']:8.1f} MB",
                  flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"kind": "e2e-memprobe", "device": torch.cuda.get_device_name(),
                                              "model": args.model, "batch": args.batch, "dtype": args.dtype,
                                              "runs": runs}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
