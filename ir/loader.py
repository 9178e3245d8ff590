"""Load a model from a spec string into an ``ir.Module``.

A spec is one of

- ``zoo:torchvision/NAME``: a torchvision architecture (random weights; give
  a state-dict file as the spec and the zoo name as ``arch`` for trained ones);
- ``path/to/file.py:factory``: a Python file imported by path, whose
  ``factory()`` returns the ``nn.Module``; if the file defines
  ``example_inputs()`` no input shape is needed;
- a file, whose kind is found from its *content*, not its name:
  a ``torch.export.save`` program (``.pt2``), a ``torch.save`` state dict
  (needs ``arch``), a pickled ``nn.Module`` (runs code, so only with
  ``trust_pickle``), or a TorchScript archive (refused, with the way out).

Detection never runs code from the file: a zip is classified by its entry
names, and a pickle is first opened with ``torch.load(weights_only=True)``,
which refuses anything but tensors and plain containers.

Example:
    >>> mod = load_model("zoo:torchvision/resnet18", input_shape=(1, 3, 32, 32))
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import importlib.util
import logging
import re
import sys
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

import torch

from sparsec.errors import LoadError, UsageError
from sparsec.ir.meta import parse_dtype
from sparsec.ir.module import Module

log = logging.getLogger("sparsec.ir")

ZOO_PREFIX = "zoo:"
ZOO_SOURCES = ("torchvision",)
ZOO_INSTALL = "pip install 'sparsec[zoo]'"
EXPORT_HINT = 'torch.export.save(torch.export.export(model, (x,)), "model.pt2")'

# Input shapes for the zoo's families, found from the builder's module.
_ZOO_SHAPES = {
    "torchvision.models.video": (1, 3, 16, 112, 112),
    "torchvision.models.segmentation": (1, 3, 224, 224),
}
_ZOO_IMAGE = (1, 3, 224, 224)
_ZOO_SPECIAL = {"inception_v3": (1, 3, 299, 299)}


# -- input shapes ------------------------------------------------------------------


def parse_input_shape(text: str) -> tuple[int, ...]:
    """``"1,3,224,224"`` or ``"1x3x224x224"`` -> ``(1, 3, 224, 224)``."""
    form = "comma- or x-separated positive integers, like 1,3,224,224 or 1x3x224x224"
    raw = text.strip() if isinstance(text, str) else ""
    parts = re.split(r"\s*[,xX]\s*", raw) if raw else []
    if not parts or not all(re.fullmatch(r"[+-]?\d+", p) for p in parts):
        raise UsageError(f"bad input shape '{text}'", expected=form, actual=repr(text),
                         fix="pass --input-shape 1,3,224,224")
    dims = tuple(int(p) for p in parts)
    bad = [d for d in dims if d <= 0]
    if bad:
        raise UsageError(f"bad input shape '{text}': every dimension must be positive",
                         expected=form, actual=f"dimension {bad[0]}",
                         fix="pass --input-shape 1,3,224,224")
    return dims


# -- the entry point -----------------------------------------------------------------


def load_model(
    spec: str,
    *,
    input_shape: tuple[int, ...] | None = None,
    dtype: str | None = None,
    trust_pickle: bool = False,
    arch: str | None = None,
    tracer: str = "export",
    dynamic_batch: bool = False,
) -> Module:
    """Load ``spec`` and trace it into an ``ir.Module`` named after the model.

    ``input_shape`` sets one input's shape (else the zoo's default, the file's
    ``example_inputs()``, or the ``.pt2`` program's own input shapes);
    ``dtype`` (fp32/fp16/bf16) is the dtype of the example inputs, and the
    model is cast to it before tracing; None keeps a ``.pt2`` program's own
    dtype and means fp32 for everything else; ``dynamic_batch`` exports dim 0 of
    every input as symbolic. A ``.pt2`` whose every input already has a
    symbolic dim 0 keeps it dynamic.

    Example:
        >>> load_model("net.py:build", input_shape=(1, 3, 32, 32), dtype="fp16")
    """
    from sparsec.ir.trace import TRACERS, trace

    if tracer not in TRACERS:
        raise UsageError(f"unknown tracer '{tracer}'", fix=f"use one of: {', '.join(TRACERS)}")
    torch_dtype = parse_dtype(dtype) if dtype is not None else None
    if input_shape is not None:
        input_shape = _check_shape(input_shape)
    got = _resolve(spec, arch=arch, trust_pickle=trust_pickle, dtype=torch_dtype)
    if input_shape is not None:
        if got.program is not None:
            got.program.check_shape(input_shape)
        like = got.inputs[0] if got.inputs and got.inputs[0].is_floating_point() else None
        in_dtype = torch_dtype or (like.dtype if like is not None else torch.float32)
        inputs: tuple = (torch.randn(*input_shape, dtype=in_dtype),)
    elif got.inputs is not None:
        inputs = got.inputs
    else:
        raise UsageError(
            f"no input shape for '{spec}'",
            expected="--input-shape, or an example_inputs() function in the model file",
            fix="pass --input-shape 1,3,224,224 (or define example_inputs() returning a tuple of tensors)",
        )
    model = got.model
    if got.program is None:  # an exported program's module is already in eval form (and refuses .eval())
        model = model.eval()
    if torch_dtype is not None:
        model = model.to(torch_dtype)
        inputs = tuple(x.to(torch_dtype) if x.is_floating_point() else x for x in inputs)
    log.info("tracing %s on inputs %s", got.name, [tuple(x.shape) for x in inputs])
    if got.program is not None:
        if tracer != "export":
            log.info("--tracer %s not used: %s is already an exported graph", tracer, spec)
        return got.program.retrace(model, inputs, name=got.name, dynamic_batch=dynamic_batch)
    return trace(model, inputs, name=got.name, tracer=tracer, dynamic_batch=dynamic_batch)


@dataclasses.dataclass(frozen=True)
class _Loaded:
    model: torch.nn.Module
    name: str
    inputs: tuple | None = None  # default example inputs, if the source gives them
    program: "_Program | None" = None  # set for a torch.export program


@dataclasses.dataclass(frozen=True)
class _Program:
    """The input signature of a loaded ``.pt2``: its shapes and batch range."""

    path: Path
    shapes: tuple[tuple[int | str, ...], ...]  # ints, or the symbol name of a dynamic dim
    batch_range: tuple[int, int | None] | None  # (min, max) when every input's dim 0 is dynamic

    def check_shape(self, shape: tuple[int, ...]) -> None:
        if len(self.shapes) != 1:
            raise UsageError(
                f"--input-shape gives one input, but '{self.path}' takes {len(self.shapes)}",
                fix="leave out --input-shape: the program's own input shapes are used",
            )
        want = self.shapes[0]
        ok = len(want) == len(shape) and all(isinstance(w, str) or w == d for w, d in zip(want, shape))
        if not ok:
            raise UsageError(
                f"--input-shape does not fit the program in '{self.path}'",
                expected=_fmt_shape(want) + " (named dims are dynamic)", actual=_fmt_shape(shape),
                fix="leave out --input-shape, or re-export the program with dynamic_shapes for the dims you want to vary",
            )

    def retrace(self, model, inputs: tuple, *, name: str, dynamic_batch: bool) -> Module:
        """Re-export the program's module; a dynamic batch stays dynamic, in the program's range."""
        from sparsec.ir.trace import _trace_error, trace

        if dynamic_batch and self.batch_range is None:
            raise UsageError(
                f"--dynamic-batch was asked for, but '{self.path}' was exported with a static batch size",
                expected="a program whose inputs have a dynamic dim 0", actual=f"input shapes {', '.join(_fmt_shape(s) for s in self.shapes)}",
                fix='re-export it with dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, or leave out --dynamic-batch',
            )
        if self.batch_range is None:
            return trace(model, inputs, name=name)
        lo, hi = self.batch_range
        batch = torch.export.Dim("batch", min=lo, max=hi) if hi is not None else torch.export.Dim("batch", min=lo)
        dynamic_shapes = tuple({0: batch} for _ in inputs)
        inputs = tuple(x if x.shape[0] >= 2 else x.expand(2, *x.shape[1:]).clone() for x in inputs)
        try:
            ep = torch.export.export(model, inputs, dynamic_shapes=dynamic_shapes)
        except Exception as exc:
            raise _trace_error(exc, "torch.export") from exc
        return Module(ep.module(), inputs, name=name, dynamic_shapes=dynamic_shapes)


def _fmt_shape(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def _check_shape(shape: Any) -> tuple[int, ...]:
    if isinstance(shape, str):
        return parse_input_shape(shape)
    try:
        dims = tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        return parse_input_shape(str(shape))
    if not dims or any(d <= 0 for d in dims):
        return parse_input_shape(",".join(str(d) for d in dims) or "")
    return dims


def _resolve(spec: str, *, arch: str | None, trust_pickle: bool, dtype: torch.dtype | None) -> _Loaded:
    if not isinstance(spec, str) or not spec.strip():
        raise UsageError("empty model spec", fix="give a file, file.py:factory or zoo:torchvision/NAME")
    if spec.startswith(ZOO_PREFIX):
        if arch is not None:
            log.warning("--arch %s ignored: the spec %s already names an architecture", arch, spec)
        model, name, shape = _zoo(spec)
        return _Loaded(model, name, (torch.randn(*shape, dtype=dtype),) if shape else None)
    factory = _split_factory(spec)
    if factory is not None:
        path, fn = factory
        model, inputs = _from_factory(path, fn)
        return _Loaded(model, fn, inputs)
    return _from_file(Path(spec), arch=arch, trust_pickle=trust_pickle, dtype=dtype)


# -- the zoo ---------------------------------------------------------------------------


def _zoo(spec: str) -> tuple[torch.nn.Module, str, tuple[int, ...] | None]:
    source, _, name = spec[len(ZOO_PREFIX):].partition("/")
    if source not in ZOO_SOURCES or not name:
        raise LoadError(
            f"bad zoo spec '{spec}'",
            expected="zoo:torchvision/NAME, like zoo:torchvision/resnet18",
            actual=spec,
        )
    try:
        import torchvision.models as tvm
    except ImportError as exc:
        raise LoadError(
            f"'{spec}' needs torchvision, which is not installed",
            fix=f"{ZOO_INSTALL}  (or pip install torchvision)",
        ) from exc
    known = tvm.list_models()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else "list them with torchvision.models.list_models()"
        raise LoadError(f"unknown torchvision model '{name}'", where=spec, fix=hint)
    try:
        model = tvm.get_model(name, weights=None)
    except Exception as exc:
        raise LoadError(f"torchvision could not build '{name}'", where=spec,
                        actual=f"{type(exc).__name__}: {exc}") from exc
    return model.eval(), name, zoo_input_shape(name)


def zoo_input_shape(name: str) -> tuple[int, ...] | None:
    """The default input shape of a torchvision model, from its family; None if it has none.

    Classification and segmentation take (1, 3, 224, 224) (inception_v3:
    299), video (1, 3, 16, 112, 112); detection and optical flow need
    ``--input-shape`` (or take more than one input).
    """
    import torchvision.models as tvm

    if name in _ZOO_SPECIAL:
        return _ZOO_SPECIAL[name]
    family = tvm.get_model_builder(name).__module__
    shape = next((s for prefix, s in _ZOO_SHAPES.items() if family.startswith(prefix)), None)
    if shape is None and family.count(".") == 2:  # torchvision.models.<arch>: classification
        shape = _ZOO_IMAGE
    return shape


# -- file.py:factory ----------------------------------------------------------------------


def _split_factory(spec: str) -> tuple[Path, str] | None:
    m = re.fullmatch(r"(?P<path>.+\.py):(?P<fn>[A-Za-z_][A-Za-z0-9_]*)", spec)
    return (Path(m.group("path")), m.group("fn")) if m else None


def _import_file(path: Path):
    if not path.is_file():
        what = "a directory" if path.is_dir() else "nothing"
        raise LoadError(f"model file '{path}' not found", where=str(path), actual=f"{what} at that path",
                        fix="check the path of the Python file in FILE.py:FACTORY")
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    mod_name = f"sparsec_user_{re.sub(r'[^0-9a-zA-Z_]', '_', path.stem)}_{digest}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise LoadError(f"cannot import '{path}' as a Python module", where=str(path))
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module  # so pickle, dataclasses and typing can find it
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(mod_name, None)
        raise LoadError(f"importing '{path}' failed", where=str(path),
                        actual=f"{type(exc).__name__}: {exc}", fix="run the file with python to see the error") from exc
    return module


def _from_factory(path: Path, fn: str) -> tuple[torch.nn.Module, tuple | None]:
    module = _import_file(path)
    factory: Callable[[], Any] | None = getattr(module, fn, None)
    if not callable(factory):
        names = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        close = difflib.get_close_matches(fn, names, n=3, cutoff=0.5)
        raise LoadError(f"'{path}' has no function '{fn}'", where=f"{path}:{fn}",
                        fix=(f"did you mean {', '.join(close)}? " if close else "") + "name a function that returns the model")
    try:
        model = factory()
    except Exception as exc:
        raise LoadError(f"the factory {path}:{fn}() raised", where=f"{path}:{fn}",
                        actual=f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(model, torch.nn.Module):
        raise LoadError(f"the factory {path}:{fn}() did not return an nn.Module", where=f"{path}:{fn}",
                        expected="a torch.nn.Module", actual=f"{type(model).__name__}",
                        fix=f"make {fn}() return the model instance")
    inputs = None
    ex = getattr(module, "example_inputs", None)
    if callable(ex):
        inputs = ex()
        if isinstance(inputs, torch.Tensor):
            inputs = (inputs,)
        if not isinstance(inputs, (tuple, list)) or not all(isinstance(x, torch.Tensor) for x in inputs):
            raise LoadError(f"{path}:example_inputs() must return a tuple of tensors",
                            where=str(path), actual=type(inputs).__name__)
        inputs = tuple(inputs)
    return model, inputs


# -- files ---------------------------------------------------------------------------------


def _from_file(path: Path, *, arch: str | None, trust_pickle: bool, dtype: torch.dtype | None):
    from sparsec.backends import artifact

    if path.is_dir() and artifact.is_artifact(path):
        # A compiled artifact: its transformed program is a plain .pt2 inside.
        loaded = _from_pt2(path / artifact.PROGRAM, dtype)
        return dataclasses.replace(loaded, name=path.name.removesuffix(artifact.SUFFIX))
    kind, found = sniff(path)
    if kind == "pt2":
        if arch is not None:
            log.warning("--arch %s ignored: %s is a whole exported program", arch, path)
        return _from_pt2(path, dtype)
    if kind == "torchscript":
        raise LoadError(
            f"'{path}' is a TorchScript archive, which cannot be turned into an FX graph",
            where=str(path), actual="a TorchScript zip (code/ and constants.pkl)",
            fix="load the original Python model and export it: "
            f"{EXPORT_HINT}; or compile the Python model directly with 'sparsec compile file.py:factory'",
        )
    if kind == "pickle":
        return _from_pickle(path, arch=arch, trust_pickle=trust_pickle)
    raise LoadError(f"'{path}' is not a model sparsec can read", where=str(path), actual=found,
                    fix="give a .pt2 from torch.export.save, a state dict with --arch zoo:torchvision/NAME, "
                    "FILE.py:FACTORY, or zoo:torchvision/NAME")


def sniff(path: Path) -> tuple[str, str]:
    """Classify a file by content: (``pt2``|``torchscript``|``pickle``|``unknown``, what was found).

    Raises LoadError for a missing path or a directory.
    """
    if not path.exists():
        raise LoadError(f"model file '{path}' not found", where=str(path), actual="no such file",
                        fix="check the path, or use zoo:torchvision/NAME or FILE.py:FACTORY")
    if path.is_dir():
        raise LoadError(f"'{path}' is a directory, not a model file", where=str(path), actual="a directory",
                        fix="give the model file inside it (a .pt2 or a torch.save file), "
                        "or a compiled .sparsec artifact directory")
    try:
        with path.open("rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise LoadError(f"cannot read '{path}'", where=str(path), actual=str(exc)) from exc
    if not head:
        return "unknown", "an empty file"
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError) as exc:
            return "unknown", f"a damaged zip archive ({exc})"
        base = {n.split("/", 1)[1] if "/" in n else n for n in names}
        if "archive_format" in base or "serialized_exported_program.json" in base or any(
            n.startswith("models/") and n.endswith(".json") for n in base
        ):
            return "pt2", "a torch.export program"
        if "constants.pkl" in base and any(n.startswith("code/") for n in base):
            return "torchscript", "a TorchScript archive"
        if "data.pkl" in base:
            return "pickle", "a torch.save pickle"
        return "unknown", f"a zip archive of another kind (entries: {', '.join(sorted(names)[:5])})"
    if head.startswith(b"PK\x03\x04"):
        return "unknown", "a truncated or damaged zip archive (a torch.export or torch.save file cut short?)"
    if head.startswith(b"\x80"):
        return "pickle", "a legacy (non-zip) torch.save pickle"
    return "unknown", f"unrecognised content (first bytes {head!r})"


def _from_pt2(path: Path, dtype: torch.dtype | None) -> _Loaded:
    from sparsec._builtins import load_op_libraries

    load_op_libraries()  # a transformed program may call sparsec:: ops
    try:
        ep = torch.export.load(str(path))
    except Exception as exc:
        raise LoadError(f"'{path}' looks like a torch.export program but could not be loaded", where=str(path),
                        actual=f"{type(exc).__name__}: {_first_line(exc)}",
                        fix="the file is corrupt, truncated, or from an incompatible torch; re-export it "
                        f"with {EXPORT_HINT}") from exc
    from torch.export.graph_signature import InputKind

    user = {s.arg.name for s in ep.graph_signature.input_specs if s.kind == InputKind.USER_INPUT}
    phs = [n for n in ep.graph.nodes if n.op == "placeholder" and n.name in user]
    inputs, shapes, ranges = [], [], []
    for n in phs:
        val = n.meta.get("val")
        if not isinstance(val, torch.Tensor):
            raise LoadError(f"'{path}' has a non-tensor input '{n.name}', which sparsec cannot feed",
                            where=str(path), actual=type(val).__name__)
        shapes.append(tuple(d if isinstance(d, int) else str(d) for d in val.shape))
        ranges.append(_range(val.shape[0], ep) if val.dim() > 0 and not isinstance(val.shape[0], int) else None)
        inputs.append(_random([_concrete(d, ep) for d in val.shape], val.dtype, dtype))
    batch_range = None
    if ranges and all(r is not None for r in ranges):
        batch_range = (max(r[0] for r in ranges), min((r[1] for r in ranges if r[1] is not None), default=None))
    program = _Program(path, tuple(shapes), batch_range)
    return _Loaded(ep.module(), path.stem, tuple(inputs), program)


def _range(d: Any, ep) -> tuple[int, int | None]:
    """(min, max) of a symbolic dim from the program's range constraints; max None if unbounded."""
    for sym, vr in ep.range_constraints.items():
        if str(sym) == str(d):
            lo, hi = _finite(vr.lower), _finite(vr.upper)
            return max(lo or 1, 1), hi
    return 1, None


