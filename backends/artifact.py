"""The compiled artifact: a ``NAME.sparsec/`` directory.

Layout::

    out.sparsec/
      program.pt2     torch.export.save of the transformed module
      manifest.json   versions, target, pipeline, inputs, per-node stats,
                      sha256 of every file and a content hash over them

Writing is atomic: the directory is built in a temporary directory beside
the destination and renamed into place, so a failure leaves neither a
half-written artifact nor the temporary directory. An existing destination is
replaced only with ``force``, and only if it is a sparsec artifact (or
empty): the old one is renamed aside, the new one moved in, then the old one
deleted.

Loading checks the format version, every file's sha256 and the content hash,
and that the target can run here, before it unpickles anything.

A backend whose compiled form is more than the program (``tvm``: an exported
library and its weights) returns a :class:`Lowered` from ``lower``: its files
are copied in beside (or, with ``store_program=False``, instead of)
``program.pt2``, and ``manifest["payload"]`` records the backend, the files
and the backend's own section. Such an artifact is loaded by the backend's
``load_artifact(path, manifest)`` hook, after the same hash and target checks.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import os
import platform
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterable

import torch

from sparsec.errors import ArtifactError, SparsecError

log = logging.getLogger("sparsec.backends")

FORMAT = "sparsec-artifact"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PROGRAM = "program.pt2"
SUFFIX = ".sparsec"


@dataclasses.dataclass(frozen=True)
class Lowered:
    """What a backend's ``lower`` returns when the artifact holds more than the program.

    ``files``: artifact file name -> the built file to copy in; ``section``:
    JSON-able backend data for ``manifest["payload"]``; ``workdir``: an object
    that keeps the built files alive (a ``TemporaryDirectory``).
    """

    module: Any  # the transformed ir.Module (the manifest's node stats come from it)
    backend: str
    files: dict
    section: dict
    store_program: bool = True
    workdir: Any = None


# -- writing ---------------------------------------------------------------------------


def write_artifact(
    out_dir: str | os.PathLike,
    mod,
    *,
    target,
    pipeline: str,
    records: Iterable[Any] = (),
    force: bool = False,
) -> Path:
    """Write ``mod`` (an ``ir.Module``) as an artifact directory at ``out_dir``.

    Returns the artifact's path. Raises ArtifactError if it exists (without
    ``force``), if the parent is not writable, or if writing fails midway.

    Example:
        >>> write_artifact("resnet18.sparsec", mod, target=CPU, pipeline="canonicalize,fold-bn,dce")
    """
    dest = Path(out_dir)
    lowered = mod if isinstance(mod, Lowered) else None
    mod = lowered.module if lowered is not None else mod
    if dest.exists() and not force:
        raise ArtifactError(
            f"output '{dest}' already exists", where=str(dest),
            fix="use --force to replace it (force=True in Python), or choose another output path",
        )
    if dest.exists():
        _check_replaceable(dest)
    parent = dest.parent if str(dest.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = _fresh_dir(parent, f".{dest.name}.tmp-")
    except OSError as exc:
        raise ArtifactError(
            f"cannot write the artifact: the directory '{parent}' is not writable", where=str(parent),
            actual=f"{type(exc).__name__}: {exc.strerror or exc}",
            fix="choose an output path in a directory you can write to",
        ) from exc
    try:
        files = []
        if lowered is None or lowered.store_program:
            files.append(tmp / PROGRAM)
            torch.export.save(mod.export(), str(files[-1]))
        for name, src in sorted((lowered.files if lowered is not None else {}).items()):
            files.append(tmp / name)
            shutil.copyfile(src, files[-1])
        manifest = build_manifest(mod, target=target, pipeline=pipeline, records=records, files=files)
        if lowered is not None:
            manifest["payload"] = {"backend": lowered.backend, "files": sorted(lowered.files), **lowered.section}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        _move_into_place(tmp, dest, force=force)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, SparsecError) or not isinstance(exc, Exception):
            raise
        raise ArtifactError(
            f"writing the artifact '{dest}' failed; nothing was written", where=str(dest),
            actual=f"{type(exc).__name__}: {exc}",
            fix="check free disk space and permissions, then compile again",
        ) from exc
    log.info("wrote artifact %s (content hash %s)", dest, manifest["content_hash"][:12])
    return dest


def _fresh_dir(parent: Path, prefix: str) -> Path:
    """A new empty directory in ``parent`` (mkdir honours the umask, unlike mkdtemp's 0700)."""
    for _ in range(100):
        path = parent / f"{prefix}{uuid.uuid4().hex[:8]}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"no fresh directory name under {parent}")


def _check_replaceable(dest: Path) -> None:
    """With --force, replace only a sparsec artifact or an empty directory: never a user's files."""
    if dest.is_dir() and (not any(dest.iterdir()) or is_artifact(dest)):
        return
    what = "a file" if dest.is_file() else "a directory that is not a sparsec artifact"
    raise ArtifactError(
        f"refusing to replace '{dest}': it is {what}", where=str(dest),
        expected=f"a {SUFFIX} artifact directory (with {MANIFEST}) or nothing", actual=what,
        fix=f"choose another output path, like '{dest.with_suffix(SUFFIX).name}' beside it",
    )


def is_artifact(path: Path) -> bool:
    try:
        return json.loads((path / MANIFEST).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _move_into_place(tmp: Path, dest: Path, *, force: bool) -> None:
    if not dest.exists():
        os.replace(tmp, dest)  # atomic on one filesystem; tmp is beside dest
        return
    old = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:8]}"
    os.replace(dest, old)
    try:
        os.replace(tmp, dest)
    except BaseException:
        os.replace(old, dest)  # put the old artifact back
        raise
    shutil.rmtree(old, ignore_errors=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def content_hash(files: dict[str, str]) -> str:
    """sha256 over the sorted ``name sha256`` lines of the artifact's files."""
    text = "".join(f"{name} {digest}\n" for name, digest in sorted(files.items()))
    return hashlib.sha256(text.encode()).hexdigest()


def build_manifest(mod, *, target, pipeline: str, records: Iterable[Any] = (), files: Iterable[Path] = ()) -> dict:
    """The manifest of ``mod``: versions, target, pipeline, inputs, per-node stats and file hashes."""
    from sparsec import __version__
    from sparsec.ir import meta as M
    from sparsec.ir.analysis import Cost
    from sparsec.ir.module import is_valueless
    from sparsec.ir.ops import op_name

    cost = mod.analysis(Cost)
    nodes = []
    for n in mod.graph.nodes:
        if n.op not in ("call_function", "call_module") or is_valueless(n):
            continue
        c = cost.of(n)
        nodes.append({
            "name": n.name,
            "op": op_name(n.target),
            "output": _meta_str(M.node_meta(n)),
            "macs": c.macs,
            "params": c.params,
        })
    dynamic = mod.dynamic_shapes is not None
    specs = mod.dynamic_shapes if isinstance(mod.dynamic_shapes, (tuple, list)) else ()
    inputs = []
    for i, (ph, x) in enumerate(zip(mod.placeholders(), mod.example_inputs)):
        dims = specs[i] if i < len(specs) and isinstance(specs[i], dict) else {}
        shape: list = list(x.shape)
        dyn = {}
        for j, dim in dims.items():
            name = getattr(dim, "__name__", str(dim))
            shape[j] = name
            dyn[str(j)] = {"name": name, "min": getattr(dim, "min", None), "max": getattr(dim, "max", None)}
        inputs.append({
            "name": ph.name,
            "shape": shape,
            "example_shape": list(x.shape),
            "dtype": M.dtype_name(x.dtype),
            "dynamic_dims": dyn,
        })
    hashes = {Path(f).name: sha256_file(Path(f)) for f in files}
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": mod.name,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": {
            "sparsec": __version__,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "python": platform.python_version(),
        },
        "target": target.summary(),
        "pipeline": pipeline,
        "passes": [_record(r) for r in records],
        "inputs": {"dynamic_batch": dynamic, "tensors": inputs},
        "nodes": nodes,
        "totals": {
            "nodes": len(nodes),
            "macs": cost.total_macs,
            "flops": cost.total_flops,
            "params": cost.total_params,
        },
        "files": hashes,
        "content_hash": content_hash(hashes),
    }


