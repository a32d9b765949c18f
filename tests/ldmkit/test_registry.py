"""The component registry: all-or-nothing plugins, collisions, aliases, lookup, discovery, validation."""

from __future__ import annotations

import threading
import types

import pytest
from pydantic import BaseModel

import ldmkit
from ldmkit import Params, PluginError, UnknownComponentError, hookimpl
from ldmkit import registry as registry_module
from ldmkit.registry import PluginInfo, Registry


def _sampler(name: str, base: type = ldmkit.Sampler, params: type = Params) -> type:
    return type(f"S_{name}", (base,), {"name": name, "Params": params, "sample": lambda self, *a, **k: None})


DDIM, DDPM, PLMS = _sampler("ddim"), _sampler("ddpm"), _sampler("plms")


class TinyDataset:
    name = "tiny-data"

    class Params(Params):
        size: int = 4


class TinyTask(ldmkit.Task):
    name = "tiny-task"

    class Params(Params):
        pass

    def run(self, pipeline, request, options):
        return None


def _plugin(name: str, **hooks) -> types.ModuleType:
    """A plugin module whose hooks register the given classes (kind hook name -> list of classes or a callable)."""
    module = types.ModuleType(name)
    for hook, classes in hooks.items():

        def impl(register, _classes=classes):
            if callable(_classes):
                return _classes(register)
            for cls in _classes:
                register(cls)

        impl.__name__ = hook
        setattr(module, hook, hookimpl(impl))
    return module


def _info(name: str, dist: str | None = None) -> PluginInfo:
    return PluginInfo(name, dist or f"dist-{name}", "1.0")


def test_one_plugin_per_hook_kind() -> None:
    reg = Registry()
    plugin = types.ModuleType("every_kind")

    @hookimpl
    def register_first_stages(register):
        register(type("FS", (ldmkit.FirstStage,), {"name": "fs", "encode": None, "decode": None}))

    @hookimpl
    def register_denoisers(register):
        register(type("DN", (ldmkit.Denoiser,), {"name": "dn", "forward": None}))

    @hookimpl
    def register_conditioners(register):
        register(type("CO", (ldmkit.Conditioner,), {"name": "co", "forward": None, "unconditional": None}))

    @hookimpl
    def register_samplers(register):
        register(DDIM)

    @hookimpl
    def register_tasks(register):
        register(TinyTask)

    @hookimpl
    def register_datasets(register):
        register(TinyDataset)

    @hookimpl
    def register_adapters(register):
        from ldmkit.adapters import Adapter

        register(type("AD", (Adapter,), {"name": "ad", "apply": None, "remove": None}))

    for fn in (register_first_stages, register_denoisers, register_conditioners, register_samplers):
        setattr(plugin, fn.__name__, fn)
    plugin.register_tasks, plugin.register_datasets = register_tasks, register_datasets
    plugin.register_adapters = register_adapters
    assert reg.add_plugin(plugin, _info("every"))
    assert [reg.names(k) for k in registry_module.KIND_NAMES] == [
        ["fs"],
        ["dn"],
        ["co"],
        ["ddim"],
        ["tiny-task"],
        ["tiny-data"],
        ["ad"],
    ]
    assert reg.info("dataset", "tiny-data").plugin == _info("every")
    assert reg.plugins == [_info("every")] and reg.failures == []


def test_add_plugin_is_all_or_nothing() -> None:
    reg = Registry()
    nameless = _sampler("")
    bad = _plugin("half", register_samplers=[DDIM, nameless])
    assert reg.add_plugin(bad, _info("half")) is False
    assert reg.names("sampler") == [] and reg.plugins == []
    assert reg.failures[0].plugin == _info("half") and "name" in reg.failures[0].error
    assert not reg.manager.is_registered(bad)
    # the same names are free for the next plugin
    assert reg.add_plugin(_plugin("good", register_samplers=[DDIM]), _info("good"))
    assert reg.names("sampler") == ["ddim"]


def test_failure_in_a_later_hook_undoes_earlier_hooks() -> None:
    def explode(register):
        raise RuntimeError("weights missing")

    plugin = _plugin("two_hooks", register_samplers=[DDIM], register_tasks=explode)
    reg = Registry()
    assert not reg.add_plugin(plugin, _info("two"))
    assert reg.names("sampler") == [] and reg.names("task") == []
    assert "RuntimeError: weights missing" in reg.failures[0].error


