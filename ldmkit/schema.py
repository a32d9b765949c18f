"""JSON Schemas of specs, generated from the registered components' ``Params`` models."""

from __future__ import annotations

import functools
import json
import operator
import threading
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, create_model, model_validator

from ldmkit.specs import ComponentSpec, PipelineSpec, SamplingSpec

if TYPE_CHECKING:
    from ldmkit.registry import Registry

__all__ = [
    "BUILTIN_DISTRIBUTION",
    "PIPELINE_SCHEMA",
    "SPEC_KINDS",
    "all_schemas",
    "builtin_registry",
    "drifted",
    "pipeline_model",
    "pipeline_schema",
    "render",
    "typed_spec_model",
    "write_schemas",
]

PIPELINE_SCHEMA = "pipeline.schema.json"
BUILTIN_DISTRIBUTION = "ldmkit"
SPEC_KINDS = ("first_stage", "denoiser", "conditioner")


def _description(cls: type) -> dict[str, Any] | None:
    """The first line of ``cls``'s docstring as a schema ``description``, if it has one."""
    doc = (cls.__doc__ or "").strip()
    return {"description": doc.splitlines()[0]} if doc else None


def _params_model(kind: str, name: str, params_cls: type[BaseModel]) -> type[BaseModel]:
    """``params_cls`` under a name of its own (so the many classes called ``Params`` get distinct
    ``$defs`` entries) whose validation returns a genuine ``params_cls`` instance."""

    def _as_declared(cls, data: Any, handler: Any, info: ValidationInfo) -> BaseModel:
        if isinstance(data, params_cls):
            return data
        return params_cls.model_validate(data, context=info.context)

    # (pydantic's stub types __validators__ as plain callables; a decorated validator is what it takes)
    return create_model(
        f"{kind}-{name}-params",
        __base__=params_cls,
        __doc__=params_cls.__doc__,
        __validators__={"_as_declared": model_validator(mode="wrap")(_as_declared)},  # type: ignore[dict-item]
    )


def _component_model(kind: str, name: str, cls: type[Any]) -> type[BaseModel]:
    """``{type: Literal[name], params: Params}`` for one registered component."""
    params = _params_model(kind, name, cls.Params)
    tag: Any = Literal[name]  # a type made at run time (typed Any: pydantic's stubs differ across versions)
    return create_model(
        f"{kind}-{name}",
        __config__=ConfigDict(extra="forbid", title=f"{kind}: {name}", json_schema_extra=_description(cls)),
        type=(tag, ...),
        params=(params, Field(default_factory=dict, validate_default=True)),
    )


def _slot_type(kind: str, registry: Registry) -> Any:
    """The discriminated union (on ``type``) of every registered component of ``kind``."""
    models = [_component_model(kind, name, registry.get(kind, name)) for name in registry.names(kind)]
    if not models:
        return ComponentSpec
    if len(models) == 1:
        return models[0]
    return Annotated[functools.reduce(operator.or_, models), Field(discriminator="type")]


def pipeline_model(registry: Registry | None = None) -> type[PipelineSpec]:
    """A pydantic model of the pipeline spec whose component slots list the registered components.

    Each slot is a union, discriminated by ``type``, of ``{type: Literal[name], params: Params}``
    models made from the registry, so the JSON Schema names every component and its parameters.
    Validating with it yields each component's own ``Params`` instance; :func:`ldmkit.specs.validate_spec`
    validates every spec with it (see :func:`typed_spec_model`).
    """
    from ldmkit.registry import get_registry

    registry = registry or get_registry()
    fields: dict[str, Any] = {
        "first_stage": (_slot_type("first_stage", registry), ...),
        "denoiser": (_slot_type("denoiser", registry), ...),
        "conditioner": (_slot_type("conditioner", registry) | None, None),
    }
    if registry.names("task"):
        fields["tasks"] = (
            dict[str, _slot_type("task", registry)],  # type: ignore[misc]
            Field(default_factory=dict, description=PipelineSpec.model_fields["tasks"].description),
        )
    if registry.names("adapter"):
        fields["adapters"] = (
            list[_slot_type("adapter", registry)],  # type: ignore[misc]
            Field(default_factory=list, description=PipelineSpec.model_fields["adapters"].description),
        )
    samplers = registry.names("sampler")
    if samplers:
        sampling = create_model(
            "SamplingSpec",
            __base__=SamplingSpec,
            __doc__=SamplingSpec.__doc__,
            # a sampler's name, or {type, params} checked by that sampler's own Params
            sampler=(_sampler_choice(samplers, registry), SamplingSpec.model_fields["sampler"].default),
        )
        fields["sampling"] = (sampling, Field(default_factory=sampling))
    return create_model("PipelineSpec", __base__=PipelineSpec, __doc__=PipelineSpec.__doc__, **fields)


