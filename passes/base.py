"""``Pass``, ``PassResult`` and the ``@function_pass`` decorator.

A pass is a frozen dataclass. Its class-level attributes describe it, its
fields are its options, and ``run(mod, ctx)`` mutates ``mod`` in place and
returns a :class:`PassResult`. Passes hold no state between runs and never
call ``recompile()``: the :class:`~sparsec.passes.manager.PassManager` does
that, then verifies.

Example:
    >>> @dataclass(frozen=True)
    ... class DropRelu(Pass):
    ...     name = "drop-relu"
    ...     summary = "remove every relu (changes numerics)"
    ...     changes_numerics = True
    ...     def run(self, mod, ctx):
    ...         ...
    ...         return PassResult(modified=True, stats={"removed": 3})

Option fields may be ``int``, ``float``, ``bool``, ``str``, a ``Literal`` of
those, ``tuple[str, ...]``, or any of these ``| None``. Their values are
checked in ``__post_init__``; a subclass adds its own range checks by
overriding ``validate``.
"""

from __future__ import annotations

import dataclasses
import typing
from types import MappingProxyType, UnionType
from typing import Any, Callable, ClassVar, Literal, Mapping

from sparsec.errors import PipelineError

ALLOWED_SCALARS = (bool, int, float, str)


@dataclasses.dataclass(frozen=True)
class PassResult:
    """What a pass did: whether it changed the module, and counters."""

    modified: bool
    stats: Mapping[str, int | float] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "stats", MappingProxyType(dict(self.stats)))


class Pass:
    """Base class of all passes. Subclasses are frozen dataclasses."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    requires: ClassVar[tuple[type, ...]] = ()
    preserves: ClassVar[tuple[type, ...]] = ()
    changes_numerics: ClassVar[bool] = False
    idempotent: ClassVar[bool] = True

    def __post_init__(self) -> None:
        hints = self.option_types()
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not type_accepts(hints[f.name], value):
                raise PipelineError(
                    f"option '{f.name}' of pass '{self.name}' has a bad value",
                    expected=describe_type(hints[f.name]),
                    actual=repr(value),
                )
        self.validate()

    def validate(self) -> None:
        """Range checks beyond the option types; raise PipelineError."""

    def run(self, mod, ctx) -> PassResult:  # pragma: no cover - abstract
        raise NotImplementedError(f"pass {self.name} does not implement run()")

    # -- introspection ----------------------------------------------------------
    @classmethod
    def option_types(cls) -> dict[str, Any]:
        hints = typing.get_type_hints(cls)
        return {f.name: hints[f.name] for f in dataclasses.fields(cls)}  # type: ignore[arg-type]

    @classmethod
    def option_defaults(cls) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.default is not dataclasses.MISSING:
                out[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                out[f.name] = f.default_factory()
        return out

    def options(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def __str__(self) -> str:
        from sparsec.passes.pipeline import format_pass

        return format_pass(self)


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def is_allowed_type(tp: Any) -> bool:
    tp, _ = _strip_optional(tp)
    if tp in ALLOWED_SCALARS:
        return True
    origin = typing.get_origin(tp)
    if origin is Literal:
        return all(isinstance(a, ALLOWED_SCALARS) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        return len(args) == 2 and args[1] is Ellipsis and args[0] in ALLOWED_SCALARS
    return False


def type_accepts(tp: Any, value: Any) -> bool:
    tp, optional = _strip_optional(tp)
    if value is None:
        return optional
    origin = typing.get_origin(tp)
    if origin is Literal:
        return value in typing.get_args(tp)
    if origin is tuple:
        elem = typing.get_args(tp)[0]
        return isinstance(value, tuple) and all(type_accepts(elem, v) for v in value)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def describe_type(tp: Any) -> str:
    tp, optional = _strip_optional(tp)
    origin = typing.get_origin(tp)
    if origin is Literal:
        text = "one of " + ", ".join(str(a) for a in typing.get_args(tp))
    elif origin is tuple:
        text = f"a list of {typing.get_args(tp)[0].__name__} like [a,b]"
    else:
        text = getattr(tp, "__name__", str(tp))
    return text + (" or none" if optional else "")


def function_pass(
    name: str,
    *,
    summary: str,
    changes_numerics: bool = False,
    idempotent: bool = True,
    requires: tuple[type, ...] = (),
    preserves: tuple[type, ...] = (),
) -> Callable[[Callable], type[Pass]]:
    """Make a pass with no options from ``fn(mod, ctx) -> PassResult | bool``.

    Example:
        >>> @function_pass("count-relu", summary="count relus; changes nothing")
        ... def count_relu(mod, ctx):
        ...     n = sum(1 for n in mod.graph.nodes if "relu" in str(n.target))
        ...     return PassResult(modified=False, stats={"relus": n})
    """

    def deco(fn: Callable) -> type[Pass]:
        def run(self, mod, ctx) -> PassResult:
            out = fn(mod, ctx)
            return out if isinstance(out, PassResult) else PassResult(modified=bool(out))

        cls = type(
            fn.__name__,
            (Pass,),
            {
                "name": name,
                "summary": summary,
                "changes_numerics": changes_numerics,
                "idempotent": idempotent,
                "requires": requires,
                "preserves": preserves,
                "run": run,
                "__doc__": fn.__doc__,
                "__module__": fn.__module__,
            },
        )
        return dataclasses.dataclass(frozen=True)(cls)

    return deco
