"""Conformance test classes for component authors.

Subclass one per component in your own tests, set ``component_cls`` and ``params``, and pytest
runs the inherited checks of the contract (see docs/plugins.md)::

    from ldmkit.testing import SamplerConformance
    from my_plugin.sampler import MySampler

    class TestMySampler(SamplerConformance):
        component_cls = MySampler
        params = {}

The classes are imported on first access, so loading the pytest plugin stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ComponentConformance": "ldmkit.testing.base",
    "FirstStageConformance": "ldmkit.testing.first_stage",
    "DenoiserConformance": "ldmkit.testing.denoiser",
    "ConditionerConformance": "ldmkit.testing.conditioner",
    "SamplerConformance": "ldmkit.testing.sampler",
    "TaskConformance": "ldmkit.testing.task",
    "DatasetConformance": "ldmkit.testing.dataset",
    "gaussian_eps_fn": "ldmkit.testing.analytic",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ldmkit.testing' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
