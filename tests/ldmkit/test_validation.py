"""One validation vocabulary: one strict base model, one error wording, specs validated once.

A spec validated against a registry carries each component's validated ``Params``; the pipeline is
built from those very objects, and every field of every built-in component is described.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

import ldmkit
from ldmkit import Params, SpecError, UnknownComponentError
from ldmkit.registry import get_registry
from ldmkit.schedules import ScheduleSpec
from ldmkit.schema import builtin_registry
from ldmkit.specs import ComponentSpec, PipelineSpec, StrictModel, dump_spec, format_validation_error, validate_spec

ROOT = Path(__file__).resolve().parents[2]
SHAPES_SPEC = yaml.safe_load((ROOT / "plugins" / "ldmkit_shapes" / "model" / "spec.yaml").read_text())


def _builtin_components():
    registry = builtin_registry()
    return [(kind, name, info.cls) for (kind, name), info in sorted(registry.components.items())]


@pytest.mark.parametrize("kind, name, cls", _builtin_components(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_field_of_a_builtin_component_is_described(kind, name, cls):
    undescribed = [field for field, info in cls.Params.model_fields.items() if not (info.description or "").strip()]
    assert not undescribed, f"{kind} {name!r}: fields without a description: {undescribed}"


def test_the_builtin_registry_holds_every_kind_of_component():
    kinds = {kind for kind, _, _ in _builtin_components()}
    assert {"first_stage", "denoiser", "conditioner", "sampler", "task"} <= kinds


def test_one_strict_base_for_params_specs_and_settings():
    from ldmkit.training.spec import EMASpec, OptimizerSpec
    from ldmkit_conditioners.layout import LayoutObject

    for model in (Params, ScheduleSpec, PipelineSpec, ComponentSpec, OptimizerSpec, EMASpec, LayoutObject):
        assert issubclass(model, StrictModel), model
        assert model.model_config["extra"] == "forbid" and model.model_config["allow_inf_nan"] is False
    for _, _, cls in _builtin_components():
        assert issubclass(cls.Params, StrictModel)


def test_attribute_docstrings_describe_fields():
    class Settings(Params):
        width: int = 3
        """How wide."""

    assert Settings.model_fields["width"].description == "How wide."
    with pytest.raises(ValidationError):
        Settings(width=3, height=4)
    with pytest.raises(ValidationError):
        Settings.model_validate({"width": float("inf")})


def test_a_validated_spec_carries_the_params_its_components_are_built_from():
    registry = get_registry()
    spec = validate_spec(SHAPES_SPEC, registry)
    for kind, comp in spec.components().items():
        params = comp.params_for(registry)
        assert type(params) is registry.get(kind, comp.type).Params
    parts = spec.conditioner.params_for(registry).parts
    assert isinstance(parts["text"].params_for(registry), registry.get("conditioner", "transformer-text").Params)
    for task in spec.tasks.values():
        assert isinstance(task.params_for(registry), registry.get("task", task.type).Params)
    # building uses those objects as they are: no second validation
    pipe = ldmkit.Pipeline.from_spec(spec, registry)
    assert pipe.denoiser.params is spec.denoiser.params_for(registry)
    assert pipe.conditioner.params is spec.conditioner.params_for(registry)
    assert pipe.conditioner.parts["text"].params is parts["text"].params_for(registry)
    name = next(iter(spec.tasks))
    assert pipe.task(name).params is spec.tasks[name].params_for(registry)


def test_the_spec_still_writes_what_it_was_given():
    spec = validate_spec(copy.deepcopy(SHAPES_SPEC))
    again = yaml.safe_load(dump_spec(spec))
    assert again["denoiser"]["params"] == SHAPES_SPEC["denoiser"]["params"]  # no defaults filled in
    assert again["conditioner"] == SHAPES_SPEC["conditioner"]
    assert spec.denoiser.params == SHAPES_SPEC["denoiser"]["params"]  # still the mapping the spec gave


def test_params_changed_after_validation_are_validated_again():
    registry = get_registry()
    spec = validate_spec(copy.deepcopy(SHAPES_SPEC), registry)
    spec.denoiser.params["model_channels"] = -1
    assert spec.denoiser.params_for(registry) is None
    with pytest.raises(SpecError, match=r"denoiser\.params\.model_channels: Input should be greater than 0"):
        ldmkit.Pipeline.from_spec(spec, registry)


def test_a_composite_part_is_validated_with_the_spec():
    bad = copy.deepcopy(SHAPES_SPEC)
    bad["conditioner"]["params"]["parts"]["text"]["params"]["n_layer"] = 0
    with pytest.raises(SpecError, match=r"^spec: conditioner\.params\.parts\.text\.params\.n_layer: "):
        validate_spec(bad)
    bad = copy.deepcopy(SHAPES_SPEC)
    bad["conditioner"]["params"]["parts"]["text"]["type"] = "transformer-txt"
    with pytest.raises(UnknownComponentError, match=r"conditioner\.params\.parts\.text\.type: .*Did you mean"):
        validate_spec(bad)


def test_task_params_are_validated_with_the_spec():
    bad = copy.deepcopy(SHAPES_SPEC)
    name = next(iter(bad["tasks"]))
    bad["tasks"][name].setdefault("params", {})["no_such_setting"] = 1
    with pytest.raises(SpecError, match=rf"tasks\.{name}\.params\.no_such_setting: Extra inputs are not permitted"):
        validate_spec(bad)


def test_one_wording_for_validation_errors():
    unet = get_registry().get("denoiser", "unet")
    with pytest.raises(ValidationError) as info:
        unet.Params.model_validate({"model_channels": 0})
    worded = format_validation_error(info.value, "params")
    assert worded.startswith("params.")
    with pytest.raises(SpecError) as built:
        unet.from_params({"model_channels": 0})
    assert built.value.args[0] == f"denoiser 'unet': {worded}"
