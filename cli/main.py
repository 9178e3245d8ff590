"""The ``sparsec`` command line.

    sparsec compile SPEC -o out.sparsec --target cpu --input-shape 1,3,224,224
    sparsec run out.sparsec --input x.pt
    sparsec opt SPEC --pipeline canonicalize,fold-bn --print-ir-after-all
    sparsec inspect SPEC --format table|text|json|dot [--target NAME] [--show groups]
    sparsec profile --target h100 --model SPEC -o lut.json
    sparsec passes [NAME]
    sparsec targets

IR goes to stdout, so it can be piped; reports, progress and messages go to
stderr. Exit codes: 0 on success, 1 for any :class:`~sparsec.errors.SparsecError`
(and for internal errors), 2 for usage errors (click's, and sparsec's
``UsageError``/``PipelineError``/``RegistryError``).

Importing this module imports neither torch nor any backend: every heavy
import sits inside the command that needs it, so ``sparsec --help`` answers
at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator

import click

from sparsec import __version__, knobs
from sparsec.cli._io import check_output_path, write_atomic
from sparsec.cli._rich import RichGroup, console
from sparsec.errors import SparsecError, UsageError

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


# -- errors -----------------------------------------------------------------------


class ReportedError(click.ClickException):
    """A SparsecError (or an unexpected exception) on its way to the user.

    click's standalone mode calls :meth:`show` and exits with ``exit_code``:
    the error's own (2 for usage errors, else 1), and 1 for internal errors.
    The traceback is printed only under ``--debug``.
    """

    def __init__(self, exc: BaseException, *, debug: bool, internal: bool) -> None:
        super().__init__(str(exc))
        self.exc, self.debug, self.internal = exc, debug, internal
        self.exit_code = 1 if internal else int(getattr(exc, "exit_code", 1))

    def show(self, file: Any = None) -> None:
        from rich.text import Text

        if self.debug:
            traceback.print_exception(type(self.exc), self.exc, self.exc.__traceback__, file=sys.stderr)
        err = console(stderr=True)
        if self.internal:
            msg = Text(f"internal error: {type(self.exc).__name__}: {self.exc}", style="bold red")
            if not self.debug:
                msg.append("\n  this is a bug in sparsec; rerun with --debug for the full traceback", style="red")
        else:
            msg = Text("error: ", style="bold red")
            msg.append(str(self.exc), style="red")
        err.print(msg)


def _is_epipe(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno == errno.EPIPE


class SparsecGroup(RichGroup):
    """Turns every exception a command raises into a clean message and exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.Abort, click.ClickException):
            raise
        except SparsecError as exc:
            raise ReportedError(exc, debug=knobs.get("debug"), internal=False) from exc
        except Exception as exc:
            if _is_epipe(exc):  # `sparsec opt ... | head`: click quiets this itself
                raise
            raise ReportedError(exc, debug=knobs.get("debug"), internal=True) from exc


# -- logging ----------------------------------------------------------------------


class _StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at emit time (CliRunner swaps it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def _install_logging(ctx: click.Context) -> None:
    level = knobs.get("log_level")
    if level not in LOG_LEVELS:  # only the environment can get here: --log-level is a Choice
        raise UsageError(f"bad log level '{level}' in {knobs.KNOBS['log_level'].env}",
                         expected=", ".join(LOG_LEVELS), actual=level)
    logger = logging.getLogger("sparsec")
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("sparsec: %(levelname)s: %(message)s"))
    saved = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False

    def restore() -> None:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]

    ctx.call_on_close(restore)


# -- the group --------------------------------------------------------------------


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from importlib import metadata

    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = "not installed"
    click.echo(f"sparsec {__version__} (torch {torch_version}, python {sys.version.split()[0]})")
    ctx.exit()


