"""Conformance checks for :class:`ldmkit.Task` (user-facing jobs)."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from pydantic import BaseModel, ValidationError

from ldmkit.errors import InputError
from ldmkit.interfaces import Task
from ldmkit.testing.base import ComponentConformance


class TaskConformance(ComponentConformance):
    """The ``Request`` model accepts ``valid_request`` and refuses each of ``invalid_requests``."""

    kind = "task"
    valid_request: ClassVar[dict[str, Any] | None] = None
    invalid_requests: ClassVar[list[dict[str, Any]]] = []

    def _valid(self) -> dict[str, Any]:
        if self.valid_request is None:
            pytest.fail(f"{type(self).__name__} must set the class attribute 'valid_request'")
        return dict(self.valid_request)

    def test_builds(self) -> None:
        assert isinstance(self.make_component(), Task)

    def test_request_model(self) -> None:
        request_cls = self.cls().Request
        assert isinstance(request_cls, type) and issubclass(request_cls, BaseModel)
        assert request_cls is not BaseModel, "a task declares its own Request model"

    def test_valid_request(self) -> None:
        try:
            request = self.cls().Request.model_validate(self._valid())
        except (ValidationError, InputError) as exc:
            pytest.fail(f"valid_request was refused: {exc}")
        assert isinstance(request, self.cls().Request)

    def test_invalid_requests_rejected(self) -> None:
        for bad in self.invalid_requests:
            with pytest.raises((ValidationError, InputError)):
                self.cls().Request.model_validate(bad)

    def test_unknown_request_key_rejected(self) -> None:
        with pytest.raises((ValidationError, InputError)):
            self.cls().Request.model_validate({**self._valid(), "no_such_field_": 1})
