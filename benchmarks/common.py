"""Shared helpers of the benchmark scripts: environment record and GPU timing.

Method (see the device tool's METHOD.md): warm up, then time with CUDA events
and report medians; whole-model runs are captured once in a CUDA graph and
replayed so that launch gaps do not dominate; inputs are random, never zeros.
"""

from __future__ import annotations

import datetime
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]


def environment() -> dict:
    """device, capability, versions, date and git commit, per BENCHMARKS.md."""
    import sparsec

    versions = {"sparsec": sparsec.__version__, "torch": torch.__version__, "cuda": torch.version.cuda,
                "python": sys.version.split()[0]}
    try:
        import torchvision

        versions["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    cuda = torch.cuda.is_available()
    # The device machine gets a copy of the working tree whose .git may be stale, so the
    # launcher's SPARSEC_GIT_COMMIT wins; otherwise ask git, and say when the tree differs.
    commit = os.environ.get("SPARSEC_GIT_COMMIT", "")
    if not commit:
        try:
            git = ["git", "-C", str(ROOT)]
            commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
            dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True).stdout.strip()
            commit += "+dirty" if commit and dirty else ""
        except OSError:
            commit = ""
    return {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "capability": list(torch.cuda.get_device_capability()) if cuda else None,
        "versions": versions,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": " ".join([Path(sys.argv[0]).as_posix() if not sys.argv[0].startswith(str(ROOT)) else os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]]),
        "git_commit": commit,
    }


def gpu_short_name() -> str:
    name = torch.cuda.get_device_name().lower() if torch.cuda.is_available() else "cpu"
    for short in ("h200", "h100", "a100", "l40", "a10"):
        if short in name:
            return short
    return name.split()[-1]


def time_cuda_graph(fn: Callable[[], object], *, warmup: int = 10, iters: int = 50, graph_replays: int = 1) -> list[float]:
    """Capture ``fn`` in a CUDA graph and time each replay with CUDA events (ms)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return time_events(graph.replay, warmup=warmup, iters=iters)


def time_events(fn: Callable[[], object], *, warmup: int = 10, iters: int = 50) -> list[float]:
    """Per-call times in ms from CUDA events, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def p90(xs: list[float]) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(0.9 * (len(s) - 1))))]


def write_results(kind: str, method: str, records: list[dict], out_dir: Path | None = None, **extra) -> Path:
    out_dir = out_dir or ROOT / "benchmarks" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {"kind": kind, **environment(), "method": method, "records": records, **extra}
    path = out_dir / f"{kind}_{gpu_short_name()}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, path)
    return path
