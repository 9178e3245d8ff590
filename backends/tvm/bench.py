"""The ``tvm`` variants of ``sparsec bench``: prebuilt tvm artifacts timed beside the CUTLASS path.

The GPU host has no TVM compiler (the wheel does not travel), so the artifacts are built on a
CPU machine (:func:`build_artifacts`, ``python benchmarks/tvm_bench.py build``), one per
(model, target, batch), named by :func:`artifact_name`, and run on the GPU host with the TVM
runtime alone (``sparsec bench --variants ...,tvm,tvm-24 --tvm-artifacts DIR``).

Variants (:data:`VARIANTS`): ``tvm`` is ``h100-tvm`` (dense CUTLASS GEMMs, cuDNN kxk convs),
``tvm-24`` is ``h100-sparse-tvm`` (2:4 where the measured cost model says so), called directly;
``tvm-graph`` / ``tvm-24-graph`` are the same artifacts replayed as one CUDA graph (as
``sparsec bench`` replays the CUTLASS artifacts), which removes the per-call Python hops.

Weights: an artifact may be built without its ``params.pt`` (``strip``: ResNet-50's packed fp16
weights alone exceed what the device tool carries). :func:`tvm_variant` then runs the manifest's
pipeline and the CUTLASS lowering (:func:`~sparsec.backends.tvm.backend.lower_gemms`, torch only)
on the same model, checks that it lowered the same layers onto the same kernels, and writes the
weights into a copy of the artifact; when they hash to the manifest's sha256 the copy is exactly
the artifact built on the CPU machine and loads through ``sparsec.load``.

Example:
    >>> build_artifacts(["resnet50"], [8, 256], ["h100-tvm"], Path(".devcache/tvm/artifacts"), make_model)
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Callable, Iterable

import torch

log = logging.getLogger("sparsec.backends.tvm")

VARIANTS = {"tvm": "h100-tvm", "tvm-24": "h100-sparse-tvm", "tvm-graph": "h100-tvm", "tvm-24-graph": "h100-sparse-tvm"}
INPUT_SIZE = 224
_loaded: dict = {}  # (artifact folder, name, batch, target) -> (module, reference, info): -graph reuses the plain one


def artifact_name(model: str, target: str, batch: int) -> str:
    return f"{model}-{target}-bs{batch}.sparsec"


def build_artifacts(models: Iterable[str], batches: Iterable[int], targets: Iterable[str], out: Path,
                    make_model: Callable[[str], torch.nn.Module], *, strip: bool = True) -> list[Path]:
    """Compile every (model, target, batch) into ``out`` (the CPU machine, with ``sparsec[tvm]`` and nvcc).

    The pipeline is the target's with ``sparsec bench``'s I/O change (``bench.sparsec_pipeline``: fp16 in
    and out, as the CUTLASS variants are compiled), so every variant times the same fp16 input tensors.
    """
    import sparsec
    from sparsec.api import resolve_backend, resolve_target
    from sparsec.backends.bench import sparsec_pipeline

    out.mkdir(parents=True, exist_ok=True)
    paths, targets, batches = [], list(targets), list(batches)
    for name in models:
        for target in targets:
            tgt = resolve_target(target)
            pipeline = sparsec_pipeline(resolve_backend(tgt).pipeline(tgt), dtype="fp16")
            for batch in batches:
                start = time.perf_counter()
                mod = sparsec.trace(make_model(name), (torch.randn(batch, 3, INPUT_SIZE, INPUT_SIZE),))
                res = sparsec.compile(mod, target=target, pipeline=pipeline,
                                      output=str(out / artifact_name(name, target, batch)), force=True)
                sec = json.loads((res.artifact / "manifest.json").read_text())["payload"]
                if strip:
                    (res.artifact / sec["tvm"]["params"]).unlink()
                size = sum(p.stat().st_size for p in res.artifact.iterdir())
                log.info("%s: built in %.1f s, %d CUTLASS layers on %d kernels, cubins %s, %.1f MB", res.artifact.name,
                         time.perf_counter() - start, len(sec["cutlass"]["layers"]), len(sec["cutlass"]["kernels"]),
                         sec["tvm"]["fatbin"]["cubin_archs"], size / 1e6)
                paths.append(res.artifact)
    return paths


def tvm_variant(model: torch.nn.Module, name: str, batch: int, variant: str, artifacts, workdir: Path):
    """Load the prebuilt artifact of ``variant`` for (``name``, ``batch``) on the GPU host.

    Returns (loaded module, reference module, compile seconds, info) like ``bench.sparsec_variant``:
    the reference is the transformed fp16 graph before lowering (the same pipeline, on ``model``).
    """
    from sparsec.errors import UsageError

    if artifacts is None:
        raise UsageError(f"variant '{variant}' runs prebuilt tvm artifacts", fix="pass --tvm-artifacts DIR "
                         "(built on a machine with TVM: python benchmarks/tvm_bench.py build)")
    target = VARIANTS[variant]
    src = Path(artifacts) / artifact_name(name, target, batch)
    key = (str(src), name, batch, target)
    if key not in _loaded:
        _loaded.clear()  # one artifact (one VM memory pool) at a time
        _loaded[key] = _load(model, name, src, target, batch, Path(workdir))
    loaded, ref, info = _loaded[key]
    return loaded, ref, info["tvm_build_s_cpu_machine"], {**info, "cuda_graph": variant.endswith("-graph")}


def _load(model: torch.nn.Module, name: str, src: Path, target: str, batch: int, workdir: Path):
    import sparsec
    from sparsec import knobs
    from sparsec.api import resolve_target
    from sparsec.backends.artifact import read_manifest
    from sparsec.backends.tvm.backend import TvmBackend, lower_gemms
    from sparsec.errors import ArtifactError, UsageError
    from sparsec.passes.manager import PassContext, PassManager

    if not src.is_dir():
        raise UsageError(f"no prebuilt tvm artifact {src.name} in {src.parent}", where=str(src),
                         fix=f"build it: python benchmarks/tvm_bench.py build --models {name} --batches {batch} "
                             f"--targets {target}")
    manifest = read_manifest(src)
    payload = manifest["payload"]
    tgt = resolve_target(target)
    start = time.perf_counter()
    mod = sparsec.trace(model, (torch.randn(batch, 3, INPUT_SIZE, INPUT_SIZE),))
    PassManager.parse(manifest["pipeline"]).run(mod, PassContext(target=tgt))
    ref = mod.clone()
    with knobs.scope(cutlass_configs=payload["cutlass"]["config_mode"]):
        rebuilt = lower_gemms(mod, tgt).section
    same = [(r["node"], r["config"]) for r in rebuilt["layers"]] == [(r["node"], r["config"]) for r in payload["cutlass"]["layers"]]
    if not same:
        raise ArtifactError(f"{src.name}: this host lowers other layers or kernels than the artifact holds",
                            fix="build the artifact with the same sparsec and SPARSEC_CUTLASS_* settings")
    path = Path(workdir) / src.name
    shutil.rmtree(path, ignore_errors=True)
    shutil.copytree(src, path)
    sec = payload["tvm"]
    named = {**dict(mod.gm.named_parameters()), **dict(mod.gm.named_buffers())}
    params = path / sec["params"]
    carried = params.is_file()
    if not carried:
        torch.save({"names": list(sec["param_names"]), "tensors": [named[n].detach().contiguous() for n in sec["param_names"]]},
                   params)
    rebuild_s = time.perf_counter() - start
    intact = hashlib.sha256(params.read_bytes()).hexdigest() == manifest["files"][sec["params"]]
    try:
        loaded, loaded_by = sparsec.load(path), "sparsec.load"
    except ArtifactError as exc:  # rebuilt weights that differ in the last bits: the same loader, without the hash check
        log.warning("%s: %s; running the library with the rebuilt weights", src.name, str(exc).splitlines()[0])
        loaded, loaded_by = TvmBackend().load_artifact(path, manifest), "TvmBackend.load_artifact (rebuilt weights)"
    info = {"pipeline": manifest["pipeline"], "target": target, "layers_lowered": len(rebuilt["layers"]),
            "layers_24": sum(r["sparse"] for r in rebuilt["layers"]), "kernels": len(rebuilt["kernels"]),
            "tvm_build_s_cpu_machine": sec["build_seconds"], "weights": "carried" if carried else "rebuilt here",
            "weights_rebuild_s": round(rebuild_s, 1), "params_sha256_matches_manifest": intact, "loaded_by": loaded_by}
    return loaded, ref.gm.cuda(), info