def _sampler_choice(samplers: list[str], registry: Registry) -> Any:
    """A registered sampler's name, or ``{type, params}`` checked by that sampler's own ``Params``.

    Told apart by the value's form, so an error speaks of the one form that was meant.
    """
    from pydantic import Discriminator, Tag

    return Annotated[
        Annotated[Literal[tuple(samplers)], Tag("name")] | Annotated[_slot_type("sampler", registry), Tag("ref")],
        Discriminator(lambda value: "name" if isinstance(value, str) else "ref"),
    ]


# per registry (by identity), with the components it held when the model was made
_models: dict[int, tuple[weakref.ref, tuple, type[PipelineSpec]]] = {}
_models_lock = threading.Lock()


def _fingerprint(registry: Registry) -> tuple:
    return tuple(sorted((kind, name, id(info.cls)) for (kind, name), info in registry.components.items()))


def typed_spec_model(registry: Registry) -> type[PipelineSpec]:
    """:func:`pipeline_model` of ``registry``, made once per registry (again if its components change)."""
    fingerprint = _fingerprint(registry)
    with _models_lock:
        cached = _models.get(id(registry))
        if cached is not None and cached[0]() is registry and cached[1] == fingerprint:
            return cached[2]
    model = pipeline_model(registry)
    with _models_lock:
        key = id(registry)
        _models[key] = (weakref.ref(registry, lambda _ref: _models.pop(key, None)), fingerprint, model)
    return model


def builtin_registry() -> Registry:
    """A registry of the built-in plugins only: the entry points of the ``ldmkit`` distribution.

    The checked-in schemas are made from it, so they do not depend on which third-party plugins
    happen to be installed (nor on ``LDMKIT_LOAD_PLUGINS``).
    """
    from importlib import metadata

    from ldmkit.errors import PluginError
    from ldmkit.registry import ENTRY_POINT_GROUP, PluginInfo, Registry, make_plugin_manager

    registry = Registry(strict=True, manager=make_plugin_manager())
    seen: set[tuple[str, str]] = set()
    for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        dist = ep.dist
        if dist is None or dist.metadata["Name"] != BUILTIN_DISTRIBUTION or (ep.name, ep.value) in seen:
            continue
        seen.add((ep.name, ep.value))
        registry.add_plugin(ep.load(), PluginInfo(ep.name, BUILTIN_DISTRIBUTION, dist.version))
    if not seen:
        raise PluginError(f"no entry points of the {BUILTIN_DISTRIBUTION!r} distribution are installed")
    return registry


def pipeline_schema(registry=None) -> dict[str, Any]:
    """The pipeline spec schema: each component slot is one of the registered components of its kind."""
    schema = pipeline_model(registry).model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "ldmkit pipeline spec"
    return schema


def all_schemas(registry=None) -> dict[str, dict[str, Any]]:
    """File name -> schema, for everything ``ldmkit schema`` writes."""
    out = {PIPELINE_SCHEMA: pipeline_schema(registry)}
    try:
        from ldmkit.training.spec import TrainSpec
    except ImportError:  # training is optional in minimal installs
        return out
    from pydantic import TypeAdapter

    train = TypeAdapter(TrainSpec).json_schema()
    train["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    train["title"] = "ldmkit train spec"
    out["train.schema.json"] = train
    return out


def render(schema: dict[str, Any]) -> str:
    """A schema as the text ``ldmkit schema`` writes (sorted keys, so the files are deterministic)."""
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def write_schemas(directory: str | Path, registry=None) -> list[Path]:
    """Write every schema of :func:`all_schemas` into ``directory``; the paths written."""
    from ldmkit.checkpoints import atomic_write_text

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in all_schemas(registry).items():
        atomic_write_text(directory / name, render(schema))
        written.append(directory / name)
    return written


def drifted(directory: str | Path, registry=None) -> list[str]:
    """Names of schema files in ``directory`` that differ from what the code generates."""
    directory = Path(directory)
    bad = []
    for name, schema in all_schemas(registry).items():
        path = directory / name
        if not path.is_file() or path.read_text() != render(schema):
            bad.append(name)
    return bad
