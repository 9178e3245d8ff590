"""GPU timing shared by the tuner, the latency profiler and the benchmarks.

One method everywhere (see the device notes, METHOD.md): the calls are
captured once in a CUDA graph, the graph is replayed after warm-up, each
replay is timed with CUDA events, and the median is reported. Capturing
removes launch overhead from the measurement, so a kernel is compared with a
kernel, not with Python.
"""

from __future__ import annotations

import statistics
from typing import Callable


def time_graph(calls: list[Callable[[], object]], *, warmup: int = 5, iters: int = 20) -> float:
    """Median µs per call of a CUDA graph that runs every call once (CUDA events)."""
    import torch

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for fn in calls:
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for fn in calls:
            fn()
    for _ in range(warmup):
        g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e3 / len(calls))
    del g
    return statistics.median(times)
