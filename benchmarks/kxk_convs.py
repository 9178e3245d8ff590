"""The kxk convs a model's compiled graph leaves to cuDNN, one by one, against other ways to run them.

At bs1 the sixteen 3x3 convs of a pruned ResNet-50 take about 40% of its GPU time (profile_h100_r50-bs1-pdl.json),
each a few microseconds on a GPU it cannot fill. This script says whether another route would run them faster.
It traces the model, runs the bench's pipeline (``sparsec bench``'s pruned variant), collects every distinct
``sparsec.fused_conv2d`` with a kxk filter (groups 1, input of more than 4 channels), and times, channels-last:

- ``fused``: what the graph runs: ``fused_conv2d``'s CUDA kernel (one cuDNN call with bias + ReLU, or the reference);
- ``reference``: cuDNN's conv, then PyTorch's bias add and activation;
- ``conv``: cuDNN's conv alone (no bias, no activation), a lower bound for any cuDNN route;
- ``im2col_mm``: the input padded (a copy), its NHWC patch matrix copied out, then cuBLAS's ``addmm`` and the
  activation.

Each runs ``--reps`` times back to back inside one CUDA graph, on two alternating inputs, and the replay time is
divided by ``--reps``: what the conv costs between its neighbours in the model's graph, launch gaps included.
Every variant's output is checked against a float64 reference first.

    python benchmarks/kxk_convs.py --model resnet50 --batch 1 --prune-ratio 0.5   # -> kxk_convs_<gpu>.json
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median, p90, time_cuda_graph, write_results  # noqa: E402

from sparsec.passes.fusion import ops as F  # noqa: E402

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def sites(model: str, batch: int, prune_ratio: float | None, dtype: str) -> Counter:
    """(input shape, weight shape, stride, padding, act) of each kxk fused conv -> how often the graph has it."""
    import sparsec
    from sparsec.api import resolve_backend, resolve_target
    from sparsec.backends.bench import make_model, sparsec_pipeline
    from sparsec.passes.manager import PassContext, PassManager

    tgt = resolve_target("h100")
    pipeline = sparsec_pipeline(resolve_backend(tgt).pipeline(tgt), dtype=dtype, prune_ratio=prune_ratio)
    mod = sparsec.trace(make_model(model), (torch.randn(batch, 3, 224, 224),))
    list(PassManager.parse(pipeline).run(mod, PassContext(target=tgt)))
    found: Counter = Counter()
    for n in mod.graph.nodes:
        if n.op != "call_function" or n.target != torch.ops.sparsec.fused_conv2d.default:
            continue
        x, w, _b, res, stride, pad, dil, groups, act, act2 = n.args
        xs, ws = tuple(x.meta["val"].shape), tuple(w.meta["val"].shape)
        if ws[2] * ws[3] == 1 or groups != 1 or xs[1] <= 4 or res is not None or act2 != "none" or dil != [1, 1]:
            continue
        found[(xs, ws, tuple(stride), tuple(pad), act)] += 1
    return found


def im2col_mm(x, wmat, bias, k: int, stride: int, pad: int, act: str):
    """NHWC patches [N*OH*OW, k*k*C] of the padded input, times the weight [k*k*C, Cout] (cuBLAS), bias, act."""
    n, c, h, w = x.shape
    xp = torch.nn.functional.pad(x.permute(0, 2, 3, 1), (0, 0, pad, pad, pad, pad))  # NHWC, padded H and W
    oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    sn, sh, sw, sc = xp.stride()
    cols = xp.as_strided((n, oh, ow, k, k, c), (sn, sh * stride, sw * stride, sh, sw, sc)).reshape(n * oh * ow, -1)
    y = F.ACTIVATIONS[act](torch.addmm(bias, cols, wmat))
    return y.view(n, oh, ow, -1).permute(0, 3, 1, 2)


def run(site, count: int, dtype: str, reps: int, warmup: int, iters: int) -> dict:
    xs, ws, stride, pad, act = site
    dt = DTYPES[dtype]
    g = torch.Generator(device="cuda").manual_seed(0)
    xa, xb = (torch.randn(xs, device="cuda", generator=g).to(dt).contiguous(memory_format=torch.channels_last)
              for _ in range(2))
    w = (torch.randn(ws, device="cuda", generator=g) / (ws[1] * ws[2] * ws[3]) ** 0.5).to(dt)
    w = w.contiguous(memory_format=torch.channels_last)
    b = torch.randn(ws[0], device="cuda", generator=g).to(dt)
    wmat = w.permute(2, 3, 1, 0).reshape(-1, ws[0]).contiguous()  # [kh*kw*Cin, Cout], the patches' order
    kw = dict(stride=list(stride), padding=list(pad))
    variants = {
        "fused": lambda x: F.fused_conv2d_cuda(x, w, b, act=act, **kw),
        "reference": lambda x: F.fused_conv2d_ref(x, w, b, act=act, **kw),
        "conv": lambda x: torch.ops.aten.conv2d.default(x, w, None, list(stride), list(pad), [1, 1], 1),
        "im2col_mm": lambda x: im2col_mm(x, wmat, b, ws[2], stride[0], pad[0], act),
    }
    ref = F.ACTIVATIONS[act](torch.nn.functional.conv2d(xa.double(), w.double(), b.double(), stride, pad))
    rec = {"input": list(xs), "weight": list(ws), "stride": list(stride), "padding": list(pad), "act": act,
           "count": count, "dtype": dtype}
    for label, fn in variants.items():
        y = fn(xa).double()
        if label == "conv":  # no bias, no activation: its own reference
            y = F.ACTIVATIONS[act](y + b.double().view(1, -1, 1, 1))
        rel = float((y - ref).norm() / ref.norm())
        if not rel < 1e-2:
            raise SystemExit(f"{label} on {xs} x {ws}: rel err {rel:.3g} against float64")

        def many(fn=fn):
            for i in range(reps):
                fn(xa if i % 2 == 0 else xb)

        times = [t / reps for t in time_cuda_graph(many, warmup=warmup, iters=iters)]
        rec[f"{label}_us"], rec[f"{label}_us_p90"], rec[f"{label}_rel_err"] = (
            round(median(times) * 1e3, 3), round(p90(times) * 1e3, 3), rel)
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prune-ratio", type=float, default=0.5, help="0 for the unpruned model")
    ap.add_argument("--dtype", default="fp16", choices=sorted(DTYPES))
    ap.add_argument("--reps", type=int, default=20, help="convs per CUDA graph replay")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--out-dir", type=Path, default=None)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("kxk_convs.py times on a CUDA GPU")
    torch.backends.cudnn.benchmark = True
    found = sites(args.model, args.batch, args.prune_ratio or None, args.dtype)
    records = []
    for site, count in found.items():
        rec = run(site, count, args.dtype, args.reps, args.warmup, args.iters)
        records.append(rec)
        print(f"{count}x {rec['input']} * {rec['weight']} s{rec['stride'][0]}: " + ", ".join(
            f"{v} {rec[v + '_us']:.2f} us" for v in ("fused", "reference", "conv", "im2col_mm")), flush=True)
    totals = {v: round(sum(r[f"{v}_us"] * r["count"] for r in records), 2)
              for v in ("fused", "reference", "conv", "im2col_mm")}
    print("summed over the graph's convs (us):", totals)
    method = (f"per conv: median of {args.iters} replays of a CUDA graph of {args.reps} back-to-back calls (two "
              f"alternating inputs), divided by {args.reps}; CUDA events; cudnn.benchmark on; channels-last")
    path = write_results("kxk_convs", method, records, args.out_dir, model=args.model, batch=args.batch,
                         prune_ratio=args.prune_ratio, totals_us=totals)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