def test_collision_names_both_distributions() -> None:
    reg = Registry()
    assert reg.add_plugin(_plugin("a", register_samplers=[DDIM]), _info("a", "dist-one"))
    other = _sampler("ddim")
    assert not reg.add_plugin(_plugin("b", register_samplers=[other, PLMS]), _info("b", "dist-two"))
    assert reg.get("sampler", "ddim") is DDIM and "plms" not in reg.names("sampler")
    error = reg.failures[0].error
    assert "'ddim'" in error and "dist-one" in error and "dist-two" in error


def test_collision_inside_one_plugin() -> None:
    reg = Registry()
    assert not reg.add_plugin(_plugin("twice", register_samplers=[DDIM, _sampler("ddim")]), _info("twice"))
    assert reg.names("sampler") == []


def test_same_name_in_different_kinds_is_fine() -> None:
    reg = Registry()
    task = type("T", (TinyTask,), {"name": "ddim"})
    assert reg.add_plugin(_plugin("p", register_samplers=[DDIM], register_tasks=[task]), _info("p"))
    assert reg.get("task", "ddim") is task and reg.get("sampler", "ddim") is DDIM


def test_aliases() -> None:
    reg = Registry()
    plugin = _plugin("aliased", register_samplers=lambda register: register(DDIM, aliases=["ddim-uniform", "DDIM"]))
    assert reg.add_plugin(plugin, _info("aliased"))
    assert reg.get("sampler", "DDIM") is DDIM and reg.get("sampler", "ddim-uniform") is DDIM
    assert reg.info("sampler", "DDIM").name == "ddim"
    assert reg.names("sampler") == ["ddim"]  # aliases are not listed as components
    with pytest.raises(UnknownComponentError, match="Did you mean 'ddim-uniform'"):
        reg.get("sampler", "ddim-uniforn")


@pytest.mark.parametrize(
    "registers",
    [
        lambda register: register(_sampler("plms"), aliases=["ddim"]),  # alias on a name
        lambda register: register(_sampler("ddim-uniform")),  # name on an alias
        lambda register: register(_sampler("x"), aliases=["ddim-uniform"]),  # alias on an alias
    ],
)
def test_alias_collisions(registers) -> None:
    reg = Registry()
    first = _plugin("first", register_samplers=lambda register: register(DDIM, aliases=["ddim-uniform"]))
    assert reg.add_plugin(first, _info("first"))
    assert not reg.add_plugin(_plugin("second", register_samplers=registers), _info("second"))
    assert "dist-first" in reg.failures[0].error and "dist-second" in reg.failures[0].error
    assert reg.names("sampler") == ["ddim"]


def test_unknown_name_suggests_and_lists() -> None:
    reg = Registry()
    reg.add_plugin(_plugin("p", register_samplers=[DDIM, DDPM, PLMS]), _info("p"))
    with pytest.raises(UnknownComponentError) as info:
        reg.get("sampler", "dimm")
    message = str(info.value)
    assert "'dimm'" in message and "Did you mean 'ddim'?" in message and "ddim, ddpm, plms" in message
    assert isinstance(info.value, ldmkit.SpecError) and isinstance(info.value, KeyError)
    with pytest.raises(UnknownComponentError) as info:
        reg.get("sampler", "zzzzzz")
    assert "Did you mean" not in str(info.value)
    with pytest.raises(UnknownComponentError, match=r"Registered: \(none\)"):
        reg.get("task", "anything")
    with pytest.raises(ValueError, match="unknown component kind"):
        reg.get("samplers", "ddim")


def test_list_with_pattern() -> None:
    reg = Registry()
    reg.add_plugin(_plugin("p", register_samplers=[DDIM, DDPM, PLMS]), _info("p"))
    assert reg.list("sampler") == ["ddim", "ddpm", "plms"]
    assert reg.list("sampler", "dd*") == ["ddim", "ddpm"]
    assert reg.list("sampler", "*m") == ["ddim", "ddpm"]
    assert reg.list("sampler", "p?ms") == ["plms"]
    assert reg.list("sampler", "DD*") == []  # case-sensitive, like the names
    assert reg.list("task") == []


def test_create_validates_params() -> None:
    class WithSteps(ldmkit.Sampler):
        name = "with-steps"

        class Params(Params):
            order: int = 2

        def sample(self, *args, **kwargs):
            return None

    reg = Registry()
    reg.add_plugin(_plugin("p", register_samplers=[WithSteps]), _info("p"))
    assert reg.create("sampler", "with-steps", {"order": 3}).params.order == 3
    with pytest.raises(ValueError, match="order"):
        reg.create("sampler", "with-steps", {"order": "3"})


class _LooseParams(BaseModel):
    order: int = 1


class _NotFrozenButForbidding(BaseModel):
    model_config = {"extra": "forbid"}


