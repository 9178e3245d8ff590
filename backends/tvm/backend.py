"""``TvmBackend``: the ``tvm`` backend of ``cpu-tvm`` and the GPU targets ``{a100,h100}[-sparse]-tvm``.

See the package docstring for the design. On a GPU target ``lower`` first runs
the CUTLASS backend's lowering (:func:`lower_gemms`: the GEMMs and convs its
kernels take become ``sparsec::gemm24`` / ``gemm_dense``), then imports the
module into Relax (those ops, and the convs left, as packed calls), builds it
(a subprocess with the stub libcuda for CUDA), checks the library's GPU code,
and returns an artifact payload: ``model.so``, ``params.pt`` and, on GPU
targets, the CUTLASS backend's ``kernels.json`` / ``tuning.json``.
``load_artifact`` builds or loads those kernels through the kernel cache and
runs the library with the TVM runtime alone.
"""

from __future__ import annotations

import functools
import logging
import platform
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import torch
from torch import fx

from sparsec import knobs
from sparsec.backends.target import Backend, Supported, Target, Unsupported
from sparsec.errors import ArtifactError, TargetError

log = logging.getLogger("sparsec.backends.tvm")

PARAMS = "params.pt"
_STRUCTURAL = {"placeholder", "get_attr", "output"}


