"""Pipeline text: parse/format round trips, named pipelines, and every error message."""

from __future__ import annotations

import dataclasses
import re
from typing import ClassVar, Literal

import pytest

from sparsec.errors import PipelineError, RegistryError
from sparsec.passes.base import Pass, PassResult
from sparsec.passes.manager import PassManager
from sparsec.passes.pipeline import format_pass, format_pipeline, parse_pipeline
from sparsec.registry import Registry, registry


@dataclasses.dataclass(frozen=True)
class Opts(Pass):
    """A test pass with an option of every allowed type.

    Example: opts{ratio=0.3,mode=slow}
    """

    name: ClassVar[str] = "opts"
    summary: ClassVar[str] = "test pass with options"

    ratio: float = 0.5
    round_to: int = 8
    flag: bool = False
    label: str = "x"
    mode: Literal["fast", "slow"] = "fast"
    level: Literal[1, 2, 4] = 1
    names: tuple[str, ...] = ()
    sizes: tuple[int, ...] = ()
    limit: int | None = None
    tag: str | None = None

    def run(self, mod, ctx) -> PassResult:
        return PassResult(False)


@dataclasses.dataclass(frozen=True)
class Plain(Pass):
    """A test pass without options.

    Example: plain
    """

    name: ClassVar[str] = "plain"
    summary: ClassVar[str] = "test pass without options"

    def run(self, mod, ctx) -> PassResult:
        return PassResult(False)


@dataclasses.dataclass(frozen=True)
class Required(Pass):
    """A test pass whose option has no default.

    Example: required{k=3}
    """

    name: ClassVar[str] = "required"
    summary: ClassVar[str] = "test pass with a required option"

    k: int

    def validate(self) -> None:
        if self.k < 0:
            raise PipelineError(f"option 'k' of pass '{self.name}' must be >= 0", actual=str(self.k))

    def run(self, mod, ctx) -> PassResult:
        return PassResult(False)


@pytest.fixture
def reg() -> Registry:
    r = Registry(load_plugins=False)
    for cls in (Opts, Plain, Required):
        r.register_pass(cls, provider="tests")
    r.add("pipeline", "mine", "opts{ratio=0.1},plain")
    r.add("pipeline", "nested", "mine,required{k=1}")
    r.add("pipeline", "loop", "loop")
    return r


# -- round trips ---------------------------------------------------------------------

ROUND_TRIP = {
    "plain": [Plain()],
    "opts": [Opts()],
    "opts{}": None,  # an empty option list is malformed: see the error tests
    "opts{ratio=0.3}": [Opts(ratio=0.3)],
    "opts{ratio=1e-3}": [Opts(ratio=0.001)],
    "opts{ratio=3}": [Opts(ratio=3.0)],
    "opts{ratio=-0.25}": [Opts(ratio=-0.25)],
    "opts{round-to=16}": [Opts(round_to=16)],
    "opts{round_to=16}": [Opts(round_to=16)],
    "opts{round-to=-1}": [Opts(round_to=-1)],
    "opts{flag=true}": [Opts(flag=True)],
    "opts{flag=false}": [Opts(flag=False)],
    "opts{label=hello}": [Opts(label="hello")],
    'opts{label="a, b{c}=d [e]"}': [Opts(label="a, b{c}=d [e]")],
    'opts{label="say \\"hi\\""}': [Opts(label='say "hi"')],
    'opts{label="back\\\\slash"}': [Opts(label="back\\slash")],
    'opts{label="true"}': [Opts(label="true")],
    'opts{label=""}': [Opts(label="")],
    "opts{label=café}": [Opts(label="café")],
    'opts{label="café au lait"}': [Opts(label="café au lait")],
    "opts{mode=slow}": [Opts(mode="slow")],
    "opts{level=4}": [Opts(level=4)],
    "opts{names=[a,b,c]}": [Opts(names=("a", "b", "c"))],
    'opts{names=["x y",z]}': [Opts(names=("x y", "z"))],
    "opts{names=[]}": [Opts(names=())],
    "opts{sizes=[1,2,3]}": [Opts(sizes=(1, 2, 3))],
    "opts{limit=none}": [Opts(limit=None)],
    "opts{limit=5}": [Opts(limit=5)],
    "opts{tag=none}": [Opts(tag=None)],
    'opts{tag="none"}': [Opts(tag="none")],
    "required{k=3}": [Required(k=3)],
    "opts{ratio=0.3,round-to=4,flag=true,mode=slow,names=[p,q],limit=2},plain,opts": [
        Opts(ratio=0.3, round_to=4, flag=True, mode="slow", names=("p", "q"), limit=2),
        Plain(),
        Opts(),
    ],
    "  opts { ratio = 0.3 , names = [ a , b ] } ,\tplain  ": [Opts(ratio=0.3, names=("a", "b")), Plain()],
    "": [],
    "   ": [],
}


