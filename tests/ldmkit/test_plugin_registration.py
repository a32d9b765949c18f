"""Plugin registration promises: all-or-nothing, did-you-mean for misspelled hooks, deprecations warn once."""

from __future__ import annotations

import threading
import types
import warnings

import pytest

import ldmkit
from ldmkit import Params, PluginError, UnknownComponentError, hookimpl
from ldmkit.registry import PluginInfo, Registry


def _sampler(name: str, **attrs) -> type:
    body = {"name": name, "Params": Params, "sample": lambda self, *a, **k: None, **attrs}
    return type(f"S_{name.replace('-', '_')}", (ldmkit.Sampler,), body)


def _plugin(name: str, **hooks) -> types.ModuleType:
    """A plugin module; each keyword is a hook name mapped to a function ``(register) -> None``."""
    module = types.ModuleType(name)
    for hook, body in hooks.items():

        def impl(register, _body=body):
            _body(register)

        impl.__name__ = hook
        setattr(module, hook, hookimpl(impl))
    return module


def _info(name: str) -> PluginInfo:
    return PluginInfo(name, f"dist-{name}", "1.0")


def _snapshot(reg: Registry) -> tuple[dict, dict]:
    return dict(reg.components), dict(reg.aliases)


@pytest.fixture
def reg() -> Registry:
    registry = Registry()
    base = _plugin("base", register_samplers=lambda register: register(_sampler("ddim"), aliases=["ddim-classic"]))
    assert registry.add_plugin(base, _info("base"))
    return registry


# -- all or nothing ---------------------------------------------------------------------------------


class NotASampler:
    name = "broken"


@pytest.mark.parametrize(
    "second",
    [
        pytest.param(lambda r: r(NotASampler), id="not-a-subclass"),
        pytest.param(lambda r: r(_sampler("has.dot")), id="bad-name"),
        pytest.param(lambda r: r(_sampler("ddim")), id="collides-with-other-plugin"),
        pytest.param(lambda r: r(_sampler("fresh"), aliases=["ddim-classic"]), id="alias-collides"),
        pytest.param(lambda r: r(_sampler("first")), id="collides-with-itself"),
        pytest.param(lambda r: r(_sampler("fresh", deprecated=42)), id="deprecated-not-a-message"),
        pytest.param(lambda r: r(_sampler("fresh"), deprecated_aliases={"old": 3}), id="deprecation-message-type"),
        pytest.param(lambda r: r(_sampler("fresh"), deprecated_aliases={"ddim": "x"}), id="deprecated-alias-collides"),
        pytest.param(lambda r: r(_sampler("fresh"), aliases="fresh2"), id="aliases-as-a-string"),
        pytest.param(lambda r: 1 / 0, id="hook-raises"),
    ],
)
def test_invalid_second_registration_leaves_nothing_behind(reg: Registry, second) -> None:
    before = _snapshot(reg)

    def register_samplers(register):
        register(_sampler("first"), aliases=["first-alias"], deprecated_aliases=["first-old"])
        second(register)

    assert reg.add_plugin(_plugin("half", register_samplers=register_samplers), _info("half")) is False
    assert _snapshot(reg) == before
    with pytest.raises(UnknownComponentError):
        reg.get("sampler", "first")
    assert [f.plugin.name for f in reg.failures] == ["half"]
    assert "half" not in [p.name for p in reg.plugins]


def test_failure_in_a_later_hook_undoes_earlier_hooks(reg: Registry) -> None:
    before = _snapshot(reg)
    plugin = _plugin(
        "two_hooks",
        register_samplers=lambda r: r(_sampler("ok-sampler")),
        register_tasks=lambda r: r(NotASampler),
    )
    assert reg.add_plugin(plugin, _info("two_hooks")) is False
    assert _snapshot(reg) == before
    # the failed plugin is unregistered from the manager, so a fixed plugin of that name loads
    fixed = _plugin("two_hooks", register_samplers=lambda r: r(_sampler("ok-sampler")))
    assert reg.add_plugin(fixed, _info("two_hooks")) is True
    assert reg.get("sampler", "ok-sampler").name == "ok-sampler"


def test_strict_registry_raises_and_still_registers_nothing() -> None:
    reg = Registry(strict=True)
    plugin = _plugin("strict", register_samplers=lambda r: (r(_sampler("a")), r(NotASampler)))
    with pytest.raises(PluginError, match="strict"):
        reg.add_plugin(plugin, _info("strict"))
    assert reg.components == {} and reg.aliases == {}


# -- misspelled hooks ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("typo", "meant"),
    [
        ("register_sampler", "register_samplers"),
        ("register_denoiser", "register_denoisers"),
        ("regster_tasks", "register_tasks"),
        ("register_first_stage", "register_first_stages"),
    ],
)
def test_misspelled_hook_is_reported_with_a_suggestion(reg: Registry, typo: str, meant: str) -> None:
    before = _snapshot(reg)
    plugin = _plugin("typo", register_conditioners=lambda r: None, **{typo: lambda r: r(_sampler("never"))})
    assert reg.add_plugin(plugin, _info("typo")) is False
    error = reg.failures[-1].error
    assert repr(typo) in error and f"did you mean {meant!r}" in error
    assert _snapshot(reg) == before


