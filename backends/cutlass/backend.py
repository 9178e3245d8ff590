"""The ``cutlass`` backend: convs and linears as sparsec's CUTLASS GEMM kernels, the rest in PyTorch.

Targets: ``h100`` / ``h100-sparse`` (sm_90a) and ``a100`` / ``a100-sparse``
(sm_80). ``support(node)`` answers from the declared table
(``backends/cutlass_support.py``), narrowed to what :mod:`.lowering` really
lowers (depthwise convs of the direct kernel's shapes; no grouped, dilated or pooling-epilogue
kernels), and
every kxk conv stays cuDNN by default (``SPARSEC_CUTLASS_KXK=none``), 2:4-masked or not
(a mask still applies; it is computed densely): an NHWC im2col writes kh*kw copies of the
activations, and on an H100 neither a dense nor a 2:4 GEMM paid for them. ResNet-50 fp16 bs256,
compact configs: 21.6 ms with every kxk conv through im2col, 11.5 ms with the dense ones on cuDNN,
17.2 ms with the 2:4 ones through im2col (h100-sparse); pruned 0.5 + 2:4 (shape cost model) 10.96 ms
with its 2:4 kxk convs through im2col against 5.87 ms with them on cuDNN (benchmarks/results/
e2e_h100*.json). ``SPARSEC_CUTLASS_KXK=sparse`` lowers the 2:4 ones, ``all`` every one; an
implicit-GEMM sparse conv is the real fix. (The measured cost model never marks a kxk conv 2:4: its
im2col is in no measurement.)

``lower`` rewrites every node the ``partition`` pass gave this backend into a
``sparsec::gemm24`` / ``sparsec::gemm_dense`` call, for a depthwise conv a
``sparsec::dwconv2d`` call, for a squeeze-excite block a ``sparsec::squeeze_excite_nhwc``
call, for a 3x3 stem a ``sparsec::stem_conv`` call (:mod:`.lowering`, :mod:`.depthwise`,
:mod:`.squeeze_excite`, :mod:`.stem`), and
returns the artifact's extra files:

* ``kernels.json``: each kernel the program calls -- its config name, the
  generated CUDA source and the nvcc flags -- so any GPU host can rebuild it;
* ``tuning.json``: the tuning DB the configs came from.

The packed weights are buffers of the program (``program.pt2``).

Kernel builds (the ``SPARSEC_CUTLASS_BUILD`` knob): ``load`` (the default)
builds nothing at compile time, so compiling on a CPU machine without nvcc
or the CUTLASS headers still writes a complete artifact, and
``sparsec.load`` builds the kernels the kernel cache lacks on the GPU host at
first load (later loads hit the cache); ``compile`` builds them at compile
time into this machine's cache (slow on a small CPU: about a minute of one
core per kernel per nvcc job).

Loading checks the GPU: an sm_90a artifact needs compute capability 9.0; an
sm_80 one runs on any 8.x or newer GPU (on Hopper through its compute_80 PTX:
a correctness check, not A100 timings).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from pathlib import Path

from torch import fx

from sparsec import knobs
from sparsec.backends.target import Backend, Supported, Target, Unsupported
from sparsec.errors import TargetError, UsageError

log = logging.getLogger("sparsec.backends.cutlass")

KERNELS_FILE = "kernels.json"
TUNING_FILE = "tuning.json"


def kernel_of(cfg):
    """The kernel (library) the runtime loads for a config: sm_80 2:4 and fused-residual sm_80 run the plain one;
    one library serves every swizzle; a pdl config keeps its launch."""
    if cfg.arch == "sm_80" and (cfg.sparse or cfg.residual or cfg.scale):
        return cfg.base()
    return dataclasses.replace(cfg.base().with_epilogue(cfg.activation, cfg.residual, cfg.scale), pdl=cfg.pdl)


def compact_config(m: int, arch: str, dtype: str, sparse: bool):
    """``SPARSEC_CUTLASS_CONFIGS=compact``: two mainloops per (dtype, sparsity), by M (fewer kernels to build)."""
    from sparsec.backends.cutlass.config import KernelConfig, candidates

    if arch != "sm_90a":
        return candidates(arch, dtype, sparse)[0]
    tk = 128 if sparse else 64
    if m <= 64:
        return KernelConfig(arch, dtype, sparse, (64, 128, tk), (1, 2), "pingpong")
    return KernelConfig(arch, dtype, sparse, (128, 128, tk), (1, 2), "cooperative")


def machine_arch() -> str | None:
    import torch

    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability()
    return f"sm_{major}{minor}" + ("a" if (major, minor) == (9, 0) else "")


class CutlassBackend(Backend):
    """sparsec's CUTLASS kernels (2:4 sparse and dense GEMMs with fused epilogues) for NVIDIA GPUs.

    Example:
        >>> res = sparsec.compile(model, (x,), target="h100-sparse", output="m.sparsec")
    """

    name = "cutlass"
    description = "sparsec's CUTLASS 2:4 and dense GEMM kernels (sm_90a, sm_80) with fused epilogues; the rest in PyTorch"

    def supports(self, target: Target) -> bool:
        return target.backend == self.name and target.arch in ("sm_90a", "sm_80")

    # -- what it takes --------------------------------------------------------------------
    def support(self, node: fx.Node) -> Supported | Unsupported:
        """:meth:`kernel_support`; where a fused conv stays in PyTorch, also whether cuDNN's fused conv runs
        its epilogue."""
        return _cudnn_route(node, self.kernel_support(node))

    def kernel_support(self, node: fx.Node) -> Supported | Unsupported:
        """Whether sparsec's kernels take ``node`` (what the ``tvm`` backend's GPU targets reuse)."""
        from sparsec.backends.cutlass import lowering
        from sparsec.backends.cutlass_support import CutlassSupport

        if node.op == "call_function" and node.target in _kernel_ops():
            return Supported("cutlass: lowered kernel call")
        verdict = CutlassSupport().support(node)
        if not verdict or node.op != "call_function":
            return verdict
        plan = lowering.plan(node)
        if isinstance(plan, (lowering.DwPlan, lowering.SePlan, lowering.StemPlan, lowering.ConvPoolPlan)):
            return verdict
        if not isinstance(plan, lowering.GemmPlan):
            return plan
        policy = knobs.get("cutlass_kxk")
        if plan.kind == "conv-im2col" and policy != "all":
            from sparsec.ir import meta as M

            if policy == "none":
                return Unsupported("kxk conv: stays cuDNN (SPARSEC_CUTLASS_KXK=none; a 2:4 mask still applies, "
                                   "computed densely)")
            if M.get(plan.weight, M.Sparsity24) is None:
                return Unsupported("dense kxk conv: stays cuDNN, whose implicit GEMM reads the activations once, where an "
                                   "NHWC im2col + dense GEMM writes kh*kw copies (SPARSEC_CUTLASS_KXK=all lowers it)")
        return verdict

    def pipeline(self, target: Target, *, conv_pool_measurements: bool = True) -> str:
        """The GPU pipeline; ``fuse-conv-pool`` reads the conv+pool gains shipped for the target's arch (measured
        on this backend's kernel) unless ``conv_pool_measurements`` is false: then it declines every site."""
        sparse = "sparsify-2-4," if target.is_sparse else ""
        dtype = target.dtypes[0]
        measured = f"conv_pool_{target.arch}.json"  # benchmarks/conv_pool.py's gains, shipped per arch
        shipped = conv_pool_measurements and (Path(__file__).parent / "tuned" / measured).is_file()
        pool = f"{{measurements={measured}}}" if shipped else ""
        return (f"canonicalize,fold-bn,dce,to-channels-last,{sparse}fuse-epilogue,fuse-squeeze-excite,dce,"
                f"to-dtype{{dtype={dtype}}},fuse-conv-pool{pool},partition")

    # -- lowering -------------------------------------------------------------------------
    def lower(self, mod, target: Target):
        from sparsec.backends.artifact import Lowered
        from sparsec.backends.cutlass import tuning
        from sparsec.backends.cutlass.lowering import Lowering
        from sparsec.ir import meta as M

        db, db_source = _tuning_db(target.arch)
        mode = knobs.get("cutlass_configs")
        if mode not in ("tuned", "compact"):
            raise UsageError(f"SPARSEC_CUTLASS_CONFIGS={mode!r}", expected="tuned or compact")

        pdl = knobs.get("cutlass_pdl") and target.arch == "sm_90a"

        def choose(m, n, k, dtype, sparse, activation, residual):
            if mode == "compact":
                cfg = compact_config(m, target.arch, dtype, sparse).with_epilogue(activation, residual)
            else:
                cfg = tuning.choose(m, n, k, dtype, sparse, arch=target.arch, activation=activation, residual=residual,
                                    db=db)
            return dataclasses.replace(cfg, pdl=True) if pdl else cfg

        nodes = [n for n in mod.graph.nodes if (a := M.get(n, M.BackendAssignment)) is not None and a.backend == self.name]
        records = Lowering(target.arch, choose).run(mod, nodes)
        configs = sorted({r["config"] for r in records})
        kernels = _kernel_table(configs)
        build_mode = knobs.get("cutlass_build")
        if build_mode not in ("load", "compile"):
            raise UsageError(f"SPARSEC_CUTLASS_BUILD={build_mode!r}", expected="load or compile")
        if build_mode == "compile" and kernels:
            from sparsec.backends.cutlass import build

            build.build([_kernel_named(n) for n in kernels], progress=True)
        work = tempfile.TemporaryDirectory(prefix="sparsec-cutlass-")
        kpath, tpath = Path(work.name) / KERNELS_FILE, Path(work.name) / TUNING_FILE
        kpath.write_text(json.dumps({"arch": target.arch, "kernels": kernels}, indent=1, sort_keys=True) + "\n")
        tpath.write_text(json.dumps(db, indent=1) + "\n")
        n_sparse = sum(r["sparse"] for r in records)
        log.info("cutlass: lowered %d layers (%d 2:4, %d dense) onto %d kernels", len(records), n_sparse,
                 len(records) - n_sparse, len(kernels))
        section = {"arch": target.arch, "configs": configs, "kernels": sorted(kernels), "build": build_mode,
                   "config_mode": mode, "tuning_db": db_source, "layers": records}
        return Lowered(module=mod, backend=self.name, files={KERNELS_FILE: str(kpath), TUNING_FILE: str(tpath)},
                       section=section, workdir=work)

    # -- loading --------------------------------------------------------------------------
    def check_loadable(self, summary: dict) -> None:
        arch = summary.get("arch")
        here = machine_arch()
        fix = f"load it on a GPU of arch {arch}, or compile the model again for this machine's target"
        if here is None:
            raise TargetError(f"this artifact runs CUTLASS kernels for {arch}, and this machine has no CUDA GPU",
                              where=f"target '{summary.get('name')}'", expected=f"a {arch} GPU", actual="no CUDA device",
                              fix=fix + " (target cpu runs anywhere)")
        import torch

        ok = here == "sm_90a" if arch == "sm_90a" else torch.cuda.get_device_capability()[0] >= 8
        if not ok:
            raise TargetError(f"this artifact was built for {arch} and this GPU is {here}",
                              where=f"target '{summary.get('name')}'", expected=arch, actual=here, fix=fix)

    def load_artifact(self, path: Path, manifest: dict):
        import torch

        from sparsec._builtins import load_op_libraries
        from sparsec.backends.artifact import PROGRAM
        from sparsec.errors import ArtifactError

        load_op_libraries()
        names = manifest["payload"].get("kernels", [])
        if manifest["payload"].get("arch") == "sm_80" and machine_arch() != "sm_80":
            log.warning("running sm_80 kernels on %s through their PTX: a correctness check, not A100 timings",
                        machine_arch())
        preload(names)  # builds what the kernel cache lacks
        try:
            ep = torch.export.load(str(Path(path) / PROGRAM))
        except Exception as exc:
            raise ArtifactError(f"the program in '{path}' could not be loaded", where=str(Path(path) / PROGRAM),
                                actual=f"{type(exc).__name__}: {exc}",
                                fix=f"compile it again with this torch ({torch.__version__})") from exc
        return ep.module().to("cuda")