@pytest.mark.parametrize("text", [t for t, v in ROUND_TRIP.items() if v is not None])
def test_parse_format_round_trip(text: str, reg: Registry) -> None:
    passes = parse_pipeline(text, reg)
    assert passes == ROUND_TRIP[text]
    canon = format_pipeline(passes)
    assert parse_pipeline(canon, reg) == passes
    assert format_pipeline(parse_pipeline(canon, reg)) == canon  # the canonical text is a fixed point
    assert str(PassManager.parse(text, reg)) == canon
    assert PassManager.parse(str(PassManager.parse(text, reg)), reg).passes == passes


def test_format_prints_only_non_defaults_with_dashes() -> None:
    assert format_pass(Opts()) == "opts"
    assert format_pass(Opts(round_to=4, flag=True)) == "opts{round-to=4,flag=true}"
    assert format_pass(Opts(label="a b")) == 'opts{label="a b"}'
    assert format_pass(Opts(label="none")) == 'opts{label="none"}'
    assert format_pass(Opts(names=("a", "b c"))) == 'opts{names=[a,"b c"]}'
    assert format_pass(Opts(limit=3, tag="t")) == "opts{limit=3,tag=t}"
    assert format_pass(Opts(tag="x", limit=None)) == "opts{tag=x}"
    assert format_pass(Required(k=0)) == "required{k=0}"
    assert str(Opts(ratio=0.25)) == "opts{ratio=0.25}"


@pytest.mark.parametrize(
    "p",
    [
        Opts(label='q"uote', names=("{", "}", ",", "=", "[]")),
        Opts(label="tab\there", tag="new\nline"),
        Opts(label="\\", names=("true", "false", "none", "")),
        Opts(ratio=1e-300, round_to=2**40, sizes=(0, -3)),
        Opts(label="[", names=("]", "[", ","), tag="{"),  # quoted punctuation is a value, not syntax
        Opts(names=("]",)),
        Opts(ratio=float("inf"), label="-", tag="=")
    ],
)
def test_awkward_values_round_trip(p: Pass, reg: Registry) -> None:
    assert parse_pipeline(format_pass(p), reg) == [p]


def test_named_pipelines_expand(reg: Registry) -> None:
    assert parse_pipeline("mine", reg) == [Opts(ratio=0.1), Plain()]
    assert parse_pipeline("plain,nested", reg) == [Plain(), Opts(ratio=0.1), Plain(), Required(k=1)]
    assert str(PassManager.parse("nested", reg)) == "opts{ratio=0.1},plain,required{k=1}"


def test_default_pipeline_expands_to_builtin_passes() -> None:
    names = [p.name for p in PassManager.parse("default").passes]
    assert names == ["canonicalize", "fold-bn", "dce"]
    assert str(PassManager.parse("default")) == "canonicalize,fold-bn,dce"


def test_builtin_pass_text_round_trips() -> None:
    reg = registry()
    for name in reg.names("pass"):
        passes = parse_pipeline(name, reg)
        assert format_pipeline(passes) == name
    text = "to-dtype{dtype=bf16,keep-io=false}"
    assert str(PassManager.parse(text)) == text


# -- errors ----------------------------------------------------------------------------


def _caret_column(msg: str) -> int:
    """The 1-based column the caret points at, checked against the 'column N' line."""
    lines = msg.splitlines()
    caret = next(line for line in lines if line.strip() == "^")
    col = caret.index("^") - 4 + 1
    m = re.search(r"column (\d+)", msg)
    assert m and int(m.group(1)) == col, msg
    return col


