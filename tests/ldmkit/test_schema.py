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

ROOT = Path(__file__).resolve().parents[2]
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
    by_name, by_ref = schema["$defs"]["SamplingSpec"]["properties"]["sampler"]["oneOf"]  # a name, or {type, params}
    assert by_name["enum"] == registry.names("sampler")
    assert sorted(by_ref["discriminator"]["mapping"]) == registry.names("sampler")


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


@pytest.fixture(scope="module")
def with_example_plugin(tmp_path_factory) -> dict[str, str]:
    """The environment of a subprocess that has the example plugin installed (with pip) besides this tree."""
    import os
    import shutil
    import subprocess
    import sys

    tmp = tmp_path_factory.mktemp("example-plugin")
    source, target = tmp / "src", tmp / "site"
    shutil.copytree(
        ROOT / "examples" / "ldmkit-plugin-example",
        source,
        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"),
    )
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
    subprocess.run(
        [*pip, "--disable-pip-version-check", "--root-user-action=ignore", "--target", str(target), str(source)],
        check=True,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("LDMKIT_")}
    env["PYTHONPATH"] = os.pathsep.join([str(target), str(ROOT), str(ROOT / "plugins")])
    return env


def _ldmkit(env: dict[str, str], *args: str, cwd: Path = ROOT):
    import subprocess
    import sys

    code = "import sys; from ldmkit.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], env=env, cwd=cwd, capture_output=True, text=True)


def test_checked_in_schemas_ignore_an_installed_third_party_plugin(with_example_plugin):
    proc = _ldmkit(with_example_plugin, "schema", "--check")
    assert proc.returncode == 0, proc.stderr[-2000:]
    schema = json.loads((ROOT / "schemas" / "pipeline.schema.json").read_text())
    assert "colour-example" not in _slot_types(schema, "conditioner")


def test_installed_schema_lists_a_third_party_plugins_components(with_example_plugin, tmp_path):
    proc = _ldmkit(with_example_plugin, "schema", "--installed", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    schema = json.loads((tmp_path / "pipeline.schema.json").read_text())
    assert "colour-example" in _slot_types(schema, "conditioner")
    assert "heun-example" in schema["$defs"]["SamplingSpec"]["properties"]["sampler"]["oneOf"][0]["enum"]
    tasks = schema["properties"]["tasks"]["additionalProperties"]
    assert "colour2img-example" in {schema["$defs"][r]["properties"]["type"]["const"] for r in _refs(tasks)}
    # the built-in components are there too, and the checked-in file is not what was written
    assert _slot_types(schema, "denoiser") == {"unet", "tiny-unet-example"}
    assert (ROOT / "schemas" / "pipeline.schema.json").read_text() != (tmp_path / "pipeline.schema.json").read_text()