def _cudnn_route(node: fx.Node, verdict):
    """A fused conv this backend leaves to PyTorch: say where cuDNN's fused conv takes its epilogue too."""
    from sparsec.passes.fusion import ops as F

    if verdict or node.op != "call_function" or node.target is not F.fused_conv2d:
        return verdict
    from sparsec.ir import ops

    a = ops.args_of(node)
    how = F.cudnn_epilogue(a["act"], a["act2"], a["residual"] is not None)
    if how is None:
        return verdict
    what = "bias + ReLU" if how == "relu" else "bias, residual add + ReLU"
    return Unsupported(f"{verdict.reason}; its {what} run inside the cuDNN call (SPARSEC_CUDNN_FUSED=0: separately)")


def _kernel_ops():
    import torch

    from sparsec.backends.cutlass import conv_pool, depthwise, runtime, squeeze_excite, stem  # noqa: F401 -- the ops

    return {torch.ops.sparsec.gemm24.default, torch.ops.sparsec.gemm_dense.default, torch.ops.sparsec.dwconv2d.default,
            torch.ops.sparsec.squeeze_excite_nhwc.default, torch.ops.sparsec.stem_conv.default,
            torch.ops.sparsec.conv_pool_nhwc.default}


def _hand_written():
    """The families of hand-written kernels (modules with ``is_name``, a config ``from_name``, ``preload``)."""
    from sparsec.backends.cutlass import conv_pool, depthwise, squeeze_excite, stem

    return ((depthwise, depthwise.DwConfig), (squeeze_excite, squeeze_excite.SeConfig), (stem, stem.StemConfig),
            (conv_pool, conv_pool.ConvPoolConfig))


