"""Pipeline specs: YAML/JSON documents validated by pydantic, components looked up by name only.

Nothing in a spec is ever imported or executed: a ``type`` is a key into the plugin registry and
``params`` are validated by that component's own ``Params`` model.
"""

from __future__ import annotations

import copy
import json
import re
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Final, Literal, cast

import yaml
from pydantic import Field, PrivateAttr, ValidationError, ValidationInfo, field_validator, model_validator

from ldmkit import strict_json
from ldmkit.errors import SpecError, UnknownComponentError
from ldmkit.options import SamplerChoice
from ldmkit.schedules import ScheduleSpec
from ldmkit.validation import StrictModel, format_errors, format_validation_error

if TYPE_CHECKING:
    from pydantic import BaseModel

    from ldmkit.registry import Registry

__all__ = [
    "MAX_PICTURE_SIDE",
    "MAX_SPEC_BYTES",
    "SPEC_VERSION",
    "ComponentSpec",
    "PipelineSpec",
    "SamplingSpec",
    "StrictModel",
    "dump_spec",
    "format_validation_error",
    "load_spec",
    "parse_document",
    "parse_value",
    "read_document",
    "validate_spec",
]

SPEC_VERSION: Final = 1
MAX_SPEC_BYTES = 1 << 20  # a spec is a small text file
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")

_Strict = StrictModel


