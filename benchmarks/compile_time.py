"""Wall time of `sparsec compile --build-kernels`, cold and warm kernel cache (issue 5's compile-time targets).

Each (configs, variant) runs the real CLI in a subprocess, twice over its own kernel cache: first empty (cold:
every CUTLASS kernel is built with nvcc, SPARSEC_BUILD_JOBS in parallel, default the CPU count), then again
into a fresh output folder (warm: the kernels are found in the cache). The targets are <= 15 min cold on the
2-core CPU build machine and <= 60 s warm, for ResNet-50 h100-sparse. Run it on that machine; no GPU is used.

    python benchmarks/compile_time.py                               # -> benchmarks/results/compile_cpu.json
    python benchmarks/compile_time.py --configs compact --keep-cache /tmp/kc   # keep the kernels (to carry to a GPU)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, environment  # noqa: E402

# The bench's headline ResNet-50 variant: prune 0.5 (round-to 8), then 2:4 where the cost model says it pays.
PRUNED_24 = "pruned-24"


def pipeline_for(variant: str, target: str, dtype: str) -> str | None:
    """None for the target's default pipeline; else the bench's pipeline of that variant."""
    if variant == "default":
        return None
    from sparsec.api import resolve_backend, resolve_target
    from sparsec.backends.bench import sparsec_pipeline

    tgt = resolve_target(target)
    return sparsec_pipeline(resolve_backend(tgt).pipeline(tgt), dtype=dtype, prune_ratio=0.5)


def compile_once(args, variant: str, configs: str, cache: Path, out: Path) -> dict:
    cmd = [sys.executable, "-m", "sparsec.cli.main", "compile", args.spec, "--target", args.target, "-o", str(out),
           "--input-shape", args.input_shape, "--dtype", args.dtype, "--build-kernels", "--time-passes"]
    pipeline = pipeline_for(variant, args.target, args.dtype)
    if pipeline:
        cmd += ["--pipeline", pipeline]
    env = dict(os.environ, SPARSEC_CACHE_DIR=str(cache), SPARSEC_CUTLASS_CONFIGS=configs)
    before = kernel_count(cache)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"compile failed (rc {proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-4000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    passes: dict[str, float] = {}  # --time-passes' report: "   0.1671 s   24.2%  canonicalize" (dce runs twice)
    for m in re.finditer(r"^\s+([\d.]+) s\s+[\d.]+%\s+(\S+)$", proc.stderr, re.M):
        passes[m.group(2)] = round(passes.get(m.group(2), 0.0) + float(m.group(1)), 3)
    return {"wall_s": round(wall, 2), "kernels_in_artifact": len(manifest["payload"]["kernels"]),
            "kernels_built": kernel_count(cache) - before, "pass_times_s": passes,
            "command": "sparsec " + " ".join(c if " " not in c and "{" not in c else repr(c) for c in cmd[3:])}


def kernel_count(cache: Path) -> int:
    kernels = cache / "kernels"
    return sum(1 for d in kernels.iterdir() if (d / "kernel.so").exists()) if kernels.is_dir() else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default="zoo:torchvision/resnet50")
    ap.add_argument("--target", default="h100-sparse")
    ap.add_argument("--input-shape", default="256,3,224,224")
    ap.add_argument("--dtype", default="fp16")
    ap.add_argument("--variants", default=f"default,{PRUNED_24}",
                    help="default (the target's pipeline) and/or pruned-24 (the bench's prune 0.5 + 2:4 pipeline)")
    ap.add_argument("--configs", default="tuned,compact", help="SPARSEC_CUTLASS_CONFIGS values to measure")
    ap.add_argument("--keep-cache", type=Path, default=None,
                    help="use (and keep) this kernel cache for the last (config, variant); it must start empty")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/compile_cpu.json")
    args = ap.parse_args()

    env = environment()
    nvcc = subprocess.run(["nvcc", "--version"], capture_output=True, text=True).stdout.strip().splitlines()
    result = {"kind": "compile", **env, "cpus": os.cpu_count(), "nvcc": nvcc[-1] if nvcc else None,
              "build_jobs": os.environ.get("SPARSEC_BUILD_JOBS") or os.cpu_count(),
              "method": "wall time of one CLI subprocess per row (python start-up, model load and trace included); "
                        "cold = empty kernel cache, warm = the same cache right after, fresh output folder",
              "targets": {"cold_s": 900, "warm_s": 60}, "records": []}
    configs, variants = args.configs.split(","), args.variants.split(",")
    with tempfile.TemporaryDirectory(prefix="sparsec-compile-time-") as tmp:
        for config in configs:
            for variant in variants:
                last = config == configs[-1] and variant == variants[-1]
                cache = args.keep_cache if args.keep_cache and last else Path(tmp) / f"cache-{config}-{variant}"
                cache.mkdir(parents=True, exist_ok=True)
                if kernel_count(cache):
                    sys.exit(f"{cache} already holds kernels: a cold time needs an empty cache")
                for phase in ("cold", "warm"):
                    out = Path(tmp) / f"{config}-{variant}-{phase}.sparsec"
                    print(f"=== {config} {variant} {phase}", flush=True)
                    rec = {"model": args.spec, "target": args.target, "variant": variant, "configs": config,
                           "phase": phase, "input_shape": args.input_shape, "dtype": args.dtype,
                           **compile_once(args, variant, config, cache, out)}
                    print(f"    {rec['wall_s']} s, {rec['kernels_built']} kernels built, "
                          f"{rec['kernels_in_artifact']} in the artifact", flush=True)
                    result["records"].append(rec)
                    args.out.parent.mkdir(parents=True, exist_ok=True)
                    args.out.write_text(json.dumps(result, indent=2) + "\n")  # after each row: a cut-off run keeps them
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
