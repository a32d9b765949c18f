"""Pipeline specs: YAML/JSON documents validated by pydantic, components looked up by name only.

Nothing in a spec is ever imported or executed: a ``type`` is a key into the plugin registry and
``params`` are validated by that component's own ``Params`` model.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ldmkit import strict_json
from ldmkit.errors import SpecError, UnknownComponentError
from ldmkit.options import SamplerChoice
from ldmkit.schedules import ScheduleSpec

__all__ = [
    "MAX_SPEC_BYTES",
    "SPEC_VERSION",
    "ComponentSpec",
    "PipelineSpec",
    "SamplingSpec",
    "dump_spec",
    "format_validation_error",
    "load_spec",
    "parse_document",
    "read_document",
    "validate_spec",
]

SPEC_VERSION = 1
MAX_SPEC_BYTES = 1 << 20  # a spec is a small text file
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class ComponentSpec(_Strict):
    """One component: its registered ``type`` and the parameters its ``Params`` validates."""

    type: str
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("type")
    @classmethod
    def _registered_name_only(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError(
                f"{value!r} is not a component name (letters, digits, '-' and '_'); "
                "specs name registered components, never import paths"
            )
        return value


class SamplingSpec(_Strict):
    """Default sampling settings of a pipeline: the first layer of :func:`ldmkit.options.resolve_options`."""

    sampler: SamplerChoice = Field("ddim", description="a registered sampler's name, or {type, params}")
    steps: int = Field(50, ge=1, le=10_000)
    eta: float | None = Field(
        None, ge=0.0, description="scale of the fresh noise added per step (None: the sampler's own default)"
    )
    guidance_scale: float = Field(1.0, ge=0.0)


class PipelineSpec(_Strict):
    """A whole pipeline as data."""

    version: Literal[1] = SPEC_VERSION
    first_stage: ComponentSpec
    denoiser: ComponentSpec
    conditioner: ComponentSpec | None = None
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    scale_factor: float = Field(1.0, gt=0)
    latent_size: list[Annotated[int, Field(gt=0, le=4096)]] | None = Field(
        None, min_length=2, max_length=2, description="(h, w) of the latent"
    )
    sampling: SamplingSpec = Field(default_factory=SamplingSpec)
    tasks: dict[str, ComponentSpec] = Field(
        default_factory=dict, description="tasks this pipeline serves: task name -> {type, params}"
    )

    @field_validator("version", mode="before")
    @classmethod
    def _integer_version(cls, value: Any) -> Any:
        if type(value) is not int:  # a bool or float equals 1 but is not a version number
            raise ValueError(f"version must be the integer {SPEC_VERSION}, got {value!r}")
        return value

    def components(self) -> dict[str, ComponentSpec]:
        out = {"first_stage": self.first_stage, "denoiser": self.denoiser}
        if self.conditioner is not None:
            out["conditioner"] = self.conditioner
        return out


def format_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """One line per problem, each naming the field path."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in (prefix.split(".") if prefix else []) + list(err["loc"]))
        lines.append(f"{loc or '(top level)'}: {err['msg']}")
    return "; ".join(lines)


class _UniqueKeyLoader(yaml.SafeLoader):
    """Safe YAML loader that also refuses duplicate mapping keys."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    out: dict = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:
            raise SpecError(f"line {key_node.start_mark.line + 1}: a mapping key must be a scalar") from None
        if key in out:
            raise SpecError(f"line {key_node.start_mark.line + 1}: duplicate key {key!r}")
        out[key] = loader.construct_object(value_node, deep=deep)
    return out


def _construct_timestamp(loader: _UniqueKeyLoader, node: yaml.ScalarNode) -> Any:
    # PyYAML's own constructor assumes its pattern matched; an explicit !!timestamp tag on other text
    # would end in an AttributeError instead of a parse error
    if not loader.timestamp_regexp.match(str(node.value)):
        raise yaml.constructor.ConstructorError(None, None, f"{node.value!r} is not a timestamp", node.start_mark)
    return yaml.constructor.SafeConstructor.construct_yaml_timestamp(loader, node)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_UniqueKeyLoader.add_constructor("tag:yaml.org,2002:timestamp", _construct_timestamp)


def parse_document(text: str, source: str = "<spec>") -> dict[str, Any]:
    """Parse YAML (or JSON, a subset) safely into a mapping; raise SpecError naming ``source``."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_SPEC_BYTES:
        raise SpecError(f"{source}: larger than {MAX_SPEC_BYTES} bytes; a spec is a small text file")
    try:
        if source.endswith(".json"):
            try:
                data = strict_json.loads(text)
            except strict_json.DuplicateKeyError as exc:
                raise SpecError(str(exc)) from None
        else:
            data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except SpecError as exc:
        raise SpecError(f"{source}: {exc}") from None
    except (
        yaml.YAMLError,
        json.JSONDecodeError,
        RecursionError,
        ValueError,
        KeyError,
        AttributeError,
        TypeError,
    ) as exc:
        # PyYAML's constructors for explicit tags (!!bool, !!timestamp, ...) fail on odd text with plain errors
        detail = " ".join(str(exc).split())
        raise SpecError(f"{source}: not valid YAML/JSON ({detail})") from None
    if data is None:
        raise SpecError(f"{source}: the file is empty; a spec is a mapping with 'first_stage' and 'denoiser'")
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a spec must be a mapping, not a {type(data).__name__}")
    return data


def read_document(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: no such file")
    if path.stat().st_size > MAX_SPEC_BYTES:
        raise SpecError(f"{path}: larger than {MAX_SPEC_BYTES} bytes; a spec is a small text file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot be read as UTF-8 text ({exc})") from None
    return parse_document(text, str(path))


def validate_spec(data: dict[str, Any] | PipelineSpec, registry=None, source: str = "spec") -> PipelineSpec:
    """Validate the structure, then each component's params against its registered ``Params``."""
    from ldmkit.registry import get_registry

    if isinstance(data, PipelineSpec):
        spec = data
    else:
        try:
            spec = PipelineSpec.model_validate(data)
        except ValidationError as exc:
            raise SpecError(f"{source}: {format_validation_error(exc)}") from None
    registry = registry or get_registry()
    for field_name, comp in spec.components().items():
        try:
            cls = registry.get(field_name, comp.type)
        except UnknownComponentError as exc:
            raise UnknownComponentError(f"{source}: {field_name}.type: {exc}") from None
        try:
            cls.Params.model_validate(comp.params)
        except ValidationError as exc:
            raise SpecError(f"{source}: {format_validation_error(exc, f'{field_name}.params')}") from None
    for task_name, comp in spec.tasks.items():
        try:
            cls = registry.get("task", comp.type)
        except UnknownComponentError as exc:
            raise UnknownComponentError(f"{source}: tasks.{task_name}.type: {exc}") from None
        try:
            cls.Params.model_validate(comp.params)
        except ValidationError as exc:
            raise SpecError(f"{source}: {format_validation_error(exc, f'tasks.{task_name}.params')}") from None
    from ldmkit.options import validate_sampler_params

    validate_sampler_params(registry, spec.sampling.sampler, where=f"{source}: sampling.sampler", error=SpecError)
    return spec


def load_spec(path: str | Path, registry=None) -> PipelineSpec:
    """Read and fully validate a pipeline spec file (YAML or JSON)."""
    return validate_spec(read_document(path), registry, source=str(path))


def dump_spec(spec: PipelineSpec) -> str:
    """YAML text of a spec (round-trips through :func:`load_spec`)."""
    return yaml.safe_dump(spec.model_dump(mode="json", exclude_none=True), sort_keys=False)
