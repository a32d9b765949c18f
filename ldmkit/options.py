"""Sampling options: how a task samples, and where each setting's default comes from.

:class:`SampleOptions` holds what one generation job samples with: the number of pictures, the seed, the
sampler (a registered name, or ``{type, params}`` with that sampler's own parameters), the number of steps,
``eta``, the guidance scale, whether to show a progress bar, the picture size and the decoding tile size.
:func:`resolve_options` builds it once per job, each layer overriding the one before:

1. the pipeline spec's ``sampling`` section (:class:`ldmkit.specs.SamplingSpec`);
2. the task's defaults (``sampler``, ``steps``, ``guidance_scale`` of :class:`ldmkit.tasks.TaskParams`);
3. the caller's overrides (keyword arguments, command-line flags).

``eta`` goes with the sampler it was set for: a layer that picks a sampler of another type without giving
an ``eta`` drops the ``eta`` of the layers below, so that sampler starts from its own default (``None``).
A sampler is replaced as a whole, its params included. The same sampler forms are accepted everywhere:
in a spec, in task params, in :class:`SampleOptions` and by :meth:`ldmkit.Pipeline.sample`::

    SampleOptions(sampler="ddim")
    SampleOptions(sampler={"type": "ddim", "params": {"spacing": "quad"}})
"""

from __future__ import annotations

import numbers
import operator
import re
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
)
from pydantic.dataclasses import dataclass as pydantic_dataclass
from pydantic_core import PydanticCustomError

from ldmkit.errors import InputError, UnknownComponentError

# ldmkit.interfaces imports this module: the registry, Params and Sampler types are named in words here
__all__ = [
    "SampleOptions",
    "SamplerChoice",
    "SamplerRef",
    "build_sampler",
    "resolve_options",
    "sampler_type",
    "validate_sampler_params",
]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")


def _sampler_name(value: str) -> str:
    if not _NAME_RE.match(value):
        raise ValueError(f"{value!r} is not a sampler name (letters, digits, '-' and '_')")
    return value


