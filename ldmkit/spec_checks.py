"""What ``ldmkit validate`` checks beyond one spec's own fields: nested parts, and which document a file is.

A component may hold other components (a ``composite`` conditioner's ``parts``: each a registered
``type`` with its ``params``). Those are looked up in the registry and validated by their own
``Params`` exactly like top-level components, so ``validate`` reports what building would refuse.
"""

from __future__ import annotations

import logging
import re
import threading
import weakref
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from ldmkit.errors import SpecError, UnknownComponentError
from ldmkit.specs import PipelineSpec, format_validation_error

log = logging.getLogger(__name__)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]*")
MAX_PART_DEPTH = 8  # parts inside parts inside ...: deeper than any real model nests
MAX_PARAMETERS_ENV = "LDMKIT_MAX_PARAMETERS"
DEFAULT_MAX_PARAMETERS = 10_000_000_000  # 40 GB of float32 weights for one component


def _env_limit(name: str, default: int, unit: str) -> int:
    """A whole-number limit from the environment variable ``name`` (``default`` when unset)."""
    import os

    value = os.environ.get(name, "")
    if not value:
        return default
    if not value.isascii() or not value.isdigit() or len(value) > 30:
        raise SpecError(f"{name}={value!r}: expected a whole number of {unit}")
    return int(value)


def max_parameters() -> int:
    """The most parameters one component may have (``LDMKIT_MAX_PARAMETERS`` raises it deliberately)."""
    return _env_limit(MAX_PARAMETERS_ENV, DEFAULT_MAX_PARAMETERS, "parameters")


MAX_MODULES = 20_000  # modules in one component; a Stable Diffusion UNet has about 1,000


class _TooLarge(Exception):
    """Raised from inside a meta build as soon as the component passes a limit (stops the build early)."""


_counting = threading.local()


def _count_module(module: Any, name: str, submodule: Any) -> None:
    state = getattr(_counting, "state", None)
    if state is not None:
        state["modules"] += 1
        if state["modules"] > MAX_MODULES:
            raise _TooLarge(f"more than {MAX_MODULES:,} modules")


def count_parameters(kind: str, type_name: str, params: dict[str, Any], where: str, registry) -> int | None:
    """Parameters the component would have, counted on torch's ``meta`` device (no memory is allocated).

    The build stops as soon as it passes :data:`MAX_MODULES` (a spec asking for a million blocks is
    refused in moments, not after building them) and sizes torch cannot describe are refused
    (:class:`SpecError`); parameters on ``meta`` cost nothing, so their count is exact. None
    when the component cannot be built without real tensors; the count is then left to loading.
    """
    import torch
    from torch.nn.modules import module as torch_module

    cls = registry.get(kind, type_name)
    if not hasattr(cls, "from_params"):
        return None
    _counting.state = {"modules": 0}
    hook = torch_module.register_module_module_registration_hook(_count_module)
    try:
        with torch.device("meta"):
            module = cls.from_params(params)
    except SpecError:
        raise
    except _TooLarge as exc:
        raise SpecError(f"{where}: {type_name} with these params has {exc} (a fixed limit)") from None
    except RuntimeError as exc:
        if "overflow" not in str(exc):
            return None  # a component that needs real tensors to build: not countable here
        raise SpecError(f"{where}: {type_name} with these params has tensors too large to describe ({exc})") from None
    except Exception:  # noqa: BLE001 - a component that needs real tensors to build: not countable here
        return None
    finally:
        hook.remove()
        _counting.state = None
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


MAX_ACTIVATION_BYTES_ENV = "LDMKIT_MAX_ACTIVATION_BYTES"
DEFAULT_MAX_ACTIVATION_BYTES = 4 << 30  # one float32 tensor of one picture; a 1024x1024 SD decoder needs 0.5 GiB


def max_activation_bytes() -> int:
    """The largest tensor one picture may need (``LDMKIT_MAX_ACTIVATION_BYTES`` raises it deliberately)."""
    return _env_limit(MAX_ACTIVATION_BYTES_ENV, DEFAULT_MAX_ACTIVATION_BYTES, "bytes")


