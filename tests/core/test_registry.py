"""The registry: every registered pass is well-formed; names, providers, plugins, reset."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import inspect
import logging
from typing import ClassVar

import pytest

from sparsec.errors import RegistryError
from sparsec.passes.base import Pass, PassResult, is_allowed_type
from sparsec.registry import ENTRY_POINT_GROUP, Registry, _ProviderView, register_pass, registry, reset_registry

# -- every registered pass ------------------------------------------------------------


def _pass_names() -> list[str]:
    return Registry(load_plugins=False).names("pass")


@pytest.mark.parametrize("name", _pass_names())
def test_registered_pass_is_well_formed(name: str) -> None:
    cls = registry().get("pass", name)
    assert inspect.isclass(cls) and issubclass(cls, Pass), f"'{name}' is registered as {cls!r}, not a Pass class"
    assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen, f"pass '{name}' is not a frozen dataclass"
    assert cls.name == name, f"registry key '{name}' but the class says name = '{cls.name}'"
    assert name == name.lower() and "_" not in name and " " not in name, f"'{name}' is not kebab-case"
    assert isinstance(cls.summary, str) and cls.summary.strip(), f"pass '{name}' has no summary"
    assert "Example:" in (cls.__doc__ or ""), f"pass '{name}' has no 'Example:' in its docstring"
    assert type(cls.idempotent) is bool, f"pass '{name}': idempotent is {cls.idempotent!r}"
    assert type(cls.changes_numerics) is bool, f"pass '{name}': changes_numerics is {cls.changes_numerics!r}"
    for attr in ("requires", "preserves"):
        value = getattr(cls, attr)
        assert isinstance(value, tuple) and all(inspect.isclass(a) for a in value), f"pass '{name}': {attr} = {value!r}"
    for option, tp in cls.option_types().items():
        assert is_allowed_type(tp), f"option '{option}' of pass '{name}' has type {tp!r}, which pipeline text cannot spell"
    # with its defaults (where every option has one) its text form is its bare name
    if set(cls.option_defaults()) == set(cls.option_types()):
        assert str(cls()) == name


def test_builtin_passes_are_registered() -> None:
    assert {"canonicalize", "dce", "fold-bn", "to-dtype", "to-channels-last"} <= set(registry().names("pass"))


def test_builtin_pipelines_name_registered_passes() -> None:
    from sparsec.passes.pipeline import parse_pipeline

    reg = registry()
    for name in reg.names("pipeline"):
        assert parse_pipeline(name, reg), f"pipeline '{name}' expands to nothing"


# -- lookups and duplicates ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Alpha(Pass):
    """A test pass.

    Example: alpha
    """

    name: ClassVar[str] = "alpha"
    summary: ClassVar[str] = "test pass"

    def run(self, mod, ctx) -> PassResult:
        return PassResult(False)


@dataclasses.dataclass(frozen=True)
class _OtherAlpha(_Alpha):
    """Another pass with the same name."""


def test_duplicate_name_names_both_providers() -> None:
    reg = Registry(load_plugins=False)
    reg.add("pass", "alpha", _Alpha, provider="first-plugin")
    with pytest.raises(RegistryError, match="duplicate pass name 'alpha'") as info:
        reg.add("pass", "alpha", _OtherAlpha, provider="second-plugin")
    assert "registered by 'first-plugin' and again by 'second-plugin'" in str(info.value)
    assert reg.get("pass", "alpha") is _Alpha  # the first one stays


def test_duplicate_of_a_builtin_names_sparsec() -> None:
    reg = Registry(load_plugins=False)
    with pytest.raises(RegistryError, match="registered by 'sparsec' and again by 'my-plugin'"):
        reg.add("pass", "dce", _Alpha, provider="my-plugin")


def test_same_name_in_different_kinds_is_fine() -> None:
    reg = Registry(load_plugins=False)
    reg.add("pass", "alpha", _Alpha)
    reg.add("pipeline", "alpha", "dce")
    assert reg.get("pass", "alpha") is _Alpha and reg.get("pipeline", "alpha") == "dce"


def test_unknown_name_suggests_close_matches_and_lists_all() -> None:
    reg = Registry(load_plugins=False)
    with pytest.raises(RegistryError, match=r"unknown pass 'canonicalise'") as info:
        reg.get("pass", "canonicalise")
    msg = str(info.value)
    assert "did you mean 'canonicalize'?" in msg
    assert "known passes: " in msg
    for name in reg.names("pass"):
        assert name in msg


def test_unknown_name_without_close_match_still_lists_known() -> None:
    reg = Registry(load_plugins=False)
    with pytest.raises(RegistryError) as info:
        reg.get("target", "zzzzzz")
    assert "did you mean" not in str(info.value)
    assert "cpu" in str(info.value) and "h100" in str(info.value)


def test_unknown_kind_is_rejected() -> None:
    reg = Registry(load_plugins=False)
    with pytest.raises(ValueError, match="unknown registry kind 'widget'"):
        reg.add("widget", "x", object())


def test_registry_error_is_a_usage_error() -> None:
    from sparsec.errors import UsageError

    assert issubclass(RegistryError, UsageError) and RegistryError("x").exit_code == 2


def test_string_factories_load_lazily() -> None:
    reg = Registry(load_plugins=False)
    reg.add("backend", "ghost", "sparsec_no_such_module_xyz:Backend", provider="test")
    assert "ghost" in reg.names("backend")  # listing does not import
    with pytest.raises(ModuleNotFoundError):
        reg.get("backend", "ghost")


def test_string_factory_resolves_dotted_attribute() -> None:
    reg = Registry(load_plugins=False)
    reg.add("pass", "alpha", f"{__name__}:_Alpha")
    assert reg.get("pass", "alpha") is _Alpha
    assert reg.provider("pass", "alpha") == "sparsec"


def test_items_yields_loaded_objects() -> None:
    reg = Registry(load_plugins=False)
    pipelines = dict(reg.items("pipeline"))
    assert pipelines["default"] == "canonicalize,fold-bn,dce"


# -- plugins ------------------------------------------------------------------------------


def _plugin_hook(reg) -> None:
    """A plugin's ``register(registry)``."""
    reg.register_pass(_Alpha)
    reg.add("pipeline", "alpha-then-dce", "alpha,dce")