class SamplerRef(BaseModel):
    """A sampler with its own parameters: ``{"type": "ddim", "params": {"spacing": "quad"}}``.

    ``params`` are validated by the registered sampler's ``Params`` when the sampler is looked up
    (:func:`validate_sampler_params`), since only the registry knows that model.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)

    type: Annotated[str, AfterValidator(_sampler_name)] = Field(description="a registered sampler's name")
    params: dict[str, Any] = Field(default_factory=dict, description="the sampler's own Params")


def _choice_tag(value: Any) -> str:
    return "name" if isinstance(value, str) else "ref"


SamplerChoice = Annotated[
    Annotated[Annotated[str, AfterValidator(_sampler_name)], Tag("name")] | Annotated[SamplerRef, Tag("ref")],
    Discriminator(_choice_tag),
]
"""A sampler as a registered name (``"ddim"``) or as :class:`SamplerRef` (``{type, params}``; a dict is accepted)."""


def sampler_type(choice: str | SamplerRef | Mapping[str, Any]) -> str:
    """The registered name a sampler choice names (its ``type``)."""
    if isinstance(choice, str):
        return choice
    if isinstance(choice, SamplerRef):
        return choice.type
    return str(choice.get("type", ""))


def _wrong(kind: str, value: Any) -> PydanticCustomError:
    context = {"kind": kind, "value": repr(value)}
    return PydanticCustomError("sample_option_type", "must be {kind}, got {value}", context)


_CONFIG = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)  # frozen: by the decorator


@pydantic_dataclass(frozen=True, config=_CONFIG)
class SampleOptions:
    """How a task samples: number of pictures, seed, sampler and its settings.

    Built by keywords (``SampleOptions(n=4, steps=50)``) or by :func:`resolve_options` from a pipeline's
    layered defaults. Integers and numbers of numpy come in as Python ones; a bool is no number. Values of
    the wrong kind raise :class:`~ldmkit.errors.InputError` naming the field.
    """

    n: int = Field(default=1, description="number of pictures")
    seed: int = Field(default=0, description="picture i draws its noise from seed + i")
    sampler: SamplerChoice = Field(default="ddim", description="a registered sampler's name, or {type, params}")
    steps: int = Field(default=50, description="number of sampling steps")
    eta: float | None = Field(
        default=None, ge=0.0, description="scale of the fresh noise added per step (None: the sampler's own default)"
    )
    guidance_scale: float = Field(default=1.0, description="classifier-free guidance scale (1: no guidance)")
    progress: bool = Field(default=False, description="show a progress bar")
    size: tuple[int, int] | None = Field(
        default=None, description="picture size (H, W) in pixels (None: the task's input's, else the pipeline's)"
    )
    tile_size: int | None = Field(
        default=None, ge=4, description="decode latents with a side over this many cells tile by tile (None: whole)"
    )

    @field_validator("n", "seed", "steps", mode="before")
    @classmethod
    def _python_int(cls, value: Any) -> Any:
        if isinstance(value, bool) or not hasattr(value, "__index__"):
            raise _wrong("an integer", value)
        return operator.index(value)

    @field_validator("eta", "guidance_scale", mode="before")
    @classmethod
    def _python_float(cls, value: Any, info: Any) -> Any:
        if value is None and info.field_name == "eta":
            return None
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise _wrong("a number", value)
        return float(value)

    @field_validator("sampler", mode="before")
    @classmethod
    def _sampler_form(cls, value: Any) -> Any:
        if isinstance(value, str) and value or isinstance(value, (Mapping, SamplerRef)):
            return value
        raise _wrong("a sampler name or {type, params}", value)

    @field_validator("size", mode="before")
    @classmethod
    def _size_pair(cls, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)) or len(value) != 2:
            raise _wrong("(height, width) in pixels", value)
        if any(isinstance(side, bool) or not hasattr(side, "__index__") or operator.index(side) < 1 for side in value):
            raise _wrong("(height, width) of positive integers", value)
        return tuple(operator.index(side) for side in value)

    @field_validator("tile_size", mode="before")
    @classmethod
    def _tile_int(cls, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, bool) or not hasattr(value, "__index__"):
            raise _wrong("an integer", value)
        return operator.index(value)

    @field_validator("progress", mode="before")
    @classmethod
    def _bool(cls, value: Any) -> Any:
        if not isinstance(value, bool):
            raise _wrong("True or False", value)
        return value

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], what: str = "SampleOptions") -> SampleOptions:
        """Validate ``values`` (e.g. a record read back from a picture); errors name ``what.<field>``.

        :raises InputError: for a value of the wrong kind or an unknown key, naming the field.
        """
        if not isinstance(values, Mapping) or not all(isinstance(key, str) for key in values):
            raise InputError(f"{what} must be a mapping of option names to values")
        instance = cls.__new__(cls)
        try:
            _pydantic_init(instance, **values)
        except ValidationError as exc:
            raise InputError(_format(exc, what)) from None
        return instance


def _format(exc: ValidationError, prefix: str) -> str:
    from ldmkit.specs import format_validation_error

    return format_validation_error(exc, prefix)


_pydantic_init = SampleOptions.__init__


def _init(self: SampleOptions, *args: Any, **kwargs: Any) -> None:
    """Validate as pydantic does; problems become one InputError naming each field."""
    try:
        _pydantic_init(self, *args, **kwargs)
    except ValidationError as exc:
        raise InputError(_format(exc, "SampleOptions")) from None


SampleOptions.__init__ = _init  # type: ignore[method-assign]


# -- sampler lookup -----------------------------------------------------------------------------------


def validate_sampler_params(
    registry: Any,
    choice: str | SamplerRef | Mapping[str, Any],
    *,
    where: str = "sampler",
    error: type[Exception] = InputError,
) -> tuple[str, BaseModel]:
    """The sampler's registered name and its ``Params`` validated by that sampler's model, from ``registry``.

    :param where: the field the choice came from, for messages (``"sampling.sampler"``).
    :param error: the exception for bad params (InputError for callers, SpecError for specs).
    :raises UnknownComponentError: for a name no plugin registers.
    """
    if isinstance(choice, Mapping):
        try:
            choice = SamplerRef.model_validate(dict(choice))
        except ValidationError as exc:
            raise error(_format(exc, where)) from None
    if not isinstance(choice, (str, SamplerRef)):
        raise error(f"{where} must be a sampler name or {{type, params}}, got {type(choice).__name__}")
    name = sampler_type(choice)
    try:
        cls = registry.get("sampler", name)
    except UnknownComponentError as exc:
        raise UnknownComponentError(f"{where}: {exc}") from None
    values = choice.params if isinstance(choice, SamplerRef) else {}
    try:
        return name, cls.Params.model_validate(values)
    except ValidationError as exc:
        raise error(_format(exc, f"{where}.params")) from None


def build_sampler(registry: Any, choice: Any, *, where: str = "sampler") -> Any:
    """The :class:`~ldmkit.Sampler` a choice names: an instance as is, else built through ``registry``.

    A name builds the sampler with its default params; ``{type, params}`` (a dict or :class:`SamplerRef`)
    with its params validated by that sampler's ``Params``.

    :raises InputError: for anything else, or params the sampler refuses (naming the field).
    """
    from ldmkit.building import build_component

    if not isinstance(choice, (str, Mapping, SamplerRef)):
        if callable(getattr(choice, "sample", None)):
            return choice
        got = type(choice).__name__
        raise InputError(f"{where} must be a registered sampler's name or a Sampler (or {{type, params}}), got {got}")
    name, params = validate_sampler_params(registry, choice, where=where)
    return build_component(registry, "sampler", name, params)


# -- layering ---------------------------------------------------------------------------------------


def _spec_layer(pipeline: Any) -> dict[str, Any]:
    spec = getattr(pipeline, "spec", None)
    if spec is None:
        return {}
    sampling = spec.sampling
    return {
        "sampler": sampling.sampler,
        "steps": sampling.steps,
        "eta": sampling.eta,
        "guidance_scale": sampling.guidance_scale,
        "size": tuple(sampling.size) if sampling.size is not None else None,
        "tile_size": sampling.tile_size,
    }


def _task_layer(pipeline: Any, task_name: str) -> dict[str, Any]:
    params = getattr(pipeline.task(task_name), "params", None)
    layer = {key: getattr(params, key, None) for key in ("sampler", "steps", "guidance_scale")}
    size = getattr(params, "size", None)
    return {**layer, "size": tuple(size) if size is not None else None}


def resolve_options(pipeline: Any, task_name: str, overrides: Mapping[str, Any] | None = None) -> SampleOptions:
    """The options task ``task_name`` of ``pipeline`` samples with: spec < task defaults < ``overrides``.

    ``overrides`` holds any :class:`SampleOptions` field; a ``None`` value counts as not given (a
    command-line flag left out). An ``eta`` set with one sampler is dropped when a later layer picks a
    sampler of another type without an ``eta`` of its own. The resolved sampler's params are validated
    through ``pipeline.registry``.

    :raises InputError: for an override of the wrong kind or an unknown one, or sampler params the
        sampler refuses, naming the field.
    :raises SpecError: when the pipeline does not serve the task.
    """
    if overrides is None:
        overrides = {}
    if not isinstance(overrides, Mapping):
        raise InputError(f"overrides must be a mapping of option names, got {type(overrides).__name__}")
    merged: dict[str, Any] = {}
    for layer in (_spec_layer(pipeline), _task_layer(pipeline, task_name), dict(overrides)):
        given = {key: value for key, value in layer.items() if value is not None}
        if "sampler" in given and "eta" not in given and "sampler" in merged:
            if sampler_type(given["sampler"]) != sampler_type(merged["sampler"]):
                merged.pop("eta", None)  # that eta was meant for another sampler
        merged.update(given)
    options = SampleOptions.from_mapping(merged, "options")
    validate_sampler_params(pipeline.registry, options.sampler, where="options.sampler")
    return options
