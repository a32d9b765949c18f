"""pytest plugin (entry point ``pytest11: ldmkit``): markers and fixtures for component tests.

Loaded by every pytest run in an environment where ldmkit is installed, so it imports nothing
heavy at module level; torch and the registry are imported inside the fixtures that need them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "ldmkit_conformance: a test inherited from an ldmkit.testing conformance class")


@pytest.fixture
def ldmkit_generator() -> Any:
    """A CPU ``torch.Generator`` seeded with 0."""
    import torch

    return torch.Generator().manual_seed(0)


@pytest.fixture
def ldmkit_empty_registry() -> Iterator[Any]:
    """A fresh, empty :class:`ldmkit.registry.Registry` installed as the process registry for one test.

    Register stand-in components with ``registry.add_plugin(module_or_object)``; the previous
    process registry is restored afterwards.
    """
    from ldmkit import registry as registry_module

    previous = registry_module._registry
    fresh = registry_module.Registry(strict=True)
    registry_module.reset_registry(fresh)
    try:
        yield fresh
    finally:
        registry_module.reset_registry(previous)