class TvmBackend(Backend):
    """Lowers the ATen graph to TVM Relax and builds one library per target.

    Example:
        >>> sparsec.compile(model, (x,), target="cpu-tvm", output="m.sparsec")
        >>> sparsec.load("m.sparsec")(x)        # apache-tvm-ffi + libtvm_runtime.so only
    """

    name = "tvm"
    description = ("TVM Relax: all TVM-generated on the CPU (llvm); on GPUs sparsec's CUTLASS GEMMs and cuDNN convs "
                   "as packed calls, the rest dlight CUDA")

    def __init__(self, target: Target | None = None) -> None:
        self.target = target  # None: the verdicts of cpu-tvm (everything TVM-generated)

    def for_target(self, target: Target) -> "TvmBackend":
        return TvmBackend(target)

    def missing(self) -> str | None:
        import importlib.util

        return None if importlib.util.find_spec("tvm") else "apache-tvm is not installed: pip install 'sparsec[tvm]'"

    # -- what it takes ------------------------------------------------------------------------
    @functools.cached_property
    def _ops(self) -> frozenset[str] | None:
        from sparsec.backends.tvm.lowering import supported_ops

        try:
            return supported_ops()
        except TargetError:
            return None  # TVM missing: support() says how to install it

    @functools.cached_property
    def _decomposed(self) -> frozenset:
        return frozenset(torch.export.default_decompositions())

    @functools.cached_property
    def _fused(self) -> frozenset:
        from sparsec.backends.tvm.custom_ops import decompositions

        return frozenset(decompositions())

    def support(self, node: fx.Node) -> Supported | Unsupported:
        from sparsec.backends.tvm import custom_ops
        from sparsec.backends.tvm.lowering import INSTALL_FIX
        from sparsec.ir import meta as M
        from sparsec.ir import ops

        if node.op in _STRUCTURAL:
            return Supported()
        if node.op == "call_module" and node.target == "_guards_fn":
            return Supported("export's input guard, dropped by the import")
        if node.op != "call_function":
            return Unsupported(f"'{node.op}' nodes are not ATen ops")
        if self._ops is None:
            return Unsupported(f"TVM is not installed: {INSTALL_FIX}")
        key = getattr(node.target, "__name__", str(node.target))
        name = ops.op_name(node.target)
        kernels = {k.key: k for k in custom_ops.kernel_ops()}
        if key in kernels:
            return Supported(f"packed kernel {kernels[key].packed} (relax.call_dps_packed)")
        if self.target is not None and self.target.arch is not None:
            routed = _gpu_route(node)
            if routed is not None:
                return routed
        if node.target in self._fused:
            return Supported("tvm: decomposed to its ATen reference, then fused again by TVM")
        masked = ""
        weight = ops.args_of(node).get("weight") if (node.target in ops.CONV or node.target in ops.LINEAR) else None
        if isinstance(weight, fx.Node) and M.get(weight, M.Sparsity24) is not None:
            masked = "; 2:4 weight run as masked dense (no sparse kernel wired into TVM yet)"
        if key in self._ops:
            return Supported(f"tvm: Relax converter {key}{masked}")
        if node.target in self._decomposed:
            return Supported(f"tvm: torch decomposes {name} first (compile checks the parts){masked}")
        if getattr(node.target, "__module__", None) in ("_operator", "operator"):
            return Supported("symbolic size arithmetic")
        return Unsupported(f"{name}: no Relax converter in apache-tvm 0.27 and no torch decomposition")

    def pipeline(self, target: Target) -> str:
        """cpu-tvm: the default pipeline; GPU targets: the CUTLASS backend's (fold-bn, [sparsify-2-4,]
        fuse-epilogue, to-dtype, fuse-conv-pool, partition), whose fused ops its lowering takes. The
        conv+pool measurements that pipeline reads time sparsec's conv+pool kernel, which is not this
        backend's route, so here ``fuse-conv-pool`` runs without them and declines every site."""
        from sparsec.backends.cutlass.backend import CutlassBackend
        from sparsec.registry import registry

        if target.arch is None:
            return registry().get("pipeline", "default")
        return CutlassBackend().pipeline(target, conv_pool_measurements=False)

    # -- compiling ----------------------------------------------------------------------------
    def lower(self, mod, target: Target):
        import tvm_ffi

        from sparsec.backends.artifact import Lowered
        from sparsec.backends.tvm import custom_ops
        from sparsec.backends.tvm.lowering import LIBRARY, build, prepare, require_tvm, target_spec

        tvm = require_tvm()
        start = time.perf_counter()
        gpu = target.arch is not None
        kernels = lower_gemms(mod, target) if gpu else None
        imported = prepare(mod, packed_convs=gpu)
        work = tempfile.TemporaryDirectory(prefix="sparsec-tvm-")
        lib, info = build(imported, target, Path(work.name))
        fat = check_library(lib, target)
        params = Path(work.name) / PARAMS
        torch.save({"names": list(imported.param_names), "tensors": [p.cpu() for p in imported.params]}, params)
        used = {n.target.__name__ for n in mod.graph.nodes if n.op == "call_function" and hasattr(n.target, "__name__")}
        providers = {k.provider for k in custom_ops.kernel_ops() if k.key in used}
        if gpu and any(n.target is torch.ops.aten.convolution.default for n in imported.ep.graph.nodes):
            providers.add(custom_ops.CONV_PROVIDER)
        section = {
            "tvm": {
                "version": tvm.__version__,
                "ffi_version": tvm_ffi.__version__,
                "target": target_spec(target),
                "device": "cpu" if target.arch is None else "cuda",
                "library": LIBRARY,
                "params": PARAMS,
                "param_names": list(imported.param_names),
                "num_inputs": imported.num_inputs,
                "single_output": imported.single_output,
                "fatbin": fat,
                "dlight_fallbacks": info.get("dlight_fallbacks", []),
                "kernel_providers": sorted(providers),
                "build_seconds": round(time.perf_counter() - start, 2),
            }
        }
        files = {LIBRARY: lib, PARAMS: params}
        if kernels is not None:  # the CUTLASS lowering's kernel table and tuning DB, and its section
            files.update(kernels.files)
            section["cutlass"] = kernels.section
        return Lowered(module=mod, backend=self.name, files=files, section=section, store_program=False,
                       workdir=(work, kernels.workdir if kernels is not None else None))

    # -- loading ------------------------------------------------------------------------------
    def check_loadable(self, summary: dict) -> None:
        arch = summary.get("arch")
        if arch is None:
            if platform.machine() not in ("x86_64", "AMD64"):
                raise ArtifactError(f"target '{summary.get('name')}' was built for x86-64 (llvm), not {platform.machine()}",
                                    fix="compile it again on this machine")
            return
        if not torch.cuda.is_available():
            raise ArtifactError(
                f"target '{summary.get('name')}' runs on an NVIDIA GPU ({arch}), and torch sees no CUDA device here",
                fix="load it on a machine with that GPU, or compile for cpu-tvm",
            )
        have = torch.cuda.get_device_capability()
        digits = arch[3:].rstrip("a")  # sm_90a -> "90" -> (9, 0); an "a" arch runs on that exact GPU only
        want = (int(digits[:-1]), int(digits[-1]))
        ok = have == want if arch.endswith("a") else (have[0] == want[0] and have[1] >= want[1])
        if not ok:
            raise ArtifactError(
                f"target '{summary.get('name')}' holds {arch} code, which this GPU (sm_{have[0]}{have[1]}) cannot run",
                expected=arch, actual=f"sm_{have[0]}{have[1]} ({torch.cuda.get_device_name()})",
                fix="compile for this GPU's target (sparsec targets)",
            )

    def load_artifact(self, path: Path, manifest: dict):
        from sparsec.backends.tvm.runtime import TvmModule
        from sparsec.ir.meta import parse_dtype

        sec = manifest["payload"]["tvm"]
        kernels = manifest["payload"].get("cutlass", {}).get("kernels", [])
        if kernels:  # build (kernel cache miss) or load the CUTLASS kernels before the first call
            from sparsec._builtins import load_op_libraries
            from sparsec.backends.cutlass import runtime
            from sparsec.backends.cutlass.config import KernelConfig

            load_op_libraries()
            runtime.preload([KernelConfig.from_name(n) for n in kernels])
        saved = torch.load(str(path / sec["params"]), map_location="cpu", weights_only=True)
        if saved.get("names") != sec["param_names"]:
            raise ArtifactError(f"the weights in '{path / sec['params']}' are not the ones the library takes",
                                where=str(path), fix="compile the model again")
        inputs = [_Input(tuple(t["shape"]), parse_dtype(t["dtype"])) for t in manifest["inputs"]["tensors"]]
        return TvmModule(path / sec["library"], saved["tensors"], device=sec["device"], inputs=inputs,
                         single_output=sec["single_output"], providers=sec.get("kernel_providers", ()),
                         artifact=path)