@pytest.mark.parametrize(
    ("hook", "cls", "needle"),
    [
        ("register_samplers", _sampler(""), "valid 'name'"),
        ("register_samplers", type("NoName", (ldmkit.Sampler,), {"sample": None}), "valid 'name'"),
        ("register_samplers", _sampler("a.b"), "valid 'name'"),
        ("register_samplers", _sampler(" padded "), "valid 'name'"),
        ("register_samplers", _sampler("loose", params=_LooseParams), "extra='forbid'"),
        ("register_samplers", _sampler("plain", params=dict), "not a pydantic model"),
        ("register_denoisers", DDIM, "does not subclass ldmkit.Denoiser"),
        ("register_samplers", type("Free", (), {"name": "free", "Params": Params}), "does not subclass ldmkit.Sampler"),
        ("register_samplers", DDIM(), "not a class"),
        ("register_adapters", DDIM, "does not subclass ldmkit.Adapter"),
    ],
)
def test_invalid_classes_refused(hook, cls, needle) -> None:
    reg = Registry()
    assert not reg.add_plugin(_plugin("bad", **{hook: [cls]}), _info("bad"))
    assert needle in reg.failures[0].error
    assert all(reg.names(kind) == [] for kind in registry_module.KIND_NAMES)


def test_params_with_extra_forbid_are_enough() -> None:
    reg = Registry()
    assert reg.add_plugin(_plugin("ok", register_samplers=[_sampler("ok", params=_NotFrozenButForbidding)]))


def test_unknown_hook_and_bad_signature_are_failures() -> None:
    reg = Registry()
    misspelled = types.ModuleType("misspelled")
    misspelled.register_sampler = hookimpl(lambda register: register(DDIM))
    misspelled.register_sampler.__name__ = "register_sampler"
    assert not reg.add_plugin(misspelled, _info("misspelled"))
    assert (
        "'register_sampler'" in reg.failures[-1].error and "did you mean 'register_samplers'" in reg.failures[-1].error
    )

    bad_signature = types.ModuleType("bad_signature")

    def register_samplers(reg_callback):
        reg_callback(DDIM)

    bad_signature.register_samplers = hookimpl(register_samplers)
    assert not reg.add_plugin(bad_signature, _info("sig"))
    assert "register_samplers" in reg.failures[-1].error and "reg_callback" in reg.failures[-1].error
    assert reg.names("sampler") == []


@pytest.mark.parametrize(
    ("declared", "ok"), [("1.0", True), (None, True), ("2.0", False), ("1.9", False), ("x", False)]
)
def test_api_version(declared, ok) -> None:
    plugin = _plugin("versioned", register_samplers=[DDIM])
    if declared is not None:
        plugin.LDMKIT_API_VERSION = declared
    reg = Registry()
    assert reg.add_plugin(plugin, _info("versioned")) is ok
    assert (reg.names("sampler") == ["ddim"]) is ok
    if not ok:
        assert declared in reg.failures[0].error


def test_strict_registry_raises_with_plugin_details() -> None:
    reg = Registry(strict=True)
    with pytest.raises(PluginError) as info:
        reg.add_plugin(_plugin("bad", register_samplers=[_sampler("")]), PluginInfo("bad", "dist-bad", "3.1"))
    assert "'bad'" in str(info.value) and "dist-bad 3.1" in str(info.value)


@pytest.fixture
def restore_registry():
    saved = registry_module._registry
    yield
    registry_module.reset_registry(saved)


def test_get_registry_discovers_once(monkeypatch, restore_registry) -> None:
    calls = []

    def fake_discover(*args, **kwargs):
        calls.append(1)
        return Registry()

    monkeypatch.setattr(registry_module, "discover", fake_discover)
    registry_module.reset_registry()
    threads = [threading.Thread(target=ldmkit.get_registry) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    first = ldmkit.get_registry()
    assert ldmkit.get_registry() is first and len(calls) == 1
    registry_module.reset_registry()
    assert ldmkit.get_registry() is not first and len(calls) == 2
    mine = Registry()
    registry_module.reset_registry(mine)
    assert ldmkit.get_registry() is mine and len(calls) == 2


def test_discover_honours_environment(monkeypatch) -> None:
    monkeypatch.setenv("LDMKIT_LOAD_PLUGINS", " samplers , no-such-plugin ")
    monkeypatch.delenv("LDMKIT_STRICT_PLUGINS", raising=False)
    reg = registry_module.discover()
    assert [p.name for p in reg.plugins] == ["samplers"] and not reg.strict
    monkeypatch.setenv("LDMKIT_STRICT_PLUGINS", "1")
    assert registry_module.discover().strict
