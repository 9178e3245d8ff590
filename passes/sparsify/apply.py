"""The ``sparsify-2-4`` pass: 2:4 masks on the conv and linear weights the cost model picks."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import ClassVar, Literal

import torch

from sparsec.errors import PassFailedError, PipelineError
from sparsec.ir import meta as M
from sparsec.passes.base import Pass, PassResult
from sparsec.passes.sparsify import costmodel as C
from sparsec.passes.sparsify.layers import Decision, Limits, Settings, decide
from sparsec.passes.sparsify.mask import apply_mask, magnitude_mask, retained_fraction

log = logging.getLogger("sparsec.passes.sparsify")

_LIMIT_OPTIONS = ("k_multiple", "m_multiple", "min_k", "min_m")
_KERNEL_DTYPES = {torch.float16: "fp16", torch.bfloat16: "bf16"}


@dataclasses.dataclass(frozen=True)
class Sparsify24(Pass):
    """Make conv and linear weights 2:4 sparse where the target's sparse kernels win.

    Every conv and linear is a GEMM ``Y[N, Cout] = X[N, K] . W^T`` (M = Cout,
    K = kh*kw*Cin, N = tokens); the 2:4 groups run along Cin inside each
    (kh, kw) tap, the order an NHWC implicit GEMM reads K. A layer goes
    sparse when it is eligible (a parameter weight, not depthwise, grouped
    or transposed, Cin a multiple of 4, the target's ``sparse[dtype]`` shape
    limits or the ``k-multiple``/``m-multiple``/``min-k``/``min-m`` options)
    and the cost model agrees (``dtype``: the kernels' dtype for the limits
    and the tuning DB; by default the layers' own if fp16/bf16, else fp16):

    - ``measured``: the tuned sparse kernel beats the tuned dense one on that
      (M, K, dtype), at the nearest measured N (``tuning-db=FILE``, else
      ``sparsec tune``'s ``<cache dir>/tuning/<arch>.json``, else the DB the
      CUTLASS backend ships for the target's arch);
    - ``shape``: the shape limits alone (on a target without 2:4 kernels,
      such as ``cpu``, the limits come from the options: study masked
      accuracy on the CPU);
    - ``off``: every layer that can hold a 2:4 pattern.

    The mask keeps the 2 largest |w| of every 4 (``mask=magnitude``) and is
    applied to the weight in the graph, so the model computes the masked
    weights (numerics change by design). With ``permute=true`` a greedy
    channel-swap search (Pool & Yu, 2021; seeded, bounded) first reorders
    the input channels to keep more magnitude and folds the order into the
    producers through the channel groups, which leaves the function
    unchanged. ``layers=`` takes fnmatch patterns over module paths and node
    names; ``!pattern`` excludes. Sparse weights get ``sparsec.sparsity``
    (retained magnitude, permutation gain, the reason); layers that stay
    dense get ``sparsec.dense24`` with the reason.

    Example: sparsec opt m.pt2 --pipeline 'fold-bn,sparsify-2-4{cost-model=shape,min-k=64,permute=true}'
    """

    name: ClassVar[str] = "sparsify-2-4"
    summary: ClassVar[str] = "2:4-mask the conv/linear weights where the sparse kernels win (cost model)"
    changes_numerics: ClassVar[bool] = True
    idempotent: ClassVar[bool] = True

    mask: Literal["magnitude"] = "magnitude"
    permute: bool = False
    dtype: Literal["fp16", "bf16"] | None = None
    cost_model: Literal["measured", "shape", "off"] = "measured"
    tuning_db: str | None = None
    target: str | None = None
    layers: tuple[str, ...] = ()
    min_k: int | None = None
    min_m: int | None = None
    k_multiple: int | None = None
    m_multiple: int | None = None
    seed: int = 0

    def validate(self) -> None:
        def bad(option: str, expected: str, fix: str | None = None) -> PipelineError:
            return PipelineError(f"option '{option.replace('_', '-')}' of pass '{self.name}' has a bad value",
                                 expected=expected, actual=repr(getattr(self, option)), fix=fix)

        for opt in ("min_k", "min_m"):
            if getattr(self, opt) is not None and getattr(self, opt) < 0:
                raise bad(opt, "an integer >= 0")
        for opt in ("k_multiple", "m_multiple"):
            if getattr(self, opt) is not None and getattr(self, opt) < 1:
                raise bad(opt, "an integer >= 1")
        if self.k_multiple is not None and self.k_multiple % 4:
            raise bad("k_multiple", "a multiple of 4 (K is cut into groups of 4)")
        for pattern in self.layers:
            if not pattern.lstrip("!"):
                raise bad("layers", "fnmatch patterns such as [layer1.*,!fc]")
        if self.cost_model == "off":
            given = [o.replace("_", "-") for o in _LIMIT_OPTIONS if getattr(self, o) is not None]
            if given:
                raise PipelineError(f"option '{given[0]}' of pass '{self.name}' has no effect with cost-model=off",
                                    fix="drop it, or use cost-model=shape to apply shape limits")
        if self.target is not None:
            from sparsec.registry import registry

            registry().get("target", self.target)  # an unknown name fails when the pipeline is parsed
        if self.tuning_db is not None:
            if self.cost_model != "measured":
                raise PipelineError(f"option 'tuning-db' of pass '{self.name}' is read only by cost-model=measured",
                                    actual=f"cost-model={self.cost_model}", fix="drop tuning-db, or use cost-model=measured")
            if not Path(self.tuning_db).is_file():
                raise C.missing_db(self.tuning_db)

    # -- settings and decisions -----------------------------------------------------------
    def resolve_target(self, ctx_target=None):
        """The target to decide for: the ``target`` option, else the compile's target (may be None)."""
        if self.target is None:
            return ctx_target
        from sparsec.api import resolve_target

        t = resolve_target(self.target)
        if ctx_target is not None and ctx_target.name != t.name:
            raise PassFailedError(
                f"pass '{self.name}' names target '{t.name}', but the pipeline is compiled for '{ctx_target.name}'",
                fix="drop the target= option: inside `sparsec compile` the pass decides for the compile's target",
            )
        return t

    def kernel_dtype(self, mod=None) -> str:
        """The dtype the sparse kernels run in: the ``dtype`` option, else the layers' own
        (fp16 or bf16, after ``to-dtype``), else fp16."""
        if self.dtype is not None:
            return self.dtype
        if mod is not None:
            from sparsec.ir import ops
            from sparsec.passes.sparsify.layers import candidates

            for node in candidates(mod):
                w = ops.args_of(node)["weight"]
                val = w.meta.get("val") if hasattr(w, "meta") else None
                if val is not None and val.dtype in _KERNEL_DTYPES:
                    return _KERNEL_DTYPES[val.dtype]
        return "fp16"

    def settings(self, target, mod=None, db: C.TuningDB | None = None) -> Settings:
        """What the decisions depend on. ``db`` stands in for the tuning DB the measured cost model would
        load (``sparsec tune --model`` gives one that records the shapes looked up)."""
        dtype = self.kernel_dtype(mod)
        limits = self._limits(target, dtype)
        if self.cost_model != "measured":
            return Settings(self.cost_model, dtype, limits, None, self.layers)
        if target is None or not target.sparse:
            raise PassFailedError(
                "cost-model=measured needs a target with 2:4 kernels to have measured",
                actual=f"target '{target.name}' has none" if target is not None else "no target (sparsec opt)",
                fix="compile for a100-sparse or h100-sparse, add target=h100-sparse to the pass, or decide "
                "without timings with cost-model=shape (limits from min-k=, k-multiple=, ...) or cost-model=off",
            )
        if db is None:
            db = C.TuningDB.load(self.tuning_db) if self.tuning_db else C.default_db(target.arch)
            if db is None:
                raise PassFailedError(
                    f"no tuning DB for {target.arch}: cost-model=measured has nothing to compare",
                    actual=C.default_db_names(target.arch),
                    fix="measure one with `sparsec tune` on the GPU and pass tuning-db=FILE, "
                    "or decide by the target's shape limits alone with cost-model=shape",
                )
            if db.arch != target.arch:
                raise PassFailedError(
                    f"tuning DB '{db.source}' was measured on {db.arch}, not on target '{target.name}' ({target.arch})",
                    fix=f"use the DB tuned for {target.arch} (`sparsec tune` on that GPU)",
                )
        return Settings(self.cost_model, dtype, limits, db, self.layers)

    def _limits(self, target, dtype: str) -> Limits | None:
        if self.cost_model == "off":
            return None
        given = {o: getattr(self, o) for o in _LIMIT_OPTIONS if getattr(self, o) is not None}
        if target is not None and target.sparse:
            if dtype not in target.sparse:
                raise PassFailedError(
                    f"target '{target.name}' has no 2:4 kernels for {dtype}",
                    fix=f"use dtype= one of {', '.join(target.sparse)}",
                )
            t = target.sparse[dtype]
            base = {"k_multiple": t.k_multiple, "m_multiple": t.n_multiple, "min_k": t.min_k, "min_m": t.min_n}
            source = f"{target.name} {dtype}" + (" with pass options" if given else "")
        else:
            base = {"k_multiple": 4, "m_multiple": 1, "min_k": 0, "min_m": 0}
            source = "pass options"
        return Limits(**{**base, **given}, source=source)

    def decide(self, mod, target=None) -> list[Decision]:
        """What the pass would do to each conv/linear of ``mod`` for ``target``, without changing it."""
        return decide(mod, self.settings(self.resolve_target(target), mod))

    # -- the pass --------------------------------------------------------------------------
    def run(self, mod, ctx) -> PassResult:
        decisions = self.decide(mod, getattr(ctx, "target", None))
        todo = [d for d in decisions if d.sparse and not d.already]
        stats: dict[str, int | float] = {
            "layers": len(decisions),
            "sparse": sum(d.sparse for d in decisions),
            "dense": sum(not d.sparse for d in decisions),
        }
        if any(d.already for d in decisions):
            stats["already_24"] = sum(d.already for d in decisions)
        modified = False
        before: dict[str, float] = {}
        if self.permute and todo:
            from sparsec.passes.sparsify.permute import permute_for_24

            before = {d.target: retained_fraction(w, magnitude_mask(w)) for d in todo
                      for w in [mod.get_param(d.target)]}
            results = permute_for_24(mod, [d.target for d in todo], self.seed)
            stats["permute_groups"] = sum(not r.skipped for r in results)
            stats["permute_groups_skipped"] = sum(bool(r.skipped) for r in results)
            stats["permute_swaps"] = sum(r.swaps for r in results)
            modified = stats["permute_swaps"] > 0
            for r in results:
                if r.skipped:
                    log.info("sparsify-2-4: group %s not permuted: %s", r.group, r.skipped)
        nodes = {n.name: n for n in mod.graph.nodes}
        kept_all = []
        for d in todo:
            masked, kept = apply_mask(mod.get_param(d.target))
            mod.set_param(d.target, masked)
            gain = kept - before[d.target] if d.target in before else None
            M.put(nodes[d.weight], M.Sparsity24(dim=1, retained=round(kept, 6),
                                                gain=None if gain is None else round(gain, 6), reason=d.reason))
            kept_all.append(kept)
            if gain is not None:
                stats[f"gain.{d.layer}"] = round(gain, 6)
            modified = True
        if kept_all:
            stats["retained_mean"] = round(sum(kept_all) / len(kept_all), 6)
        for d in decisions:
            if not d.sparse:
                mark = M.Dense24(d.reason)
                if M.get(nodes[d.node], M.Dense24) != mark:
                    M.put(nodes[d.node], mark)
                    modified = True
            elif M.get(nodes[d.node], M.Dense24) is not None:
                M.drop(nodes[d.node], M.Dense24)
                modified = True
        for d in decisions:
            log.info("sparsify-2-4: %s (%s): %s", d.layer, d.gemm, d)
        return PassResult(modified=modified, stats=stats)


class _Lookups(C.TuningDB):
    """An empty tuning DB that records every shape the measured cost model looks up."""

    def __init__(self, arch: str) -> None:
        super().__init__("<the shapes sparsec tune --model records>", arch, "", ())
        object.__setattr__(self, "shapes", [])

    def lookup(self, shape: C.GemmShape) -> None:
        self.shapes.append(shape)
        return None


def shapes_to_tune(mod, pipeline, target) -> list[C.GemmShape]:
    """The GEMM shapes the measured cost model of ``pipeline``'s ``sparsify-2-4`` would look up in the tuning
    DB when ``mod`` is compiled for ``target``: the passes before it run (on a clone) so the shapes are the
    compiled ones (pruned widths, the compile's batch and dtype), then the pass decides against an empty DB.
    ``sparsec tune --model`` measures exactly these, so a pruned model's layers are not left dense for want of
    a measurement."""
    from sparsec.passes.manager import PassContext, PassManager

    pm = pipeline if isinstance(pipeline, PassManager) else PassManager.parse(pipeline)
    at = next((i for i, p in enumerate(pm.passes) if isinstance(p, Sparsify24)), None)
    if at is None:
        raise PipelineError(f"pipeline '{pm}' has no {Sparsify24.name} pass: no layer would consult a tuning DB",
                            fix="give the pipeline you will compile with, or the default of a -sparse target")
    sp = pm.passes[at]
    if sp.cost_model != "measured":
        raise PipelineError(f"the pipeline's {Sparsify24.name} decides with cost-model={sp.cost_model}: "
                            "it reads no tuning DB", actual=str(sp), fix="use cost-model=measured (the default)")
    work = mod.clone()
    PassManager(pm.passes[:at]).run(work, PassContext(target=target))
    tgt = sp.resolve_target(target)
    db = _Lookups(tgt.arch if tgt is not None else "")
    decide(work, sp.settings(tgt, work, db=db))
    return list(dict.fromkeys(db.shapes))
