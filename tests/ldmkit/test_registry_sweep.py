"""Every registered component, built from the example params it declares, passes its kind's conformance class.

The classes are made from the registry (``ldmkit.testing.sweep``), so a component added later is
covered without a line here; the test below fails for a built-in that declares no example.
"""

from __future__ import annotations

import pytest

from ldmkit.registry import get_registry
from ldmkit.testing.sweep import SWEPT_KINDS, conformance_classes

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

globals().update(conformance_classes(get_registry()))


def test_every_built_in_component_with_weights_declares_example_params():
    registry = get_registry()
    missing = [
        f"{kind} {name}"
        for kind in ("first_stage", "denoiser", "conditioner", "dataset")
        for name in registry.names(kind)
        if registry.info(kind, name).plugin.distribution == "ldmkit" and not registry.get(kind, name).example_params
    ]
    assert not missing, f"no example_params: {missing}"


def test_the_sweep_covers_every_registered_component_of_its_kinds():
    registry = get_registry()
    made = {(cls.kind, cls.component_cls.name) for cls in conformance_classes(registry).values()}
    assert made == {(kind, name) for kind in SWEPT_KINDS for name in registry.names(kind)}
