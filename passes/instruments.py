"""Pass-manager instruments: hooks run around every pass.

Stock instruments, each behind a CLI flag of ``sparsec opt``/``compile``:

==========================  ==============================================
``TimePasses``              ``--time-passes``: wall time per pass
``PrintIR``                 ``--print-ir-before/after[-all|-change|-failure]``
``DumpIR``                  ``--dump-ir DIR``: one file per pass
``PassStatistics``          ``--pass-statistics``: each pass's counters
``CheckNumerics``           ``--check-numerics``: names the first pass that
                            changed outputs beyond tolerance
``Reproducer``              ``--reproducer DIR``: on failure, the input
                            program, the pipeline and the exact command
==========================  ==============================================

Instruments write to the stream they are given (the CLI passes stderr for
reports and stdout for IR, so IR can be piped).
"""

from __future__ import annotations

import copy
import logging
import shlex
import sys
from pathlib import Path
from typing import IO, Any

import torch

from sparsec.errors import SparsecError
from sparsec.ir.printer import print_module

log = logging.getLogger("sparsec.passes")


class Instrument:
    """Base class: override any hook; all default to doing nothing."""

    def before_pipeline(self, mod, pm, ctx) -> None: ...
    def before_pass(self, p, mod, ctx, index: int) -> None: ...
    def after_pass(self, p, mod, result, ctx, index: int) -> None: ...
    def after_failure(self, p, mod, exc: BaseException, ctx, index: int) -> None: ...
    def after_pipeline(self, mod, records, ctx) -> None: ...


class TimePasses(Instrument):
    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream
        self.times: list[tuple[str, float]] = []

    def after_pipeline(self, mod, records, ctx) -> None:
        self.times = [(r.text, r.seconds) for r in records if not r.skipped]
        if self.stream is not None:
            self.stream.write(self.report())

    def report(self) -> str:
        total = sum(t for _, t in self.times) or 1e-12
        lines = ["===-- Pass execution timing report --===", f"  total: {total:.4f} s"]
        for name, t in self.times:
            lines.append(f"  {t:9.4f} s  {100 * t / total:5.1f}%  {name}")
        return "\n".join(lines) + "\n"


class PrintIR(Instrument):
    """Print the module before and/or after passes.

    ``before``/``after`` are sets of pass names, or ``{"*"}`` for all.
    ``only_change`` prints after a pass only if it modified the module;
    ``on_failure`` prints the module as the failing pass left it.
    """

    def __init__(
        self,
        stream: IO[str] | None = None,
        *,
        before: frozenset[str] = frozenset(),
        after: frozenset[str] = frozenset(),
        only_change: bool = False,
        on_failure: bool = False,
    ) -> None:
        self.stream = stream or sys.stdout
        self.before, self.after = frozenset(before), frozenset(after)
        self.only_change, self.on_failure = only_change, on_failure

    @staticmethod
    def _wants(names: frozenset[str], p) -> bool:
        return "*" in names or p.name in names

    def _emit(self, title: str, mod) -> None:
        self.stream.write(f"// -----// IR Dump {title} //----- //\n{print_module(mod)}\n")

    def before_pass(self, p, mod, ctx, index) -> None:
        if self._wants(self.before, p):
            self._emit(f"Before {p}", mod)

    def after_pass(self, p, mod, result, ctx, index) -> None:
        if self._wants(self.after, p) and (result.modified or not self.only_change):
            self._emit(f"After {p}", mod)

    def after_failure(self, p, mod, exc, ctx, index) -> None:
        if self.on_failure:
            try:
                text = print_module(mod)
            except Exception as e:  # the graph may be too broken to print in full
                text = f"<unprintable: {e}>\n{mod.graph}"
            self.stream.write(f"// -----// IR Dump After {p} Failed //----- //\n{text}\n")


class DumpIR(Instrument):
    """Write the module after each pass to ``DIR/NN-pass-name.txt`` (00 is the input)."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)

    def before_pipeline(self, mod, pm, ctx) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SparsecError(f"cannot create the IR dump directory {self.dir}", actual=str(exc)) from exc
        (self.dir / "00-input.txt").write_text(print_module(mod))

    def after_pass(self, p, mod, result, ctx, index) -> None:
        (self.dir / f"{index + 1:02d}-{p.name}.txt").write_text(print_module(mod))


class PassStatistics(Instrument):
    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream
        self.stats: list[tuple[str, dict]] = []

    def after_pass(self, p, mod, result, ctx, index) -> None:
        self.stats.append((str(p), dict(result.stats)))

    def after_pipeline(self, mod, records, ctx) -> None:
        if self.stream is not None:
            self.stream.write(self.report())

    def report(self) -> str:
        lines = ["===-- Pass statistics --==="]
        for name, stats in self.stats:
            lines.append(f"  {name}")
            for k, v in sorted(stats.items()):
                lines.append(f"    {v:>10}  {k}")
        return "\n".join(lines) + "\n"


def random_like(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Fresh random data shaped like ``x``: normal floats, small non-zero ints."""
    if x.is_floating_point():
        return torch.randn(x.shape, generator=gen, dtype=torch.float32).to(x.dtype)
    if x.dtype == torch.bool:
        return torch.randint(0, 2, x.shape, generator=gen).bool()
    return torch.randint(1, 8, x.shape, generator=gen).to(x.dtype)