class ComponentSpec(StrictModel):
    """One component: its registered ``type`` and the parameters its ``Params`` validates.

    ``params`` keeps what the spec says (and is what a saved spec writes); once the spec is
    validated against a registry, :meth:`params_for` gives the validated ``Params`` instance the
    component is built from. A subclass that sets ``kind`` (a composite conditioner's parts) has its
    params validated whenever the registry is passed as validation context (``{"registry": ...}``).
    """

    kind: ClassVar[str | None] = None

    type: str
    params: dict[str, Any] = Field(default_factory=dict)
    # (registry, type, params as validated, Params instance): reused while type and params are unchanged
    _validated: tuple[Any, str, dict[str, Any], BaseModel] | None = PrivateAttr(default=None)

    @field_validator("type")
    @classmethod
    def _registered_name_only(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError(
                f"{value!r} is not a component name (letters, digits, '-' and '_'); "
                "specs name registered components, never import paths"
            )
        return value

    @model_validator(mode="after")
    def _params_of_kind(self, info: ValidationInfo) -> ComponentSpec:
        registry = (info.context or {}).get("registry") if info is not None else None
        if self.kind is not None and registry is not None:
            cls = registry.get(self.kind, self.type)  # an UnknownComponentError reaches validate_spec
            try:
                self.bind(registry, cls.Params.model_validate(self.params, context=info.context))
            except ValidationError as exc:  # name the field as the spec does: <part>.params.<field>
                errors: list[dict[str, Any]] = [{k: v for k, v in e.items() if k != "url"} for e in exc.errors()]
                for e in errors:
                    e["loc"] = ("params", *e["loc"])
                raise ValidationError.from_exception_data(exc.title, errors) from None  # type: ignore[arg-type]
        return self

    def __eq__(self, other: object) -> bool:
        # what the spec says, not whether (or by which registry) it has been validated
        if not isinstance(other, ComponentSpec):
            return NotImplemented
        return type(self) is type(other) and self.__dict__ == other.__dict__

    def bind(self, registry: Registry, params: BaseModel) -> None:
        """Remember ``params`` (this spec's params validated by ``registry``'s component ``Params``)."""
        self._validated = (weakref.ref(registry), self.type, copy.deepcopy(self.params), params)

    def params_for(self, registry: Registry) -> BaseModel | None:
        """The validated ``Params`` if this spec was validated against ``registry`` and is unchanged since."""
        if self._validated is None:
            return None
        ref, type_, raw, params = self._validated
        if ref() is not registry or type_ != self.type or raw != self.params:
            return None
        return params


MAX_PICTURE_SIDE = 16384
"""The largest side (pixels) a spec, a task or the command line may ask a picture to have."""


class SamplingSpec(_Strict):
    """Default sampling settings of a pipeline: the first layer of :func:`ldmkit.options.resolve_options`."""

    sampler: SamplerChoice = Field("ddim", description="a registered sampler's name, or {type, params}")
    steps: int = Field(50, ge=1, le=10_000)
    eta: float | None = Field(
        None, ge=0.0, description="scale of the fresh noise added per step (None: the sampler's own default)"
    )
    guidance_scale: float = Field(1.0, ge=0.0)
    size: list[Annotated[int, Field(gt=0, le=MAX_PICTURE_SIDE)]] | None = Field(
        None,
        min_length=2,
        max_length=2,
        description="(H, W) in pixels of the pictures (None: latent_size times the first stage's factor); "
        "sides must be multiples of the pipeline's size multiple",
    )
    tile_size: int | None = Field(
        None, ge=4, description="decode latents with a side over this many cells in overlapping tiles (None: whole)"
    )


class PipelineSpec(StrictModel):
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
    adapters: list[ComponentSpec] = Field(
        default_factory=list,
        description="adapters applied after the weights load, in order (LoRA, textual inversion): {type, params}; "
        "a relative path param is resolved against the spec's folder",
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


class _UniqueKeyLoader(yaml.SafeLoader):
    """Safe YAML loader that also refuses duplicate mapping keys, deep nesting and overlong numbers."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        # PyYAML composes nested collections recursively: stop long before Python's recursion limit
        self._depth += 1
        try:
            if self._depth > strict_json.MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise SpecError(f"line {mark.line + 1}: nested more than {strict_json.MAX_DEPTH} deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


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


def _number_constructor(tag: str) -> Any:
    base = yaml.constructor.SafeConstructor.yaml_constructors[tag]

    def construct(loader: _UniqueKeyLoader, node: yaml.ScalarNode) -> Any:
        if len(str(node.value)) > strict_json.MAX_NUMBER_CHARS:
            raise SpecError(
                f"line {node.start_mark.line + 1}: a number of {len(str(node.value))} characters; "
                f"at most {strict_json.MAX_NUMBER_CHARS} are read"
            )
        return base(loader, node)

    return construct


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
for _tag in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float"):
    _UniqueKeyLoader.add_constructor(_tag, _number_constructor(_tag))
_UniqueKeyLoader.add_constructor("tag:yaml.org,2002:timestamp", _construct_timestamp)


def parse_document(text: str, source: str = "<spec>") -> dict[str, Any]:
    """Parse YAML (or JSON, a subset) safely into a mapping; raise SpecError naming ``source``."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_SPEC_BYTES:
        raise SpecError(f"{source}: larger than {MAX_SPEC_BYTES} bytes; a spec is a small text file")
    try:
        if source.endswith(".json"):
            try:
                data = strict_json.loads(text)
            except (strict_json.DuplicateKeyError, strict_json.JSONLimitError) as exc:
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


def parse_value(text: str, what: str = "value", *, text_if_not_yaml: bool = False) -> Any:
    """One YAML value given on the command line (``--set KEY=VALUE``), read with a spec's rules.

    Safe YAML with the same limits as a spec file (nesting, number length, duplicate keys). Text
    that is not YAML raises :class:`SpecError` naming ``what``, or with ``text_if_not_yaml`` is
    returned as the string it is; a value past a limit is always a :class:`SpecError`.
    """
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except SpecError as exc:
        raise SpecError(f"{what}: {exc}") from None
    except (yaml.YAMLError, RecursionError, ValueError, KeyError, AttributeError, TypeError) as exc:
        if text_if_not_yaml:
            return text
        detail = " ".join(str(exc).split())
        raise SpecError(f"{what}: the value is not valid YAML ({detail})") from None


def read_document(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: no such file")
    if path.stat().st_size > MAX_SPEC_BYTES:
        raise SpecError(f"{path}: larger than {MAX_SPEC_BYTES} bytes; a spec is a small text file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at {exc.start})") from None
    except OSError as exc:
        raise SpecError(f"{path}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    return parse_document(text, str(path))


def validate_spec(
    data: dict[str, Any] | PipelineSpec, registry: Registry | None = None, source: str = "spec"
) -> PipelineSpec:
    """Validate a spec against ``registry``'s components; the result carries each component's validated ``Params``.

    The structure is checked first, then every ``type`` is looked up (an unknown one raises
    :class:`UnknownComponentError` with suggestions), then the whole spec is validated once by the
    typed model of :func:`ldmkit.schema.pipeline_model`, whose ``Params`` instances are kept on the
    component specs (:meth:`ComponentSpec.params_for`) so that building does not validate again.
    """
    from ldmkit.building import current_registry
    from ldmkit.schema import typed_spec_model

    if isinstance(data, PipelineSpec):
        spec = data
        if registry is not None and _validated_by(spec, registry):
            return spec  # validated before by the same registry and unchanged since
    else:
        try:
            spec = PipelineSpec.model_validate(data)
        except ValidationError as exc:
            raise SpecError(f"{source}: {format_validation_error(exc)}") from None
    registry = registry or current_registry()
    typed = _typed_document(spec, registry, source)
    try:
        checked = typed_spec_model(registry).model_validate(typed, context={"registry": registry})
    except ValidationError as exc:
        errors = _untagged(exc, typed)
        for err in errors:  # a part of a composite names an unknown component
            if isinstance(unknown := err.get("ctx", {}).get("error"), UnknownComponentError):
                where = ".".join(map(str, err["loc"]))
                raise UnknownComponentError(f"{source}: {where}.type: {unknown}") from None
        raise SpecError(f"{source}: {format_errors(errors)}") from None
    for field_name, comp in spec.components().items():
        comp.bind(registry, getattr(checked, field_name).params)
    for task_name, comp in spec.tasks.items():
        comp.bind(registry, cast("BaseModel", checked.tasks[task_name].params))  # the typed model's Params
    for i, comp in enumerate(spec.adapters):
        comp.bind(registry, cast("BaseModel", checked.adapters[i].params))
    from ldmkit.options import validate_sampler_params

    validate_sampler_params(registry, spec.sampling.sampler, where=f"{source}: sampling.sampler", error=SpecError)
    return spec


def _validated_by(spec: PipelineSpec, registry: Registry) -> bool:
    comps = [*spec.components().values(), *spec.tasks.values(), *spec.adapters]
    return all(comp.params_for(registry) is not None for comp in comps)


def _typed_document(spec: PipelineSpec, registry: Registry, source: str) -> dict[str, Any]:
    """The spec as a mapping for the typed model, every ``type`` replaced by its registered (not alias) name."""

    def canonical(kind: str, name: str, where: str) -> str:
        try:
            registry.get(kind, name)  # warns once for a deprecated name
            return registry.info(kind, name).name
        except UnknownComponentError as exc:
            raise UnknownComponentError(f"{source}: {where}: {exc}") from None

    document = spec.model_dump(mode="python")
    for field_name, comp in spec.components().items():
        document[field_name]["type"] = canonical(field_name, comp.type, f"{field_name}.type")
    for task_name, comp in spec.tasks.items():
        document["tasks"][task_name]["type"] = canonical("task", comp.type, f"tasks.{task_name}.type")
    for i, comp in enumerate(spec.adapters):
        document["adapters"][i]["type"] = canonical("adapter", comp.type, f"adapters.{i}.type")
    sampling = document.get("sampling", {})
    sampler = sampling.get("sampler")
    if isinstance(sampler, str):
        sampling["sampler"] = canonical("sampler", sampler, "sampling.sampler")
    elif isinstance(sampler, dict) and isinstance(sampler.get("type"), str):  # {type, params} (a SamplerRef dump)
        sampling["sampler"] = {**sampler, "type": canonical("sampler", sampler["type"], "sampling.sampler.type")}
    return document


def _untagged(exc: ValidationError, document: dict[str, Any]) -> list[dict[str, Any]]:
    """``exc``'s errors with the union tags (component names) taken out of their field paths."""
    out = []
    for err in exc.errors():
        loc = list(err["loc"])
        if loc and loc[0] in ("first_stage", "denoiser", "conditioner") and loc[1:2] == [document[loc[0]]["type"]]:
            del loc[1]
        elif loc[:1] == ["tasks"] and len(loc) > 2 and loc[2] == document["tasks"].get(loc[1], {}).get("type"):
            del loc[2]
        elif loc[:1] == ["adapters"] and len(loc) > 2 and _adapter_type(document, loc[1]) == loc[2]:
            del loc[2]
        elif loc[:3] == ["sampling", "sampler", "ref"] and len(loc) > 3:
            del loc[2:4]  # the form tag and the sampler's name: sampling.sampler.params.<field>
        elif loc[:3] == ["sampling", "sampler", "name"]:
            del loc[2]
        out.append({**err, "loc": tuple(loc)})
    return out


def _adapter_type(document: dict[str, Any], index: Any) -> Any:
    adapters = document.get("adapters") or []
    return adapters[index].get("type") if isinstance(index, int) and 0 <= index < len(adapters) else None


def load_spec(path: str | Path, registry=None) -> PipelineSpec:
    """Read and fully validate a pipeline spec file (YAML or JSON)."""
    return validate_spec(read_document(path), registry, source=str(path))


def dump_spec(spec: PipelineSpec) -> str:
    """YAML text of a spec (round-trips through :func:`load_spec`)."""
    data = spec.model_dump(mode="json", exclude_none=True)
    if not data.get("adapters"):
        data.pop("adapters", None)  # specs without adapters read as they did before adapters existed
    return yaml.safe_dump(data, sort_keys=False)
