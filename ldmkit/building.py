"""Which registry builds a component: the pipeline's own, passed on to the components it builds.

A pipeline built from an explicit :class:`~ldmkit.registry.Registry` builds every component, sampler
and task through that registry, inside :func:`building_with`. A component that builds children of
its own (the composite conditioner builds its parts) asks :func:`current_registry`, so its children
come from the same registry as itself; only outside any build does that fall back to the process
registry (:func:`ldmkit.get_registry`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ldmkit.registry import Registry

__all__ = ["build_component", "building_with", "current_registry"]

# per thread and per asyncio task, so concurrent builds with different registries do not mix
_building: ContextVar[Registry | None] = ContextVar("ldmkit_building_registry", default=None)


@contextmanager
def building_with(registry: Registry) -> Iterator[Registry]:
    """Make ``registry`` the one :func:`current_registry` returns inside the ``with`` block."""
    token = _building.set(registry)
    try:
        yield registry
    finally:
        _building.reset(token)


def current_registry() -> Registry:
    """The registry building components now (see :func:`building_with`), else the process registry.

    A component whose constructor builds other components (children) looks them up here.
    """
    registry = _building.get()
    if registry is not None:
        return registry
    from ldmkit import registry as registry_module  # looked up at call time: tests may swap it

    return registry_module.get_registry()


def build_component(registry: Registry, kind: str, name: str, params: Any = None) -> Any:
    """``registry.create(kind, name, params)`` with ``registry`` current, so children come from it too."""
    with building_with(registry):
        return registry.create(kind, name, params)
