"""The conv+pool kernel (``sparsec::conv_pool_nhwc``) output by output against its CPU reference, on the GPU.

A checking script, not a benchmark: for each case (every tile, max and average pools, 1 to 4 input channels,
both dtypes) it runs the kernel on NaN-poisoned outputs and counts the outputs that differ from
``conv_pool.reference`` (float32, the conv rounded to the dtype before pooling) by more than 2%; where some
do, it prints the map of bad pooled pixels of the first image. ``--small`` shrinks the images so that the
script runs under compute-sanitizer in seconds:

    python benchmarks/conv_pool_check.py
    compute-sanitizer --tool racecheck python benchmarks/conv_pool_check.py --small
"""

from __future__ import annotations

import argparse

import torch

from sparsec.backends.cutlass import conv_pool as CP
from sparsec.backends.cutlass.runtime import poisoned_outputs

CASES = [  # Cin, k, stride, pad, Cout, act, pool, pk, ps, pp, tile, N, H, W, dtype
    (3, 7, 2, 3, 32, "relu", "max", 3, 2, 1, (4, 4), 1, 224, 224, "fp16"),
    (1, 5, 1, 2, 8, "none", "avgx", 3, 2, 1, (4, 4), 2, 30, 27, "fp16"),
    (3, 7, 2, 3, 32, "relu", "max", 3, 2, 1, (8, 8), 2, 224, 224, "bf16"),
    (3, 7, 2, 3, 64, "relu", "max", 3, 2, 1, (8, 8), 2, 224, 224, "fp16"),
    (3, 7, 2, 3, 32, "relu", "max", 3, 2, 1, (4, 8), 2, 224, 224, "fp16"),
    (3, 7, 2, 3, 64, "relu", "max", 3, 2, 1, (4, 4), 1, 64, 64, "fp16"),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--small", action="store_true", help="one image of at most 48x48 per case")
    args = ap.parse_args()
    arch = "sm_90a" if torch.cuda.get_device_capability() == (9, 0) else "sm_80"
    failed = 0
    for cin, k, s, pad, cout, act, pool, pk, ps, pp, tile, n, h, w, dtype in CASES:
        if args.small:
            n, h, w = 1, min(h, 48), min(w, 48)
        cfg = CP.ConvPoolConfig(arch, dtype, cin, k, s, cout, act, pool, pk, ps, pp, tile)
        CP.preload([cfg])
        dt = CP.DTYPES[dtype]
        for seed in range(2):
            g = torch.Generator(device="cuda").manual_seed(seed)
            x = torch.randn(n, cin, h, w, device="cuda", generator=g).to(dt)
            wt = (torch.randn(cout, cin, k, k, device="cuda", generator=g) / (cin * k * k) ** 0.5).to(dt)
            b = torch.randn(cout, device="cuda", generator=g).to(dt)
            wp = CP.pack_weight(wt, cfg.kp)
            with poisoned_outputs():
                y = torch.ops.sparsec.conv_pool_nhwc(x, wp, b, [pad, pad], cfg.name)
            torch.cuda.synchronize()
            ref = CP.reference(x.float().cpu(), wp.float().cpu(), b.float().cpu(), [pad, pad], cfg.name).float()
            bad = ~((y.float().cpu() - ref).abs() <= 0.02 * ref.abs() + 0.02)  # NaN counts as bad
            print(f"{cfg.name} seed {seed}: {int(bad.sum())} of {bad.numel()} outputs bad", flush=True)
            failed += bool(bad.any())
            if bad.any() and seed == 0:
                for row in bad.any(-1)[0][:40]:
                    print("  " + "".join("X" if v else "." for v in row[:80].tolist()))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
