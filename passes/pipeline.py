"""Pipeline text: ``canonicalize,prune-channels{ratio=0.3,round-to=8},dce``.

Grammar::

    pipeline := item (',' item)*
    item     := NAME ('{' option (',' option)* '}')?
    option   := KEY '=' value
    value    := 'true' | 'false' | 'none' | NUMBER | WORD | '"' text '"' | '[' value (',' value)* ']'

Option keys may be spelled with ``-`` or ``_``. A NAME that is a registered
pipeline expands to its passes. ``format_pipeline(parse_pipeline(t))`` gives
a canonical text that parses back to equal passes; only options that differ
from their defaults are printed.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from typing import Any

from sparsec.errors import PipelineError, RegistryError
from sparsec.passes.base import Pass, _strip_optional, describe_type

_TOKEN = re.compile(r'\s*(?:(?P<punct>[{}\[\],=])|"(?P<quoted>(?:[^"\\]|\\.)*)"|(?P<word>[^\s{}\[\],="]+))')


def _tokens(text: str) -> list[tuple[str, str, int]]:
    out, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise PipelineError(
                "malformed pipeline text", where=_caret(text, pos),
                fix="write passes as name or name{key=value,...}, separated by commas",
            )
        if m.group("punct"):
            out.append(("punct", m.group("punct"), m.start("punct")))
        elif m.group("quoted") is not None:
            out.append(("str", _unescape(m.group("quoted")), m.start("quoted") - 1))
        else:
            out.append(("word", m.group("word"), m.start("word")))
        pos = m.end()
    return out


_ESCAPES = {"n": "\n", "t": "\t"}


def _unescape(text: str) -> str:
    """Undo ``\\"``, ``\\\\`` (what the formatter writes), ``\\n`` and ``\\t``; keeps non-ASCII text as is."""
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), text, flags=re.S)


def _caret(text: str, pos: int) -> str:
    return f"column {pos + 1}\n    {text}\n    {' ' * pos}^"


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _tokens(text)
        self.i = 0

    def peek(self) -> tuple[str, str, int] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def at(self, punct: str) -> bool:
        """Is the next token the punctuation ``punct`` (not a quoted string that spells it)?"""
        tok = self.peek()
        return tok is not None and tok[0] == "punct" and tok[1] == punct

    def take(self, kind: str | None = None, value: str | None = None) -> tuple[str, str, int]:
        tok = self.peek()
        if tok is None or (kind and tok[0] != kind) or (value and (tok[0] != "punct" or tok[1] != value)):
            pos = tok[2] if tok else len(self.text)
            want = value or kind or "more text"
            got = repr(tok[1]) if tok else "end of text"
            raise PipelineError(
                "malformed pipeline text", where=_caret(self.text, pos),
                expected=repr(want), actual=got,
                fix="write passes as name or name{key=value,...}, separated by commas",
            )
        self.i += 1
        return tok

    def items(self) -> list[tuple[str, dict[str, Any], int]]:
        out = []
        if not self.toks:
            return out
        while True:
            _, name, pos = self.take("word")
            opts: dict[str, Any] = {}
            if self.at("{"):
                self.take(value="{")
                while True:
                    _, key, kpos = self.take("word")
                    self.take(value="=")
                    if key.replace("-", "_") in opts:
                        raise PipelineError(f"option '{key}' given twice", where=_caret(self.text, kpos))
                    opts[key.replace("-", "_")] = (self.value(), kpos)
                    if self.at(","):
                        self.take(value=",")
                        continue
                    self.take(value="}")
                    break
            out.append((name, opts, pos))
            if self.peek() is None:
                return out
            self.take(value=",")

    def value(self) -> Any:
        tok = self.peek()
        if self.at("["):
            self.take(value="[")
            vals = []
            if self.at("]"):
                self.take(value="]")
                return ("list", vals)
            while True:
                vals.append(self.value())
                if self.at(","):
                    self.take(value=",")
                    continue
                self.take(value="]")
                return ("list", vals)
        kind, text, _ = self.take()
        if kind == "punct":
            raise PipelineError("malformed pipeline text: expected a value", where=_caret(self.text, tok[2]))
        return (kind, text)


