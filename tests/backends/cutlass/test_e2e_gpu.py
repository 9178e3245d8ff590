"""End to end on the GPU: compile torchvision CNNs for h100 / h100-sparse / a100-sparse, load the artifact, run it,
compare against the masked eager reference (the same pipeline without the lowering, run by PyTorch),
and capture the loaded program in a CUDA graph."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
tv = pytest.importorskip("torchvision")

import sparsec  # noqa: E402
from sparsec.api import resolve_backend  # noqa: E402
from sparsec.backends.bench import make_model as _model  # noqa: E402  (trained-like BN statistics)
from sparsec.passes.manager import PassContext, PassManager  # noqa: E402

pytestmark = pytest.mark.gpu


def _needs_arch(target: str):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    cap = torch.cuda.get_device_capability()
    if target.startswith("h100") and cap != (9, 0):
        pytest.skip("h100 artifacts need an sm_90 GPU")
    if target.startswith("a100") and cap[0] < 8:
        pytest.skip("a100 artifacts (sm_80 cubins + compute_80 PTX) need sm_80 or newer")


def _rel(y, ref):
    y, ref = y.double(), ref.double()
    assert torch.isfinite(y).all()
    return ((y - ref).norm() / ref.norm()).item()


# What each model lowers to sparsec's kernels: (GEMM layers: every 1x1 conv and the fc, kxk convs staying
# cuDNN under SPARSEC_CUTLASS_KXK=none, the default; depthwise convs; squeeze-excite blocks; stems)
LOWERED = {"resnet18": (4, 0, 0, 0), "resnet50": (37, 0, 0, 0), "mobilenet_v2": (35, 17, 0, 1),
           "efficientnet_b0": (33, 16, 16, 1)}
HAND_WRITTEN = ("depthwise", "squeeze-excite", "stem")


@pytest.mark.parametrize("target", ["h100", "h100-sparse", "a100-sparse"])
@pytest.mark.parametrize("name", list(LOWERED))
def test_compiled_cnn_matches_the_masked_reference(name, target, tmp_path):
    _needs_arch(target)  # a100-sparse on an H100 runs the sm_80 kernels' PTX: a correctness check, not A100 timing
    model = _model(name)
    shape = (8, 3, 64, 64)
    pipeline = None
    if target == "a100-sparse":
        # The sm_80 tuning DB (measured through PTX on an H100) keeps every layer of these small shapes
        # dense; the shape cost model sends them to the 2:4 kernels, so the sm_80 sparse path runs.
        tgt = sparsec.registry().get("target", target)
        pipeline = resolve_backend(tgt).pipeline(tgt).replace("sparsify-2-4,", "sparsify-2-4{cost-model=shape},")
    res = sparsec.compile(model, (torch.randn(shape),), target=target, pipeline=pipeline, output=tmp_path / "m.sparsec")
    layers = json.loads((res.artifact / "manifest.json").read_text())["payload"]["layers"]
    gemms = sum(r["kind"] not in ("conv-im2col", "conv-pool", *HAND_WRITTEN) for r in layers)
    assert (gemms, *(sum(r["kind"] == k for r in layers) for k in HAND_WRITTEN)) == LOWERED[name]
    assert all(r["sparse"] for r in layers if r["kind"] == "conv-im2col")
    assert (sum(r["sparse"] for r in layers) > 0) == target.endswith("-sparse")
    loaded = sparsec.load(res.artifact)

    ref = sparsec.trace(model, (torch.randn(shape),))
    list(PassManager.parse(res.pipeline.replace(",partition", "")).run(
        ref, PassContext(target=sparsec.registry().get("target", target))))
    ref = ref.gm.cuda()
    x = torch.randn(shape, device="cuda", generator=torch.Generator(device="cuda").manual_seed(11))
    with torch.no_grad():
        y, r = loaded(x), ref(x)  # the whole batch of logits
    rel = _rel(y, r)
    top1 = (y.argmax(-1) == r.argmax(-1)).float().mean().item()
    print(f"{name} {target}: rel err {rel:.2e}, top-1 agreement {top1:.3f} ({len(layers)} layers lowered, "
          f"{sum(r['sparse'] for r in layers)} 2:4)")
    assert rel <= 1e-2

    # the loaded program captured once as a CUDA graph and replayed on a new input
    static_x = x.clone()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s), torch.no_grad():
        loaded(static_x)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g), torch.no_grad():
        static_y = loaded(static_x)
    x2 = torch.randn(shape, device="cuda", generator=torch.Generator(device="cuda").manual_seed(12))
    static_x.copy_(x2)
    g.replay()
    torch.cuda.synchronize()
    with torch.no_grad():
        assert _rel(static_y, loaded(x2)) < 1e-3


def test_dynamic_batch_artifact_runs_each_batch_in_its_bucket_graph(tmp_path):
    """--dynamic-batch: one h100-sparse artifact, batches 3, 4, 8 and 2 through sparsec.load(cuda_graph=True)'s
    default buckets (graphs of 4, 8 and 2); each call matches the masked reference on its own rows."""
    _needs_arch("h100-sparse")
    model = _model("resnet18")
    mod = sparsec.trace(model, (torch.randn(4, 3, 64, 64),), dynamic_batch=True)
    res = sparsec.compile(mod, target="h100-sparse", output=tmp_path / "d.sparsec")
    fast = sparsec.load(res.artifact, cuda_graph=True)
    ref = sparsec.trace(model, (torch.randn(4, 3, 64, 64),), dynamic_batch=True)
    list(PassManager.parse(res.pipeline.replace(",partition", "")).run(
        ref, PassContext(target=sparsec.registry().get("target", "h100-sparse"))))
    ref = ref.gm.cuda()
    g = torch.Generator(device="cuda").manual_seed(13)
    with torch.no_grad():
        for n in (3, 4, 8, 2):
            x = torch.randn(n, 3, 64, 64, device="cuda", generator=g)
            y, r = fast(x), ref(x)
            assert y.shape == r.shape == (n, 1000) and _rel(y, r) <= 1e-2, n
    assert sorted(k[0][0][0] for k in fast.module.graphs) == [2, 4, 8]  # BatchBuckets(CudaGraphModule)
