"""One model at a time: (diffusers config, state dict) <-> an ldmkit component, found through the registry.

The component classes hold the knowledge (see :mod:`ldmkit.conversions`): the registered class whose
``diffusers_classes`` include a config's ``_class_name`` (or a transformers config's ``architectures``
entry) translates the config and renames the weights; ``to_diffusers`` of a component gives them back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from ldmkit.conversions import DiffusersContext, DiffusersModel, diffusers_classes, find_diffusers_component
from ldmkit.errors import SpecError

if TYPE_CHECKING:
    from ldmkit.registry import Registry

__all__ = [
    "DEFAULT_SCALING_FACTOR",
    "component_from_diffusers",
    "component_to_diffusers",
    "conditioner_from_diffusers",
    "conditioner_params_from_diffusers",
    "conditioner_to_diffusers",
    "denoiser_from_diffusers",
    "denoiser_params_from_diffusers",
    "denoiser_to_diffusers",
    "diffusers_class_name",
    "first_stage_from_diffusers",
    "first_stage_params_from_diffusers",
    "first_stage_to_diffusers",
    "scaling_factor_from_diffusers",
]

DEFAULT_SCALING_FACTOR = 0.18215
"""The ``scaling_factor`` diffusers' autoencoders assume when their config leaves it out."""

_WHAT = {"denoiser": "unet config", "first_stage": "first stage config", "conditioner": "text_encoder config"}


def diffusers_class_name(config: Mapping[str, Any]) -> Any:
    """A model config's class: ``_class_name`` (diffusers) or the single ``architectures`` entry (transformers)."""
    name = config.get("_class_name")
    if name is None:
        architectures = config.get("architectures")
        if isinstance(architectures, (list, tuple)) and len(architectures) == 1:
            name = architectures[0]
    return name


def _by_model_type(registry: Registry, kind: str, config: Mapping[str, Any]) -> str | None:
    """The class a transformers config means by its ``model_type`` (configs made in code name no architecture).

    Found among the registered classes of ``kind`` that declare ``diffusers_model_types``; their first
    ``diffusers_classes`` entry is the answer.
    """
    model_type = config.get("model_type")
    if not isinstance(model_type, str):
        return None
    for name in registry.names(kind):
        cls = registry.info(kind, name).cls
        model_types: tuple[str, ...] = tuple(getattr(cls, "diffusers_model_types", ()))
        classes = diffusers_classes(cls)
        if model_type in model_types and classes:
            return classes[0]
    return None


def _registry(registry: Registry | None) -> Registry:
    from ldmkit.registry import get_registry

    return registry or get_registry()


def params_from_diffusers(
    kind: str,
    config: Mapping[str, Any],
    context: DiffusersContext | None = None,
    *,
    class_name: str | None = None,
    registry: Registry | None = None,
) -> tuple[type[Any], Any]:
    """(component class, validated params) for a model config of ``kind``; SpecError when none reads it."""
    registry = _registry(registry)
    class_name = class_name or diffusers_class_name(config) or _by_model_type(registry, kind, config)
    info = find_diffusers_component(registry, kind, class_name, _WHAT.get(kind, kind))
    cls = info.cls
    if not callable(getattr(cls, "params_from_diffusers", None)):
        raise SpecError(f"{kind} {info.name!r} declares {class_name!r} but no params_from_diffusers")
    return cls, cls.params_from_diffusers(dict(config), context or DiffusersContext())


def component_from_diffusers(
    kind: str,
    config: Mapping[str, Any],
    state: Mapping[str, Tensor],
    context: DiffusersContext | None = None,
    *,
    class_name: str | None = None,
    registry: Registry | None = None,
) -> nn.Module:
    """The registered component of ``kind`` that reads this config, holding its weights (strict about keys)."""
    from ldmkit.checkpoints import load_into
    from ldmkit.spec_checks import check_size

    registry = _registry(registry)
    cls, params = params_from_diffusers(kind, config, context, class_name=class_name, registry=registry)
    # the config comes with the weights, unchecked: refuse sizes past the limits before building anything
    plain = params.model_dump(mode="json") if hasattr(params, "model_dump") else dict(params)
    check_size(kind, cls.name, plain, f"{class_name or diffusers_class_name(config) or kind} config", registry)
    model = cls.from_params(params)
    rename = getattr(cls, "state_dict_from_diffusers", None)
    ours = dict(state) if rename is None else rename(state, params)
    load_into(model, ours, what=getattr(model, "name", kind))
    return model.eval()


