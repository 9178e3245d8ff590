"""Conv(+act) + pool: the fused op ``sparsec::conv2d_pool`` against the unfused pair, on the GPU.

For each site (conv shape, activation, pool, batch, dtype) it times
``pool(act(conv2d(x)))`` as separate ATen ops and as one ``sparsec::conv2d_pool``
call, each captured in a CUDA graph that runs the site over K input buffers
(K * input bytes >= 100 MB, so the inputs do not sit in the 50 MB L2), and
reports median ms per call from CUDA events after warm-up. ``gain`` is
unfused / fused; ``fuse-conv-pool{measurements=FILE}`` fuses a site only where
its gain reaches ``min-gain``. Whatever kernel is registered for
``sparsec::conv2d_pool`` on CUDA is what gets timed: today that is the
reference (the same ATen ops behind one op), recorded as ``impl``.

    python benchmarks/conv_pool.py                      # writes benchmarks/results/conv_pool_<gpu>.json
    python benchmarks/conv_pool.py --batches 256 --dtypes fp16
    python benchmarks/conv_pool.py --smoke              # tiny shapes, any device, checks only, writes nothing
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median, p90, time_cuda_graph, write_results  # noqa: E402

from sparsec.ir.meta import dtype_name, parse_dtype  # noqa: E402
from sparsec.passes.fusion import ops as F  # noqa: E402  (registers sparsec::conv2d_pool)
from sparsec.passes.fusion.conv_pool import site_key  # noqa: E402

# (name, Cin, H=W, Cout, k, stride, pad, act, pool, pool kernel, pool stride, pool pad)
SITES = [
    ("resnet-stem", 3, 224, 64, 7, 2, 3, "relu", "max", 3, 2, 1),
    ("vgg-block2", 64, 112, 128, 3, 1, 1, "relu", "max", 2, 2, 0),
    ("vgg-block3", 128, 56, 256, 3, 1, 1, "relu", "max", 2, 2, 0),
    ("densenet-transition", 256, 28, 128, 1, 1, 0, "none", "avg", 2, 2, 0),
]
ROTATE_BYTES = 100 * 2**20


def key_for(site, batch: int, dtype: torch.dtype) -> str:
    """The key ``fuse-conv-pool`` looks this site up by."""
    name, cin, hw, cout, k, s, p, act, pool, pk, ps, pp = site
    return site_key((batch, cin, hw, hw), (cout, cin, k, k), [s, s], [p, p], [1, 1], 1, act, pool, [pk, pk], [ps, ps],
                    [pp, pp], [1, 1], False, True, None, dtype_name(dtype))


def run_site(site, batch: int, dtype: torch.dtype, device: str, *, warmup: int, iters: int, timed: bool) -> dict:
    name, cin, hw, cout, k, s, p, act, pool, pk, ps, pp = site
    gen = torch.Generator(device="cpu").manual_seed(0)
    in_bytes = batch * cin * hw * hw * torch.finfo(dtype).bits // 8
    n_buf = max(2, min(64, math.ceil(ROTATE_BYTES / in_bytes))) if timed else 1
    xs = [torch.randn(batch, cin, hw, hw, generator=gen).to(device, dtype) for _ in range(n_buf)]
    w = (torch.randn(cout, cin, k, k, generator=gen) / math.sqrt(cin * k * k)).to(device, dtype)
    b = torch.randn(cout, generator=gen).to(device, dtype)
    conv = dict(stride=[s, s], padding=[p, p], dilation=[1, 1], groups=1)

    def unfused(x):
        y = F.ACTIVATIONS[act](torch.ops.aten.conv2d.default(x, w, b, conv["stride"], conv["padding"], [1, 1], 1))
        if pool == "max":
            return torch.ops.aten.max_pool2d.default(y, [pk, pk], [ps, ps], [pp, pp], [1, 1], False)
        return torch.ops.aten.avg_pool2d.default(y, [pk, pk], [ps, ps], [pp, pp], False, True, None)

    def fused(x):
        return torch.ops.sparsec.conv2d_pool(x, w, b, conv["stride"], conv["padding"], [1, 1], 1, act, pool,
                                             [pk, pk], [ps, ps], [pp, pp], [1, 1], False, True, None)

    want, got = unfused(xs[0]).double(), fused(xs[0]).double()
    rel_err = float((got - want).norm() / want.norm().clamp_min(1e-30))
    if not math.isfinite(rel_err) or rel_err > 1e-2:
        raise SystemExit(f"{name} bs{batch} {dtype_name(dtype)}: fused op disagrees with the unfused pair "
                         f"(rel err {rel_err:.3g})")
    rec = {
        "site": name, "key": key_for(site, batch, dtype),
        "batch": batch, "dtype": dtype_name(dtype), "rel_err": rel_err, "buffers": n_buf,
        "impl": "cuda-kernel" if torch._C._dispatch_has_kernel_for_dispatch_key("sparsec::conv2d_pool", "CUDA")
        else "reference",
    }
    if timed:
        for label, fn in (("unfused", unfused), ("fused", fused)):
            times = [t / n_buf for t in time_cuda_graph(lambda fn=fn: [fn(x) for x in xs], warmup=warmup, iters=iters)]
            rec[f"{label}_ms"], rec[f"{label}_ms_p90"] = median(times), p90(times)
        rec["gain"] = rec["unfused_ms"] / rec["fused_ms"]
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", default="1,32,256")
    ap.add_argument("--dtypes", default="fp16,bf16")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--smoke", action="store_true", help="batch 1 at 1/4 resolution on any device; check only")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if not args.smoke and device != "cuda":
        raise SystemExit("conv_pool.py times on a CUDA GPU; use --smoke to only check it here")
    records = []
    for dt in args.dtypes.split(","):
        dtype = parse_dtype(dt)
        for batch in [1] if args.smoke else [int(b) for b in args.batches.split(",")]:
            for site in SITES:
                if args.smoke:
                    site = (*site[:2], site[2] // 4, *site[3:])
                rec = run_site(site, batch, dtype, device, warmup=args.warmup, iters=args.iters, timed=not args.smoke)
                records.append(rec)
                timing = f"unfused {rec['unfused_ms']:.4f} ms  fused {rec['fused_ms']:.4f} ms  gain {rec['gain']:.3f}x" \
                    if "gain" in rec else "checked"
                print(f"{rec['site']:<20} bs{batch:<4} {rec['dtype']:<5} {timing}  rel_err {rec['rel_err']:.2e}  "
                      f"[{rec['impl']}]", flush=True)
    if args.smoke:
        return
    method = (f"median of {args.iters} CUDA-graph replays timed with CUDA events after {args.warmup} warm-ups; "
              f"each replay runs the site over K input buffers (K*input >= 100 MB, K <= 64) and is divided by K")
    path = write_results("conv_pool", method, records)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