@click.group(cls=SparsecGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors [env SPARSEC_DEBUG].")
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    help="Level of sparsec's log messages on stderr [env SPARSEC_LOG_LEVEL; default WARNING].",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where built kernels and tuning data are cached [env SPARSEC_CACHE_DIR].",
)
@click.option(
    "--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
    help="Show the version and exit.",
)
@click.pass_context
def cli(ctx: click.Context, debug: bool, log_level: str | None, cache_dir: Path | None) -> None:
    """sparsec: a sparsity compiler for PyTorch models.

    SPEC names a model: a torch.export program (model.pt2), a Python file
    and factory (net.py:build), a zoo entry (zoo:torchvision/resnet18), a
    state dict (weights.pt with --arch), or a pickled module (--trust-pickle).

    IR goes to stdout, so it can be piped; reports and messages to stderr.
    Exit codes: 0 success, 1 error, 2 usage error.
    """
    overrides: dict[str, Any] = {}
    if debug:
        overrides["debug"] = True
    if log_level:
        overrides["log_level"] = log_level.upper()
    if cache_dir is not None:
        overrides["cache_dir"] = cache_dir
    # Each flag sets its knob (knobs.set_override) for this invocation only.
    ctx.with_resource(knobs.scope(**overrides))
    _install_logging(ctx)


# -- shared option groups -----------------------------------------------------------


def _options(*decorators: Callable) -> Callable:
    def apply(f: Callable) -> Callable:
        for d in reversed(decorators):
            f = d(f)
        return f

    return apply


load_options = _options(
    click.option("--input-shape", metavar="N,C,H,W", help="Shape of the example input, e.g. 1,3,224,224."),
    click.option("--dtype", default=None, metavar="fp32|fp16|bf16",
                 help="Data type of the model and its input [default: a .pt2's own, else fp32]."),
    click.option("--trust-pickle", is_flag=True, help="Allow loading a pickled nn.Module (runs its code)."),
    click.option("--arch", metavar="zoo:torchvision/NAME", help="Architecture for a bare state_dict file."),
    click.option(
        "--tracer", type=click.Choice(["export", "symbolic"]), default="export", show_default=True,
        help="How to capture the graph: torch.export, or torch.fx.symbolic_trace then export.",
    ),
    click.option("--dynamic-batch", is_flag=True, help="Keep the batch dimension dynamic."),
)


@dataclasses.dataclass(frozen=True)
class LoadFlags:
    input_shape: str | None
    dtype: str
    trust_pickle: bool
    arch: str | None
    tracer: str
    dynamic_batch: bool

    @classmethod
    def pop(cls, kwargs: dict[str, Any]) -> "LoadFlags":
        return cls(**{f.name: kwargs.pop(f.name) for f in dataclasses.fields(cls)})

    def load(self, spec: str):
        from sparsec.ir.loader import load_model, parse_input_shape

        shape = parse_input_shape(self.input_shape) if self.input_shape else None
        with _status(f"loading {spec}"):
            return load_model(
                spec, input_shape=shape, dtype=self.dtype, trust_pickle=self.trust_pickle,
                arch=self.arch, tracer=self.tracer, dynamic_batch=self.dynamic_batch,
            )


instrument_options = _options(
    click.option("--time-passes", is_flag=True, help="Report each pass's wall time on stderr."),
    click.option("--print-ir-before", "print_ir_before", multiple=True, metavar="PASS",
                 help="Print the IR before PASS (repeatable)."),
    click.option("--print-ir-after", "print_ir_after", multiple=True, metavar="PASS",
                 help="Print the IR after PASS (repeatable)."),
    click.option("--print-ir-before-all", is_flag=True, help="Print the IR before every pass."),
    click.option("--print-ir-after-all", is_flag=True, help="Print the IR after every pass."),
    click.option("--print-ir-after-change", is_flag=True,
                 help="Print the IR after a pass only if it changed it (alone: after every changing pass)."),
    click.option("--print-ir-after-failure", is_flag=True, help="Print the IR as a failing pass left it."),
    click.option("--dump-ir", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
                 help="Write the IR after each pass to DIR/NN-pass.txt."),
    click.option("--pass-statistics", is_flag=True, help="Report each pass's counters on stderr."),
    click.option("--check-numerics", is_flag=True,
                 help="Check after each pass that outputs match the input model's on random inputs."),
    click.option("--reproducer", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
                 help="On failure, save the failing pass's input and a command that re-runs it to DIR."),
    click.option("--disable-pass", multiple=True, metavar="PASS", help="Skip PASS (repeatable)."),
    click.option("--no-verify", is_flag=True, help="Do not verify the IR after every pass."),
)