def component_to_diffusers(module: nn.Module, context: DiffusersContext | None = None) -> DiffusersModel | None:
    """The diffusers folder of ``module`` (None: a conditioner with nothing of its own to write).

    SpecError naming the component when its class declares no ``to_diffusers``.
    """
    export = getattr(module, "to_diffusers", None)
    if not callable(export):
        name = getattr(module, "name", type(module).__name__)
        raise SpecError(f"{name!r} ({type(module).__name__}) declares no diffusers conversion (to_diffusers)")
    return export(context or DiffusersContext())


def _pair(module: nn.Module, context: DiffusersContext) -> tuple[dict[str, Any], dict[str, Tensor]]:
    model = component_to_diffusers(module, context)
    if model is None:
        raise SpecError(f"{getattr(module, 'name', type(module).__name__)!r} writes no diffusers model of its own")
    return model.config, model.state


# -- by kind ---------------------------------------------------------------------------------------
def denoiser_to_diffusers(denoiser: nn.Module) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(diffusers config, state dict) of a denoiser; tensors may share storage with the module."""
    return _pair(denoiser, DiffusersContext(prediction=getattr(denoiser, "prediction", "eps")))


def denoiser_params_from_diffusers(
    config: Mapping[str, Any], prediction: str = "eps", registry: Registry | None = None
) -> Any:
    """Validated params of the denoiser that reads this diffusers UNet config."""
    return params_from_diffusers("denoiser", config, DiffusersContext(prediction=prediction), registry=registry)[1]


def denoiser_from_diffusers(
    config: Mapping[str, Any], state: Mapping[str, Tensor], prediction: str = "eps", registry: Registry | None = None
) -> nn.Module:
    """The denoiser holding the weights of a diffusers UNet (config + state dict); strict about keys."""
    context = DiffusersContext(prediction=prediction)
    return component_from_diffusers("denoiser", config, state, context, registry=registry)


def scaling_factor_from_diffusers(config: Mapping[str, Any]) -> float:
    """The latent scale factor an autoencoder config holds; SpecError unless it is a positive number."""
    scaling = config.get("scaling_factor", DEFAULT_SCALING_FACTOR)
    if isinstance(scaling, bool) or not isinstance(scaling, (int, float)) or scaling <= 0:
        raise SpecError(f"first stage config: scaling_factor must be a positive number, got {scaling!r}")
    return float(scaling)


def first_stage_to_diffusers(
    first_stage: nn.Module, scaling_factor: float = 1.0
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(diffusers config, state dict) of a first stage, with ``scaling_factor``; tensors may share storage."""
    return _pair(first_stage, DiffusersContext(scale_factor=scaling_factor))


def first_stage_params_from_diffusers(
    config: Mapping[str, Any], registry: Registry | None = None
) -> tuple[str, Any, float]:
    """(registered name, validated params, scaling_factor) for a diffusers autoencoder config."""
    cls, params = params_from_diffusers("first_stage", config, registry=registry)
    return cls.name, params, scaling_factor_from_diffusers(config)


def first_stage_from_diffusers(
    config: Mapping[str, Any], state: Mapping[str, Tensor], registry: Registry | None = None
) -> nn.Module:
    """The first stage holding the weights of a diffusers autoencoder (strict about keys)."""
    scaling_factor_from_diffusers(config)
    return component_from_diffusers("first_stage", config, state, registry=registry)


def conditioner_to_diffusers(conditioner: nn.Module) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(config, state dict) of a conditioner's own model (a transformers text encoder, for instance)."""
    return _pair(conditioner, DiffusersContext())


def conditioner_params_from_diffusers(config: Mapping[str, Any], registry: Registry | None = None) -> Any:
    """Validated params of the conditioner that reads this (transformers) model config."""
    return params_from_diffusers("conditioner", config, registry=registry)[1]


def conditioner_from_diffusers(
    config: Mapping[str, Any], state: Mapping[str, Tensor], registry: Registry | None = None
) -> nn.Module:
    """The conditioner holding the weights of a (transformers) model folder's config and state dict."""
    return component_from_diffusers("conditioner", config, state, registry=registry)