def max_rel_error(out: Any, ref: Any) -> float:
    """max |out - ref| / max(|ref|), in float64, over all output tensors."""
    outs = out if isinstance(out, (tuple, list)) else (out,)
    refs = ref if isinstance(ref, (tuple, list)) else (ref,)
    worst = 0.0
    for o, r in zip(outs, refs):
        if not isinstance(r, torch.Tensor):
            continue
        o64, r64 = o.detach().double(), r.detach().double()
        if o64.shape != r64.shape:
            return float("inf")
        scale = r64.abs().max().item() or 1.0
        worst = max(worst, (o64 - r64).abs().max().item() / scale)
    return worst


class NumericsError(SparsecError):
    pass


class CheckNumerics(Instrument):
    """Compare outputs after every pass against the input module's.

    Inputs are fresh random tensors (never zeros) shaped like the example
    inputs. A pass that declares ``changes_numerics`` is measured and then
    becomes the new reference; any other pass must stay within ``rtol``
    (relative to the largest output). With ``strict`` the first offender
    raises; otherwise it is recorded in ``first_offender``.
    """

    def __init__(self, rtol: float | None = None, *, strict: bool = True, seed: int | None = None, stream: IO[str] | None = None) -> None:
        self.rtol, self.strict, self.seed, self.stream = rtol, strict, seed, stream
        self.errors: list[tuple[str, float]] = []
        self.first_offender: str | None = None

    def before_pipeline(self, mod, pm, ctx) -> None:
        seed = self.seed if self.seed is not None else ctx.get("numerics.seed")
        self.rtol = self.rtol if self.rtol is not None else ctx.get("numerics.rtol")
        gen = torch.Generator().manual_seed(seed)
        self.inputs = tuple(random_like(x, gen) for x in mod.example_inputs)
        with torch.no_grad():
            self.ref = mod(*self.inputs)

    def after_pass(self, p, mod, result, ctx, index) -> None:
        if not result.modified:
            return
        inputs = tuple(i.to(x.dtype) for i, x in zip(self.inputs, mod.example_inputs))
        with torch.no_grad():
            out = mod(*inputs)
        err = max_rel_error(out, self.ref)
        self.errors.append((str(p), err))
        if self.stream is not None:
            self.stream.write(f"check-numerics: {p}: max rel error {err:.3e}{' (changes numerics)' if p.changes_numerics else ''}\n")
        if p.changes_numerics:
            self.ref = out
            return
        if err > self.rtol and self.first_offender is None:
            self.first_offender = str(p)
            if self.strict:
                raise NumericsError(
                    f"pass '{p.name}' changed the model's outputs",
                    expected=f"max relative error <= {self.rtol:g} (the pass does not declare changes_numerics)",
                    actual=f"{err:.3e} on random inputs (seed {self.seed if self.seed is not None else ctx.get('numerics.seed')})",
                    fix="this is a bug in the pass; report it with --reproducer DIR",
                )


class Reproducer(Instrument):
    """On failure, write the failing pass's input and a command that re-runs it.

    Snapshots the module before each pass (a deep copy), so it costs memory
    and time; it is opt-in (``--reproducer DIR``).
    """

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self.written_to: Path | None = None
        self._snapshot = None

    def before_pipeline(self, mod, pm, ctx) -> None:
        self.passes = list(pm.passes)

    def before_pass(self, p, mod, ctx, index) -> None:
        self._snapshot = (copy.deepcopy(mod.gm), mod.example_inputs, mod.dynamic_shapes, mod.name)

    def after_failure(self, p, mod, exc, ctx, index) -> None:
        if self._snapshot is None:
            return
        from sparsec.ir.module import Module
        from sparsec.passes.pipeline import format_pipeline

        gm, inputs, dyn, name = self._snapshot
        before = Module(gm, inputs, name=name, dynamic_shapes=dyn)
        self.dir.mkdir(parents=True, exist_ok=True)
        torch.export.save(before.export(), self.dir / "input.pt2")
        rest = format_pipeline(self.passes[index:])
        (self.dir / "pipeline.txt").write_text(rest + "\n")
        (self.dir / "error.txt").write_text(f"{type(exc).__name__}: {exc}\n")
        (self.dir / "input.ir.txt").write_text(print_module(before))
        cmd = f"sparsec opt {shlex.quote(str(self.dir / 'input.pt2'))} --pipeline {shlex.quote(rest)} --print-ir-after-failure --debug"
        script = self.dir / "repro.sh"
        script.write_text("#!/bin/sh\n# Re-runs the failing pass on the module it failed on.\n" + cmd + "\n")
        script.chmod(0o755)
        self.written_to = self.dir
        log.warning("reproducer written to %s", self.dir)