@dataclasses.dataclass(frozen=True)
class InstrumentFlags:
    time_passes: bool
    print_ir_before: tuple[str, ...]
    print_ir_after: tuple[str, ...]
    print_ir_before_all: bool
    print_ir_after_all: bool
    print_ir_after_change: bool
    print_ir_after_failure: bool
    dump_ir: Path | None
    pass_statistics: bool
    check_numerics: bool
    reproducer: Path | None
    disable_pass: tuple[str, ...]
    no_verify: bool

    @classmethod
    def pop(cls, kwargs: dict[str, Any]) -> "InstrumentFlags":
        return cls(**{f.name: kwargs.pop(f.name) for f in dataclasses.fields(cls)})

    @property
    def prints_ir(self) -> bool:
        return bool(
            self.print_ir_before or self.print_ir_after or self.print_ir_before_all
            or self.print_ir_after_all or self.print_ir_after_change or self.print_ir_after_failure
        )

    def check_names(self) -> None:
        """Every pass named by a flag must exist (close matches otherwise)."""
        from sparsec.registry import registry

        reg = registry()
        for flag, names in (
            ("--print-ir-before", self.print_ir_before),
            ("--print-ir-after", self.print_ir_after),
            ("--disable-pass", self.disable_pass),
        ):
            for name in names:
                try:
                    reg.get("pass", name)
                except SparsecError as exc:
                    raise type(exc)(exc.what, where=f"{flag} {name}", fix=exc.fix) from None

    def context(self):
        """A PassContext with the instruments these flags ask for."""
        from sparsec.passes import instruments as I
        from sparsec.passes.manager import PassContext

        self.check_names()
        ins: list = []
        if self.reproducer is not None:
            ins.append(I.Reproducer(self.reproducer))
        if self.check_numerics:
            ins.append(I.CheckNumerics(strict=True, stream=sys.stderr))
        before = {"*"} if self.print_ir_before_all else set(self.print_ir_before)
        after = {"*"} if self.print_ir_after_all else set(self.print_ir_after)
        if self.print_ir_after_change and not after:
            after = {"*"}
        if before or after or self.print_ir_after_failure:
            ins.append(I.PrintIR(
                sys.stdout, before=frozenset(before), after=frozenset(after),
                only_change=self.print_ir_after_change, on_failure=self.print_ir_after_failure,
            ))
        if self.dump_ir is not None:
            ins.append(I.DumpIR(self.dump_ir))
        if self.pass_statistics:
            ins.append(I.PassStatistics(sys.stderr))
        if self.time_passes:
            ins.append(I.TimePasses(sys.stderr))
        extra: dict[str, Any] = {"verify_each": False} if self.no_verify else {}
        return PassContext(disabled=frozenset(self.disable_pass), instruments=ins, **extra)


# -- small helpers --------------------------------------------------------------------


@contextlib.contextmanager
def _status(message: str) -> Iterator[None]:
    """A spinner on stderr while ``message`` runs, when stderr is a terminal."""
    if console(stderr=True).is_terminal:
        from rich.console import Console

        with Console(stderr=True).status(message):
            yield
    else:
        yield


def _note(message: str) -> None:
    """A one-line message for the user on stderr."""
    from rich.text import Text

    console(stderr=True).print(Text(message, style="dim"))


def _echo_ir(text: str) -> None:
    click.echo(text, nl=not text.endswith("\n"))


# -- compile ------------------------------------------------------------------------


@cli.command("compile")
@click.argument("spec")
@click.option("-t", "--target", default="cpu", show_default=True, help="Target to compile for (see `sparsec targets`).")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="Where to write the artifact (a directory), e.g. out/resnet18.sparsec.")
@click.option("-p", "--pipeline", default=None, help="Pass pipeline text; default: the target backend's pipeline.")
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
@click.option("--build-kernels", is_flag=True,
              help="GPU targets: build the CUTLASS kernels now (needs nvcc and the CUTLASS headers; slow on a small "
                   "CPU). Default: build them on the GPU host at first load, from the kernel cache.")
