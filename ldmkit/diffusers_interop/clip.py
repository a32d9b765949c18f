"""The ``clip-text`` conditioner <-> a transformers ``CLIPTextModel`` folder (``text_encoder/``).

The conditioner keeps the transformers model under ``transformer.``, so the weights only change
prefix (files name them ``text_model.*``, as Stable Diffusion folders hold them and transformers
reads them); the config carries the same eight architecture fields under their transformers names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError
from torch import Tensor, nn

from ldmkit.errors import SpecError
from ldmkit.specs import format_validation_error

NAME = "clip-text"
PREFIX = "transformer."
TEXT_MODEL = "text_model."
ARCHITECTURE = "CLIPTextModel"
MODEL_TYPE = "clip_text_model"
FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "max_position_embeddings",
    "hidden_act",
    "layer_norm_eps",
)
# transformers' CLIPTextConfig defaults, for configs that leave a field out
DEFAULTS: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 512,
    "intermediate_size": 2048,
    "num_hidden_layers": 12,
    "num_attention_heads": 8,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
# constant buffers some checkpoints carry; they are not weights
IGNORED = ("text_model.embeddings.position_ids",)


def clip_text_config_to_transformers(p: Any) -> dict[str, Any]:
    """A transformers ``config.json`` for a ``clip-text`` conditioner with params ``p``."""
    from transformers import CLIPTextConfig

    config = CLIPTextConfig(**{k: getattr(p, k) for k in FIELDS}).to_dict()
    config["architectures"] = [ARCHITECTURE]
    return config


def clip_text_params_from_transformers(config: Mapping[str, Any]) -> Any:
    """Validated ``clip-text`` params for a transformers CLIPTextModel config."""
    from ldmkit.registry import get_registry

    architectures = config.get("architectures") or [ARCHITECTURE]
    if list(architectures) != [ARCHITECTURE]:
        raise SpecError(f"text_encoder: architectures {architectures!r} is not supported (only {ARCHITECTURE})")
    if config.get("model_type", MODEL_TYPE) != MODEL_TYPE:
        raise SpecError(f"text_encoder: model_type {config.get('model_type')!r} is not {MODEL_TYPE!r}")
    values = {k: config.get(k, DEFAULTS[k]) for k in FIELDS}
    if isinstance(values["layer_norm_eps"], int) and not isinstance(values["layer_norm_eps"], bool):
        values["layer_norm_eps"] = float(values["layer_norm_eps"])
    try:
        return get_registry().get("conditioner", NAME).Params.model_validate(values)
    except ValidationError as exc:
        raise SpecError(f"text_encoder: {format_validation_error(exc)}") from None


def clip_text_to_transformers(conditioner: nn.Module) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(transformers config, CLIPTextModel state dict) of a ``clip-text`` conditioner; tensors share storage."""
    if getattr(conditioner, "name", None) != NAME:
        raise SpecError(f"expected the {NAME!r} conditioner, got {getattr(conditioner, 'name', type(conditioner))!r}")
    state = {k[len(PREFIX) :]: v for k, v in conditioner.state_dict().items() if k.startswith(PREFIX)}
    return clip_text_config_to_transformers(conditioner.params), state


def clip_text_from_transformers(config: Mapping[str, Any], state: Mapping[str, Tensor]) -> nn.Module:
    """A ``clip-text`` conditioner holding the weights of a transformers CLIPTextModel (strict about keys)."""
    from ldmkit.checkpoints import load_into
    from ldmkit.registry import get_registry

    params = clip_text_params_from_transformers(config)
    model = get_registry().create("conditioner", NAME, params)
    # files hold "text_model.*" keys; some transformers versions name the same tensors without the prefix
    named = {k if k.startswith(TEXT_MODEL) else TEXT_MODEL + k: v for k, v in state.items()}
    ours = {PREFIX + k: v for k, v in named.items() if k not in IGNORED}
    load_into(model, ours, what="text_encoder")
    return model.eval()
