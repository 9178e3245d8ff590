"""Lowering a sparsec ``ir.Module`` to TVM Relax, and building it into one exported library.

Steps (:func:`prepare`, then :func:`build`):

1. Re-export the transformed graph (``Module.export``, its buffers -- the
   CUTLASS lowering's packed weights among them -- made parameters so they
   stay out of the library) and run torch's decompositions on it, with
   sparsec's fused ops (``sparsec::fused_conv2d`` and friends) decomposed
   to their ATen references (:mod:`.custom_ops`).
2. Check every op against the Relax importer's converters (and the custom
   ones): an op Relax cannot import fails *here*, naming the op and the node,
   instead of deep inside TVM.
3. ``from_exported_program(..., keep_params_as_input=True)``: the weights stay
   function parameters, so they are stored beside the library, not in it.
4. ``tvm.compile`` inside ``with target:`` (the default pipeline, which
   applies dlight's GPU schedules for CUDA), then ``export_library``.

Steps 3 and 4 of a CUDA build run in a subprocess (:mod:`._build_worker`,
fed the decomposed program through ``torch.export.save``) with the stub
``libcuda.so.1`` first on ``LD_LIBRARY_PATH`` and ``TVM_CUDA_COMPILE_MODE=nvcc``:
the driver library must be loadable when TVM starts, or TVM silently embeds
CUDA source instead of a fatbin. :mod:`.fatbin` checks the result.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from sparsec.backends.tvm.runtime import first_line
from sparsec.errors import BuildError, TargetError, node_location

log = logging.getLogger("sparsec.backends.tvm")

INSTALL_FIX = "install TVM: pip install 'sparsec[tvm]' (the apache-tvm 0.27 wheel, Linux x86-64)"
LIBRARY = "model.so"


def require_tvm():
    """Import TVM's compiler, or raise a TargetError that says how to install it."""
    try:
        import tvm
        from tvm import relax  # noqa: F401
        from tvm.relax.frontend.torch import from_exported_program  # noqa: F401
    except (ImportError, OSError) as exc:
        raise TargetError(
            "the tvm backend needs Apache TVM, which is not installed (or does not load) here",
            where="import tvm", actual=f"{type(exc).__name__}: {exc}", fix=INSTALL_FIX,
        ) from exc
    return tvm


def target_spec(target) -> dict[str, Any]:
    """The TVM target of a sparsec Target, in 0.27's dict form."""
    if target.arch is None:
        return {"kind": "llvm"}
    return {"kind": "cuda", "arch": target.arch}


@dataclasses.dataclass(frozen=True)
class Prepared:
    """The decomposed program TVM will import, and what the runtime needs to call the result."""

    ep: torch.export.ExportedProgram
    param_names: tuple[str, ...]  # in the order ``main`` takes them, after the user inputs
    params: tuple[torch.Tensor, ...]
    num_inputs: int
    single_output: bool  # the model returns one tensor, not a tuple
    packed_convs: bool = False  # 2-D convs as sparsec.conv2d packed calls (GPU targets), not Relax conv2d


def supported_ops() -> frozenset[str]:
    """The ``OpOverload.__name__`` s (``conv2d.default``) the Relax importer converts, plus sparsec's."""
    require_tvm()
    from tvm.relax.frontend.torch.exported_program_translator import ExportedProgramImporter

    from sparsec.backends.tvm.custom_ops import custom_convert_map

    return frozenset(ExportedProgramImporter().convert_map) | frozenset(custom_convert_map())


