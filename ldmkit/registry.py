"""Plugin discovery and the component registry.

Plugins are modules named by entry points of the group ``ldmkit`` (the built-ins too). A plugin
that fails to import, implements a hook with a bad signature or an unknown name, registers an
invalid class, or collides with another plugin is reported and skipped as a whole; everything
else keeps working. ``LDMKIT_STRICT_PLUGINS=1`` turns any such failure into a :class:`PluginError`;
``LDMKIT_LOAD_PLUGINS=a,b`` loads only the named entry points.

Deprecation: a component class may set ``deprecated = "message"``, and a plugin may register old
names with ``register(cls, deprecated_aliases={"old-name": "message"})``. Looking either up through
:meth:`Registry.get` or :meth:`Registry.create` emits one :class:`DeprecationWarning` per name and
registry (listing names never warns).
"""

from __future__ import annotations

import difflib
import fnmatch
import logging
import os
import threading
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from types import ModuleType
from typing import Any

import pluggy
from pydantic import BaseModel

from ldmkit import hookspecs
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
    cls: type
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
class PluginFailure:
    plugin: PluginInfo
    error: str


@dataclass
class Registry:
    """Registered components by (kind, name), the loaded plugins and the failed ones."""

    components: dict[tuple[str, str], ComponentInfo] = field(default_factory=dict)
    aliases: dict[tuple[str, str], str] = field(default_factory=dict)
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

    def get(self, kind: str, name: str) -> type:
        """The class registered as ``name`` of ``kind``; raises UnknownComponentError with suggestions.

        A deprecated component or alias emits a :class:`DeprecationWarning` (once per name).
        """
        return self._lookup(kind, name, stacklevel=3)

    def create(self, kind: str, name: str, params: Any = None) -> Any:
        """Build a component from its registered name and (unvalidated) params."""
        return self._lookup(kind, name, stacklevel=3).from_params(params)

    def _lookup(self, kind: str, name: str, stacklevel: int) -> type:
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
        staged: list[ComponentInfo] = []
        try:
            for caller in manager.get_hookcallers(plugin) or []:
                if not caller.has_spec():
                    close = difflib.get_close_matches(caller.name, list(hookspecs.HOOK_KINDS), n=1)
                    hint = f" (did you mean {close[0]!r}?)" if close else ""
                    raise PluginError(f"implements unknown hook {caller.name!r}{hint}")
                kind = hookspecs.HOOK_KINDS[caller.name]
                for impl in caller.get_hookimpls():
                    if impl.plugin is plugin:
                        impl.function(register=self._stager(kind, info, staged))
            self._commit(staged, info)
        except Exception as exc:
            manager.unregister(plugin)
            return self._fail(info, f"{type(exc).__name__}: {exc}")
        self.plugins.append(info)
        return True

    def _stager(self, kind: str, info: PluginInfo, staged: list[ComponentInfo]):
        def register(
            cls: type,
            *,
            aliases: Iterable[str] = (),
            deprecated_aliases: Mapping[str, str] | Iterable[str] = (),
        ) -> None:
            _validate_component(kind, cls)
            old = _deprecated_aliases(cls, deprecated_aliases)
            names = (*_alias_names(cls, aliases), *(alias for alias, _ in old))
            staged.append(ComponentInfo(kind, cls.name, cls, info, names, old))

        return register

    def _commit(self, staged: list[ComponentInfo], info: PluginInfo) -> None:
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
        for comp in staged:
            self.components[(comp.kind, comp.name)] = comp
            for alias in comp.aliases:
                self.aliases[(comp.kind, alias)] = comp.name

    def _fail(self, info: PluginInfo, error: str) -> bool:
        failure = PluginFailure(info, error)
        self.failures.append(failure)
        message = f"plugin {info.name!r} from {info.distribution} {info.version} was skipped: {error}"
        if self.strict:
            raise PluginError(message)
        log.warning(message)
        return False


def _check_kind(kind: str) -> None:
    if kind not in KIND_NAMES:
        raise ValueError(f"unknown component kind {kind!r}; kinds: {', '.join(KIND_NAMES)}")


def _validate_component(kind: str, cls: Any) -> None:
    base = KINDS.get(kind)
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
    for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        dist = ep.dist
        dist_name = dist.metadata["Name"] if dist else "(unknown)"
        # the same distribution can be visible twice on sys.path; two distributions may share an entry-point name
        key = (dist_name, ep.name, ep.value)
        if key in seen or (only is not None and ep.name not in only):
            continue
        seen.add(key)
        info = PluginInfo(ep.name, dist_name, dist.version if dist else "")
        try:
            module = ep.load()
        except Exception as exc:
            registry._fail(info, f"import failed: {type(exc).__name__}: {exc}")
            continue
        registry.add_plugin(module, info)
    return registry


_lock = threading.Lock()
_registry: Registry | None = None


def get_registry() -> Registry:
    """The process's registry, discovered on first use (lazily, once, thread-safely)."""
    global _registry
    if _registry is None:
        with _lock:
            if _registry is None:
                _registry = discover()
    return _registry


def reset_registry(registry: Registry | None = None) -> None:
    """Forget the discovered registry (or install ``registry``); the next use rediscovers."""
    global _registry
    with _lock:
        _registry = registry
