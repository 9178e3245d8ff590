"""Writing the CLI's output files: checked up front, written atomically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

from sparsec.errors import ArtifactError


def check_output_path(path: Path, *, force: bool, what: str = "output", directory: bool = False) -> None:
    """Fail fast, before any work, if ``path`` cannot or must not be written.

    ``directory``: the output is a directory (an artifact), which may exist
    and be replaced with ``force``; otherwise it must not be a directory.
    """
    if path.exists() and not force:
        raise ArtifactError(
            f"the {what} '{path}' already exists", where=str(path),
            fix="use --force to replace it, or choose another -o path",
        )
    if path.is_dir() and not directory:
        raise ArtifactError(f"the {what} path '{path}' is a directory", where=str(path), fix="give a file path to -o")
    # The nearest existing ancestor must be a writable directory; nothing is created yet.
    ancestor = path.absolute().parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    problem = None
    if not ancestor.is_dir():
        problem = f"{ancestor} is not a directory"
    elif not os.access(ancestor, os.W_OK):
        problem = f"{ancestor} is not writable"
    if problem:
        raise ArtifactError(f"cannot write the {what} '{path}'", where=str(path), actual=problem,
                            fix="choose an -o path in a directory you can write to")


def write_atomic(path: Path, write: Callable[[Path], None], *, what: str = "output") -> None:
    """Write ``path`` through a temporary file in its directory and ``os.replace``.

    A crash or an error never leaves a half-written file at ``path``.
    """
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=parent)
    except OSError as exc:
        raise ArtifactError(f"cannot write the {what} '{path}'", where=str(path), actual=exc.strerror or str(exc),
                            fix="choose an -o path in a directory you can write to") from exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