def decomposed(ep: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """``ep`` after torch's default decompositions and sparsec's (fused ops to their ATen references)."""
    from sparsec.backends.tvm.custom_ops import decompositions

    table = torch.export.default_decompositions()
    table.update(decompositions())
    return ep.run_decompositions(table)


def unsupported_nodes(ep: torch.export.ExportedProgram, known: frozenset[str]) -> list[torch.fx.Node]:
    return [n for n in ep.graph.nodes if n.op == "call_function" and _key(n.target) not in known]


def _key(target) -> str:
    return getattr(target, "__name__", str(target))


def exported(mod) -> torch.export.ExportedProgram:
    """``mod`` re-exported and decomposed for the importer, every buffer made a parameter.

    The importer binds buffers into the library as constants and keeps only parameters as
    inputs (``keep_params_as_input``); the packed CUTLASS weights are buffers. A parameter keeps
    its buffer's dotted name, so ``named_buffers()`` of the lowered module finds it again.
    """
    tensors = [*mod.gm.parameters(), *mod.gm.buffers()]
    gm = copy.deepcopy(mod.gm, memo={id(t): t for t in tensors})  # new modules, the same tensors
    for name, buf in list(gm.named_buffers()):
        *path, leaf = name.split(".")
        owner = gm.get_submodule(".".join(path))
        del owner._buffers[leaf]
        owner.register_parameter(leaf, torch.nn.Parameter(buf, requires_grad=False))
    return decomposed(type(mod)(gm, mod.example_inputs, name=mod.name, dynamic_shapes=mod.dynamic_shapes).export())


def weights(ep: torch.export.ExportedProgram) -> dict[str, torch.Tensor]:
    """The parameters ``main`` takes after the user inputs, by name, in that order."""
    return {name: ep.state_dict[name].detach().contiguous() for name, _ in ep.named_parameters()}


def prepare(mod, packed_convs: bool = False) -> Prepared:
    """Re-export and decompose ``mod``; a TargetError naming every op Relax cannot import."""
    ep = exported(mod)
    bad = unsupported_nodes(ep, supported_ops())
    if bad:
        ops = sorted({_op_text(n.target) for n in bad})
        raise TargetError(
            f"TVM's Relax importer cannot take {', '.join(ops)}",
            where=node_location(bad[0]) + (f" (and {len(bad) - 1} more nodes)" if len(bad) > 1 else ""),
            expected="ops with a converter in tvm.relax.frontend.torch (apache-tvm 0.27), after torch's decompositions",
            actual=", ".join(f"{n.name}: {_op_text(n.target)}" for n in bad[:8]),
            fix="compile for a target whose backend runs this op (sparsec targets), or rewrite the model "
                "without it; `sparsec inspect SPEC --target cpu-tvm` shows every node's verdict",
        )
    params = weights(ep)
    user = [s for s in ep.graph_signature.input_specs if s.kind == torch.export.graph_signature.InputKind.USER_INPUT]
    out_spec = ep.call_spec.out_spec
    single = out_spec is not None and out_spec.num_leaves == 1 and out_spec.num_children == 0
    return Prepared(ep, tuple(params), tuple(params.values()), len(user), single, packed_convs)


def import_and_build(ep: torch.export.ExportedProgram, spec: dict, out: Path, packed_convs: bool = False) -> dict:
    """Relax import (weights kept as parameters), ``tvm.compile`` under ``with target:``, export.

    Runs in this process for llvm and in the build worker for CUDA. Returns
    what the caller checks: the number of user inputs and the parameter shapes.
    """
    tvm = require_tvm()
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program

    from sparsec.backends.tvm.custom_ops import custom_convert_map

    try:
        rmod = from_exported_program(ep, keep_params_as_input=True, run_ep_decomposition=False,
                                     custom_convert_map=custom_convert_map(packed_convs))
    except Exception as exc:
        raise TargetError(
            "TVM's Relax importer failed on the transformed graph",
            actual=f"{type(exc).__name__}: {first_line(exc)}",
            fix="run `sparsec inspect SPEC --target cpu-tvm` to see which nodes TVM takes, and report this",
        ) from exc
    rmod, detached = relax.frontend.detach_params(rmod)
    tgt = tvm.target.Target(spec)
    fallbacks: list[str] = []
    with tgt:
        pipeline = cuda_pipeline(tgt, fallbacks) if spec["kind"] == "cuda" else "default"
        executable = tvm.compile(rmod, tgt, relax_pipeline=pipeline)
    executable.export_library(str(out))
    return {
        "num_inputs": int(rmod["main"].attrs["num_input"]),
        "param_shapes": [[int(d) for d in p.shape] for p in detached.get("main", [])],
        "dlight_fallbacks": fallbacks,
    }


def cuda_pipeline(tgt, fallbacks: list[str]):
    """TVM's default CUDA pipeline, except that a dlight rule that *fails* passes to the next rule.

    In apache-tvm 0.27, ``dl.gpu.Matmul`` raises (``AssertionError: There are
    some consumers of the cache-write stage that are not properly inlined``)
    on some fused conv epilogues, EfficientNet-B0's among them, which aborts
    the whole build. Here such a function goes on to GEMV, Reduction,
    GeneralReduction and Fallback, the order TVM itself uses; each failure is
    noted in ``fallbacks`` (the manifest records them).
    """
    import tvm
    from tvm.relax.backend.cuda import pipeline as cuda
    from tvm.s_tir import dlight as dl

    class FallThrough(dl.ScheduleRule):
        def __init__(self, rule) -> None:
            self.rule = rule

        def apply(self, func, target, tunable):
            try:
                return self.rule.apply(func, target, tunable)
            except Exception as exc:  # noqa: BLE001 - any failure of a schedule rule means "not applicable"
                fallbacks.append(f"{type(self.rule).__name__} failed on a fused function ({first_line(exc)[:120]})")
                log.info("dlight %s failed on a function; trying the next rule", type(self.rule).__name__)
                return None

    legalize = cuda.legalize_passes(tgt)
    legalize[-1] = dl.ApplyDefaultSchedule(*(FallThrough(r) for r in (
        dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback())))
    passes = cuda.library_dispatch_passes(tgt) + legalize + cuda.dataflow_lower_passes(tgt) + cuda.finalize_passes(tgt)

    @tvm.transform.module_pass(opt_level=0, name="SparsecCUDAPipeline")
    def _pipeline(mod, _ctx):
        with tgt:
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline


def _op_text(target) -> str:
    from sparsec.ir.ops import op_name

    try:
        name = op_name(target)
    except Exception:  # an odd callable: its name is enough for a message
        return _key(target)
    overload = getattr(target, "_overloadname", None)
    return f"{name}.{overload}" if overload and not name.endswith(f".{overload}") else name


# -- building ------------------------------------------------------------------------------


def build(prepared: Prepared, target, out_dir: Path) -> tuple[Path, dict]:
    """Build ``prepared`` for ``target`` into ``out_dir/model.so``; check the weights line up.

    Returns the library and the build's notes (``dlight_fallbacks``).
    """
    spec = target_spec(target)
    out = Path(out_dir) / LIBRARY
    if spec["kind"] == "llvm":
        info = import_and_build(prepared.ep, spec, out, prepared.packed_convs)
    else:
        info = _build_cuda(prepared.ep, spec, out, prepared.packed_convs)
    shapes = [list(p.shape) for p in prepared.params]
    if info["num_inputs"] != prepared.num_inputs or info["param_shapes"] != shapes:
        raise TargetError(
            "the library TVM built takes other parameters than the exported program has",
            expected=f"{prepared.num_inputs} inputs, then {len(shapes)} weights in named_parameters() order",
            actual=f"{info['num_inputs']} inputs, then {len(info['param_shapes'])} weights",
            fix="report this: the Relax importer's parameter order changed",
        )
    return out, info


def _build_cuda(ep: torch.export.ExportedProgram, spec: dict, out: Path, packed_convs: bool) -> dict:
    from sparsec import knobs
    from sparsec.backends.tvm.custom_ops import kernel_ops
    from sparsec.backends.tvm.stub import stub_dir

    work = out.parent
    program, request, reply = work / "decomposed.pt2", work / "request.json", work / "reply.json"
    torch.export.save(ep, str(program))
    request.write_text(json.dumps({
        "program": str(program), "target": spec, "out": str(out), "reply": str(reply),
        "kernel_ops": [dataclasses.asdict(k) for k in kernel_ops()], "packed_convs": packed_convs,
    }))
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(stub_dir()), env.get("LD_LIBRARY_PATH", "")) if p)
    env["TVM_CUDA_COMPILE_MODE"] = "nvcc"
    nvcc = knobs.get("nvcc")
    if nvcc:
        env["PATH"] = os.pathsep.join((str(Path(nvcc).parent), env.get("PATH", "")))
    cmd = [sys.executable, "-m", "sparsec.backends.tvm._build_worker", str(request)]
    log.info("building the CUDA module in a subprocess: %s", " ".join(cmd))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    program.unlink(missing_ok=True)
    info = json.loads(reply.read_text()) if reply.is_file() else {}
    if "error" in info:  # a SparsecError or a TVM pass failure, reported by the worker
        raise TargetError(**info["error"])
    if proc.returncode != 0 or not out.is_file():
        raise BuildError(
            f"TVM's CUDA build for {spec['arch']} failed",
            where="sparsec.backends.tvm._build_worker (a subprocess with the stub libcuda)",
            actual=(proc.stderr or proc.stdout).strip()[-3000:] or f"exit code {proc.returncode}",
            fix="check that nvcc (CUDA 12.x or 13) is on PATH or set SPARSEC_NVCC; rerun with --debug",
        )
    return info