@pytest.mark.parametrize(
    "text, column, expected, actual",
    [
        ("opts{ratio=0.3", 15, "'}'", "end of text"),
        ("opts{ratio}", 11, "'='", "'}'"),
        ("opts{}", 6, "'word'", "'}'"),
        ("plain,,plain", 7, "'word'", "','"),
        ("plain plain", 7, "','", "'plain'"),
        ("plain,", 7, "'word'", "end of text"),
        ("opts{ratio=0.3}}", 16, "','", "'}'"),
        ("{ratio=1}", 1, "'word'", "'{'"),
        ("opts{names=[a,b}", 16, "']'", "'}'"),
    ],
)
def test_malformed_text_points_at_the_column(text, column, expected, actual, reg: Registry) -> None:
    with pytest.raises(PipelineError, match="malformed pipeline text") as info:
        parse_pipeline(text, reg)
    msg = str(info.value)
    assert _caret_column(msg) == column
    assert f"    {text}\n" in msg
    assert f"expected: {expected}" in msg and f"actual:   {actual}" in msg
    assert "name{key=value,...}" in msg


def test_unterminated_quote_is_malformed(reg: Registry) -> None:
    text = 'opts{label="abc}'
    with pytest.raises(PipelineError, match="malformed pipeline text") as info:
        parse_pipeline(text, reg)
    assert _caret_column(str(info.value)) == text.index('"') + 1


def test_value_must_not_be_punctuation(reg: Registry) -> None:
    with pytest.raises(PipelineError, match="expected a value") as info:
        parse_pipeline("opts{ratio=,flag=true}", reg)
    assert _caret_column(str(info.value)) == 12


def test_unknown_pass_suggests_and_points(reg: Registry) -> None:
    with pytest.raises(RegistryError, match="unknown pass 'optz'") as info:
        parse_pipeline("plain,optz{ratio=1}", reg)
    msg = str(info.value)
    assert "did you mean 'opts'?" in msg
    assert "known passes:" in msg and "required" in msg
    assert _caret_column(msg) == 7


def test_unknown_builtin_pass_suggests() -> None:
    with pytest.raises(RegistryError, match="did you mean 'fold-bn'"):
        PassManager.parse("canonicalize,fold_bn")


def test_unknown_option_lists_the_options(reg: Registry) -> None:
    with pytest.raises(PipelineError, match="pass 'opts' has no option 'ratoi'") as info:
        parse_pipeline("opts{ratio=1,ratoi=2}", reg)
    msg = str(info.value)
    assert "its options are: ratio, round-to, flag, label, mode, level, names, sizes, limit, tag" in msg
    assert _caret_column(msg) == 14
    with pytest.raises(PipelineError, match=r"pass 'plain' has no option 'x'[\s\S]*its options are: \(none\)"):
        parse_pipeline("plain{x=1}", reg)


@pytest.mark.parametrize(
    "text, key, expected, actual",
    [
        ("opts{ratio=fast}", "ratio", "float", "fast"),
        ("opts{round-to=8.0}", "round-to", "int", "8.0"),
        ("opts{round-to=true}", "round-to", "int", "true"),
        ("opts{round_to=[8]}", "round-to", "int", "[...]"),
        ("opts{flag=yes}", "flag", "bool", "yes"),
        ("opts{flag=1}", "flag", "bool", "1"),
        ("opts{mode=medium}", "mode", "one of fast, slow", "medium"),
        ("opts{level=3}", "level", "one of 1, 2, 4", "3"),
        ("opts{names=a}", "names", "a list of str like [a,b]", "a"),
        ("opts{sizes=[1,x]}", "sizes", "int", "x"),
        ("opts{limit=many}", "limit", "int or none", "many"),
        ("opts{ratio=none}", "ratio", "float", "none"),
        ("opts{label=[a]}", "label", "str", "[...]"),
    ],
)
def test_bad_option_value_names_the_expected_type(text, key, expected, actual, reg: Registry) -> None:
    with pytest.raises(PipelineError, match=f"option '{key}' of pass 'opts' has a bad value") as info:
        parse_pipeline(text, reg)
    msg = str(info.value)
    assert f"expected: {expected}\n" in msg
    assert f"actual:   {actual}" in msg


