"""``PassContext`` and ``PassManager``.

For each pass the manager: skips it if disabled; computes the analyses it
``requires``; runs the before-instruments; runs the pass; recompiles and
refreshes shapes if it modified the module; verifies (unless
``ctx.verify_each`` is off); drops cached analyses the pass does not
``preserve``; runs the after-instruments. A failure raises
:class:`PipelineFailure` naming the pass, its index, the passes that already
ran and the full pipeline text, chained to the cause.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Iterable, Sequence

from sparsec import knobs
from sparsec.errors import PipelineError, PipelineFailure, SparsecError
from sparsec.passes.base import Pass, PassResult, type_accepts
from sparsec.passes.pipeline import format_pipeline, parse_pipeline

log = logging.getLogger("sparsec.passes")


@dataclasses.dataclass(frozen=True)
class ConfigKey:
    key: str
    type: type
    default: Any
    doc: str


CONFIG_KEYS: dict[str, ConfigKey] = {}


def register_config(key: str, type_: type, default: Any, doc: str) -> ConfigKey:
    """Declare a namespaced cross-cutting setting (``"namespace.name"``)."""
    if "." not in key:
        raise ValueError(f"config key {key!r} must be namespaced, like 'prune.round_to'")
    if key in CONFIG_KEYS and CONFIG_KEYS[key] != ConfigKey(key, type_, default, doc):
        raise ValueError(f"config key {key!r} registered twice")
    CONFIG_KEYS[key] = ConfigKey(key, type_, default, doc)
    return CONFIG_KEYS[key]


register_config("numerics.rtol", float, 1e-4, "relative tolerance of --check-numerics for exact passes")
register_config("numerics.seed", int, 0, "seed of the random inputs --check-numerics draws")


@dataclasses.dataclass
class PassContext:
    """What a pipeline run carries besides the module.

    ``disabled``: pass names to skip. ``config``: values for registered
    config keys. ``instruments``: before/after hooks. ``target``: the Target
    being compiled for, if any. ``verify_each``: run ``Module.verify()``
    after every pass (default from the ``SPARSEC_VERIFY_EACH`` knob).
    """

    disabled: frozenset[str] = frozenset()
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    instruments: list = dataclasses.field(default_factory=list)
    target: Any = None
    verify_each: bool = dataclasses.field(default_factory=lambda: knobs.get("verify_each"))

    def __post_init__(self) -> None:
        self.disabled = frozenset(self.disabled)
        for key, value in self.config.items():
            if key not in CONFIG_KEYS:
                raise PipelineError(f"unknown config key '{key}'", fix=f"known keys: {', '.join(sorted(CONFIG_KEYS))}")
            spec = CONFIG_KEYS[key]
            if not type_accepts(spec.type, value):  # an int is a float here; a bool is not an int
                raise PipelineError(
                    f"config key '{key}' has a bad value", expected=spec.type.__name__, actual=repr(value)
                )

    def get(self, key: str) -> Any:
        if key not in CONFIG_KEYS:
            raise KeyError(f"unknown config key {key!r}")
        return self.config.get(key, CONFIG_KEYS[key].default)


@dataclasses.dataclass(frozen=True)
class PassRecord:
    name: str
    text: str
    skipped: bool
    modified: bool
    seconds: float
    stats: dict


class PassManager:
    """An ordered list of passes with a text form that parses back."""

    def __init__(self, passes: Iterable[Pass] = ()) -> None:
        self.passes: list[Pass] = list(passes)
        for p in self.passes:
            if not isinstance(p, Pass):
                raise TypeError(f"{p!r} is not a Pass")

    @classmethod
    def parse(cls, text: str, reg=None) -> "PassManager":
        return cls(parse_pipeline(text, reg))

    def add(self, p: Pass) -> "PassManager":
        self.passes.append(p)
        return self

    def __str__(self) -> str:
        return format_pipeline(self.passes)

    def __repr__(self) -> str:
        return f"PassManager({str(self)!r})"

    def __len__(self) -> int:
        return len(self.passes)

    def run(self, mod, ctx: PassContext | None = None) -> list[PassRecord]:
        ctx = ctx or PassContext()
        records: list[PassRecord] = []
        text = str(self)
        for ins in ctx.instruments:
            ins.before_pipeline(mod, self, ctx)
        for i, p in enumerate(self.passes):
            if p.name in ctx.disabled:
                log.info("pass %s disabled", p.name)
                records.append(PassRecord(p.name, str(p), True, False, 0.0, {}))
                continue
            t0 = time.perf_counter()
            try:
                for analysis in p.requires:
                    mod.analysis(analysis)
                for ins in ctx.instruments:
                    ins.before_pass(p, mod, ctx, i)
                result = p.run(mod, ctx)
                if not isinstance(result, PassResult):
                    raise TypeError(f"pass '{p.name}' returned {type(result).__name__}, not PassResult")
                if result.modified:
                    mod.recompile()
                if ctx.verify_each:
                    mod.verify()
                if result.modified:
                    mod.invalidate(p.preserves)
                seconds = time.perf_counter() - t0
                rec = PassRecord(p.name, str(p), False, result.modified, seconds, dict(result.stats))
                # after-instruments may fail the pass too (--check-numerics): same report, same reproducer
                for ins in ctx.instruments:
                    ins.after_pass(p, mod, result, ctx, i)
            except Exception as exc:
                for ins in ctx.instruments:
                    try:
                        ins.after_failure(p, mod, exc, ctx, i)
                    except Exception as inner:  # an instrument must not hide the real failure
                        log.warning("instrument %s failed while reporting: %s", type(ins).__name__, inner)
                raise self._failure(p, i, records, text, exc, ctx) from exc
            records.append(rec)
        for ins in ctx.instruments:
            ins.after_pipeline(mod, records, ctx)
        return records

    def _failure(self, p: Pass, i: int, records, text: str, exc: Exception, ctx) -> PipelineFailure:
        ran = [r.text for r in records if not r.skipped]
        repro = next((ins.written_to for ins in ctx.instruments if getattr(ins, "written_to", None)), None)
        if isinstance(exc, SparsecError):
            cause = exc.what + (f" ({exc.where})" if exc.where else "")
            fix = exc.fix
        else:
            cause = f"internal error in the pass: {type(exc).__name__}: {exc}"
            fix = "this is a bug in the pass; please report it with the reproducer"
        if repro:
            fix = (fix + "; " if fix else "") + f"reproducer written to {repro} (run its repro.sh)"
        else:
            fix = (fix + "; " if fix else "") + "add --reproducer DIR to save the input and the command"
        return PipelineFailure(
            f"pass '{p.name}' (#{i + 1} of {len(self.passes)}) failed: {cause}",
            where=f"after [{', '.join(ran) or 'nothing'}] in pipeline '{text}'",
            expected=getattr(exc, "expected", None),
            actual=getattr(exc, "actual", None),
            fix=fix,
        )


def run_pipeline(mod, pipeline: str | PassManager | Sequence[Pass], ctx: PassContext | None = None) -> list[PassRecord]:
    """Run a pipeline (text, PassManager or pass list) on ``mod`` in place."""
    pm = pipeline if isinstance(pipeline, PassManager) else (
        PassManager.parse(pipeline) if isinstance(pipeline, str) else PassManager(pipeline)
    )
    return pm.run(mod, ctx)