@load_options
@instrument_options
def compile_cmd(spec: str, target: str, output: Path, pipeline: str | None, force: bool, build_kernels: bool = False,
                **flags: Any) -> None:
    """Compile a model into an artifact for `sparsec run` and sparsec.load().

    Example:
      sparsec compile zoo:torchvision/resnet18 --input-shape 1,3,224,224 -o out/resnet18.sparsec
    """
    load, inst = LoadFlags.pop(flags), InstrumentFlags.pop(flags)
    from sparsec import api
    from sparsec.passes.manager import PassManager

    # Cheap checks first: a typo or a missing backend must not cost a trace.
    api.resolve_backend(api.resolve_target(target))
    if pipeline is not None:
        PassManager.parse(pipeline)
    check_output_path(output, force=force, what="artifact", directory=True)
    if build_kernels:
        from sparsec import knobs

        knobs.set_override("cutlass_build", "compile")
    pctx = inst.context()
    t0 = time.perf_counter()
    mod = load.load(spec)
    with _status(f"compiling for {target}"):
        result = api.compile(mod, target=target, pipeline=pipeline, output=str(output), force=force, ctx=pctx)
    ran = [r for r in result.records if not r.skipped]
    pipeline_text = str(result.pipeline) if result.pipeline is not None else ""
    _note(
        f"compiled {mod.name} for {target} with {len(ran)} passes"
        f"{f' ({pipeline_text})' if pipeline_text else ''} in {time.perf_counter() - t0:.2f} s"
    )
    _note(f"wrote {result.artifact or output}")


# -- run ------------------------------------------------------------------------------


@cli.command("run")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("-i", "--input", "input_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Inputs saved with torch.save: a tensor, or a tuple/list of tensors.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Save the outputs here with torch.save.")
@click.option("--random", "use_random", is_flag=True, help="Run on random inputs shaped like the artifact's input spec.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --random.")
@click.option("--batch", type=click.IntRange(min=1), default=None, help="Batch size of --random inputs for a dynamic-batch artifact.")
def run_cmd(artifact: Path, input_path: Path | None, output: Path | None, use_random: bool, seed: int,
            batch: int | None) -> None:
    """Run a compiled artifact and print its outputs' shapes and statistics.

    Example:
      sparsec run out/resnet18.sparsec --input x.pt --output y.pt
    """
    from sparsec.cli import running

    if (input_path is None) == (not use_random):
        raise UsageError("give exactly one of --input FILE or --random",
                         fix="e.g. sparsec run model.sparsec --random")
    if batch is not None and not use_random:
        raise UsageError("--batch sizes --random inputs only", fix="drop --batch; --input files carry their own shape")
    if output is not None:
        check_output_path(output, force=True)
    model, manifest = running.load(artifact)
    spec = running.input_spec(manifest)
    if use_random:
        inputs = running.random_inputs(spec, seed=seed, batch=batch)
    else:
        inputs = running.load_inputs(input_path)  # type: ignore[arg-type]
        running.check_inputs(inputs, spec)
    outputs = running.run(model, inputs)
    running.print_stats(outputs, console())
    if output is not None:
        import torch

        value = outputs[0] if len(outputs) == 1 else tuple(outputs)
        write_atomic(output, lambda tmp: torch.save(value, tmp))
        _note(f"wrote {output}")


# -- opt --------------------------------------------------------------------------------


@cli.command("opt")
@click.argument("spec")
@click.option("-p", "--pipeline", default="", help="Pass pipeline text, e.g. 'canonicalize,fold-bn'.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the transformed program with torch.export.save (e.g. transformed.pt2).")
@load_options
@instrument_options
def opt_cmd(spec: str, pipeline: str, output: Path | None, **flags: Any) -> None:
    """Run a pass pipeline on a model and print the resulting IR (like mlir-opt).

    Without -o and without a --print-ir flag, the final IR goes to stdout.

    Example:
      sparsec opt model.pt2 --pipeline canonicalize,fold-bn --print-ir-after-all
    """
    load, inst = LoadFlags.pop(flags), InstrumentFlags.pop(flags)
    from sparsec.ir.printer import print_module
    from sparsec.passes.manager import PassManager

    pm = PassManager.parse(pipeline)
    if output is not None:
        check_output_path(output, force=True)
    pctx = inst.context()
    mod = load.load(spec)
    pm.run(mod, pctx)
    if output is not None:
        import torch

        program = mod.export()
        write_atomic(output, lambda tmp: torch.export.save(program, tmp))
        _note(f"wrote {output}")
    elif not inst.prints_ir:
        _echo_ir(print_module(mod))