@pytest.mark.parametrize(
    "text, key, column",
    [
        ("opts{ratio=1,ratio=2}", "ratio", 14),
        ("opts{round-to=1,round_to=2}", "round_to", 17),
        ("opts{round_to=1, round-to=2}", "round-to", 18),
    ],
)
def test_option_given_twice(text: str, key: str, column: int, reg: Registry) -> None:
    with pytest.raises(PipelineError, match=f"option '{key}' given twice") as info:
        parse_pipeline(text, reg)
    assert _caret_column(str(info.value)) == column


def test_quoted_name_is_malformed_and_points_at_the_quote(reg: Registry) -> None:
    with pytest.raises(PipelineError, match="malformed pipeline text") as info:
        parse_pipeline('plain,  "plain"', reg)
    assert _caret_column(str(info.value)) == 9
    assert "actual:   'plain'" in str(info.value)


def test_missing_required_option_is_a_pipeline_error(reg: Registry) -> None:
    with pytest.raises(PipelineError, match="pass 'required' needs option 'k'") as info:
        parse_pipeline("plain,required", reg)
    msg = str(info.value)
    assert "expected: int" in msg and "write required{k=...}" in msg
    assert _caret_column(msg) == 7


def test_validate_runs_on_parsed_options(reg: Registry) -> None:
    with pytest.raises(PipelineError, match="option 'k' of pass 'required' must be >= 0"):
        parse_pipeline("required{k=-1}", reg)


def test_constructor_checks_option_types() -> None:
    with pytest.raises(PipelineError, match="option 'round_to' of pass 'opts' has a bad value") as info:
        Opts(round_to="8")  # type: ignore[arg-type]
    assert "expected: int" in str(info.value) and "actual:   '8'" in str(info.value)
    with pytest.raises(PipelineError, match="option 'flag'"):
        Opts(flag=1)  # type: ignore[arg-type]
    with pytest.raises(PipelineError, match="option 'names'"):
        Opts(names=["a"])  # type: ignore[arg-type]
    with pytest.raises(PipelineError, match="option 'ratio'"):
        Opts(ratio=True)  # type: ignore[arg-type]
    assert Opts(ratio=1).ratio == 1


def test_named_pipeline_takes_no_options(reg: Registry) -> None:
    with pytest.raises(PipelineError, match="pipeline 'mine' takes no options") as info:
        parse_pipeline("plain,mine{x=1}", reg)
    assert _caret_column(str(info.value)) == 7


def test_self_expanding_pipeline_is_an_error(reg: Registry) -> None:
    with pytest.raises(PipelineError, match="pipeline 'loop' expands into itself"):
        parse_pipeline("loop", reg)


def test_pipeline_errors_are_usage_errors(reg: Registry) -> None:
    with pytest.raises(PipelineError) as info:
        parse_pipeline("opts{", reg)
    assert info.value.exit_code == 2


# -- property: any option values round-trip ------------------------------------------------

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_texts = st.text(max_size=12)
_opts = st.builds(
    Opts,
    ratio=st.floats(allow_nan=False),
    round_to=st.integers(),
    flag=st.booleans(),
    label=_texts,
    mode=st.sampled_from(["fast", "slow"]),
    level=st.sampled_from([1, 2, 4]),
    names=st.lists(_texts, max_size=3).map(tuple),
    sizes=st.lists(st.integers(), max_size=3).map(tuple),
    limit=st.none() | st.integers(),
    tag=st.none() | _texts,
)


@given(st.lists(_opts | st.just(Plain()) | st.builds(Required, k=st.integers(0, 99)), max_size=4))
def test_any_pipeline_round_trips(passes) -> None:
    reg = Registry(load_plugins=False)
    for cls in (Opts, Plain, Required):
        reg.register_pass(cls, provider="tests")
    text = format_pipeline(passes)
    assert parse_pipeline(text, reg) == passes
    assert str(PassManager.parse(text, reg)) == text
