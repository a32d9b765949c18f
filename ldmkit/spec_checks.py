"""What ``ldmkit validate`` checks beyond one spec's own fields: nested parts, and which document a file is.

A component may hold other components (a ``composite`` conditioner's ``parts``: each a registered
``type`` with its ``params``). Those are looked up in the registry and validated by their own
``Params`` exactly like top-level components, so ``validate`` reports what building would refuse.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from ldmkit.errors import SpecError, UnknownComponentError
from ldmkit.specs import PipelineSpec, format_validation_error

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]*")
MAX_PART_DEPTH = 8  # parts inside parts inside ...: deeper than any real model nests
MAX_PARAMETERS_ENV = "LDMKIT_MAX_PARAMETERS"
DEFAULT_MAX_PARAMETERS = 10_000_000_000  # 40 GB of float32 weights for one component


def max_parameters() -> int:
    """The most parameters one component may have (``LDMKIT_MAX_PARAMETERS`` raises it deliberately)."""
    import os

    value = os.environ.get(MAX_PARAMETERS_ENV, "")
    if not value:
        return DEFAULT_MAX_PARAMETERS
    if not value.isascii() or not value.isdigit() or len(value) > 30:
        raise SpecError(f"{MAX_PARAMETERS_ENV}={value!r}: expected a whole number of parameters")
    return int(value)


def count_parameters(kind: str, type_name: str, params: dict[str, Any], where: str, registry) -> int | None:
    """Parameters the component would have, counted on torch's ``meta`` device (no memory is allocated).

    None when the component cannot be built without real tensors; the count is then left to loading.
    """
    import torch

    cls = registry.get(kind, type_name)
    if not hasattr(cls, "from_params"):
        return None
    try:
        with torch.device("meta"):
            module = cls.from_params(params)
    except SpecError:
        raise
    except Exception:  # noqa: BLE001 - a component that needs real tensors to build: not countable here
        return None
    if not isinstance(module, torch.nn.Module):
        return None
    return sum(p.numel() for p in module.parameters())


def check_size(kind: str, type_name: str, params: dict[str, Any], where: str, registry) -> None:
    """Refuse a component whose parameter count is past :func:`max_parameters`, before anything is allocated."""
    count = count_parameters(kind, type_name, params, where, registry)
    limit = max_parameters()
    if count is not None and count > limit:
        raise SpecError(
            f"{where}: {type_name} with these params has {count:,} parameters ({count * 4 / 1e9:,.1f} GB in "
            f"float32), more than the limit of {limit:,}; set {MAX_PARAMETERS_ENV} to raise it deliberately"
        )


def _nested_parts(params: BaseModel) -> list[tuple[str, str, dict[str, Any]]]:
    """(field.name, type, params) of every sub-component a validated ``Params`` holds."""
    found = []
    for field_name in type(params).model_fields:
        value = getattr(params, field_name)
        if not isinstance(value, dict):
            continue
        for name, item in value.items():
            kind_name = getattr(item, "type", None)
            sub_params = getattr(item, "params", None)
            if isinstance(kind_name, str) and isinstance(sub_params, dict):
                found.append((f"{field_name}.{name}", kind_name, sub_params))
    return found


def check_component(kind: str, type_name: str, params: dict[str, Any], where: str, registry, depth: int = 0) -> None:
    """Validate one component of ``kind`` and, recursively, the parts it holds (same kind as their holder).

    Raises :class:`UnknownComponentError` (with a did-you-mean) for an unknown type and
    :class:`SpecError` naming the field path for a bad name or bad params.
    """
    if depth > MAX_PART_DEPTH:
        raise SpecError(f"{where}: parts nested more than {MAX_PART_DEPTH} deep")
    if not _NAME.fullmatch(type_name):
        raise SpecError(
            f"{where}.type: {type_name!r} is not a component name (letters, digits, '-' and '_'); "
            "specs name registered components, never import paths"
        )
    try:
        cls = registry.get(kind, type_name)
    except UnknownComponentError as exc:
        raise UnknownComponentError(f"{where}.type: {exc}") from None
    if not hasattr(cls, "Params"):  # a component without declared params takes none
        return
    try:
        validated = cls.Params.model_validate(params)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc, f"{where}.params")) from None
    for path, part_type, part_params in _nested_parts(validated):
        check_component(kind, part_type, part_params, f"{where}.params.{path}", registry, depth + 1)


def check_pipeline_parts(spec: PipelineSpec, source: str, registry=None, prefix: str = "") -> None:
    """Every component of an already validated ``spec``, parts included (``prefix``: where the spec sits)."""
    from ldmkit.registry import get_registry

    registry = registry or get_registry()
    for field_name, comp in spec.components().items():
        try:
            check_component(field_name, comp.type, comp.params, f"{prefix}{field_name}", registry)
            check_size(field_name, comp.type, comp.params, f"{prefix}{field_name}", registry)
        except SpecError as exc:
            raise type(exc)(f"{source}: {exc}") from None


def document_kind(data: Any) -> str:
    """``"train spec"`` for a mapping with a ``stage`` (what ``ldmkit train`` reads), else ``"pipeline spec"``."""
    return "train spec" if isinstance(data, dict) and "stage" in data else "pipeline spec"


def describe(path: str | Path, registry=None) -> str:
    """Validate a pipeline spec, a train spec or a pipeline folder; one line saying which it is and what it holds.

    A folder is loaded as ``ldmkit generate --spec`` loads it (spec, weights, their sizes and
    values), so what passes here generates. Raises :class:`SpecError` (or a subclass) naming the
    field, or the file, that is wrong.
    """
    from ldmkit.pipeline import SPEC_FILE
    from ldmkit.specs import load_spec, read_document, validate_spec

    path = Path(path)
    if path.is_dir():
        if not (path / SPEC_FILE).is_file():
            raise SpecError(f"{path}: a folder, but not a pipeline folder (it holds no {SPEC_FILE})")
        spec = load_spec(path / SPEC_FILE, registry)
        check_pipeline_parts(spec, f"{path / SPEC_FILE}", registry)
        from ldmkit.pipeline import Pipeline

        Pipeline.load(path, registry)
        weights = sorted(p.name for p in path.glob("*.safetensors"))
        return f"{path}: valid pipeline folder ({_summary(spec)}; weights: {', '.join(weights) or 'none'})"
    data = read_document(path)
    if document_kind(data) == "train spec":
        from ldmkit.registry import get_registry
        from ldmkit.training.spec import AutoencoderTrainSpec, LDMTrainSpec, validate_train_spec

        registry = registry or get_registry()
        train = validate_train_spec(data, source=str(path))
        try:
            check_component("dataset", train.dataset.type, train.dataset.params, "dataset", registry)
            if isinstance(train, AutoencoderTrainSpec):
                check_component(
                    "first_stage", train.first_stage.type, train.first_stage.params, "first_stage", registry
                )
        except SpecError as exc:
            raise type(exc)(f"{path}: {exc}") from None
        if isinstance(train, LDMTrainSpec):
            check_pipeline_parts(train.pipeline, str(path), registry, prefix="pipeline.")
            held = _summary(train.pipeline)
        elif isinstance(train, AutoencoderTrainSpec):
            held = f"first_stage={train.first_stage.type}"
        else:  # a LoRA of a trained pipeline
            held = f"base={train.base}, LoRA rank {train.lora.rank}"
        return f"{path}: valid train spec (stage {train.stage}, dataset={train.dataset.type}; {held})"
    spec = validate_spec(data, registry, source=str(path))
    check_pipeline_parts(spec, str(path), registry)
    return f"{path}: valid pipeline spec ({_summary(spec)})"


def _summary(spec: PipelineSpec) -> str:
    parts = ", ".join(f"{k}={v.type}" for k, v in spec.components().items())
    tasks = ", ".join(spec.tasks)
    return f"{parts}; tasks: {tasks}" if tasks else parts


__all__ = [
    "DEFAULT_MAX_PARAMETERS",
    "MAX_PARAMETERS_ENV",
    "check_size",
    "count_parameters",
    "max_parameters",
    "MAX_PART_DEPTH",
    "check_component",
    "check_pipeline_parts",
    "describe",
    "document_kind",
]
