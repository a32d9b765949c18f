"""Conformance checks for :class:`ldmkit.Task` (user-facing jobs)."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import torch
from pydantic import BaseModel, ValidationError

from ldmkit.errors import InputError
from ldmkit.interfaces import SampleOptions, Task
from ldmkit.testing.base import ComponentConformance

__all__ = ["TaskConformance"]


class TaskConformance(ComponentConformance):
    """What a caller relies on: requests from the CLI and from Python, InputError for bad input, pictures out.

    Set ``valid_request`` (field values the ``Request`` model accepts), ``cli_inputs`` (inputs as the
    CLI passes them: strings, or the bytes of files; ``{}`` for a task without inputs) and implement
    :meth:`make_pipeline` (a small pipeline the task runs on). Optional: ``invalid_requests`` (each
    refused by the ``Request`` model), ``bad_inputs`` (each refused with :class:`~ldmkit.InputError` by
    ``parse_request`` or, at the latest, by ``run``), :meth:`make_python_inputs` (inputs as Python
    objects; ``valid_request`` by default), ``options`` (the ``SampleOptions`` of the run checks) and
    ``image_size`` (the (H, W) of the pictures; by default the pipeline's).
    """

    kind = "task"
    valid_request: ClassVar[dict[str, Any] | None] = None
    invalid_requests: ClassVar[list[dict[str, Any]]] = []
    cli_inputs: ClassVar[dict[str, Any] | None] = None
    bad_inputs: ClassVar[list[dict[str, Any]]] = []
    options: ClassVar[dict[str, Any]] = {"n": 2, "steps": 2}
    image_size: ClassVar[tuple[int, int] | None] = None

    # -- helpers a subclass may override ----------------------------------------------------
    def _valid(self) -> dict[str, Any]:
        if self.valid_request is None:
            pytest.fail(f"{type(self).__name__} must set the class attribute 'valid_request'")
        return dict(self.valid_request)

    def _cli(self) -> dict[str, Any]:
        if self.cli_inputs is None:
            pytest.fail(f"{type(self).__name__} must set the class attribute 'cli_inputs' ({{}} for no inputs)")
        return dict(self.cli_inputs)

    def make_python_inputs(self) -> dict[str, Any]:
        """The task's inputs as a Python caller holds them (tensors, lists, numbers)."""
        return self._valid()

    def make_pipeline(self) -> Any:
        """The pipeline the run checks sample with (keep it small: they run a few times)."""
        pytest.fail(f"{type(self).__name__} must implement make_pipeline()")

    def _task(self) -> Any:
        task = self.make_component()
        assert isinstance(task, Task)
        return task

    def _run(self, task: Any, pipeline: Any, inputs: dict[str, Any]) -> Any:
        return task.run(pipeline, task.parse_request(inputs), SampleOptions(**self.options))

    # -- the Request model ------------------------------------------------------------------
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

    # -- parse_request: what the CLI and Python callers hand over ------------------------------
    def test_parses_cli_inputs(self) -> None:
        task = self._task()
        try:
            request = task.parse_request(self._cli())
        except (ValidationError, InputError) as exc:
            pytest.fail(f"cli_inputs were refused: {exc}")
        assert isinstance(request, self.cls().Request), f"parse_request returned a {type(request).__name__}"

    def test_parses_python_inputs(self) -> None:
        task = self._task()
        try:
            request = task.parse_request(self.make_python_inputs())
        except (ValidationError, InputError) as exc:
            pytest.fail(f"Python inputs were refused: {exc}")
        assert isinstance(request, self.cls().Request), f"parse_request returned a {type(request).__name__}"

    def test_unknown_input_is_an_input_error(self) -> None:
        with pytest.raises(InputError, match="no_such_input_"):
            self._task().parse_request({**self._cli(), "no_such_input_": "1"})

    def test_bad_inputs_are_input_errors(self) -> None:
        # an InputError becomes exit status 2 and one line in the CLI; anything else is a traceback
        task, pipeline = self._task(), None
        for bad in self.bad_inputs:
            try:
                request = task.parse_request(bad)
            except InputError:
                continue
            except Exception as exc:  # noqa: BLE001 - the point is which kind of error
                pytest.fail(f"bad input {sorted(bad)} raised {type(exc).__name__}, not InputError: {exc}")
            pipeline = pipeline if pipeline is not None else self.make_pipeline()
            with pytest.raises(InputError):
                task.run(pipeline, request, SampleOptions(**{**self.options, "steps": 1}))

    # -- run: a batch of pictures --------------------------------------------------------------
    def test_run_returns_pictures(self) -> None:
        pipeline = self.make_pipeline()
        out = self._run(self._task(), pipeline, self._cli())
        n = SampleOptions(**self.options).n
        assert isinstance(out, torch.Tensor) and out.is_floating_point(), f"run returned {type(out).__name__}"
        assert out.ndim == 4 and out.shape[:2] == (n, 3), f"run returned shape {tuple(out.shape)}, not ({n}, 3, H, W)"
        expected = self.image_size
        if expected is None and getattr(pipeline, "latent_size", None) is not None:
            from ldmkit.tasks import image_size

            expected = image_size(pipeline)
        if expected is not None:
            assert tuple(out.shape[-2:]) == tuple(expected), f"pictures of {tuple(out.shape[-2:])}, not {expected}"
        assert bool(torch.isfinite(out).all()), "run returned NaN or Inf"
        assert float(out.min()) >= -1 and float(out.max()) <= 1, "pictures must lie in [-1, 1]"

    def test_run_is_seeded(self) -> None:
        pipeline, task = self.make_pipeline(), self._task()
        first, second = self._run(task, pipeline, self._cli()), self._run(task, pipeline, self._cli())
        assert torch.equal(first, second), "the same request and seed must give the same pictures"