# -- inspect --------------------------------------------------------------------------------


@cli.command("inspect")
@click.argument("spec")
@click.option("-f", "--format", "fmt", type=click.Choice(["table", "text", "json", "dot"]), default="table",
              show_default=True, help="table: one row per node; text: the canonical IR; json; dot: a graph.")
@click.option("--show", metavar="COLUMNS", default=None,
              help="Table columns, comma-separated, from: name,op,shape,dtype,params,flops,meta,support,sparsity; "
                   "or 'groups': the pruning analysis's channel groups (members, units, prunable or why not).")
@click.option("-t", "--target", default=None, help="Add a support column: can the target's backend take each node, and why not.")
@click.option("--sparsify", metavar="OPTIONS", default=None,
              help="Add a sparsity column: what sparsify-2-4 with these options (e.g. 'cost-model=shape,min-k=64') "
                   "would decide per conv/linear; a target with 2:4 kernels adds it with the pass's defaults.")
@click.option("-p", "--pipeline", default=None, metavar="PIPELINE",
              help="Run this pipeline first and show the graph it leaves, e.g. 'fusion': fused nodes, "
                   "declined fusions with their reasons (meta column), partitions.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write to FILE instead of stdout; with --format dot, a .svg/.png/.pdf is rendered by graphviz.")
@load_options
def inspect_cmd(spec: str, fmt: str, show: str | None, target: str | None, sparsify: str | None,
                pipeline: str | None, output: Path | None, **flags: Any) -> None:
    """Show a model's graph node by node: shapes, params, FLOPs, backend support.

    Example:
      sparsec inspect zoo:torchvision/resnet18 --input-shape 1,3,224,224 --target a100-sparse
    """
    load = LoadFlags.pop(flags)
    from sparsec.cli import inspect_view

    view = inspect_view.view_name(show)
    if view is not None:  # --show groups: another report, in the same formats
        if target is not None:
            raise UsageError(f"--target does not apply to --show {view}", fix="drop --target")
        if output is not None:
            check_output_path(output, force=True)
        text = inspect_view.render_view(view, load.load(spec), fmt)
        if fmt == "dot" and output is not None and output.suffix.lower() in inspect_view.RENDERED:
            inspect_view.render_graphviz(text, output)
        elif output is not None:
            write_atomic(output, lambda tmp: tmp.write_text(text))
        else:
            _echo_ir(text)
        if output is not None:
            _note(f"wrote {output}")
        return
    from sparsec.api import resolve_target

    tgt = resolve_target(target) if target else None  # an unknown name fails here, before loading
    columns = inspect_view.parse_show(show, with_target=tgt is not None, sparse_target=bool(tgt and tgt.is_sparse),
                                      sparsify=sparsify is not None)
    backend = inspect_view.backend_for(target) if target and "support" in columns else None
    if output is not None:
        check_output_path(output, force=True)
    mod = load.load(spec)
    if pipeline:  # the graph as the pipeline leaves it: fused ops, sparsec.declined reasons, partitions
        from sparsec.passes.manager import PassContext, PassManager

        PassManager.parse(pipeline).run(mod, PassContext(target=tgt))
    decisions = inspect_view.sparsity_decisions(mod, target, sparsify) if "sparsity" in columns else None
    report = inspect_view.build(mod, backend=backend, target=target, sparsity=decisions)
    if fmt == "table":
        if output is None:
            inspect_view.print_table(report, columns, console())
        else:
            write_atomic(output, lambda tmp: tmp.write_text(inspect_view.table_text(report, columns)))
    elif fmt == "dot":
        text = inspect_view.to_dot(report)
        if output is not None and output.suffix.lower() in inspect_view.RENDERED:
            inspect_view.render_graphviz(text, output)
        elif output is not None:
            write_atomic(output, lambda tmp: tmp.write_text(text))
        else:
            _echo_ir(text)
    else:
        if fmt == "text":
            from sparsec.ir.printer import print_module

            text = print_module(mod)
        else:
            text = inspect_view.to_json(report)
        if output is None:
            _echo_ir(text)
        else:
            write_atomic(output, lambda tmp: tmp.write_text(text))
    if output is not None:
        _note(f"wrote {output}")