def _kernel_named(name: str):
    """The kernel a layer's config name runs: a hand-written kernel, or the GEMM library :func:`kernel_of` picks."""
    from sparsec.backends.cutlass.config import KernelConfig

    for family, config in _hand_written():
        if family.is_name(name):
            return config.from_name(name)
    return kernel_of(KernelConfig.from_name(name))


def preload(names) -> None:
    """Build (what the kernel cache lacks, in parallel) and load the kernels an artifact names."""
    from sparsec.backends.cutlass import runtime
    from sparsec.backends.cutlass.config import KernelConfig

    families = _hand_written()
    runtime.preload([KernelConfig.from_name(n) for n in names if not any(f.is_name(n) for f, _ in families)])
    for family, _ in families:
        family.preload([n for n in names if family.is_name(n)])


def _tuning_db(arch: str) -> tuple[dict, str]:
    """The DB the sparsify cost model reads (``<cache dir>/tuning/<arch>.json``, else the shipped one)."""
    from sparsec.backends.cutlass import tuning

    local = Path(knobs.get("cache_dir")) / "tuning" / f"{arch}.json"
    if local.is_file():
        return tuning.load_db(local), str(local)
    return tuning.load_db(arch=arch), f"backends/cutlass/tuned/{arch}.json"


def _kernel_table(configs: list[str]) -> dict:
    """kernel name -> {source, flags, arch}: what a GPU host needs to rebuild each kernel."""
    from sparsec.backends.cutlass.build import as_source, kernel_flags

    out = {}
    for name in configs:
        k = _kernel_named(name)
        out[k.name] = {"symbol": k.symbol, "arch": k.arch, "flags": kernel_flags(k), "source": as_source(k).text}
    return out