def _finite(bound: Any) -> int | None:
    try:
        return int(bound)
    except (TypeError, ValueError, AttributeError, OverflowError):
        return None  # +-infinity


def _concrete(d: Any, ep) -> int:
    """A symbolic dim's hint, else the lower bound of its range, at least 2."""
    if isinstance(d, int):
        return d
    hint = getattr(getattr(d, "node", None), "hint", None)
    if hint is not None:
        return max(int(hint), 2)
    return max(_range(d, ep)[0], 2)


def _random(shape: list[int], program_dtype: torch.dtype, dtype: torch.dtype | None) -> torch.Tensor:
    if program_dtype.is_floating_point:
        return torch.randn(*shape, dtype=dtype or program_dtype)
    if program_dtype == torch.bool:
        return torch.rand(*shape) > 0.5
    return torch.randint(0, 2, shape, dtype=program_dtype)


def _from_pickle(path: Path, *, arch: str | None, trust_pickle: bool):
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        if "WeightsUnpickler" not in str(exc):  # not a refused global: the file itself is broken
            raise LoadError(f"'{path}' looks like a torch.save file but could not be read", where=str(path),
                            actual=f"{type(exc).__name__}: {_first_line(exc)}",
                            fix="the file is corrupt or truncated; save it again") from exc
        refused = _refused_global(exc)  # not weights-only: a pickled object that runs code to load
    else:
        sd = _state_dict_of(obj)
        if sd is None:
            raise LoadError(f"'{path}' holds {type(obj).__name__}, not a model or a state dict", where=str(path),
                            actual=type(obj).__name__,
                            fix=f"save the model as a program: {EXPORT_HINT}")
        return _with_state_dict(path, sd, arch)
    if not trust_pickle:
        raise LoadError(
            f"'{path}' is a pickled Python object; loading a pickle runs arbitrary code from the file",
            where=str(path), actual=refused,
            fix="if you trust this file, pass --trust-pickle to opt in; better, save the model as a "
            f"program that loads without running code: {EXPORT_HINT}",
        )
    if arch is not None:
        log.warning("--arch %s ignored: %s is a whole pickled model", arch, path)
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as exc:
        raise LoadError(f"unpickling '{path}' failed", where=str(path), actual=f"{type(exc).__name__}: {_first_line(exc)}",
                        fix="the model's class must be importable here (same module path as when it was saved); "
                        f"or save it as a program: {EXPORT_HINT}") from exc
    if not isinstance(obj, torch.nn.Module):
        sd = _state_dict_of(obj) if isinstance(obj, Mapping) else None
        if sd is not None:
            return _with_state_dict(path, sd, arch)
        raise LoadError(f"'{path}' holds {type(obj).__name__}, not an nn.Module", where=str(path),
                        expected="a model saved with torch.save(model, path)", actual=type(obj).__name__)
    return _Loaded(obj, path.stem)


