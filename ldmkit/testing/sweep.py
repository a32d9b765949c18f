"""Conformance classes for every registered component, built from the components' own examples.

Each component class declares ``example_params`` (and a conditioner ``example_input``, a denoiser
``example_inputs``); :func:`conformance_classes` turns every registered component of the weighted kinds,
every sampler and every dataset into a subclass of its kind's conformance class, ready for pytest to
collect::

    # tests/test_registry_sweep.py
    from ldmkit.registry import get_registry
    from ldmkit.testing.sweep import conformance_classes

    globals().update(conformance_classes(get_registry()))

Tasks need a pipeline and requests: they get their own :class:`~ldmkit.testing.TaskConformance`
subclasses (see the plugin guide).
"""

from __future__ import annotations

import re
from typing import Any

from ldmkit.registry import Registry
from ldmkit.testing.conditioner import ConditionerConformance
from ldmkit.testing.dataset import DatasetConformance
from ldmkit.testing.denoiser import DenoiserConformance
from ldmkit.testing.first_stage import FirstStageConformance
from ldmkit.testing.sampler import SamplerConformance

__all__ = ["SWEPT_KINDS", "conformance_classes", "example_params"]

SWEPT_KINDS = ("first_stage", "denoiser", "conditioner", "sampler", "dataset")
"""The kinds whose conformance classes need nothing but the component's own examples."""


def example_params(cls: type) -> dict[str, Any]:
    """The params a component declares for examples (``{}``: its ``Params`` defaults)."""
    return dict(getattr(cls, "example_params", None) or {})


def _first_stage(registry: Registry, cls: type) -> dict[str, Any]:
    return {}


def _denoiser(registry: Registry, cls: type) -> dict[str, Any]:
    def example(self: DenoiserConformance, batch: int) -> Any:
        return self.make_component().example_inputs(batch)  # (x_t, t, cond)

    return {
        "make_x": lambda self, batch: example(self, batch)[0],
        "make_t": lambda self, batch: example(self, batch)[1],
        "make_cond": lambda self, batch: example(self, batch)[2],
        # the shapes the checks expect, read off the example (x_t: (B, C, h, w); the output has x_t's shape)
        "x_channels": property(lambda self: int(example(self, 1)[0].shape[1])),
        "latent_size": property(lambda self: int(example(self, 1)[0].shape[2])),
    }


def _conditioner(registry: Registry, cls: type) -> dict[str, Any]:
    def make_raw(self: ConditionerConformance, batch: int) -> Any:
        return self.make_component().example_input(batch)

    def make_first_stage(self: ConditionerConformance) -> Any:
        spec = getattr(cls, "example_first_stage", None)
        return None if spec is None else registry.create("first_stage", spec["type"], spec.get("params"))

    return {"make_raw": make_raw, "make_first_stage": make_first_stage}


def _sampler(registry: Registry, cls: type) -> dict[str, Any]:
    # a sampler with fresh noise (``uses_eta``, as LoopSampler declares it) draws it at eta 1; the others never do
    return {"noise_eta": 1.0 if getattr(cls, "uses_eta", True) else None}


def _dataset(registry: Registry, cls: type) -> dict[str, Any]:
    return {
        "item_shapes": dict(getattr(cls, "example_item_shapes", {}) or {}),
        "value_ranges": dict(getattr(cls, "example_value_ranges", {}) or {}),
    }


_BASES: dict[str, Any] = {
    "first_stage": (FirstStageConformance, _first_stage),
    "denoiser": (DenoiserConformance, _denoiser),
    "conditioner": (ConditionerConformance, _conditioner),
    # a sampler with fresh noise (``uses_eta``, as LoopSampler declares) draws it at eta 1; the others never
    "sampler": (
        SamplerConformance,
        lambda registry, cls: {"noise_eta": 1.0 if getattr(cls, "uses_eta", True) else None},
    ),
    "dataset": (DatasetConformance, _dataset),
}


def conformance_classes(registry: Registry, kinds: tuple[str, ...] = SWEPT_KINDS) -> dict[str, type]:
    """``{"Test<Kind><Name>": class}``: a conformance subclass per registered component of ``kinds``."""
    out: dict[str, type] = {}
    for kind in kinds:
        base, extras = _BASES[kind]
        for name in registry.names(kind):
            cls = registry.get(kind, name)
            title = "".join(part.title() for part in re.split(r"[^A-Za-z0-9]+", f"{kind} {name}") if part)
            body = {
                "component_cls": cls,
                "params": example_params(cls),
                "registry": lambda self, registry=registry: registry,
                "__doc__": f"{kind} {name!r} built from its example params.",
                **extras(registry, cls),
            }
            out[f"Test{title}"] = type(f"Test{title}", (base,), body)
    return out
