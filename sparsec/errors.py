"""One error hierarchy for everything sparsec raises on purpose.

Every message says what went wrong, where (file, pass, node, source line),
expected versus actual where that applies, and how to fix it. The CLI prints
``str(err)`` and exits 1 (or 2 for :class:`UsageError`); ``--debug`` adds the
traceback.
"""

from __future__ import annotations


class SparsecError(Exception):
    """Base of every error sparsec raises deliberately.

    ``what`` is one sentence; ``where`` locates it; ``expected``/``actual``
    name the mismatch; ``fix`` tells the user what to do next.
    """

    exit_code = 1

    def __init__(
        self,
        what: str,
        *,
        where: str | None = None,
        expected: str | None = None,
        actual: str | None = None,
        fix: str | None = None,
    ) -> None:
        self.what = what
        self.where = where
        self.expected = expected
        self.actual = actual
        self.fix = fix
        super().__init__(self._render())

    def _render(self) -> str:
        lines = [self.what]
        if self.where:
            lines.append(f"  where:    {self.where}")
        if self.expected is not None:
            lines.append(f"  expected: {self.expected}")
        if self.actual is not None:
            lines.append(f"  actual:   {self.actual}")
        if self.fix:
            lines.append(f"  fix:      {self.fix}")
        return "\n".join(lines)


class UsageError(SparsecError):
    """The user asked for something malformed (bad flag value, bad shape)."""

    exit_code = 2


class LoadError(SparsecError):
    """A model file could not be read: missing, corrupt, or of an unsafe kind."""


class TraceError(SparsecError):
    """The model could not be captured as a graph."""


class PipelineError(UsageError):
    """A pipeline text could not be parsed, or names options that do not exist."""


class RegistryError(UsageError):
    """An unknown or duplicate name in the pass/target/backend registry."""


class VerificationError(SparsecError):
    """An IR invariant does not hold (see ``Module.verify``)."""


class PassFailedError(SparsecError):
    """A pass could not handle its input. Names the node and the fix."""


class PipelineFailure(SparsecError):
    """A pass failed inside a PassManager run; chains the cause."""


class TargetError(SparsecError):
    """A target cannot be compiled for (missing backend, unsupported arch)."""


class ArtifactError(SparsecError):
    """An artifact could not be written or loaded (hash, version, layout)."""


def node_location(node) -> str:
    """``node 'conv1' (aten.conv2d.default) at model.py:12`` for error messages."""
    loc = f"node '{node.name}' ({_target_name(node)})"
    trace = node.meta.get("stack_trace") if hasattr(node, "meta") else None
    if trace:
        frame = _last_user_frame(trace)
        if frame:
            loc += f" at {frame}"
    return loc


def _target_name(node) -> str:
    t = node.target
    if isinstance(t, str):
        return f"{node.op} {t}"
    name = getattr(t, "__name__", None) or str(t)
    if hasattr(t, "_schema"):
        ns = getattr(t, "namespace", "aten")
        return f"{ns}.{t._schema.name.split('::')[-1]}.{t._overloadname}"
    return name


def _last_user_frame(trace: str) -> str | None:
    """The innermost ``File "x.py", line N`` of an fx stack trace, as ``x.py:N``.

    Frames inside torch itself (``torch/nn/modules/conv.py``) are skipped
    when a user frame exists: the user's line is the one worth showing.
    """
    last = last_user = None
    for line in trace.splitlines():
        line = line.strip()
        if line.startswith('File "'):
            try:
                path = line.split('"')[1]
                lineno = line.split("line ")[1].split(",")[0]
            except IndexError:
                continue
            last = f"{path}:{lineno}"
            if not _in_torch(path):
                last_user = last
    return last_user or last


def _in_torch(path: str) -> bool:
    import os
    import sys

    torch = sys.modules.get("torch")
    root = os.path.dirname(getattr(torch, "__file__", None) or "") if torch else ""
    return bool(root) and os.path.abspath(path).startswith(root + os.sep)


class BuildError(SparsecError):
    """A kernel could not be built: nvcc or the CUTLASS headers missing, or a compile failed."""


class KernelError(SparsecError):
    """A compiled kernel refused a problem or failed at run time."""
