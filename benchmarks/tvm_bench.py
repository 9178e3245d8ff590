"""TVM artifacts for the GPU tvm targets: built on the CPU machine, checked and timed on the GPU by ``sparsec bench``.

Two steps, because the GPU host has no TVM compiler (and needs none):

``build`` (the CPU machine, with ``sparsec[tvm]`` and nvcc; the stub libcuda makes the fatbins)::

    python benchmarks/tvm_bench.py build --models resnet50 --batches 8,256 \\
        --targets h100-tvm,h100-sparse-tvm --out .devcache/tvm/artifacts

compiles ``sparsec bench``'s models (``backends/bench.py:make_model``: the same seeded weights and
BatchNorm statistics) for each target and batch at 224x224, with the target's pipeline
(fold-bn, [sparsify-2-4,] fuse-epilogue, to-dtype) with fp16 input and output as ``sparsec bench``
compiles its CUTLASS variants (``bench.sparsec_pipeline``), and ``SPARSEC_CUTLASS_CONFIGS=--configs``
(default ``compact``: the kernels ``sparsec bench``'s CUTLASS variants use on the device), into
``<model>-<target>-bs<batch>.sparsec`` (backends/tvm/bench.py). ``params.pt`` is left out unless
``--keep-params``: the GPU host rebuilds the weights (the device tool carries 64 MiB at most).
It also writes ``prebuilt/``: the small nets the GPU test tests/backends/tvm/test_gpu_prebuilt.py runs.

``run`` (the GPU host, with only ``apache-tvm-ffi`` and the two runtime libraries,
``SPARSEC_TVM_RUNTIME_DIR``) is ``sparsec bench`` with the tvm variants beside eager, torch.compile and
the CUTLASS artifacts, in one process; it writes ``benchmarks/results/e2e_<gpu>_tvm.json``::

    python benchmarks/tvm_bench.py run --artifacts .devcache/tvm/artifacts --models resnet50 --batches 256,8
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

VARIANTS = "eager,inductor,sparsec-dense,tvm,tvm-graph,sparsec-24,tvm-24,tvm-24-graph"


def build(args) -> None:
    from sparsec import knobs
    from sparsec.backends.bench import make_model
    from sparsec.backends.tvm.bench import build_artifacts

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "backends" / "tvm"))
    from prebuilt import build_prebuilt  # the GPU test's nets (tests/backends/tvm/prebuilt.py)

    out = Path(args.out)
    start = time.perf_counter()
    with knobs.scope(cutlass_configs=args.configs):
        build_prebuilt(out / "prebuilt")
        paths = build_artifacts(filter(None, args.models.split(",")), [int(b) for b in args.batches.split(",")],
                                filter(None, args.targets.split(",")), out, make_model, strip=not args.keep_params)
    total = sum(p.stat().st_size for d in out.rglob("*.sparsec") for p in d.iterdir())
    print(f"built {len(paths)} artifacts (+ prebuilt/) in {time.perf_counter() - start:.0f} s; "
          f"{total / 2**20:.1f} MiB under {out}")


def run(args, rest: list[str]) -> int:
    from sparsec.backends.bench import main as bench

    return bench(["--models", args.models, "--batches", args.batches, "--variants", args.variants,
                  "--tvm-artifacts", args.artifacts, "--tag", args.tag, *rest])


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="compile the artifacts (CPU machine, needs sparsec[tvm] and nvcc)")
    b.add_argument("--models", default="resnet50")
    b.add_argument("--batches", default="8,256")
    b.add_argument("--targets", default="h100-tvm,h100-sparse-tvm")
    b.add_argument("--out", default=".devcache/tvm/artifacts")
    b.add_argument("--configs", default="compact", choices=["compact", "tuned"], help="SPARSEC_CUTLASS_CONFIGS")
    b.add_argument("--keep-params", action="store_true", help="keep params.pt (else the GPU host rebuilds it)")
    r = sub.add_parser("run", help="sparsec bench with the tvm variants (GPU host; other options go to sparsec bench)")
    r.add_argument("--artifacts", default=".devcache/tvm/artifacts")
    r.add_argument("--models", default="resnet50")
    r.add_argument("--batches", default="256,8")
    r.add_argument("--variants", default=VARIANTS)
    r.add_argument("--tag", default="tvm")
    args, rest = ap.parse_known_args(argv)
    if args.cmd == "build":
        if rest:
            ap.error(f"unrecognized arguments: {' '.join(rest)}")
        build(args)
        return 0
    return run(args, rest)


if __name__ == "__main__":
    sys.exit(main())
