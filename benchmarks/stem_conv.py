"""The stem kernel (``sparsec::stem_conv``) against what PyTorch runs for the same conv, on the GPU.

Per stem (MobileNetV2's and EfficientNet-B0's 3x3 s2 on 3 channels; ResNet's 7x7 s2, which the lowering
leaves to cuDNN because it is compute-bound) at one batch and dtype, each captured in a CUDA graph and timed
with CUDA events (median of ``--iters`` replays after warm-up):

- ``pytorch_ms``: what the unlowered graph ran: the image's channels-last copy, cuDNN's conv with bias, the
  activation (``sparsec.fused_conv2d``'s reference on a channels-last copy);
- ``cudnn_conv_ms``: cuDNN's conv alone, channels-last in and out (a lower bound for any cuDNN route);
- ``sparsec_ms``: the stem kernel on the NCHW image, bias and activation fused, NHWC out.

Each sparsec output is checked against a float64 reference first (``rel_err``).

    python benchmarks/stem_conv.py                       # writes benchmarks/results/stem_conv_<gpu>.json
    python benchmarks/stem_conv.py --batch 32 --out-dir /tmp/out
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median, p90, time_cuda_graph, write_results  # noqa: E402

from sparsec.backends.cutlass import stem as ST  # noqa: E402
from sparsec.passes.fusion import ops as F  # noqa: E402

STEMS = [  # (name, Cin, Cout, k, stride, act)
    ("mobilenet_v2", 3, 32, 3, 2, "relu6"),
    ("efficientnet_b0", 3, 32, 3, 2, "silu"),
    ("resnet50", 3, 64, 7, 2, "relu"),
]


def run(stem, batch: int, dtype: str, arch: str, warmup: int, iters: int) -> dict:
    name, cin, cout, k, s, act = stem
    dt = ST.DTYPES[dtype]
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(batch, cin, 224, 224, device="cuda", generator=g).to(dt)
    w = (torch.randn(cout, cin, k, k, device="cuda", generator=g) / (cin * k * k) ** 0.5).to(dt)
    b = torch.randn(cout, device="cuda", generator=g).to(dt)
    pad = [k // 2, k // 2]
    wk = w.permute(2, 3, 1, 0).contiguous()
    cfg = ST.StemConfig(arch, dtype, cin, k, s, act).name
    ST.preload([cfg])
    xcl = x.contiguous(memory_format=torch.channels_last)
    wcl = w.contiguous(memory_format=torch.channels_last)
    variants = {
        "pytorch": lambda: F.fused_conv2d_ref(x.contiguous(memory_format=torch.channels_last), wcl, b, stride=[s, s],
                                              padding=pad, act=act),
        "cudnn_conv": lambda: torch.ops.aten.conv2d.default(xcl, wcl, None, [s, s], pad, [1, 1], 1),
        "sparsec": lambda: torch.ops.sparsec.stem_conv(x, wk, b, pad, cfg),
    }
    y = variants["sparsec"]().double()
    ref = F.ACTIVATIONS[act](torch.nn.functional.conv2d(x.double(), w.double(), b.double(), s, pad)).permute(0, 2, 3, 1)
    rec = {"stem": name, "batch": batch, "dtype": dtype, "cin": cin, "cout": cout, "k": k, "stride": s, "act": act,
           "config": cfg, "rel_err": float((y - ref).norm() / ref.norm())}
    if not rec["rel_err"] < 1e-2:
        raise SystemExit(f"{name}: the stem kernel disagrees with float64 (rel err {rec['rel_err']:.3g})")
    for label, fn in variants.items():
        times = time_cuda_graph(fn, warmup=warmup, iters=iters)
        rec[f"{label}_ms"], rec[f"{label}_ms_p90"] = median(times), p90(times)
    rec["speedup_vs_pytorch"] = rec["pytorch_ms"] / rec["sparsec_ms"]
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--dtype", default="fp16", choices=sorted(ST.DTYPES))
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--out-dir", type=Path, default=None)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("stem_conv.py times on a CUDA GPU")
    torch.backends.cudnn.benchmark = True
    arch = "sm_90a" if torch.cuda.get_device_capability() == (9, 0) else "sm_80"
    records = []
    for stem in STEMS:
        rec = run(stem, args.batch, args.dtype, arch, args.warmup, args.iters)
        records.append(rec)
        print(f"{rec['stem']:<16} {rec['k']}x{rec['k']} -> {rec['cout']:<3} bs{args.batch} {args.dtype}: pytorch "
              f"{rec['pytorch_ms']:.4f} ms, cudnn conv alone {rec['cudnn_conv_ms']:.4f} ms, sparsec "
              f"{rec['sparsec_ms']:.4f} ms ({rec['speedup_vs_pytorch']:.2f}x), rel err {rec['rel_err']:.1e}", flush=True)
    method = (f"median of {args.iters} CUDA-graph replays timed with CUDA events after {args.warmup} warm-ups, "
              f"cudnn.benchmark on; 224x224 images")
    print(f"wrote {write_results('stem_conv', method, records, args.out_dir)}")


if __name__ == "__main__":
    main()
