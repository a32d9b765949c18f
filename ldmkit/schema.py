"""JSON Schemas of specs, generated from the registered components' ``Params`` models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ldmkit.specs import PipelineSpec

PIPELINE_SCHEMA = "pipeline.schema.json"
SPEC_KINDS = ("first_stage", "denoiser", "conditioner")


def _component_variants(kind: str, registry) -> list[dict[str, Any]]:
    variants = []
    for name in registry.names(kind):
        cls = registry.get(kind, name)
        params = cls.Params.model_json_schema(ref_template="#/$defs/{model}")
        defs = params.pop("$defs", {})
        variant = {
            "title": f"{kind}: {name}",
            "type": "object",
            "properties": {"type": {"const": name}, "params": params},
            "required": ["type"],
            "additionalProperties": False,
        }
        if defs:
            variant["$defs"] = defs
        if cls.__doc__:
            variant["description"] = cls.__doc__.strip().splitlines()[0]
        variants.append(variant)
    return variants


def pipeline_schema(registry=None) -> dict[str, Any]:
    """The pipeline spec schema: each component slot is one of the registered components of its kind."""
    from ldmkit.registry import get_registry

    registry = registry or get_registry()
    schema = PipelineSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "ldmkit pipeline spec"
    for kind in SPEC_KINDS:
        variants = _component_variants(kind, registry)
        prop = {"oneOf": variants} if variants else {"$ref": "#/$defs/ComponentSpec"}
        if kind == "conditioner":
            prop = {"anyOf": [prop, {"type": "null"}], "default": None}
        schema["properties"][kind] = prop
    samplers = registry.names("sampler")
    if samplers:
        schema["$defs"]["SamplingSpec"]["properties"]["sampler"]["enum"] = samplers
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
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def write_schemas(directory: str | Path, registry=None) -> list[Path]:
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