def _meta_str(m) -> str | list | None:
    if m is None:
        return None
    if isinstance(m, tuple):
        return [_meta_str(x) for x in m]
    return str(m)


def _record(r: Any) -> dict:
    if dataclasses.is_dataclass(r):
        d = dataclasses.asdict(r)
        d["stats"] = dict(d.get("stats", {}))
        return d
    return dict(r)


# -- loading ------------------------------------------------------------------------------


def load_artifact(path: str | os.PathLike) -> tuple[torch.nn.Module, dict]:
    """Verify and load an artifact: ``(callable module, manifest)``.

    Example:
        >>> model, manifest = load_artifact("resnet18.sparsec")
        >>> y = model(torch.randn(1, 3, 32, 32))
    """
    path = Path(path)
    manifest = read_manifest(path)
    verify_files(path, manifest)
    backend = check_target(manifest, path)
    if manifest.get("payload") is not None and backend is not None:
        return backend.load_artifact(path, manifest), manifest
    from sparsec._builtins import load_op_libraries

    load_op_libraries()  # the program may call sparsec:: ops (fused ops, kernels)
    try:
        ep = torch.export.load(str(path / PROGRAM))
    except Exception as exc:
        raise ArtifactError(
            f"the program in '{path}' could not be loaded", where=str(path / PROGRAM),
            actual=f"{type(exc).__name__}: {exc}",
            fix=f"compile it again with this torch ({torch.__version__})",
        ) from exc
    return ep.module(), manifest