# -- profile ------------------------------------------------------------------------------


@cli.command("profile")
@click.option("-t", "--target", required=True, help="Target whose round_to sets the width grid (see `sparsec targets`).")
@click.option("-m", "--model", "spec", required=True, metavar="SPEC", help="The model to profile (its layer shapes).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the latency table (JSON).")
@click.option("--batches", default="1,256", show_default=True, help="Batch sizes to time, comma-separated.")
@click.option("--points", type=click.IntRange(min=2), default=5, show_default=True,
              help="Widths timed per prunable dim of each layer.")
@load_options
def profile_cmd(target: str, spec: str, output: Path, batches: str, points: int, **flags: Any) -> None:
    """Measure a per-layer latency table on this machine's GPU, for prune-channels{objective=latency}.

    Times each distinct conv/linear layer shape of the model at a grid of
    input/output widths (multiples of the target's round_to), fp16
    channels-last, with CUDA events (medians after warm-up).

    Example:
      sparsec profile --target h100 --model zoo:torchvision/resnet50 --input-shape 1,3,224,224 -o lut.json
    """
    load = LoadFlags.pop(flags)
    from sparsec import api
    from sparsec.passes.prune import latency

    tgt = api.resolve_target(target)
    try:
        sizes = tuple(int(b) for b in batches.split(","))
        if not sizes or min(sizes) < 1:
            raise ValueError
    except ValueError:
        raise UsageError(f"bad --batches '{batches}'", expected="positive integers, comma-separated, e.g. 1,256") from None
    latency.require_cuda()  # before the trace: fail fast
    check_output_path(output, force=True)
    mod = load.load(spec)
    with _status(f"profiling {mod.name}"):
        lut = latency.profile(mod, tgt, batches=sizes, points=points,
                              progress=lambda i, n, key: logging.getLogger("sparsec").info("profiled %d/%d %s", i, n, key))
    text = lut.to_json()
    write_atomic(output, lambda tmp: tmp.write_text(text))
    _note(f"wrote {output}: {len(lut.tables)} layer shapes of {mod.name} (fingerprint {lut.fingerprint}) "
          f"on {lut.info.get('device')}")


# -- passes, targets -----------------------------------------------------------------------


@cli.command("passes")
@click.argument("name", required=False)
def passes_cmd(name: str | None) -> None:
    """List the registered passes and named pipelines, or describe one pass.

    Example:
      sparsec passes fold-bn
    """
    from sparsec.cli import listing

    if name is None:
        listing.print_passes(console())
    else:
        listing.print_pass(name, console())


@cli.command("targets")
def targets_cmd() -> None:
    """List the compile targets and whether their backend is available."""
    from sparsec.cli import listing

    listing.print_targets(console())


from sparsec.cli.tune import tune_cmd  # noqa: E402  (click only; torch loads inside the command)

cli.add_command(tune_cmd)

from sparsec.cli.bench_cmd import bench_cmd  # noqa: E402  (click only; torch loads inside the command)

cli.add_command(bench_cmd)


# -- finetune, eval (cli/finetune_cmd.py, which uses the helpers above) ----------------------

from sparsec.cli.finetune_cmd import make_commands  # noqa: E402

for _command in make_commands(load_options, LoadFlags, _note):
    cli.add_command(_command)


def main(argv: list[str] | None = None) -> None:
    """The console-script entry point (``sparsec``)."""
    cli.main(args=argv, prog_name="sparsec")


if __name__ == "__main__":
    main()
