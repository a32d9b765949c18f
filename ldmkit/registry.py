"""Plugin discovery and the component registry.

Plugins are modules named by entry points of the group ``ldmkit`` (the built-ins too). A plugin
that fails to import, implements a hook with a bad signature or an unknown name, registers an
invalid class, or collides with another plugin is reported and skipped as a whole; everything
else keeps working. ``LDMKIT_STRICT_PLUGINS=1`` turns any such failure into a :class:`PluginError`;
``LDMKIT_LOAD_PLUGINS=a,b`` loads only the named entry points.

Adapters (``register_adapters``, LoRA and textual inversion) are a component kind like the others
(``"adapter"``), their classes subclassing :class:`ldmkit.adapters.Adapter`.

Besides components, plugins add CLI subcommands (``register_commands``, looked up with
:meth:`Registry.command`) and named ready-to-use pipelines (``register_models``, looked up with
:meth:`Registry.model`); their names collide like component names, and a command may not take a
built-in command's name.

Deprecation: a component class may set ``deprecated = "message"``, and a plugin may register old
names with ``register(cls, deprecated_aliases={"old-name": "message"})``. Looking either up through
:meth:`Registry.get` or :meth:`Registry.create` emits one :class:`DeprecationWarning` per name and
registry (listing names never warns).
"""

from __future__ import annotations

import builtins
import difflib
import fnmatch
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy
from pydantic import BaseModel

from ldmkit import hookspecs
from ldmkit.commands import BUILTIN_COMMANDS, COMMAND_NAME, Command
from ldmkit.errors import PluginError, UnknownComponentError
from ldmkit.interfaces import KINDS

log = logging.getLogger(__name__)

API_VERSION = "1.0"
"""Core plugin API version. A plugin declares ``LDMKIT_API_VERSION = "1.0"``; the major must match and
its minor may not exceed the core's."""

ENTRY_POINT_GROUP = "ldmkit"
KIND_NAMES = tuple(hookspecs.HOOK_KINDS.values())


@dataclass(frozen=True)
class PluginInfo:
    name: str
    distribution: str
    version: str


@dataclass(frozen=True)
class ComponentInfo:
    kind: str
    name: str
    cls: type[Any]  # a component class, checked by _validate_component when registered
    plugin: PluginInfo
    aliases: tuple[str, ...] = ()
    deprecated_aliases: tuple[tuple[str, str], ...] = ()
    """(alias, message) pairs: aliases that still work but warn; they are listed in ``aliases`` too."""

    @property
    def deprecated(self) -> str | None:
        """The class's deprecation message (its ``deprecated`` attribute), or None."""
        message = getattr(self.cls, "deprecated", None)
        return message if isinstance(message, str) else None


@dataclass(frozen=True)
class CommandInfo:
    """A CLI subcommand a plugin registered through ``register_commands``."""

    name: str
    cls: type[Command]
    plugin: PluginInfo

    @property
    def help(self) -> str:
        """The command's one-line help."""
        return self.cls.help


ModelSource = str | os.PathLike[str] | Callable[[], "str | os.PathLike[str]"]
"""What ``register_models`` accepts for a model's folder: a path, or a callable returning one."""


@dataclass(frozen=True)
class ModelInfo:
    """A named pipeline folder a plugin registered through ``register_models``."""

    name: str
    source: ModelSource
    plugin: PluginInfo
    description: str = ""
    default: bool = False
    """Whether this is the default model (the one opened when no spec or model is named)."""

    def folder(self) -> Path:
        """The pipeline folder (a callable source is called each time); its contents are not checked here."""
        source = self.source
        if callable(source):
            try:
                source = source()
            except Exception as exc:
                raise PluginError(
                    f"model {self.name!r} of plugin {self.plugin.name!r} ({self.plugin.distribution}) "
                    f"could not find its folder: {type(exc).__name__}: {exc}"
                ) from exc
        if not isinstance(source, (str, os.PathLike)):
            raise PluginError(f"model {self.name!r} of plugin {self.plugin.name!r} gave {source!r}, not a folder path")
        return Path(source)