def read_manifest(path: Path) -> dict:
    recompile = "compile the model again to make a fresh artifact"
    if not path.exists():
        raise ArtifactError(f"artifact '{path}' not found", where=str(path), fix="check the path given to load")
    if not path.is_dir():
        raise ArtifactError(
            f"'{path}' is not a sparsec artifact", where=str(path),
            expected=f"a {SUFFIX} directory holding {MANIFEST} and {PROGRAM}", actual="a file",
            fix="give the directory written by 'sparsec compile -o'",
        )
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise ArtifactError(f"'{path}' has no {MANIFEST}", where=str(mpath), fix=recompile)
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"the manifest of '{path}' is unreadable", where=str(mpath), actual=str(exc), fix=recompile) from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"'{path}' is not a sparsec artifact", where=str(mpath),
                            expected=f"format '{FORMAT}'", actual=repr(manifest.get("format") if isinstance(manifest, dict) else manifest))
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ArtifactError(
            f"artifact '{path}' has format version {version}, newer than this sparsec reads",
            where=str(mpath), expected=f"format version <= {FORMAT_VERSION}", actual=str(version),
            fix="upgrade sparsec, or compile the model again with this version",
        )
    if version < FORMAT_VERSION:  # no older format exists yet; keep the check for when one does
        raise ArtifactError(f"artifact '{path}' has an old format version {version}", where=str(mpath),
                            expected=str(FORMAT_VERSION), actual=str(version), fix=recompile)
    return manifest


def verify_files(path: Path, manifest: dict) -> None:
    """Every listed file exists and matches its sha256; the content hash matches."""
    recompile = "the artifact was modified or corrupted; compile the model again"
    files = manifest.get("files")
    payload = manifest.get("payload")
    required = payload.get("files") if isinstance(payload, dict) else [PROGRAM]
    if not isinstance(files, dict) or not isinstance(required, list) or not required:
        raise ArtifactError(f"the manifest of '{path}' lists no {PROGRAM}", where=str(path / MANIFEST), fix=recompile)
    for name in required:
        if name not in files:
            raise ArtifactError(f"the manifest of '{path}' lists no {name}", where=str(path / MANIFEST), fix=recompile)
    for name, digest in sorted(files.items()):
        f = path / name
        if Path(name).name != name:
            raise ArtifactError(f"the manifest of '{path}' names a file outside the artifact: '{name}'",
                                where=str(path / MANIFEST), fix=recompile)
        if not f.is_file():
            raise ArtifactError(f"artifact file '{name}' is missing", where=str(f), fix=recompile)
        actual = sha256_file(f)
        if actual != digest:
            raise ArtifactError(
                f"artifact file '{name}' does not match its hash in the manifest", where=str(f),
                expected=f"sha256 {digest}", actual=f"sha256 {actual}", fix=recompile,
            )
    if content_hash(files) != manifest.get("content_hash"):
        raise ArtifactError(
            f"the content hash of '{path}' does not match its files", where=str(path / MANIFEST),
            expected=str(manifest.get("content_hash")), actual=content_hash(files), fix=recompile,
        )


def check_target(manifest: dict, path: Path):
    """Can this machine run the artifact's target? Returns its backend (None for ``eager``).

    The ``eager`` backend (target ``cpu``) runs anywhere. Other backends are
    asked through an optional ``check_loadable(target_summary)`` hook, where a
    GPU backend checks the device's arch against the target's; a backend this
    sparsec lacks is an error.
    """
    summary = manifest.get("target") or {}
    backend_name = summary.get("backend")
    if backend_name == "eager":
        return None
    from sparsec.registry import registry
    from sparsec.errors import RegistryError

    try:
        backend = registry().get("backend", backend_name)
    except RegistryError as exc:
        raise ArtifactError(
            f"artifact '{path}' was compiled for target '{summary.get('name')}' on backend '{backend_name}', "
            "which this version of sparsec does not have",
            where=str(path / MANIFEST), fix="load it with the sparsec that compiled it, or recompile for cpu",
        ) from exc
    backend = backend() if isinstance(backend, type) else backend
    hook = getattr(backend, "check_loadable", None)
    if hook is not None:
        hook(summary)
    return backend