def _broken_hook(reg) -> None:
    raise AssertionError("never loaded")


def test_provider_view_carries_the_provider() -> None:
    reg = Registry(load_plugins=False)
    view = _ProviderView(reg, "demo-plugin (demo:register)")
    _plugin_hook(view)
    assert reg.get("pass", "alpha") is _Alpha
    assert reg.provider("pass", "alpha") == "demo-plugin (demo:register)"
    assert reg.provider("pipeline", "alpha-then-dce") == "demo-plugin (demo:register)"
    with pytest.raises(RegistryError, match="registered by 'demo-plugin \\(demo:register\\)' and again by 'other'"):
        _ProviderView(reg, "other").register_pass(_OtherAlpha)


def test_provider_view_register_pass_works_as_decorator() -> None:
    reg = Registry(load_plugins=False)
    view = _ProviderView(reg, "deco-plugin")
    assert view.register_pass()(_Alpha) is _Alpha
    assert reg.provider("pass", "alpha") == "deco-plugin"


def _fake_entry_points(*eps):
    def entry_points(*, group=None, **kw):
        assert group == ENTRY_POINT_GROUP
        return list(eps)

    return entry_points


def test_plugins_load_from_entry_points_on_first_lookup(monkeypatch) -> None:
    ep = importlib.metadata.EntryPoint(name="demo", value=f"{__name__}:_plugin_hook", group="sparsec.plugins")
    monkeypatch.setattr(importlib.metadata, "entry_points", _fake_entry_points(ep))
    reg = Registry()  # plugins pending
    assert reg.get("pass", "alpha") is _Alpha
    assert f"{__name__}:_plugin_hook" in reg.provider("pass", "alpha")
    assert "alpha-then-dce" in reg.names("pipeline")


def test_a_broken_plugin_is_logged_and_skipped(monkeypatch, caplog) -> None:
    bad = importlib.metadata.EntryPoint(name="bad", value="sparsec_no_such_plugin_xyz:register", group="sparsec.plugins")
    good = importlib.metadata.EntryPoint(name="demo", value=f"{__name__}:_plugin_hook", group="sparsec.plugins")
    monkeypatch.setattr(importlib.metadata, "entry_points", _fake_entry_points(bad, good))
    with caplog.at_level(logging.WARNING, logger="sparsec.registry"):
        reg = Registry()
        names = reg.names("pass")
    assert "alpha" in names and "dce" in names
    assert any("sparsec_no_such_plugin_xyz" in r.getMessage() and "failed to load" in r.getMessage() for r in caplog.records)


def test_load_plugins_false_ignores_entry_points(monkeypatch) -> None:
    ep = importlib.metadata.EntryPoint(name="demo", value=f"{__name__}:_plugin_hook", group="sparsec.plugins")
    monkeypatch.setattr(importlib.metadata, "entry_points", _fake_entry_points(ep))
    assert "alpha" not in Registry(load_plugins=False).names("pass")


# -- the process-wide registry ---------------------------------------------------------------


def test_reset_registry_gives_a_fresh_one() -> None:
    first = reset_registry(load_plugins=False)
    assert registry() is first
    first.add("pass", "alpha", _Alpha)
    second = reset_registry(load_plugins=False)
    assert registry() is second and second is not first
    assert "alpha" not in second.names("pass")
    assert "dce" in second.names("pass")


def test_module_level_register_pass_decorator() -> None:
    reset_registry(load_plugins=False)
    assert register_pass(_Alpha) is _Alpha
    assert registry().get("pass", "alpha") is _Alpha
    assert registry().provider("pass", "alpha") == __name__