def _convert(raw: tuple, tp: Any, key: str, pass_name: str) -> Any:
    base, optional = _strip_optional(tp)
    kind, text = raw
    bad = PipelineError(
        f"option '{key}' of pass '{pass_name}' has a bad value",
        expected=describe_type(tp), actual=str(text if kind != "list" else "[...]"),
    )
    if kind == "word" and text == "none" and optional:
        return None
    origin = typing.get_origin(base)
    if origin is tuple:
        if kind != "list":
            raise bad
        elem = typing.get_args(base)[0]
        return tuple(_convert(v, elem, key, pass_name) for v in text)
    if kind == "list":
        raise bad
    if origin is typing.Literal:
        for choice in typing.get_args(base):
            try:
                if _convert((kind, text), type(choice), key, pass_name) == choice:
                    return choice
            except PipelineError:
                continue
        raise bad
    try:
        if base is bool:
            if text in ("true", "false"):
                return text == "true"
            raise ValueError
        if base is int:
            return int(text)
        if base is float:
            return float(text)
        if base is str:
            return text
    except ValueError:
        raise bad from None
    raise bad


def parse_pipeline(text: str, reg=None, _depth: int = 0) -> list[Pass]:
    """Parse pipeline text into pass instances, looking names up in the registry."""
    from sparsec.registry import registry as default_registry

    reg = reg or default_registry()
    passes: list[Pass] = []
    for name, opts, pos in _Parser(text).items():
        if name in reg.names("pipeline") and name not in reg.names("pass"):
            if opts:
                raise PipelineError(f"pipeline '{name}' takes no options", where=_caret(text, pos))
            if _depth > 8:
                raise PipelineError(f"pipeline '{name}' expands into itself")
            passes.extend(parse_pipeline(reg.get("pipeline", name), reg, _depth + 1))
            continue
        try:
            cls = reg.get("pass", name)
        except RegistryError as exc:
            raise RegistryError(exc.what, where=_caret(text, pos), fix=exc.fix) from None
        types = cls.option_types()
        kwargs = {}
        for key, (raw, kpos) in opts.items():
            if key not in types:
                known = ", ".join(k.replace("_", "-") for k in types) or "(none)"
                raise PipelineError(
                    f"pass '{name}' has no option '{key.replace('_', '-')}'",
                    where=_caret(text, kpos), fix=f"its options are: {known}",
                )
            kwargs[key] = _convert(raw, types[key], key.replace("_", "-"), name)
        missing = [k for k in types if k not in kwargs and k not in cls.option_defaults()]
        if missing:
            key = missing[0].replace("_", "-")
            raise PipelineError(
                f"pass '{name}' needs option '{key}'", where=_caret(text, pos),
                expected=describe_type(types[missing[0]]), fix=f"write {name}{{{key}=...}}",
            )
        passes.append(cls(**kwargs))
    return passes


def _format_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "none"
    if isinstance(v, tuple):
        return "[" + ",".join(_format_value(x) for x in v) + "]"
    if isinstance(v, str):
        if re.fullmatch(r'[^\s{}\[\],="]+', v) and v not in ("true", "false", "none"):
            return v
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(v)


def format_pass(p: Pass) -> str:
    defaults = p.option_defaults()
    opts = [
        f"{f.name.replace('_', '-')}={_format_value(getattr(p, f.name))}"
        for f in dataclasses.fields(p)
        if f.name not in defaults or defaults[f.name] != getattr(p, f.name)
    ]
    return p.name + ("{" + ",".join(opts) + "}" if opts else "")


def format_pipeline(passes: list[Pass]) -> str:
    return ",".join(format_pass(p) for p in passes)