@dataclass(frozen=True)
class PluginFailure:
    plugin: PluginInfo
    error: str


@dataclass
class _Staged:
    """What one plugin's hooks registered, held back until all of them succeeded."""

    components: list[ComponentInfo] = field(default_factory=list)
    commands: list[CommandInfo] = field(default_factory=list)
    models: list[ModelInfo] = field(default_factory=list)


@dataclass
class Registry:
    """Registered components by (kind, name), commands and models by name, the loaded plugins and the failed ones."""

    components: dict[tuple[str, str], ComponentInfo] = field(default_factory=dict)
    aliases: dict[tuple[str, str], str] = field(default_factory=dict)
    commands: dict[str, CommandInfo] = field(default_factory=dict)
    models: dict[str, ModelInfo] = field(default_factory=dict)
    plugins: list[PluginInfo] = field(default_factory=list)
    failures: list[PluginFailure] = field(default_factory=list)
    strict: bool = False
    manager: pluggy.PluginManager | None = None
    _warned: set[tuple[str, str]] = field(default_factory=set, repr=False, compare=False)
    _warn_lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    # -- lookup -------------------------------------------------------------------------------
    def names(self, kind: str) -> list[str]:
        _check_kind(kind)
        return sorted(name for (k, name) in self.components if k == kind)

    def list(self, kind: str, pattern: str = "*") -> list[str]:
        """Registered names of ``kind`` matching a glob ``pattern``."""
        return [n for n in self.names(kind) if fnmatch.fnmatchcase(n, pattern)]

    def info(self, kind: str, name: str) -> ComponentInfo:
        _check_kind(kind)
        key = (kind, self.aliases.get((kind, name), name))
        if key in self.components:
            return self.components[key]
        known = self.names(kind)
        close = difflib.get_close_matches(name, known + [a for (k, a) in self.aliases if k == kind], n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        listing = ", ".join(known) if known else "(none)"
        raise UnknownComponentError(f"unknown {kind.replace('_', ' ')} type {name!r}.{hint} Registered: {listing}.")

    def get(self, kind: str, name: str) -> type[Any]:
        """The class registered as ``name`` of ``kind``; raises UnknownComponentError with suggestions.

        A deprecated component or alias emits a :class:`DeprecationWarning` (once per name).
        """
        return self._lookup(kind, name, stacklevel=3)

    def create(self, kind: str, name: str, params: Any = None) -> Any:
        """Build a component from its registered name and (unvalidated) params.

        Children the component builds (a composite conditioner's parts) come from this registry too.
        """
        from ldmkit.building import building_with

        cls = self._lookup(kind, name, stacklevel=3)
        with building_with(self):
            return cls.from_params(params)

    def command(self, name: str) -> CommandInfo:
        """The plugin command ``name``; raises UnknownComponentError with a suggestion and the known names."""
        return _named(self.commands, name, "command")

    def model(self, name: str) -> ModelInfo:
        """The registered model ``name``; raises UnknownComponentError with a suggestion and the known names."""
        return _named(self.models, name, "model")

    def default_model(self) -> ModelInfo | None:
        """The model registered with ``default=True``, or None when no plugin provides one."""
        return next((info for info in self.models.values() if info.default), None)

    def _lookup(self, kind: str, name: str, stacklevel: int) -> type[Any]:
        info = self.info(kind, name)
        notes = []
        if name != info.name and (message := dict(info.deprecated_aliases).get(name)) is not None:
            notes.append((name, f"{kind} name {name!r} is deprecated; use {info.name!r}. {message}".strip()))
        if info.deprecated is not None:
            notes.append((info.name, f"{kind} {info.name!r} is deprecated: {info.deprecated}"))
        for key, message in notes:
            with self._warn_lock:  # several threads may look the same name up at once
                first = (kind, key) not in self._warned
                self._warned.add((kind, key))
            if first:
                warnings.warn(message, DeprecationWarning, stacklevel=stacklevel)
        return info.cls

    # -- registration ---------------------------------------------------------------------------
    def add_plugin(self, plugin: ModuleType | object, info: PluginInfo | None = None) -> bool:
        """Register one plugin object; all of its components or none. Returns success."""
        manager = self.manager or make_plugin_manager()
        self.manager = manager
        info = info or PluginInfo(getattr(plugin, "__name__", type(plugin).__name__), "(not installed)", "")
        try:
            _check_api_version(plugin, info)
            manager.register(plugin, name=f"{info.distribution}:{info.name}")
        except Exception as exc:  # pluggy raises PluginValidationError or ValueError
            return self._fail(info, f"{type(exc).__name__}: {exc}")
        staged = _Staged()
        try:
            for caller in manager.get_hookcallers(plugin) or []:
                if not caller.has_spec():
                    close = difflib.get_close_matches(caller.name, list(hookspecs.ALL_HOOKS), n=1)
                    hint = f" (did you mean {close[0]!r}?)" if close else ""
                    raise PluginError(f"implements unknown hook {caller.name!r}{hint}")
                register = self._register_for(caller.name, info, staged)
                for impl in caller.get_hookimpls():
                    if impl.plugin is plugin:
                        impl.function(register=register)
            self._commit(staged, info)
        except (Exception, SystemExit) as exc:  # a hook that calls sys.exit() fails its plugin, not the program
            manager.unregister(plugin)
            return self._fail(info, f"{type(exc).__name__}: {exc}")
        self.plugins.append(info)
        return True

    def _register_for(self, hook: str, info: PluginInfo, staged: _Staged) -> Callable[..., None]:
        if hook == "register_commands":
            return _command_stager(info, staged.commands)
        if hook == "register_models":
            return _model_stager(info, staged.models)
        return self._stager(hookspecs.HOOK_KINDS[hook], info, staged.components)

    def _stager(self, kind: str, info: PluginInfo, staged: builtins.list[ComponentInfo]):
        def register(
            cls: type[Any],
            *,
            aliases: Iterable[str] = (),
            deprecated_aliases: Mapping[str, str] | Iterable[str] = (),
        ) -> None:
            _validate_component(kind, cls)
            old = _deprecated_aliases(cls, deprecated_aliases)
            names = (*_alias_names(cls, aliases), *(alias for alias, _ in old))
            staged.append(ComponentInfo(kind, cls.name, cls, info, names, old))

        return register

    def _commit(self, staged: _Staged, info: PluginInfo) -> None:
        self._check_component_names(staged.components, info)
        self._check_command_names(staged.commands, info)
        self._check_model_names(staged.models, info)
        for comp in staged.components:
            self.components[(comp.kind, comp.name)] = comp
            for alias in comp.aliases:
                self.aliases[(comp.kind, alias)] = comp.name
        self.commands.update((command.name, command) for command in staged.commands)
        self.models.update((model.name, model) for model in staged.models)

    def _check_component_names(self, staged: builtins.list[ComponentInfo], info: PluginInfo) -> None:
        seen: set[tuple[str, str]] = set()
        for comp in staged:
            for name in (comp.name, *comp.aliases):
                key = (comp.kind, name)
                owner = self.components.get(key) or (
                    self.components.get((comp.kind, self.aliases[key])) if key in self.aliases else None
                )
                if owner is not None or key in seen:
                    other = owner.plugin if owner else info
                    raise PluginError(
                        f"{comp.kind} {name!r} is registered by both {other.distribution} "
                        f"(plugin {other.name!r}) and {info.distribution} (plugin {info.name!r})"
                    )
                seen.add(key)

    def _check_command_names(self, staged: builtins.list[CommandInfo], info: PluginInfo) -> None:
        seen: set[str] = set()
        for command in staged:
            if command.name in BUILTIN_COMMANDS:
                raise PluginError(f"command {command.name!r} is a built-in ldmkit command; a plugin may not replace it")
            owner = self.commands.get(command.name)
            if owner is not None or command.name in seen:
                _collision("command", command.name, owner.plugin if owner else info, info)
            seen.add(command.name)

    def _check_model_names(self, staged: builtins.list[ModelInfo], info: PluginInfo) -> None:
        seen: set[str] = set()
        default = self.default_model()
        for model in staged:
            owner = self.models.get(model.name)
            if owner is not None or model.name in seen:
                _collision("model", model.name, owner.plugin if owner else info, info)
            seen.add(model.name)
            if model.default:
                if default is not None:
                    raise PluginError(
                        f"the default model is claimed by both {default.plugin.distribution} (plugin "
                        f"{default.plugin.name!r}, model {default.name!r}) and {info.distribution} "
                        f"(plugin {info.name!r}, model {model.name!r})"
                    )
                default = model

    def _fail(self, info: PluginInfo, error: str) -> bool:
        failure = PluginFailure(info, error)
        self.failures.append(failure)
        message = f"plugin {info.name!r} from {info.distribution} {info.version} was skipped: {error}"
        if self.strict:
            raise PluginError(message)
        log.warning(message)
        return False


def _collision(what: str, name: str, other: PluginInfo, info: PluginInfo) -> None:
    raise PluginError(
        f"{what} {name!r} is registered by both {other.distribution} "
        f"(plugin {other.name!r}) and {info.distribution} (plugin {info.name!r})"
    )


def _named(table: Mapping[str, Any], name: str, what: str) -> Any:
    if name in table:
        return table[name]
    known = sorted(table)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    listing = ", ".join(known) if known else "(none)"
    raise UnknownComponentError(f"unknown {what} {name!r}.{hint} Registered: {listing}.")


def _valid_name(name: Any) -> bool:
    return isinstance(name, str) and bool(name) and name == name.strip() and "." not in name


def _command_stager(info: PluginInfo, staged: list[CommandInfo]) -> Callable[..., None]:
    def register(cls: type[Command]) -> None:
        if not (isinstance(cls, type) and issubclass(cls, Command)):
            raise PluginError(f"register() for command got {cls!r}, not a subclass of ldmkit.commands.Command")
        name = cls.name
        if not isinstance(name, str) or COMMAND_NAME.fullmatch(name) is None:
            raise PluginError(
                f"{cls.__qualname__} has no valid command 'name' (lowercase letters and digits joined by "
                f"hyphens), got {name!r}"
            )
        if not isinstance(cls.help, str) or not cls.help.strip():
            raise PluginError(f"{cls.__qualname__} has no 'help' line")
        staged.append(CommandInfo(name, cls, info))

    return register


def _model_stager(info: PluginInfo, staged: list[ModelInfo]) -> Callable[..., None]:
    def register(name: str, source: ModelSource, *, description: str = "", default: bool = False) -> None:
        if not _valid_name(name) or any(c.isspace() or c in "/\\" for c in name):
            raise PluginError(f"model name {name!r} is not valid (a non-empty string without dots, slashes or spaces)")
        if name == "default":
            raise PluginError("the model name 'default' is reserved; register with default=True instead")
        if not (callable(source) or isinstance(source, (str, os.PathLike))):
            raise PluginError(f"model {name!r}: {source!r} is neither a folder path nor a callable returning one")
        if not isinstance(description, str):
            raise PluginError(f"model {name!r}: description must be a string, got {description!r}")
        if not isinstance(default, bool):
            raise PluginError(f"model {name!r}: default must be True or False, got {default!r}")
        staged.append(ModelInfo(name, source, info, description, default))

    return register


def _check_kind(kind: str) -> None:
    if kind not in KIND_NAMES:
        raise ValueError(f"unknown component kind {kind!r}; kinds: {', '.join(KIND_NAMES)}")


def _kind_base(kind: str) -> type | None:
    if kind == "adapter":  # a kind of its own module, outside the five pipeline interfaces
        from ldmkit.adapters import Adapter

        return Adapter
    return KINDS.get(kind)


def _validate_component(kind: str, cls: Any) -> None:
    base = _kind_base(kind)
    if not isinstance(cls, type):
        raise PluginError(f"register() for {kind} got {cls!r}, not a class")
    if base is not None and not issubclass(cls, base):
        raise PluginError(f"{cls.__qualname__} is registered as a {kind} but does not subclass ldmkit.{base.__name__}")
    name = getattr(cls, "name", "")
    if not isinstance(name, str) or not name or name != name.strip() or "." in name:
        raise PluginError(f"{cls.__qualname__} has no valid 'name' (a non-empty string without dots)")
    params = getattr(cls, "Params", None)
    if not (isinstance(params, type) and issubclass(params, BaseModel)):
        raise PluginError(f"{cls.__qualname__}.Params is not a pydantic model")
    if params.model_config.get("extra") != "forbid":
        raise PluginError(f"{cls.__qualname__}.Params must reject unknown keys (extra='forbid')")
    deprecated = getattr(cls, "deprecated", None)
    if deprecated is not None and not (isinstance(deprecated, str) and deprecated.strip()):
        raise PluginError(f"{cls.__qualname__}.deprecated must be None or a message string, got {deprecated!r}")


def _alias_names(cls: type, aliases: Iterable[str]) -> tuple[str, ...]:
    if isinstance(aliases, str):
        raise PluginError(f"aliases of {cls.__qualname__} must be a list of names, not the string {aliases!r}")
    names = tuple(aliases)
    for alias in names:
        if not isinstance(alias, str) or not alias or alias != alias.strip() or "." in alias:
            raise PluginError(f"{cls.__qualname__} has an invalid alias {alias!r} (a non-empty string without dots)")
    return names


def _deprecated_aliases(cls: type, given: Mapping[str, str] | Iterable[str]) -> tuple[tuple[str, str], ...]:
    """(alias, message) pairs from a mapping alias -> message, or from a list of aliases."""
    if isinstance(given, Mapping):
        pairs = tuple(given.items())
    else:
        pairs = tuple((alias, "") for alias in _alias_names(cls, given))
    _alias_names(cls, [alias for alias, _ in pairs])
    for alias, message in pairs:
        if not isinstance(message, str):
            raise PluginError(f"deprecation message for alias {alias!r} of {cls.__qualname__} is not a string")
    return pairs


def _check_api_version(plugin: object, info: PluginInfo) -> None:
    declared = getattr(plugin, "LDMKIT_API_VERSION", None)
    if declared is None:
        return
    try:
        major, minor = (int(x) for x in str(declared).split(".")[:2])
    except ValueError:
        raise PluginError(f"declares an unreadable LDMKIT_API_VERSION {declared!r}") from None
    core_major, core_minor = (int(x) for x in API_VERSION.split("."))
    if major != core_major or minor > core_minor:
        raise PluginError(f"was written for ldmkit plugin API {declared}, but this ldmkit provides {API_VERSION}")


def make_plugin_manager() -> pluggy.PluginManager:
    """A fresh plugin manager with ldmkit's hookspecs (no plugins loaded)."""
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    return manager


def discover(strict: bool | None = None, only: list[str] | None = None) -> Registry:
    """Build a registry from the installed entry points of the group ``ldmkit``."""
    if strict is None:
        strict = os.environ.get("LDMKIT_STRICT_PLUGINS", "").strip().lower() in ("1", "true", "yes")
    if only is None and os.environ.get("LDMKIT_LOAD_PLUGINS", "").strip():
        only = [s.strip() for s in os.environ["LDMKIT_LOAD_PLUGINS"].split(",") if s.strip()]
    registry = Registry(strict=strict, manager=make_plugin_manager())
    seen: set[tuple[str, str, str]] = set()

    # ldmkit's own plugins first: a third-party plugin that registers a built-in name then collides and is
    # skipped, rather than loading first and disabling the built-in plugin
    def load_order(ep: metadata.EntryPoint) -> tuple[bool, str]:
        return (_dist_name(ep) != BUILTIN_DISTRIBUTION, ep.name)

    for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=load_order):
        dist = ep.dist
        dist_name = _dist_name(ep)
        # the same distribution can be visible twice on sys.path; two distributions may share an entry-point name
        key = (dist_name, ep.name, ep.value)
        if key in seen or (only is not None and ep.name not in only):
            continue
        seen.add(key)
        info = PluginInfo(ep.name, dist_name, dist.version if dist else "")
        log.debug("loading plugin %r from %s (%s)", ep.name, dist_name, ep.value)
        # a plugin's import is its own code and is not interrupted (see docs/security.md); a slow one is named
        watch = threading.Timer(SLOW_IMPORT_SECONDS, _still_loading, (ep.name, dist_name))
        watch.daemon = True
        watch.start()
        started = time.monotonic()
        try:
            module = ep.load()
        except (Exception, SystemExit) as exc:  # sys.exit() at import fails that plugin only
            registry._fail(info, f"import failed: {type(exc).__name__}: {exc}")
            continue
        except KeyboardInterrupt:  # the user's Ctrl-C, or a plugin raising it: say where it happened
            raise KeyboardInterrupt(f"while loading plugin {ep.name!r} from {dist_name}") from None
        finally:
            watch.cancel()
        log.debug("plugin %r imported in %.2f s", ep.name, time.monotonic() - started)
        registry.add_plugin(module, info)
    return registry