def lower_gemms(mod, target: Target):
    """The CUTLASS half of a GPU tvm target: its lowering, on the nodes the CUTLASS backend takes.

    Every node ``CutlassBackend.support`` accepts (fp16/bf16 linears and convs its kernels run;
    kxk convs stay out unless ``SPARSEC_CUTLASS_KXK`` says otherwise) is assigned to ``cutlass`` and
    rewritten by ``CutlassBackend.lower`` into ``sparsec::gemm24`` / ``gemm_dense`` calls, in place.
    Returns that backend's ``Lowered`` (``kernels.json``, ``tuning.json`` and its manifest section).
    Needs torch only (no TVM): the GPU host rebuilds stripped weights with it.
    """
    from sparsec.backends.cutlass.backend import CutlassBackend
    from sparsec.ir import meta as M

    from sparsec.backends.cutlass import lowering

    cutlass = CutlassBackend()
    for node in mod.graph.nodes:  # GEMMs only: the depthwise kernels are not packed functions of the TVM VM
        if node.op == "call_function" and cutlass.kernel_support(node) and isinstance(lowering.plan(node), lowering.GemmPlan):
            M.put(node, M.BackendAssignment(cutlass.name))
    with knobs.scope(cutlass_pdl=False):  # PDL launches have not been run through TVM's VM: the plain ones
        return cutlass.lower(mod, target)


def _gpu_route(node: fx.Node) -> Supported | None:
    """Where a GEMM/conv of a GPU tvm target runs: a CUTLASS kernel, or cuDNN through sparsec.conv2d."""
    from sparsec.backends.cutlass import lowering
    from sparsec.backends.cutlass.backend import CutlassBackend
    from sparsec.ir import ops
    from sparsec.passes.fusion import ops as F

    verdict = CutlassBackend().kernel_support(node)  # its cuDNN notes are the cutlass backend's route, not this one's
    p = lowering.plan(node) if verdict else None
    if isinstance(p, lowering.GemmPlan):
        return Supported(f"cutlass: sparsec.gemm24/gemm_dense kernel ({p.kind}), relax.call_dps_packed")
    if node.target in ops.CONV or node.target in (F.fused_conv2d, F.conv2d_pool):
        epi = "epilogue, pooling" if node.target in (F.fused_conv2d, F.conv2d_pool) else "bias"
        why = verdict.reason if not verdict else f"sparsec's {p.kind} kernel is not a packed function of the TVM VM"
        return Supported(f"cudnn: packed sparsec.conv2d, {epi} TVM-generated; not CUTLASS: {why}")
    return None


class _Input(NamedTuple):
    """One compiled input: the library takes exactly this shape and dtype."""

    shape: tuple
    dtype: torch.dtype


def check_library(lib: Path, target: Target) -> dict | None:
    """Refuse a CUDA library holding CUDA source or no cubin for the target's arch; its fatbin summary."""
    from sparsec.backends.tvm import fatbin

    if target.arch is None:
        return None
    report = fatbin.scan(Path(lib).read_bytes())
    why = fatbin.problems(report, target.arch)
    if why:
        raise ArtifactError(
            f"refusing to write the {target.name} artifact: the TVM library {' and '.join(why)}",
            where=str(lib), expected=f"fatbins with {target.arch} cubins and no CUDA source",
            actual=f"cubins for {', '.join(report.archs) or 'no arch'}; CUDA source {'present' if report.cuda_source else 'absent'}",
            fix="the build must run with the stub libcuda.so.1 on LD_LIBRARY_PATH and TVM_CUDA_COMPILE_MODE=nvcc "
                "(sparsec does this itself); check that nvcc supports the arch",
        )
    return report.summary()
