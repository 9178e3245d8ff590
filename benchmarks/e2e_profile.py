"""Where the time goes: per-kernel GPU time of sparsec variants beside ``torch.compile``, one model and batch.

Builds the variants as ``sparsec bench`` does (``sparsec.backends.bench``), runs each a few times under
``torch.profiler`` (eagerly, so every kernel shows; the CUDA-graph replay runs the same kernels) and writes,
per variant, the kernels grouped into classes (GEMM, conv, depthwise conv, elementwise, reduction, copy)
with their time per forward, plus the top kernels by time. A diagnosis tool, not a benchmark: profiler
overhead inflates small kernels, so compare the classes' shares, and take latencies from ``sparsec bench``.

    python benchmarks/e2e_profile.py --model mobilenet_v2 --batch 256 --out /tmp/prof_mbv2.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import torch

from sparsec.backends import bench

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment  # noqa: E402

CLASSES = (  # first match wins: (class, kernel-name pattern); cuDNN's kernels are named sm80_/sm90_xmma_...
    ("depthwise", r"depthwise|dwconv"),
    ("squeeze-excite", r"se_sum|se_fc|se_scale"),  # sparsec's squeeze-excite kernels
    ("stem", r"::stem\("),  # sparsec's stem kernel
    ("sparsec-gemm", r"cutlass"),
    ("conv(cudnn)", r"conv|cudnn|implicit_gemm|xmma|fprop|sm90_xmma"),
    ("gemm(cublas/triton-mm)", r"gemm|cublas|nvjet|triton_tem|mm_"),
    ("triton-fused", r"^triton_"),
    ("reduction", r"reduce|mean|avg_pool|adaptive|sum"),
    ("copy/layout", r"copy|transpose|permute|nchwToNhwc|nhwcToNchw|contiguous|cat"),
    ("elementwise", r"elementwise|vectorized|unrolled|add|mul|clamp|hardtanh|silu|sigmoid|relu"),
)


def classify(name: str) -> str:
    for cls, pat in CLASSES:
        if re.search(pat, name, re.IGNORECASE):
            return cls
    return "other"


def profile(fn, x, iters: int) -> dict:
    from torch.profiler import ProfilerActivity, profile as tprofile

    with torch.no_grad():
        for _ in range(3):
            fn(x)
        torch.cuda.synchronize()
        with tprofile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(iters):
                fn(x)
            torch.cuda.synchronize()
    kernels: dict[str, list[float]] = defaultdict(list)
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA and e.device_time > 0:  # kernels and memcpys/sets
            kernels[e.name].append(e.device_time / 1000.0)  # us -> ms
    per_fwd = {k: (sum(v) / iters, len(v) / iters) for k, v in kernels.items()}
    classes: dict[str, dict] = defaultdict(lambda: {"ms": 0.0, "launches": 0.0})
    for k, (ms, n) in per_fwd.items():
        c = classes[classify(k)]
        c["ms"] += ms
        c["launches"] += n
    total = sum(ms for ms, _ in per_fwd.values())
    top = sorted(per_fwd.items(), key=lambda kv: -kv[1][0])[:25]
    return {"gpu_ms_per_forward": round(total, 4), "launches_per_forward": round(sum(n for _, n in per_fwd.values()), 1),
            "classes": {k: {"ms": round(v["ms"], 4), "launches": round(v["launches"], 1)}
                        for k, v in sorted(classes.items(), key=lambda kv: -kv[1]["ms"])},
            "top": [{"kernel": k[:160], "ms": round(ms, 4), "launches": round(n, 1)} for k, (ms, n) in top]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mobilenet_v2")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--dtype", default="fp16", choices=sorted(bench.DTYPES))
    ap.add_argument("--variants", default="inductor-default,sparsec-dense,sparsec-pruned",
                    help="from inductor-<mode>, sparsec-dense, sparsec-24, sparsec-pruned, sparsec-pruned-24")
    ap.add_argument("--prune-ratio", type=float, default=0.32)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    torch.backends.cudnn.benchmark = True
    dt = bench.DTYPES[args.dtype]
    x = torch.randn(args.batch, 3, 224, 224, device="cuda").to(dt)
    work = Path(tempfile.mkdtemp(prefix="sparsec-prof-"))
    result = {"kind": "profile", **environment(), "model": args.model, "batch": args.batch, "dtype": args.dtype,
              "method": f"torch.profiler CUDA kernel times, {args.iters} eager forwards after 3 warm-ups, per forward",
              "variants": {}}
    for v in args.variants.split(","):
        if v.startswith("inductor-"):
            mode = v.removeprefix("inductor-")
            m = bench.make_model(args.model).to("cuda", dt).to(memory_format=torch.channels_last)
            torch._dynamo.reset()
            fn = torch.compile(m, mode=None if mode == "default" else mode, dynamic=False)
        else:
            target = "h100-sparse" if v.endswith("-24") else "h100"
            prune = args.prune_ratio if "pruned" in v else None
            fn, _, _, _ = bench.sparsec_variant(bench.make_model(args.model), args.batch, target, prune, work,
                                                "shape" if prune and target == "h100-sparse" else None, args.dtype)
        r = profile(fn, x, args.iters)
        result["variants"][v] = r
        print(f"== {v}: {r['gpu_ms_per_forward']:.3f} ms GPU/forward, {r['launches_per_forward']:.0f} launches", flush=True)
        for c, s in r["classes"].items():
            print(f"   {c:24s} {s['ms']:8.3f} ms  {s['launches']:6.0f} launches", flush=True)
        for t in r["top"][:12]:
            print(f"   {t['ms']:8.3f} ms {t['launches']:5.0f}x  {t['kernel'][:110]}", flush=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
