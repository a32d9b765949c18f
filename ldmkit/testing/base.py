"""Checks shared by every component kind: ``Params`` and registration."""

from __future__ import annotations

import json
from typing import Any, ClassVar

import pytest
from pydantic import ValidationError

from ldmkit.registry import Registry, get_registry

__all__ = ["ComponentConformance"]


class ComponentConformance:
    """Base of the conformance classes. Subclasses set ``component_cls`` and ``params``.

    Every check is a plain method without fixtures, so it can also be called directly.
    Override :meth:`registry` to check registration against a registry of your own.
    """

    pytestmark = pytest.mark.ldmkit_conformance

    kind: ClassVar[str] = ""
    component_cls: ClassVar[type | None] = None
    params: ClassVar[dict[str, Any]] = {}
    seed: ClassVar[int] = 0

    # -- helpers a subclass may override ----------------------------------------------------
    def cls(self) -> Any:
        """The component class under test."""
        if self.component_cls is None:
            pytest.fail(f"{type(self).__name__} must set the class attribute 'component_cls'")
        return self.component_cls

    def registry(self) -> Registry:
        """The registry the component is expected in (the installed plugins by default)."""
        return get_registry()

    def make_component(self) -> Any:
        """Build the component from ``params`` with seeded weights, in eval mode."""
        import torch

        torch.manual_seed(self.seed)
        component = self.cls().from_params(dict(self.params))
        if isinstance(component, torch.nn.Module):
            component.eval()
        return component

    # -- checks -----------------------------------------------------------------------------
    def test_params_round_trip(self) -> None:
        params_cls = self.cls().Params
        p = params_cls.model_validate(dict(self.params))
        assert params_cls.model_validate(p.model_dump()) == p

    def test_params_round_trip_through_json(self) -> None:
        # specs are written with dump_spec (JSON-mode values) and read back from YAML as lists and dicts
        params_cls = self.cls().Params
        p = params_cls.model_validate(dict(self.params))
        try:
            again = params_cls.model_validate(json.loads(p.model_dump_json()))
        except ValidationError as exc:
            pytest.fail(f"Params do not survive a JSON/YAML round trip (use list[int], not tuples): {exc}")
        assert again == p

    def test_params_frozen(self) -> None:
        assert self.cls().Params.model_config.get("frozen") is True, "Params must be frozen (shared, never mutated)"

    def test_unknown_param_rejected(self) -> None:
        with pytest.raises(ValidationError, match="no_such_param_"):
            self.cls().Params.model_validate({**self.params, "no_such_param_": 1})

    def test_from_params_keeps_params(self) -> None:
        component = self.make_component()
        assert component.params == self.cls().Params.model_validate(dict(self.params))

    def test_registered(self) -> None:
        cls = self.cls()
        assert cls.kind == self.kind, f"{cls.__qualname__}.kind is {cls.kind!r}, expected {self.kind!r}"
        assert self.registry().get(self.kind, cls.name) is cls