def largest_activation(spec: PipelineSpec, registry) -> tuple[int, str] | None:
    """(elements, where) of the largest tensor one picture's denoiser step and decoding produce.

    Measured by running the pipeline on torch's ``meta`` device (shapes only, nothing allocated)
    with forward hooks on every module. None when the spec has no latent size or a component
    cannot run on ``meta``; the size is then left to the real run.
    """
    import torch

    from ldmkit.building import build_component
    from ldmkit.pipeline import Pipeline

    if spec.latent_size is None:
        return None
    largest = (0, "")

    def record(name: str):
        def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            nonlocal largest
            if isinstance(output, torch.Tensor) and output.numel() > largest[0]:
                largest = (output.numel(), f"{name} ({type(module).__name__}, shape {list(output.shape)})")

        return hook

    try:
        with torch.device("meta"), torch.no_grad():
            parts = {
                name: build_component(registry, name, comp.type, comp.params_for(registry) or comp.params)
                for name, comp in spec.components().items()
            }
            pipe = Pipeline(**parts, spec=spec, registry=registry)
            for name, module in pipe.modules().items():
                for sub_name, sub in module.named_modules():
                    sub.register_forward_hook(record(f"{name}.{sub_name}" if sub_name else name))
            x = torch.empty(pipe.latent_shape(1))  # (1, C, h, w)
            pipe.first_stage.decode(x)  # first: it needs no conditioning
            cond = pipe.conditioner.unconditional(1) if pipe.conditioner is not None else None
            pipe.denoiser(x, torch.zeros(1, dtype=torch.long), cond)
    except SpecError:
        raise
    except Exception as exc:  # noqa: BLE001 - a component that cannot run on meta: not measurable here
        log.debug("activation size not measured on the meta device: %s", type(exc).__name__)
        return None if largest[0] == 0 else largest
    return largest


# specs (as JSON, with the limits) found buildable in this process, each with the registry that checked it
_checked: dict[str, weakref.ref] = {}


def check_buildable(spec: PipelineSpec, source: str, registry=None) -> None:
    """Refuse a spec whose components (parts included) are past :func:`max_parameters`, or whose
    largest tensor for one picture is past :func:`max_activation_bytes`, before anything is allocated.

    Every path that builds from a spec calls this (``Pipeline.from_spec``, and so ``generate
    --spec``, pipeline folders, ``train``, ``convert``), as ``ldmkit validate`` does.
    """
    import json

    from ldmkit.registry import get_registry

    registry = registry or get_registry()
    key = json.dumps([spec.model_dump(mode="json"), max_parameters(), max_activation_bytes()])
    if key in _checked and _checked[key]() is registry:
        return
    for field_name, comp in spec.components().items():
        try:
            check_size(field_name, comp.type, comp.params, field_name, registry)
        except SpecError as exc:
            raise type(exc)(f"{source}: {exc}") from None
    found = largest_activation(spec, registry)
    limit = max_activation_bytes()
    if found is not None and found[0] * 4 > limit:
        elements, where = found
        raise SpecError(
            f"{source}: one picture of latent size {spec.latent_size} needs a tensor of {elements:,} values "
            f"({elements * 4 / 2**30:,.1f} GiB in float32) at {where}, more than the limit of {limit:,} bytes; "
            f"set {MAX_ACTIVATION_BYTES_ENV} to raise it deliberately"
        )
    if len(_checked) > 256:
        _checked.clear()
    _checked[key] = weakref.ref(registry)


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
        except SpecError as exc:
            raise type(exc)(f"{source}: {exc}") from None
    check_buildable(spec, source + (f": {prefix.rstrip('.')}" if prefix else ""), registry)


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
    "DEFAULT_MAX_ACTIVATION_BYTES",
    "DEFAULT_MAX_PARAMETERS",
    "MAX_ACTIVATION_BYTES_ENV",
    "MAX_MODULES",
    "check_buildable",
    "largest_activation",
    "max_activation_bytes",
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
