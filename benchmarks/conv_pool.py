"""Conv(+act) + pool: the fused op ``sparsec::conv2d_pool`` against the unfused pair, on the GPU.

For each site (conv shape, activation, pool, batch, dtype) it times what the
cutlass backend's graph runs without the fusion and with it, each captured in a
CUDA graph that runs the site over K input buffers (K * input bytes >= 100 MB,
so the inputs do not sit in the 50 MB L2), and reports median ms per call from
CUDA events after warm-up:

- unfused: the conv with its bias and activation as ``sparsec.fused_conv2d``
  (one cuDNN call where the activation is ReLU), then PyTorch's pool, on a
  channels-last input; at an image site (Cin 1 to 4, a network's first conv)
  that includes the image's channels-last copy (``to-channels-last``), elsewhere
  the input arrives channels-last from the conv before it (not timed);
- fused: where the lowering takes the site (the image: Cin 1 to 4), the kernel it
  would choose (``sparsec::conv_pool_nhwc``, :mod:`sparsec.backends.cutlass.conv_pool`,
  on the image as it is); elsewhere the ``sparsec::conv2d_pool`` op's reference
  (the same ATen ops). ``impl`` records which.

``gain`` is unfused / fused; ``fuse-conv-pool{measurements=FILE}`` fuses a site
only where its gain reaches ``min-gain``. The h100 targets' pipelines read the
copy shipped as ``backends/cutlass/tuned/conv_pool_sm_90a.json``.
``--tiles all`` also times every tile of each kernel site (``tile_ms``), which
checks the lowering's tile choice.

    python benchmarks/conv_pool.py                      # writes benchmarks/results/conv_pool_<gpu>.json
    python benchmarks/conv_pool.py --batches 256 --dtypes fp16 --tiles all
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

from sparsec.backends.cutlass import conv_pool as CP  # noqa: E402
from sparsec.ir.meta import dtype_name, parse_dtype  # noqa: E402
from sparsec.passes.fusion import ops as F  # noqa: E402  (registers sparsec::conv2d_pool)
from sparsec.passes.fusion.conv_pool import site_key  # noqa: E402

# (name, Cin, H=W, Cout, k, stride, pad, act, pool, pool kernel, pool stride, pool pad)
SITES = [
    ("resnet-stem", 3, 224, 64, 7, 2, 3, "relu", "max", 3, 2, 1),
    ("resnet-stem-pruned", 3, 224, 32, 7, 2, 3, "relu", "max", 3, 2, 1),  # ResNet-50 after prune-channels 0.5
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


def kernel_config(site, batch: int, dtype: torch.dtype, tile=None) -> "CP.ConvPoolConfig | None":
    """The kernel the cutlass lowering would run for this site (or with this tile), None where it runs none."""
    name, cin, hw, cout, k, s, p, act, pool, pk, ps, pp = site
    arch = "sm_90a" if torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0) else "sm_80"

    def make(t):
        return CP.ConvPoolConfig(arch, {torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype], cin, k, s, cout, act,
                                 pool, pk, ps, pp, t)

    try:
        return make(tile) if tile else CP.choose_tile(make)
    except ValueError:
        return None


def run_site(site, batch: int, dtype: torch.dtype, device: str, *, warmup: int, iters: int, timed: bool,
             tiles: bool = False) -> dict:
    name, cin, hw, cout, k, s, p, act, pool, pk, ps, pp = site
    gen = torch.Generator(device="cpu").manual_seed(0)
    in_bytes = batch * cin * hw * hw * torch.finfo(dtype).bits // 8
    n_buf = max(2, min(64, math.ceil(ROTATE_BYTES / in_bytes))) if timed else 1
    image = cin <= CP.MAX_CIN  # the network's input: NCHW, copied to channels-last by the unfused graph
    xs = [torch.randn(batch, cin, hw, hw, generator=gen).to(device, dtype) for _ in range(n_buf)]
    if not image:
        xs = [x.contiguous(memory_format=torch.channels_last) for x in xs]
    w = (torch.randn(cout, cin, k, k, generator=gen) / math.sqrt(cin * k * k)).to(device, dtype)
    b = torch.randn(cout, generator=gen).to(device, dtype)
    conv = dict(stride=[s, s], padding=[p, p], dilation=[1, 1], groups=1)

    wcl = w.contiguous(memory_format=torch.channels_last)

    def unfused(x):
        x = x.contiguous(memory_format=torch.channels_last)  # a copy only at an image site
        y = torch.ops.sparsec.fused_conv2d(x, wcl, b, None, conv["stride"], conv["padding"], [1, 1], 1, act, "none")
        if pool == "max":
            return torch.ops.aten.max_pool2d.default(y, [pk, pk], [ps, ps], [pp, pp], [1, 1], False)
        return torch.ops.aten.avg_pool2d.default(y, [pk, pk], [ps, ps], [pp, pp], False, True, None)

    def reference_op(x):
        return torch.ops.sparsec.conv2d_pool(x, w, b, conv["stride"], conv["padding"], [1, 1], 1, act, pool,
                                             [pk, pk], [ps, ps], [pp, pp], [1, 1], False, True, None)

    def kernel(cfg):
        wp = CP.pack_weight(w, cfg.kp)
        CP.preload([cfg])
        return lambda x: torch.ops.sparsec.conv_pool_nhwc(x, wp, b, [p, p], cfg.name).permute(0, 3, 1, 2)

    cfg = kernel_config(site, batch, dtype) if device == "cuda" else None
    fused = kernel(cfg) if cfg else reference_op
    want, got = unfused(xs[0]).double(), fused(xs[0]).double()
    rel_err = float((got - want).norm() / want.norm().clamp_min(1e-30))
    if not math.isfinite(rel_err) or rel_err > 1e-2:
        raise SystemExit(f"{name} bs{batch} {dtype_name(dtype)}: fused op disagrees with the unfused pair "
                         f"(rel err {rel_err:.3g})")
    rec = {
        "site": name, "key": key_for(site, batch, dtype),
        "batch": batch, "dtype": dtype_name(dtype), "rel_err": rel_err, "buffers": n_buf,
        "impl": cfg.name if cfg else "reference (sparsec::conv2d_pool's ATen ops)",
    }

    def timing(fn):
        times = [t / n_buf for t in time_cuda_graph(lambda: [fn(x) for x in xs], warmup=warmup, iters=iters)]
        return median(times), p90(times)

    if timed:
        for label, fn in (("unfused", unfused), ("fused", fused)):
            rec[f"{label}_ms"], rec[f"{label}_ms_p90"] = timing(fn)
        rec["gain"] = rec["unfused_ms"] / rec["fused_ms"]
        if tiles and cfg:
            rec["tile_ms"] = {}
            for tile in CP.TILES:
                other = kernel_config(site, batch, dtype, tile)
                if other is not None:
                    rec["tile_ms"]["x".join(map(str, tile))] = timing(kernel(other))[0]
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", default="1,2,4,8,16,32,64,128,256")
    ap.add_argument("--sites", default="", help="comma-separated site names (default: all)")
    ap.add_argument("--tiles", choices=["chosen", "all"], default="chosen",
                    help="all: also time every tile of each kernel site")
    ap.add_argument("--dtypes", default="fp16,bf16")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--smoke", action="store_true", help="batch 1 at 1/4 resolution on any device; check only")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if not args.smoke and device != "cuda":
        raise SystemExit("conv_pool.py times on a CUDA GPU; use --smoke to only check it here")
    sites = [s for s in SITES if not args.sites or s[0] in args.sites.split(",")]
    batches = [1] if args.smoke else [int(b) for b in args.batches.split(",")]
    if device == "cuda":  # build every kernel first, in parallel (nvcc), so that timing does no building
        tiles = CP.TILES if args.tiles == "all" else [None]
        CP.preload({c for dt in args.dtypes.split(",") for b in batches for s in sites for t in tiles
                    if (c := kernel_config(s, b, parse_dtype(dt), t)) is not None})
    records = []
    for dt in args.dtypes.split(","):
        dtype = parse_dtype(dt)
        for batch in batches:
            for site in sites:
                if args.smoke:
                    site = (*site[:2], site[2] // 4, *site[3:])
                rec = run_site(site, batch, dtype, device, warmup=args.warmup, iters=args.iters, timed=not args.smoke,
                               tiles=args.tiles == "all")
                records.append(rec)
                timing = f"unfused {rec['unfused_ms']:.4f} ms  fused {rec['fused_ms']:.4f} ms  gain {rec['gain']:.3f}x" \
                    if "gain" in rec else "checked"
                tiles = "  tiles " + ", ".join(f"{t} {ms:.4f}" for t, ms in rec["tile_ms"].items()) \
                    if "tile_ms" in rec else ""
                print(f"{rec['site']:<20} bs{batch:<4} {rec['dtype']:<5} {timing}  rel_err {rec['rel_err']:.2e}  "
                      f"[{rec['impl']}]{tiles}", flush=True)
    if args.smoke:
        return
    method = (f"median of {args.iters} CUDA-graph replays timed with CUDA events after {args.warmup} warm-ups; "
              f"each replay runs the site over K input buffers (K*input >= 100 MB, K <= 64) and is divided by K; "
              f"unfused: channels-last copy of the input, sparsec.fused_conv2d (cuDNN), PyTorch pool; fused: impl")
    path = write_results("conv_pool", method, records)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
