"""The generated pipeline JSON Schema: every registered component, and only valid specs pass."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from ldmkit.registry import get_registry
from ldmkit.schema import SPEC_KINDS, pipeline_model, pipeline_schema, render

jsonschema = pytest.importorskip("jsonschema")

ROOT = Path(__file__).resolve().parent.parent
SPEC = yaml.safe_load((ROOT / "examples" / "specs" / "txt2img-tiny.yaml").read_text())


@pytest.fixture(scope="module")
def validator():
    schema = pipeline_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _slot_types(schema: dict, kind: str) -> set[str]:
    defs = schema["$defs"]
    consts = set()
    for ref in _refs(schema["properties"][kind]):
        variant = defs[ref]
        if "type" in variant.get("properties", {}) and "const" in variant["properties"]["type"]:
            consts.add(variant["properties"]["type"]["const"])
    return consts


def _refs(node) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"].rsplit("/", 1)[-1]] if "$ref" in node else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_every_registered_component_and_sampler_appears():
    registry = get_registry()
    schema = pipeline_schema()
    for kind in SPEC_KINDS:
        assert _slot_types(schema, kind) == set(registry.names(kind)), kind
    assert schema["$defs"]["SamplingSpec"]["properties"]["sampler"]["enum"] == registry.names("sampler")


def test_slots_are_discriminated_on_type():
    schema = pipeline_schema()
    union = schema["properties"]["denoiser"]
    if "discriminator" in union:  # more than one registered denoiser
        assert union["discriminator"]["propertyName"] == "type"
    conditioner = schema["properties"]["conditioner"]
    assert {"type": "null"} in conditioner["anyOf"] and conditioner["default"] is None


def test_the_example_spec_is_valid(validator):
    validator.validate(SPEC)
    pipeline_model().model_validate(SPEC)


@pytest.mark.parametrize(
    "path, value",
    [
        (("conditioner", "type"), "no-such-conditioner"),
        (("first_stage", "type"), "ldmkit_autoencoders.kl.KLAutoencoder"),
        (("denoiser", "params", "no_such_param"), 1),
        (("conditioner", "params", "n_layer"), "one"),
        (("sampling", "sampler"), "no-such-sampler"),
        (("denoiser", "extra_key"), {}),
    ],
)
def test_bad_specs_are_rejected(validator, path, value):
    spec = copy.deepcopy(SPEC)
    node = spec
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert not validator.is_valid(spec), path
    with pytest.raises(ValueError):  # pydantic's ValidationError is a ValueError
        pipeline_model().model_validate(spec)


def test_schema_is_deterministic():
    assert render(pipeline_schema()) == render(pipeline_schema())
    assert json.loads(render(pipeline_schema())) == pipeline_schema()