def _state_dict_of(obj: Any) -> dict[str, torch.Tensor] | None:
    """The state dict in ``obj``: itself, or under a 'state_dict'/'model' key of a checkpoint."""
    if not isinstance(obj, Mapping):
        return None
    if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        return dict(obj)
    for key in ("state_dict", "model", "model_state_dict"):
        inner = obj.get(key)
        if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return dict(inner)
    return None


def _with_state_dict(path: Path, sd: dict[str, torch.Tensor], arch: str | None):
    if arch is None:
        raise LoadError(
            f"'{path}' is a state dict (weights only), with no architecture",
            where=str(path), actual=f"a state dict of {len(sd)} tensors",
            fix="name the architecture with --arch zoo:torchvision/NAME (or --arch FILE.py:FACTORY)",
        )
    if arch.startswith(ZOO_PREFIX):
        model, name, shape = _zoo(arch)
        inputs = None
    else:
        factory = _split_factory(arch)
        if factory is None:
            raise UsageError(f"bad --arch '{arch}'", expected="zoo:torchvision/NAME or FILE.py:FACTORY", actual=arch)
        model, inputs = _from_factory(*factory)
        name, shape = factory[1], None
    if all(k.startswith("module.") for k in sd):  # saved from DataParallel
        sd = {k[len("module."):]: v for k, v in sd.items()}
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        missing, unexpected = _key_diff(model, sd)
        raise LoadError(
            f"the state dict '{path}' does not fit the architecture '{arch}'", where=str(path),
            expected=f"keys of {arch}", actual=f"missing {missing or 'none'}; unexpected {unexpected or 'none'}"
            if missing or unexpected else _first_line(exc),
            fix="check --arch names the architecture these weights were trained with",
        ) from exc
    if inputs is None and shape is not None:
        inputs = (torch.randn(*shape),)
    return _Loaded(model, name, inputs)


def _key_diff(model: torch.nn.Module, sd: Mapping[str, Any]) -> tuple[str, str]:
    want, have = set(model.state_dict()), set(sd)

    def few(keys: set[str]) -> str:
        keys_s = sorted(keys)
        return ", ".join(keys_s[:4]) + (f" (+{len(keys_s) - 4} more)" if len(keys_s) > 4 else "")

    return few(want - have), few(have - want)


def _refused_global(exc: BaseException) -> str:
    """What weights-only loading refused, from torch's message."""
    text = str(exc)
    m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if m:
        return f"a pickle that needs the Python object {m.group(1)} to load"
    m = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    reason = m.group(1).strip() if m else "unknown reason"
    return f"a pickle that weights-only loading refuses ({reason})"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
