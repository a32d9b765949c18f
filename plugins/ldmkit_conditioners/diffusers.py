"""The conditioners <-> diffusers: ``clip-text`` as a transformers ``CLIPTextModel`` folder (``text_encoder/``)
with CLIP's tokenizer files next to it, and ``class-embedder`` with ``target: vector`` (nothing of its own:
diffusers' UNet embeds the class ids).

The CLIP conditioner keeps the transformers model under ``transformer.``, so the weights only change
prefix (files name them ``text_model.*``, as Stable Diffusion folders hold them and transformers reads
them); the config carries the same eight architecture fields under their transformers names.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from pydantic import ValidationError
from torch import Tensor

from ldmkit.checks import format_validation_error
from ldmkit.conversions import DiffusersCompanion, DiffusersContext, DiffusersModel
from ldmkit.errors import SpecError

log = logging.getLogger(__name__)

__all__ = [
    "CLIPTextDiffusers",
    "ClassEmbedderDiffusers",
    "clip_text_config_to_transformers",
    "write_clip_tokenizer",
]

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


CLIP_VOCAB_SIZE = 49408
START, END = "<|startoftext|>", "<|endoftext|>"
TOKENIZER_CLASS = "CLIPTokenizer"


def clip_text_config_to_transformers(p: Any) -> dict[str, Any]:
    """A transformers ``config.json`` for a ``clip-text`` conditioner with params ``p``."""
    from transformers import CLIPTextConfig

    config = CLIPTextConfig(**{k: getattr(p, k) for k in FIELDS}).to_dict()
    config["architectures"] = [ARCHITECTURE]
    return config


def write_clip_tokenizer(folder: Path, model_max_length: int = 77) -> Path:
    """Write vocab.json, merges.txt, tokenizer_config.json and special_tokens_map.json into ``folder``.

    transformers' ``CLIPTokenizer`` reads ``vocab.json`` (token -> id) and ``merges.txt``; built from the
    same merges list, both tokenizers give the same ids, and padding with the end token matches clip-text.
    """
    from ldmkit.checkpoints import atomic_write_text
    from ldmkit_conditioners.clip_tokenizer import default_tokenizer

    tok = default_tokenizer()
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "vocab.json", json.dumps(tok.encoder, ensure_ascii=False))
    atomic_write_text(folder / "merges.txt", "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in tok.merges))
    special = {"bos_token": START, "eos_token": END, "unk_token": END, "pad_token": END}
    config = {
        **special,
        "tokenizer_class": TOKENIZER_CLASS,
        "model_max_length": model_max_length,
        "do_lower_case": True,
        "errors": "replace",
        "add_prefix_space": False,
    }
    atomic_write_text(folder / "tokenizer_config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
    atomic_write_text(folder / "special_tokens_map.json", json.dumps(special, indent=2, sort_keys=True) + "\n")
    return folder


class CLIPTextDiffusers:
    """Mixin of ``clip-text``: a transformers ``CLIPTextModel`` folder both ways."""

    diffusers_classes: ClassVar[tuple[str, ...]] = (ARCHITECTURE,)
    Params: ClassVar[type]
    params: Any

    @classmethod
    def params_from_diffusers(cls, config: Mapping[str, Any], context: DiffusersContext) -> Any:
        """Validated params for a transformers CLIPTextModel config (and a CLIP tokenizer, if one is declared)."""
        if context.tokenizer is not None and not context.tokenizer.startswith(TOKENIZER_CLASS):
            raise SpecError(f"tokenizer {context.tokenizer!r} is not supported; clip-text uses CLIP's BPE tokenizer")
        architectures = config.get("architectures") or [ARCHITECTURE]
        if list(architectures) != [ARCHITECTURE]:
            raise SpecError(f"text_encoder: architectures {architectures!r} is not supported (only {ARCHITECTURE})")
        if config.get("model_type", MODEL_TYPE) != MODEL_TYPE:
            raise SpecError(f"text_encoder: model_type {config.get('model_type')!r} is not {MODEL_TYPE!r}")
        values = {k: config.get(k, DEFAULTS[k]) for k in FIELDS}
        if isinstance(values["layer_norm_eps"], int) and not isinstance(values["layer_norm_eps"], bool):
            values["layer_norm_eps"] = float(values["layer_norm_eps"])
        try:
            return cls.Params.model_validate(values)  # type: ignore[attr-defined]
        except ValidationError as exc:
            raise SpecError(f"text_encoder: {format_validation_error(exc)}") from None

    @classmethod
    def state_dict_from_diffusers(cls, state: Mapping[str, Tensor], params: Any) -> dict[str, Tensor]:
        """CLIPTextModel keys -> this conditioner's (``transformer.text_model.*``); constant buffers dropped."""
        # files hold "text_model.*" keys; some transformers versions name the same tensors without the prefix
        named = {k if k.startswith(TEXT_MODEL) else TEXT_MODEL + k: v for k, v in state.items()}
        return {PREFIX + k: v for k, v in named.items() if k not in IGNORED}

    def to_diffusers(self, context: DiffusersContext) -> DiffusersModel:
        """The ``text_encoder/`` folder, with CLIP's tokenizer next to it when the vocabulary is CLIP's."""
        state = {k[len(PREFIX) :]: v for k, v in self.state_dict().items() if k.startswith(PREFIX)}  # type: ignore[attr-defined]
        companions: tuple[DiffusersCompanion, ...] = ()
        if self.params.vocab_size == CLIP_VOCAB_SIZE:
            companions = (DiffusersCompanion("tokenizer", "transformers", TOKENIZER_CLASS, write_clip_tokenizer),)
        else:
            log.info(
                "text encoder vocab_size %d is not CLIP's %d: no tokenizer/ written",
                self.params.vocab_size,
                CLIP_VOCAB_SIZE,
            )
        config = clip_text_config_to_transformers(self.params)
        return DiffusersModel("transformers", ARCHITECTURE, config, state, companions)


class ClassEmbedderDiffusers:
    """Mixin of ``class-embedder``: with ``target: vector`` the ids go to the UNet, so nothing is written."""

    params: Any
    name: ClassVar[str]

    def to_diffusers(self, context: DiffusersContext) -> None:
        """None (diffusers keeps no conditioner for class ids); SpecError for a cross-attention embedding."""
        if self.params.target != "vector":
            raise SpecError(
                f"{self.name} with target {self.params.target!r} has no diffusers counterpart (only 'vector', "
                "where the UNet embeds the class ids)"
            )
        classes = (context.denoiser_config or {}).get("num_class_embeds")
        if classes != self.params.n_classes:
            raise SpecError(f"{self.name} n_classes differs from the unet's num_classes ({classes})")
        log.info("%s: diffusers keeps no conditioner for class ids; null_class is not written", self.name)
        log.warning("diffusers' LDMPipeline passes no class labels; load unet/ on its own to sample by class")
        return None
