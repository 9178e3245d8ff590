"""GEMM shape suites (M = output channels, N = tokens, K = reduction), shared by
``sparsec tune`` and ``benchmarks/gemm_2to4.py``.

Convs are taken as implicit GEMMs over NHWC activations: M = Cout,
K = kh*kw*Cin, N = batch*Hout*Wout. Depthwise convs and stems with K not a
multiple of 16 are left out (the sparsify pass excludes them too).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Shape:
    m: int
    n: int
    k: int
    suite: str

    @property
    def compute_bound(self) -> bool:
        return min(self.m, self.n, self.k) >= 1024


def _convs(name: str, layers: list[tuple[int, int, int, int]], batches=(32, 256)) -> list[Shape]:
    """layers: (cout, cin, kernel, hw_out)."""
    out = []
    for bs in batches:
        seen = set()
        for cout, cin, ks, hw in layers:
            key = (cout, bs * hw * hw, ks * ks * cin)
            if key in seen or key[2] % 16:
                continue
            seen.add(key)
            out.append(Shape(key[0], key[1], key[2], f"{name}-bs{bs}-{ks}x{ks}"))
    return out


RESNET50 = [  # bottleneck convs, (cout, cin, k, hw_out)
    (64, 64, 1, 56), (64, 64, 3, 56), (256, 64, 1, 56), (64, 256, 1, 56),
    (128, 256, 1, 56), (128, 128, 3, 28), (512, 128, 1, 28), (128, 512, 1, 28), (512, 256, 1, 28),
    (256, 512, 1, 28), (256, 256, 3, 14), (1024, 256, 1, 14), (256, 1024, 1, 14), (1024, 512, 1, 14),
    (512, 1024, 1, 14), (512, 512, 3, 7), (2048, 512, 1, 7), (512, 2048, 1, 7), (2048, 1024, 1, 7),
]
MOBILENETV2 = [  # pointwise expand/project convs (depthwise excluded)
    (16, 32, 1, 112), (96, 16, 1, 112), (24, 96, 1, 56), (144, 24, 1, 56), (24, 144, 1, 56),
    (32, 144, 1, 28), (192, 32, 1, 28), (32, 192, 1, 28), (64, 192, 1, 14), (384, 64, 1, 14),
    (64, 384, 1, 14), (96, 384, 1, 14), (576, 96, 1, 14), (96, 576, 1, 14), (160, 576, 1, 7),
    (960, 160, 1, 7), (160, 960, 1, 7), (320, 960, 1, 7), (1280, 320, 1, 7),
]
EFFICIENTNET_B0 = [  # pointwise convs (depthwise and SE excluded)
    (16, 32, 1, 112), (96, 16, 1, 112), (24, 96, 1, 56), (144, 24, 1, 56), (24, 144, 1, 56),
    (40, 144, 1, 28), (240, 40, 1, 28), (40, 240, 1, 28), (80, 240, 1, 14), (480, 80, 1, 14),
    (80, 480, 1, 14), (112, 480, 1, 14), (672, 112, 1, 14), (112, 672, 1, 14), (192, 672, 1, 7),
    (1152, 192, 1, 7), (192, 1152, 1, 7), (320, 1152, 1, 7), (1280, 320, 1, 7),
]


def transformer(name: str, d: int, ff: int, tokens: int) -> list[Shape]:
    return [Shape(3 * d, tokens, d, name), Shape(d, tokens, d, name), Shape(ff, tokens, d, name), Shape(d, tokens, ff, name)]


def llm() -> list[Shape]:
    out = []
    for tokens in (2048, 8192, 16384):
        out += [Shape(4096, tokens, 4096, "llm"), Shape(11008, tokens, 4096, "llm"), Shape(4096, tokens, 11008, "llm"),
                Shape(8192, tokens, 8192, "llm")]
    return out


def suite(name: str = "full") -> list[Shape]:
    """Shapes of a named suite: ``full``, ``quick`` (a few of each kind), or one of the model names."""
    parts = {
        "resnet50": _convs("resnet50", RESNET50),
        "mobilenetv2": _convs("mobilenetv2", MOBILENETV2),
        "efficientnet_b0": _convs("efficientnet_b0", EFFICIENTNET_B0),
        "vit_b": transformer("vit-b", 768, 3072, 32 * 197),
        "bert_base": transformer("bert-base", 768, 3072, 32 * 128),
        "llm": llm(),
    }
    if name == "full":
        shapes = [s for v in parts.values() for s in v]
    elif name == "quick":
        shapes = [Shape(4096, 8192, 4096, "llm"), Shape(256, 256 * 196, 2304, "resnet50-bs256-3x3"),
                  Shape(1024, 256 * 196, 256, "resnet50-bs256-1x1"), Shape(3072, 32 * 197, 768, "vit-b")]
    elif name in parts:
        shapes = parts[name]
    else:
        raise KeyError(f"unknown suite {name!r}; known: full, quick, {', '.join(parts)}")
    return list(dict.fromkeys(shapes))
