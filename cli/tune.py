"""``sparsec tune``: measure the CUTLASS kernels on this GPU and write a tuning DB.

Kept out of cli/main.py's imports of torch: everything heavy loads inside the command.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from sparsec.errors import UsageError


def _parse_shape(text: str) -> tuple[int, int, int]:
    try:
        m, n, k = (int(v) for v in text.lower().replace("x", ",").split(","))
    except ValueError:
        raise UsageError(f"bad --shape '{text}'", expected="M,N,K (output channels, tokens, reduction), e.g. 4096,8192,4096") from None
    if min(m, n, k) < 1 or k % 4:
        raise UsageError(f"bad --shape '{text}'", expected="positive sizes, K a multiple of 4")
    return m, n, k


@click.command("tune")
@click.option("--arch", type=click.Choice(["sm_90a", "sm_80"]), default=None,
              help="Kernel family to tune (sm_80 kernels run on Hopper through their PTX) [default: --target's, "
                   "else sm_90a].")
@click.option("--dtype", "dtypes", default="fp16,bf16", show_default=True, help="Comma-separated dtypes.")
@click.option("--suite", default=None, help="A shape suite: full, quick, resnet50, mobilenetv2, efficientnet_b0, vit_b, bert_base, llm.")
@click.option("--shape", "shapes", multiple=True, help="One GEMM M,N,K (repeatable); M = output channels, N = tokens.")
@click.option("--model", "model_spec", default=None, metavar="SPEC",
              help="Tune the shapes this model's sparsify-2-4 will look up when compiled with --target and "
                   "--pipeline (its pruned widths, batch and dtype; --dtype is then the pipeline's).")
@click.option("--target", default=None, help="With --model: the compile target [default: h100-sparse for sm_90a, "
                                             "a100-sparse for sm_80].")
@click.option("--pipeline", default=None, help="With --model: the pipeline it will be compiled with [default: the "
                                               "target's].")
@click.option("--input-shape", metavar="N,C,H,W", default=None, help="With --model: its input shape (the compile's).")
@click.option("--trust-pickle", is_flag=True, help="With --model: allow loading a pickled nn.Module (runs its code).")
@click.option("--list", "list_only", is_flag=True, help="Print the shapes that would be tuned and exit (no GPU).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The DB to write (default: <cache dir>/tuning/<arch>.json). Entries merge into an existing DB.")
@click.option("--nvcc", default=None, help="The nvcc to build kernels with [env SPARSEC_NVCC].")
@click.option("--cutlass-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="CUTLASS source root with include/ and tools/util/include/ [env SPARSEC_CUTLASS_DIR; default: the nvidia-cutlass wheel].")
@click.option("--build-jobs", type=click.IntRange(min=1), default=None, help="Parallel nvcc jobs [env SPARSEC_BUILD_JOBS; default: CPU count].")
def tune_cmd(arch: str | None, dtypes: str, suite: str | None, shapes: tuple[str, ...], model_spec: str | None,
             target: str | None, pipeline: str | None, input_shape: str | None, trust_pickle: bool, list_only: bool,
             output: Path | None, nvcc: str | None, cutlass_dir: Path | None, build_jobs: int | None) -> None:
    """Time candidate dense and 2:4 kernels per shape and keep the fastest correct ones.

    Every candidate is checked against a float64 reference of the masked
    product before it may win. The DB (schema sparsec.tuning/1) is what the
    sparsify-2-4 cost model reads; a layer whose (M, K) it lacks stays dense,
    so tune a pruned model's own widths with --model.

    Examples:
      sparsec tune --suite quick --dtype fp16 -o tuned.json
      sparsec tune --model zoo:torchvision/mobilenet_v2 --input-shape 256,3,224,224 --list
      sparsec tune --model net.py:build --input-shape 64,3,224,224 --pipeline "$(cat my_pipeline.txt)"
    """
    from rich.console import Console

    from sparsec import knobs
    from sparsec.backends.cutlass import build, shapes as shape_suites, tuning

    for name, value in (("nvcc", nvcc), ("cutlass_dir", cutlass_dir), ("build_jobs", build_jobs)):
        if value is not None:
            knobs.set_override(name, value)
    from sparsec.backends.cutlass.config import candidates

    import torch

    err = Console(stderr=True)
    if model_spec is None and (target or pipeline or input_shape or trust_pickle):
        raise UsageError("--target, --pipeline, --input-shape and --trust-pickle describe a --model",
                         fix="add --model SPEC, or drop them")
    dts = [d.strip() for d in dtypes.split(",") if d.strip()]
    if any(d not in ("fp16", "bf16") for d in dts):
        raise UsageError(f"bad --dtype '{dtypes}'", expected="fp16 and/or bf16")
    todo = [(*_parse_shape(s), d) for s in shapes for d in dts]
    if suite:
        try:
            todo += [(s.m, s.n, s.k, d) for s in shape_suites.suite(suite) for d in dts]
        except KeyError as exc:
            raise UsageError(str(exc.args[0])) from None
    if model_spec:
        tgt = _model_target(target, arch)
        arch = tgt.arch
        todo += [(g.m, g.n, g.k, g.dtype) for g in _model_shapes(model_spec, tgt, pipeline, input_shape, trust_pickle)]
    arch = arch or "sm_90a"
    if not todo:
        raise UsageError("nothing to tune", fix="give --suite NAME, --shape M,N,K or --model SPEC")
    todo = list(dict.fromkeys(todo))
    if list_only:
        for m, n, k, d in todo:
            click.echo(f"{arch} {d} M={m} N={n} K={k}")
        return
    if not torch.cuda.is_available():
        raise UsageError("sparsec tune needs a CUDA GPU", actual="torch.cuda.is_available() is False",
                         fix="run it on the machine whose GPU the DB is for")
    used = sorted({d for *_, d in todo})
    build.build([c for d in used for sp in (False, True) for c in candidates(arch, d, sp)], progress=True)
    output = output or Path(knobs.get("cache_dir")) / "tuning" / f"{arch}.json"
    entries = []
    fmt = lambda r: f"{r['config']} {r['us']:.1f} us" if r else "none passed"  # noqa: E731
    for i, (m, n, k, d) in enumerate(todo):
        e = tuning.tune_shape(m, n, k, d, arch)
        entries.append(e)
        err.print(f"[{i + 1}/{len(todo)}] {d} M={m} N={n} K={k}: dense {fmt(e['dense'])}; sparse {fmt(e['sparse'])}")
    old = tuning.load_db(output)["entries"] if output.exists() else []
    doc = tuning.new_db(arch, tuning.merge_entries(old, entries))
    if arch == "sm_80" and torch.cuda.get_device_capability()[0] != 8:
        doc["device"] += " (sm_80 kernels JIT-compiled from PTX: NOT A100 timings)"
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(output)
    wins = sum(1 for e in entries if e["dense"] and e["sparse"] and e["sparse"]["us"] < e["dense"]["us"])
    err.print(f"wrote {output}: {len(entries)} entries; 2:4 faster than dense on {wins}")
    if any(e["sparse"] is None or e["dense"] is None for e in entries):
        err.print("[yellow]some shapes had no passing config (see the lines above)[/yellow]")


def _model_target(name: str | None, arch: str | None):
    from sparsec.api import resolve_target

    tgt = resolve_target(name or {"sm_80": "a100-sparse"}.get(arch or "", "h100-sparse"))
    if not tgt.sparse:
        raise UsageError(f"target '{tgt.name}' has no 2:4 kernels: its compile consults no tuning DB",
                         fix="use a -sparse target, e.g. --target h100-sparse")
    if arch is not None and arch != tgt.arch:
        raise UsageError(f"--arch {arch} does not match target '{tgt.name}' ({tgt.arch})",
                         fix=f"drop --arch, or use a target of {arch}")
    return tgt


def _model_shapes(spec: str, tgt, pipeline: str | None, input_shape: str | None, trust_pickle: bool):
    from sparsec.api import resolve_backend
    from sparsec.ir.loader import load_model, parse_input_shape
    from sparsec.passes.sparsify.apply import shapes_to_tune

    mod = load_model(spec, input_shape=parse_input_shape(input_shape) if input_shape else None,
                     trust_pickle=trust_pickle)
    return shapes_to_tune(mod, pipeline or resolve_backend(tgt).pipeline(tgt), tgt)
