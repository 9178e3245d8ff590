"""Depthwise convs, layer by layer: sparsec's kernel (tiled, direct and rows) against cuDNN, on this GPU.

For every depthwise conv of the models (their shapes at ``--batch``, found by tracing them), times, each
captured in a CUDA graph and replayed (median of CUDA-event timings):

* ``cudnn_conv``: ``F.conv2d`` alone, channels-last, no bias (the floor of the unfused path);
* ``cudnn_epilogue``: the conv with bias, then the activation: what PyTorch runs without the kernel;
* ``sparsec_ms``: ``sparsec::dwconv2d``, bias and activation fused, per variant (``--variants``: the three
  layouts' defaults; ``sweep``, every outputs-per-thread and blocks-per-SM bound of each; ``rows``, the
  shipped table's choice beside the rows layout's sweep).

Each kernel's output is checked against the conv computed in float32 (relative error). Writes
``dwconv_<gpu>.json`` (BENCHMARKS.md fields; one record per layer, totals per model) and, with
``--write-table``, the fastest variant per (k, stride) as the depthwise tuning table that
``SPARSEC_CUTLASS_DEPTHWISE=auto`` reads.

    python benchmarks/dwconv.py --models mobilenet_v2,efficientnet_b0 --batch 256
    python benchmarks/dwconv.py --variants sweep --write-table $SPARSEC_CACHE_DIR/tuning/dw_sm_90a.json
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


def variants(k: int, stride: int, which: str, arch: str = "sm_90a") -> list[tuple[bool, int, int, bool]]:
    """(tiled, tw, occ, rows) to time. ``defaults``: each layout's default; ``sweep``: every outputs-per-thread
    and blocks-per-SM bound of each; ``rows``: the shipped table's choice and the rows layout's sweep."""
    from sparsec.backends.cutlass import depthwise as D

    rows_sweep = [(False, tw, occ, True) for tw in ((2, 4) if stride == 1 else (1, 2)) for occ in (0, 2)]
    if which == "defaults":
        return [(True, 0, 0, False), (False, 0, 0, False), (False, 0, 0, True)]
    if which == "rows":
        shipped = D.tuning_table(arch).get(f"k{k}s{stride}")
        table = [(bool(shipped["tiled"]), shipped["tw"], shipped["occ"], bool(shipped.get("rows", False)))] if shipped else []
        return table + [v for v in rows_sweep if v not in table]
    tws = (2, 4, 8) if stride == 1 else (1, 2, 4)
    return [(t, tw, occ, False) for t in (True, False) for tw in tws for occ in (0, 2, 3, 4)] + rows_sweep


def label(v: tuple[bool, int, int, bool]) -> str:
    tiled, tw, occ, rows = v
    return f"{'tiled' if tiled else 'rows' if rows else 'direct'}-tw{tw}-o{occ}"


def parse_label(text: str) -> dict:
    layout, tw, occ = text.split("-")
    return {"tiled": layout == "tiled", "tw": int(tw[2:]), "occ": int(occ[1:]), "rows": layout == "rows"}


def main(argv=None) -> int:
    import json

    from sparsec.backends.cutlass import depthwise as D
    from sparsec.backends.cutlass.backend import machine_arch
    from sparsec.passes.fusion.ops import ACTIVATIONS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="mobilenet_v2,efficientnet_b0")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--dtype", default="fp16", choices=sorted(D.DTYPES))
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--variants", choices=("defaults", "sweep", "rows"), default="defaults",
                    help="which kernel variants to time: each layout's default; every (layout, outputs per thread, "
                         "blocks-per-SM bound); or the shipped table's choice beside the rows layout's sweep")
    ap.add_argument("--sweep", action="store_true", help="the same as --variants sweep")
    ap.add_argument("--write-table", default=None, metavar="JSON",
                    help="write the fastest variant per (k, stride), summed over the layers, as a depthwise tuning "
                         "table (read from <cache dir>/tuning/dw_<arch>.json or backends/cutlass/tuned/)")
    args = ap.parse_args(argv)
    which = "sweep" if args.sweep else args.variants
    if not torch.cuda.is_available():
        sys.exit("benchmarks/dwconv.py needs a CUDA GPU")
    torch.backends.cudnn.benchmark = True
    dt, arch = D.DTYPES[args.dtype], machine_arch()
    g = torch.Generator(device="cuda").manual_seed(0)
    records, totals = [], {}
    for name in args.models.split(","):
        act = ACT.get(name, "relu")
        shapes = layers(name)
        D.preload([D.DwConfig(arch, args.dtype, s["k"], s["stride"], act, "none", False, *v)
                   for s in shapes for v in variants(s["k"], s["stride"], which, arch)])
        for i, s in enumerate(shapes):
            n, c, h, w, k, st, p = args.batch, s["C"], s["H"], s["W"], s["k"], s["stride"], s["padding"]
            x = torch.randn(n, c, h, w, device="cuda", generator=g).to(dt).contiguous(memory_format=torch.channels_last)
            wt = (torch.randn(c, 1, k, k, device="cuda", generator=g) / k).to(dt).contiguous(
                memory_format=torch.channels_last)
            b = torch.randn(c, device="cuda", generator=g).to(dt)
            ref = ACTIVATIONS[act](F.conv2d(x.float(), wt.float(), b.float(), st, p, 1, c))
            x_nhwc, w_kkc = x.permute(0, 2, 3, 1), wt[:, 0].permute(1, 2, 0).contiguous()
            rec = {"model": name, "layer": i, "batch": n, "dtype": args.dtype, "act": act, **s}
            rec["cudnn_conv_ms"] = round(median(time_cuda_graph(lambda: F.conv2d(x, wt, None, st, p, 1, c),
                                                                iters=args.iters)), 5)
            rec["cudnn_epilogue_ms"] = round(median(time_cuda_graph(
                lambda: ACTIVATIONS[act](F.conv2d(x, wt, b, st, p, 1, c)), iters=args.iters)), 5)
            rec["sparsec_ms"], worst = {}, 0.0
            for v in variants(k, st, which, arch):
                cfg = D.DwConfig(arch, args.dtype, k, st, act, "none", False, *v).name
                fn = lambda cfg=cfg: torch.ops.sparsec.dwconv2d(x_nhwc, w_kkc, b, None, [p, p], cfg)  # noqa: E731
                rec["sparsec_ms"][label(v)] = round(median(time_cuda_graph(fn, iters=args.iters)), 5)
                y = fn().permute(0, 3, 1, 2).float()
                worst = max(worst, float((y - ref).norm() / ref.norm()))
            rec["sparsec_max_rel_err"] = worst
            out_bytes = n * c * ((h + 2 * p - k) // st + 1) * ((w + 2 * p - k) // st + 1) * x.element_size()
            rec["io_mb"] = round((x.numel() * x.element_size() + out_bytes) / 1e6, 2)
            best = min(rec["sparsec_ms"], key=rec["sparsec_ms"].get)
            rec["best"], rec["best_ms"] = best, rec["sparsec_ms"][best]
            rec["gb_s_best"] = round(rec["io_mb"] / rec["best_ms"], 1)
            rec["speedup_best_vs_cudnn_epilogue"] = round(rec["cudnn_epilogue_ms"] / rec["best_ms"], 3)
            records.append(rec)
            print(f"{name} #{i:2d} C={c:4d} {h:3d}x{w:<3d} k{k} s{st}: cudnn conv {rec['cudnn_conv_ms']:.4f}, "
                  f"conv+epilogue {rec['cudnn_epilogue_ms']:.4f}, sparsec best {best} {rec['best_ms']:.4f} ms "
                  f"({rec['gb_s_best']:.0f} GB/s), rel err <= {worst:.1e}", flush=True)
        rows = [r for r in records if r["model"] == name]
        totals[name] = {"cudnn_conv": round(sum(r["cudnn_conv_ms"] for r in rows), 4),
                        "cudnn_epilogue": round(sum(r["cudnn_epilogue_ms"] for r in rows), 4),
                        "sparsec_best_per_layer": round(sum(r["best_ms"] for r in rows), 4)}
        print(f"{name} total: {totals[name]}", flush=True)
    # per (k, stride): the variant with the least time summed over its layers (timed in every layer)
    choices = {}
    for key in sorted({f"k{r['k']}s{r['stride']}" for r in records}):
        rows = [r for r in records if f"k{r['k']}s{r['stride']}" == key]
        common = set.intersection(*(set(r["sparsec_ms"]) for r in rows))
        sums = {v: sum(r["sparsec_ms"][v] for r in rows) for v in common}
        best = min(sums, key=sums.get)
        choices[key] = {**parse_label(best), "layers": len(rows), "ms": round(sums[best], 4),
                        "variants_timed": len(sums)}
    for name in totals:  # the table's choices, summed per model: what auto runs
        rows = [r for r in records if r["model"] == name]
        totals[name]["sparsec_table"] = round(sum(
            r["sparsec_ms"][label(tuple(choices[f"k{r['k']}s{r['stride']}"][f] for f in ("tiled", "tw", "occ", "rows")))]
            for r in rows), 4)
    print("choices:", json.dumps(choices))
    path = write_results("dwconv", "per layer: median of CUDA-event timings of CUDA-graph replays after warm-up; "
                         "random inputs, channels-last; rel err of the fused kernels vs the float32 conv",
                         records, totals=totals, choices=choices, variants=which)
    print(f"wrote {path}")
    if args.write_table:
        table = Path(args.write_table)
        table.parent.mkdir(parents=True, exist_ok=True)
        table.write_text(json.dumps({"schema": D.TUNING_SCHEMA, "arch": arch, "source": str(path.name),
                                     "device": torch.cuda.get_device_name(), "dtype": args.dtype,
                                     "choices": choices}, indent=1) + "\n")
        print(f"wrote {table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
