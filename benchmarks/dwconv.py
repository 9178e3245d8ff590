"""Depthwise convs, layer by layer: sparsec's kernel (tiled and direct) against cuDNN, on this GPU.

For every depthwise conv of the models (their shapes at ``--batch``, found by tracing them), times, each
captured in a CUDA graph and replayed (median of CUDA-event timings):

* ``cudnn_conv``: ``F.conv2d`` alone, channels-last, no bias (the floor of the unfused path);
* ``cudnn_epilogue``: the conv with bias, then the activation: what PyTorch runs without the kernel;
* ``sparsec_tiled`` / ``sparsec_direct``: ``sparsec::dwconv2d``, bias and activation fused.

Each kernel's output is checked against the conv computed in float32 (relative error). Writes
``dwconv_<gpu>.json`` (BENCHMARKS.md fields; one record per layer, totals per model).

    python benchmarks/dwconv.py --models mobilenet_v2,efficientnet_b0 --batch 256
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median, time_cuda_graph, write_results  # noqa: E402

ACT = {"mobilenet_v2": "relu6", "efficientnet_b0": "silu", "mnasnet1_0": "relu", "mobilenet_v3_large": "hardswish"}


def layers(name: str) -> list[dict]:
    """(C, H, W, k, stride, padding) of each depthwise conv of torchvision's ``name``, at batch 1."""
    import torchvision

    model = getattr(torchvision.models, name)().eval()
    found: list[dict] = []

    def hook(mod, inp, out):
        x = inp[0]
        found.append({"C": mod.in_channels, "H": x.shape[2], "W": x.shape[3], "k": mod.kernel_size[0],
                      "stride": mod.stride[0], "padding": mod.padding[0]})

    hs = [m.register_forward_hook(hook) for m in model.modules()
          if isinstance(m, torch.nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels]
    with torch.no_grad():
        model(torch.randn(1, 3, 224, 224))
    for h in hs:
        h.remove()
    return found


def main(argv=None) -> int:
    from sparsec.backends.cutlass import depthwise as D
    from sparsec.backends.cutlass.backend import machine_arch
    from sparsec.passes.fusion.ops import ACTIVATIONS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="mobilenet_v2,efficientnet_b0")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--dtype", default="fp16", choices=sorted(D.DTYPES))
    ap.add_argument("--iters", type=int, default=30)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("benchmarks/dwconv.py needs a CUDA GPU")
    torch.backends.cudnn.benchmark = True
    dt, arch = D.DTYPES[args.dtype], machine_arch()
    g = torch.Generator(device="cuda").manual_seed(0)
    records, totals = [], {}
    for name in args.models.split(","):
        act = ACT.get(name, "relu")
        shapes = layers(name)
        D.preload([D.DwConfig(arch, args.dtype, s["k"], s["stride"], act, "none", False, t)
                   for s in shapes for t in (True, False)])
        for i, s in enumerate(shapes):
            n, c, h, w, k, st, p = args.batch, s["C"], s["H"], s["W"], s["k"], s["stride"], s["padding"]
            x = torch.randn(n, c, h, w, device="cuda", generator=g).to(dt).contiguous(memory_format=torch.channels_last)
            wt = (torch.randn(c, 1, k, k, device="cuda", generator=g) / k).to(dt).contiguous(
                memory_format=torch.channels_last)
            b = torch.randn(c, device="cuda", generator=g).to(dt)
            ref = ACTIVATIONS[act](F.conv2d(x.float(), wt.float(), b.float(), st, p, 1, c))
            x_nhwc, w_kkc = x.permute(0, 2, 3, 1), wt[:, 0].permute(1, 2, 0).contiguous()
            fns = {
                "cudnn_conv": lambda: F.conv2d(x, wt, None, st, p, 1, c),
                "cudnn_epilogue": lambda: ACTIVATIONS[act](F.conv2d(x, wt, b, st, p, 1, c)),
            }
            for tiled in (True, False):
                cfg = D.DwConfig(arch, args.dtype, k, st, act, "none", False, tiled).name
                fns["sparsec_tiled" if tiled else "sparsec_direct"] = (
                    lambda cfg=cfg: torch.ops.sparsec.dwconv2d(x_nhwc, w_kkc, b, None, [p, p], cfg))
            rec = {"model": name, "layer": i, "batch": n, "dtype": args.dtype, "act": act, **s}
            for key, fn in fns.items():
                rec[f"{key}_ms"] = round(median(time_cuda_graph(fn, iters=args.iters)), 5)
                if key.startswith("sparsec"):
                    y = fn().permute(0, 3, 1, 2).float()
                    rec[f"{key}_rel_err"] = float((y - ref).norm() / ref.norm())
            out_bytes = n * c * ((h + 2 * p - k) // st + 1) * ((w + 2 * p - k) // st + 1) * x.element_size()
            rec["io_mb"] = round((x.numel() * x.element_size() + out_bytes) / 1e6, 2)
            rec["speedup_tiled_vs_cudnn_epilogue"] = round(rec["cudnn_epilogue_ms"] / rec["sparsec_tiled_ms"], 3)
            records.append(rec)
            print(f"{name} #{i:2d} C={c:4d} {h:3d}x{w:<3d} k{k} s{st}: " + ", ".join(
                f"{key} {rec[f'{key}_ms']:.4f}" for key in fns) + f" ms ({rec['io_mb']} MB)", flush=True)
        rows = [r for r in records if r["model"] == name]
        totals[name] = {key: round(sum(r[f"{key}_ms"] for r in rows), 4) for key in fns}
        print(f"{name} total: {totals[name]}", flush=True)
    path = write_results("dwconv", "per layer: median of CUDA-event timings of CUDA-graph replays after warm-up; "
                         "random inputs, channels-last; rel err of the fused kernels vs the float32 conv",
                         records, totals=totals)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