SLOW_IMPORT_SECONDS = 10.0
"""After this long importing one plugin, a warning names it (the import itself goes on)."""


def _still_loading(name: str, dist_name: str) -> None:
    log.warning(
        "still importing plugin %r from %s after %.0f s; a plugin import that never returns hangs ldmkit "
        "(leave it out with LDMKIT_LOAD_PLUGINS, listing the plugins to load)",
        name,
        dist_name,
        SLOW_IMPORT_SECONDS,
    )


BUILTIN_DISTRIBUTION = "ldmkit"
"""The distribution whose plugins load first (their names are reserved)."""


def _dist_name(ep: metadata.EntryPoint) -> str:
    return ep.dist.metadata["Name"] if ep.dist else "(unknown)"


_lock = threading.RLock()
_registry: Registry | None = None
_discovering = threading.local()


def get_registry() -> Registry:
    """The process's registry, discovered on first use (lazily, once, thread-safely).

    :raises PluginError: when called while the plugins are being loaded (from a plugin's import or hook):
        that plugin fails and is reported, instead of the process waiting on itself.
    """
    global _registry
    if _registry is None:
        with _lock:
            if getattr(_discovering, "active", False):
                raise PluginError(
                    "ldmkit.get_registry() was called while the plugins were loading (at a plugin's import or in "
                    "its hook); look components up when they are used instead"
                )
            if _registry is None:
                _discovering.active = True
                try:
                    _registry = discover()
                finally:
                    _discovering.active = False
    return _registry


def reset_registry(registry: Registry | None = None) -> None:
    """Forget the discovered registry (or install ``registry``); the next use rediscovers."""
    global _registry
    with _lock:
        _registry = registry


__all__ = [
    "API_VERSION",
    "ENTRY_POINT_GROUP",
    "KIND_NAMES",
    "CommandInfo",
    "ComponentInfo",
    "ModelInfo",
    "ModelSource",
    "PluginFailure",
    "PluginInfo",
    "Registry",
    "SLOW_IMPORT_SECONDS",
    "discover",
    "get_registry",
    "make_plugin_manager",
    "reset_registry",
]
