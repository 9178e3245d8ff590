"""`make demo`: compile a ResNet-18 with the sparsec CLI and check the result.

1. Build torchvision's resnet18 (seeded random weights, eval mode) and save it
   with ``torch.export`` to ``out/resnet18.pt2``.
2. ``sparsec inspect`` it, ``sparsec compile`` it for the CPU target, and
   ``sparsec inspect`` the compiled program: the commands are printed as run.
3. Load the artifact with ``sparsec.load`` and compare it against the eager
   model on fresh random inputs.
4. Compile the same program for ``h100-sparse`` on this (GPU-less) machine:
   2:4 masks where the shipped H100 tuning DB says the sparse kernel wins,
   fused epilogues, weights packed for the CUTLASS kernels. The artifact
   runs with ``sparsec.load`` on an H100, which builds the kernels on first load.

The weights are random, so "argmax agrees" only says the compiled program
computes the same function; it says nothing about accuracy. No speed is
claimed: the CPU target runs the transformed graph in eager PyTorch.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import torch
import torchvision

import sparsec

OUT = Path("out")
SHAPE = (1, 3, 224, 224)


def sparsec_cmd() -> list[str]:
    exe = shutil.which("sparsec") or str(Path(sys.executable).with_name("sparsec"))
    return [exe]


def run(*args: str, capture: bool = False) -> str:
    print(f"\n$ sparsec {shlex.join(args)}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run([*sparsec_cmd(), *args], text=True, stdout=subprocess.PIPE if capture else None)
    if proc.returncode != 0:
        sys.exit(f"demo: `sparsec {shlex.join(args)}` failed with exit code {proc.returncode}")
    print(f"  ({time.perf_counter() - t0:.1f} s)", flush=True)
    return proc.stdout or ""


def summary(spec: str) -> dict:
    """Totals and op counts of `sparsec inspect SPEC --format json`."""
    report = json.loads(run("inspect", spec, "--format", "json", capture=True))
    ops = Counter(n["op"] for n in report["nodes"] if n["kind"] == "op")
    return {**report["totals"], "ops_by_kind": ops}


def show(title: str, s: dict) -> None:
    bn = sum(v for k, v in s["ops_by_kind"].items() if "batch_norm" in k)
    conv = sum(v for k, v in s["ops_by_kind"].items() if "conv" in k)
    print(f"  {title:<8} ops={s['ops']:<4} conv={conv:<3} batch_norm={bn:<3} "
          f"params={s['params'] / 1e6:.2f}M  GFLOPs={s['gflops']:.2f}")


def main() -> None:
    OUT.mkdir(exist_ok=True)
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    program = OUT / "resnet18.pt2"
    torch.export.save(torch.export.export(model, (torch.randn(SHAPE),)), str(program))
    print(f"exported torchvision resnet18 (seeded random weights) to {program}")

    artifact = OUT / "resnet18.sparsec"
    before = summary(str(program))
    run("compile", str(program), "--target", "cpu", "-o", str(artifact), "--force", "--time-passes")
    after = summary(str(artifact / "program.pt2"))
    print("\nbefore and after compiling:")
    show("before", before)
    show("after", after)

    compiled = sparsec.load(artifact)
    gen = torch.Generator().manual_seed(1234)
    worst, agree, trials = 0.0, 0, 4
    with torch.no_grad():
        for _ in range(trials):
            x = torch.randn(SHAPE, generator=gen)
            ref, out = model(x), compiled(x)
            assert out.shape == ref.shape and out.dtype == ref.dtype, (out.shape, out.dtype)
            worst = max(worst, ((out - ref).abs().max() / ref.abs().max()).item())
            agree += int(out.argmax(1).eq(ref.argmax(1)).all())
    print(f"\nsparsec.load({str(artifact)!r}) vs eager resnet18 on {trials} fresh random inputs:")
    print(f"  max relative error {worst:.2e}; argmax agrees on {agree}/{trials}")
    if worst > 1e-4 or agree != trials:
        sys.exit("demo: the compiled model does not match the eager model")

    gpu_artifact = OUT / "resnet18-h100-sparse.sparsec"
    run("compile", str(program), "--target", "h100-sparse", "-o", str(gpu_artifact), "--force")
    payload = json.loads((gpu_artifact / "manifest.json").read_text())["payload"]
    layers = payload["layers"]
    kinds = Counter(f"{l['kind']} {'2:4' if l['sparse'] else 'dense'}" for l in layers)
    print(f"\n{gpu_artifact}: {len(layers)} layers lowered to {len(payload['kernels'])} kernels (CUTLASS GEMMs "
          f"and sparsec's own) for {payload['arch']}, built at first load on the GPU:")
    for kind, n in sorted(kinds.items()):
        print(f"  {n:3d}  {kind}")


if __name__ == "__main__":
    main()