def test_unrelated_hook_name_is_reported_without_a_wrong_guess(reg: Registry) -> None:
    plugin = _plugin("odd", completely_unrelated=lambda r: None)
    assert reg.add_plugin(plugin, _info("odd")) is False
    error = reg.failures[-1].error
    assert "'completely_unrelated'" in error and "did you mean" not in error


# -- deprecations --------------------------------------------------------------------------------------


def _deprecations(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, DeprecationWarning)]


def test_deprecated_component_warns_once_per_name(reg: Registry) -> None:
    old = _sampler("old-sampler", deprecated="it will be removed in 2.0; use 'ddim'")
    assert reg.add_plugin(_plugin("dep", register_samplers=lambda r: r(old)), _info("dep"))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert reg.names("sampler") == ["ddim", "old-sampler"]  # listing never warns
        assert reg.list("sampler", "old-*") == ["old-sampler"]
        assert _deprecations(record) == []
        assert reg.get("sampler", "old-sampler") is old
        assert isinstance(reg.create("sampler", "old-sampler"), old)
        reg.get("sampler", "old-sampler")
        reg.get("sampler", "ddim")
    messages = _deprecations(record)
    assert len(messages) == 1
    assert "'old-sampler' is deprecated" in messages[0] and "removed in 2.0" in messages[0]
    assert record[0].filename == __file__  # points at the caller, not at ldmkit


def test_deprecated_aliases_warn_and_resolve(reg: Registry) -> None:
    new = _sampler("new-sampler")

    def register_samplers(register):
        register(new, aliases=["ns"], deprecated_aliases={"legacy-sampler": "renamed in 1.1", "older": ""})

    assert reg.add_plugin(_plugin("aliases", register_samplers=register_samplers), _info("aliases"))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert reg.get("sampler", "new-sampler") is new
        assert reg.get("sampler", "ns") is new
        assert _deprecations(record) == []
        for _ in range(3):
            assert isinstance(reg.create("sampler", "legacy-sampler"), new)
            assert reg.get("sampler", "older") is new
    messages = _deprecations(record)
    assert len(messages) == 2
    assert "'legacy-sampler' is deprecated; use 'new-sampler'" in messages[0] and "renamed in 1.1" in messages[0]
    assert "'older' is deprecated; use 'new-sampler'" in messages[1]


def test_deprecated_alias_list_and_deprecated_class_both_warn(reg: Registry) -> None:
    cls = _sampler("retired", deprecated="no longer maintained")
    plugin = _plugin("both", register_samplers=lambda r: r(cls, deprecated_aliases=["retired-v0"]))
    assert reg.add_plugin(plugin, _info("both"))
    with pytest.warns(DeprecationWarning) as record:
        reg.get("sampler", "retired-v0")
    messages = _deprecations(list(record))
    assert any("'retired-v0' is deprecated; use 'retired'" in m for m in messages)
    assert any("'retired' is deprecated: no longer maintained" in m for m in messages)


def test_deprecation_warns_once_under_concurrent_lookups(reg: Registry) -> None:
    cls = _sampler("contended", deprecated="going away")
    assert reg.add_plugin(_plugin("threads", register_samplers=lambda r: r(cls)), _info("threads"))
    barrier = threading.Barrier(8)

    def look_up():
        barrier.wait()
        for _ in range(50):
            reg.get("sampler", "contended")

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        threads = [threading.Thread(target=look_up) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(_deprecations(record)) == 1


def test_separate_registries_warn_separately(reg: Registry) -> None:
    cls = _sampler("per-registry", deprecated="going away")
    other = Registry()
    for r, name in ((reg, "a"), (other, "b")):
        assert r.add_plugin(_plugin(name, register_samplers=lambda reg_, c=cls: reg_(c)), _info(name))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        reg.get("sampler", "per-registry")
        other.get("sampler", "per-registry")
    assert len(_deprecations(record)) == 2


# -- commands and models join the all-or-nothing rule -------------------------------------------------


@pytest.mark.parametrize("what", ["command", "model"])
def test_a_colliding_command_or_model_undoes_the_plugins_components(reg: Registry, what: str, tmp_path) -> None:
    from ldmkit.commands import Command

    first = type("First", (Command,), {"name": "shared", "help": "first"})
    hooks = {"register_commands": lambda r: r(first)} if what == "command" else {}
    if what == "model":
        hooks = {"register_models": lambda r: r("shared", tmp_path)}
    assert reg.add_plugin(_plugin("owner", **hooks), _info("owner"))
    before = (_snapshot(reg), dict(reg.commands), dict(reg.models))
    hooks["register_samplers"] = lambda r: r(_sampler("fresh"))
    assert reg.add_plugin(_plugin("late", **hooks), _info("late")) is False
    assert (_snapshot(reg), dict(reg.commands), dict(reg.models)) == before
    assert f"{what} 'shared' is registered by both dist-owner" in reg.failures[-1].error
