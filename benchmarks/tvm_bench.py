"""TVM artifacts for ``h100-tvm``: built on the CPU machine, checked and timed on the GPU.

Two steps, because the GPU host has no TVM compiler (and needs none):

``build`` (the CPU machine, with ``sparsec[tvm]``)::

    python benchmarks/tvm_bench.py build --models resnet50,mobilenet_v2,efficientnet_b0 \\
        --out .devcache/tvm/artifacts --strip-params mobilenet_v2,efficientnet_b0

compiles each torchvision model (random weights from ``--seed``, BatchNorm
statistics randomised so activations neither vanish nor explode) with the
pipeline ``canonicalize,fold-bn,dce,to-dtype{dtype=fp16}`` for ``h100-tvm``
(``--fp32 NAME`` drops the ``to-dtype``), at ``--batch`` x 3 x ``--size``^2.
``--strip-params`` moves a model's ``params.pt`` aside so the artifacts fit
the device tool's 64 MiB limit; the ``run`` step rebuilds those weights.

``run`` (the GPU host, with only ``apache-tvm-ffi`` and the two runtime libraries,
``SPARSEC_TVM_RUNTIME_DIR``)::

    python benchmarks/tvm_bench.py run --artifacts .devcache/tvm/artifacts

For each model it runs the manifest's pipeline on the same seeded model there, and
compares the weights with the artifact's (bit-identical or the largest
difference). A stripped artifact gets the rebuilt weights written back; when
they hash to the manifest's sha256, the artifact is exactly the one built on
the CPU machine and loads through ``sparsec.load``. The reference is the
transformed graph run by PyTorch eager with the artifact's weights; the
check is the relative error ``||tvm - eager|| / ||eager||`` on fresh random
inputs. Timings: median and p90 of CUDA events after warm-up, inputs rotated
over buffers larger than L2; results go to ``benchmarks/results/tvm_<gpu>.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

PIPELINE = "canonicalize,fold-bn,dce,to-dtype{dtype=fp16}"
PIPELINE_FP32 = "canonicalize,fold-bn,dce"  # for models whose fp16 build TVM cannot schedule (--fp32)
TARGET = "h100-tvm"


def make_model(name: str, seed: int) -> torch.nn.Module:
    """torchvision ``name`` with seeded random weights and random BatchNorm statistics, in eval mode."""
    import torchvision

    torch.manual_seed(seed)
    model = getattr(torchvision.models, name)(weights=None).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=gen) * 0.5 + 0.75)
                m.weight.copy_(torch.rand(c, generator=gen) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(c, generator=gen) * 0.1)
    return model


def transformed(name: str, seed: int, batch: int, size: int, pipeline: str):
    """The model after ``pipeline`` (an ``ir.Module``), as compile sees it."""
    import sparsec
    from sparsec.passes.manager import PassManager

    mod = sparsec.trace(make_model(name, seed), (torch.randn(batch, 3, size, size),))
    PassManager.parse(pipeline).run(mod)
    return mod


# -- build (CPU machine) ------------------------------------------------------------------------


def build(args) -> None:
    import sparsec

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    strip = set(filter(None, args.strip_params.split(",")))
    fp32 = set(filter(None, args.fp32.split(",")))
    for name in filter(None, args.models.split(",")):
        start = time.perf_counter()
        mod = sparsec.trace(make_model(name, args.seed), (torch.randn(args.batch, 3, args.size, args.size),))
        pipeline = PIPELINE_FP32 if name in fp32 else PIPELINE
        res = sparsec.compile(mod, target=TARGET, pipeline=pipeline, output=str(out / f"{name}.sparsec"), force=True)
        manifest = json.loads((res.artifact / "manifest.json").read_text())
        tvm = manifest["payload"]["tvm"]
        if name in strip:
            (res.artifact / tvm["params"]).unlink()
        sizes = {p.name: p.stat().st_size for p in res.artifact.iterdir()}
        print(f"{name}: built in {time.perf_counter() - start:.1f} s, cubins {tvm['fatbin']['cubin_archs']}, "
              f"CUDA source {tvm['fatbin']['cuda_source']}, files {sizes}", flush=True)


# -- run (GPU host) ----------------------------------------------------------------------------


def _weights(mod) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in mod.export().state_dict.items()}


def run(args) -> None:
    import sparsec
    from common import median, p90, time_events, write_results

    from sparsec.backends.artifact import read_manifest, verify_files
    from sparsec.backends.tvm.backend import TvmBackend
    from sparsec.errors import ArtifactError

    import tvm_ffi

    records = []
    method = (f"median and p90 of CUDA-event timings per call (up to {args.iters}, at most ~{args.budget_s:g} s per "
              f"variant) after {args.warmup} warm-ups; inputs rotated over buffers totalling > 2x L2; eager = the "
              "transformed fx graph (same pipeline, same weights) in PyTorch, no CUDA graph; tvm = the h100-tvm "
              "artifact through the TVM runtime alone (apache-tvm-ffi + libtvm_runtime*.so) on torch's stream")
    names = [n for n in args.models.split(",") if (Path(args.artifacts) / f"{n}.sparsec").is_dir()]
    for name in names:
        path = Path(args.artifacts) / f"{name}.sparsec"
        manifest = read_manifest(path)
        tvm = manifest["payload"]["tvm"]
        shape = manifest["inputs"]["tensors"][0]["shape"]
        batch, size = shape[0], shape[-1]
        t0 = time.perf_counter()
        pipeline = manifest["pipeline"]
        mod = transformed(name, args.seed, batch, size, pipeline)
        rebuilt = _weights(mod)
        rebuild_s = time.perf_counter() - t0
        rebuilt_list = [rebuilt[n] for n in tvm["param_names"]]
        params_file = path / tvm["params"]
        carried = params_file.is_file()
        if carried:
            art = torch.load(str(params_file), map_location="cpu", weights_only=True)["tensors"]
            diff = max(float((a.float() - b.float()).abs().max()) for a, b in zip(art, rebuilt_list))
        else:
            torch.save({"names": list(tvm["param_names"]), "tensors": rebuilt_list}, params_file)
            art, diff = rebuilt_list, None
        digest = hashlib.sha256(params_file.read_bytes()).hexdigest()
        intact = digest == manifest["files"][tvm["params"]]
        try:
            verify_files(path, manifest)
            model = sparsec.load(path)
            loaded_by = "sparsec.load"
        except ArtifactError as exc:  # rebuilt weights that differ in the last bits: run them directly
            print(f"{name}: {str(exc).splitlines()[0]}; running the library with the rebuilt weights", flush=True)
            model = TvmBackend().load_artifact(path, manifest)  # the same loader, without the hash check
            loaded_by = "TvmBackend.load_artifact (rebuilt weights, hash differs)"
        # the eager reference: the same transformed fp16 graph, with the artifact's weights
        for pname, tensor in zip(tvm["param_names"], art):
            mod.set_param(pname, tensor)
        eager = mod.gm.cuda()  # an exported graph module: no .eval() (torch 2.11 refuses it); dropout is traced as eval
        gen = torch.Generator(device="cuda").manual_seed(args.seed + 7)
        errs = []
        with torch.no_grad():
            for _ in range(3):
                x = torch.randn(batch, 3, size, size, device="cuda", generator=gen)
                y_ref, y_tvm = eager(x), model(x)
                y_ref = y_ref[0] if isinstance(y_ref, (tuple, list)) else y_ref
                errs.append(float((y_tvm.float() - y_ref.float()).norm() / y_ref.float().norm()))
            nbuf = max(2, int(2 * 60e6 // (batch * 3 * size * size * 4)) + 1)  # > 2x the 50-60 MB L2
            xs = [torch.randn(batch, 3, size, size, device="cuda", generator=gen) for _ in range(nbuf)]
            counter = [0]

            def rotating(fn):
                def call():
                    counter[0] += 1
                    return fn(xs[counter[0] % nbuf])
                return call

            t_eager = time_events(rotating(eager), warmup=args.warmup, iters=_iters(rotating(eager), args))
            t_tvm = time_events(rotating(model), warmup=args.warmup, iters=_iters(rotating(model), args))
        rec = {
            "model": name, "batch": batch, "input_size": size, "dtype": "fp16" if "to-dtype" in pipeline else "fp32", "pipeline": pipeline,
            "target": TARGET, "loaded_by": loaded_by,
            "weights": "carried" if carried else "rebuilt on the GPU host",
            "weights_bit_identical_to_rebuild": (diff == 0.0) if carried else None,
            "weights_max_abs_diff_vs_rebuild": diff, "params_sha256_matches_manifest": intact,
            "rebuild_s": round(rebuild_s, 1),
            "max_rel_err_vs_eager": max(errs), "rel_errs": errs,
            "eager_ms_median": median(t_eager), "eager_ms_p90": p90(t_eager),
            "tvm_ms_median": median(t_tvm), "tvm_ms_p90": p90(t_tvm),
            "speedup_vs_eager": median(t_eager) / median(t_tvm),
            "fatbin": tvm["fatbin"]["cubin_archs"], "tvm_build_seconds": tvm["build_seconds"],
        }
        records.append(rec)
        print(json.dumps(rec), flush=True)
        # rewritten after every model, so a run cut short still leaves its results
        built_with = sorted({read_manifest(Path(args.artifacts) / f"{n}.sparsec")["payload"]["tvm"]["version"] for n in names})
        out = write_results("tvm", method, records, out_dir=Path(args.results) if args.results else None,
                            tvm={"runtime": f"apache-tvm-ffi {tvm_ffi.__version__} + libtvm_runtime*.so",
                                 "built_with_apache_tvm": built_with})
    print(f"wrote {out}")
    print(f"{'model':18} {'batch':>5} {'rel err':>9} {'eager ms':>9} {'tvm ms':>9} {'speedup':>8}  weights")
    for r in records:
        print(f"{r['model']:18} {r['batch']:>5} {r['max_rel_err_vs_eager']:>9.2e} {r['eager_ms_median']:>9.3f} "
              f"{r['tvm_ms_median']:>9.3f} {r['speedup_vs_eager']:>8.2f}  {r['weights']}")


def _iters(fn, args) -> int:
    """As many timed calls as fit ``--budget-s`` (at least 10, at most ``--iters``)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    fn()
    start.record()
    for _ in range(3):
        fn()
    end.record()
    end.synchronize()
    per_call_s = start.elapsed_time(end) / 3e3
    return max(10, min(args.iters, int(args.budget_s / max(per_call_s, 1e-6))))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="compile the artifacts (CPU machine, needs sparsec[tvm])")
    b.add_argument("--models", default="resnet50,mobilenet_v2,efficientnet_b0")
    b.add_argument("--out", default=".devcache/tvm/artifacts")
    b.add_argument("--strip-params", default="", help="models whose params.pt is left out (rebuilt by run)")
    b.add_argument("--fp32", default="", help="models built in fp32 (TVM's dlight fails on their fp16 graph)")
    b.add_argument("--batch", type=int, default=8)
    b.add_argument("--size", type=int, default=224)
    b.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("run", help="check and time the artifacts (GPU host, TVM runtime only)")
    r.add_argument("--artifacts", default=".devcache/tvm/artifacts")
    r.add_argument("--models", default="resnet50,mobilenet_v2,efficientnet_b0", help="in this order")
    r.add_argument("--budget-s", type=float, default=8.0, help="timing seconds per variant, at most")
    r.add_argument("--results", default=None, help="folder for tvm_<gpu>.json (default benchmarks/results)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--warmup", type=int, default=20)
    r.add_argument("--iters", type=int, default=100)
    args = ap.parse_args(argv)
    build(args) if args.cmd == "build" else run(args)


if __name__ == "__main__":
    main()
