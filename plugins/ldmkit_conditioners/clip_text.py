"""``clip-text``: Stable Diffusion v1's frozen CLIP text encoder (last hidden state, 77 tokens)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

from pydantic import Field, model_validator
from torch import Tensor, nn

import ldmkit
from ldmkit import Conditioner, Conditioning, InputError
from ldmkit.checks import check_batch, index_tensor, text_batch
from ldmkit.interfaces import Slot
from ldmkit_conditioners.added_tokens import AddedTokens
from ldmkit_conditioners.clip_tokenizer import default_tokenizer
from ldmkit_conditioners.compvis import CLIPTextCompVis
from ldmkit_conditioners.diffusers import CLIPTextDiffusers

POSITION_IDS = "transformer.text_model.embeddings.position_ids"


class _TextModelHolder(nn.Module):
    """Keeps the CLIP text transformer under ``text_model`` so keys read ``transformer.text_model.*``."""

    def __init__(self, text_model: nn.Module) -> None:
        super().__init__()
        self.text_model = text_model


class CLIPTextConditioner(CLIPTextCompVis, CLIPTextDiffusers, Conditioner):
    """Prompts (or CLIP token ids (B, <=77)) -> cross-attention context (B, 77, hidden_size).

    Equivalent to the ``FrozenCLIPEmbedder`` of Stable Diffusion v1: prompts are tokenized with CLIP's
    BPE (padded with the end token to 77, truncated), encoded by a ``transformers`` CLIPTextModel
    built from these params (random weights: load a checkpoint, nothing is downloaded), and the
    final layer-normed hidden states are returned. The defaults are ViT-L/14's text tower.
    """

    name = "clip-text"
    example_params = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
    slots: tuple[Slot, ...] = ("crossattn",)

    class Params(ldmkit.Params):
        vocab_size: int = Field(49408, gt=0)
        """Tokens of the CLIP byte-pair vocabulary."""
        hidden_size: int = Field(768, gt=0)
        """Width of the text transformer (the UNet's context_dim)."""
        intermediate_size: int = Field(3072, gt=0)
        """Width of each feed-forward layer."""
        num_hidden_layers: int = Field(12, ge=1)
        """Transformer layers."""
        num_attention_heads: int = Field(12, ge=1)
        """Attention heads per layer."""
        max_position_embeddings: int = Field(77, ge=2, description="also the number of tokens per prompt")
        hidden_act: Literal["quick_gelu", "gelu"] = "quick_gelu"
        """Activation of the feed-forward layers: quick_gelu (OpenAI CLIP) or gelu."""
        layer_norm_eps: float = Field(1e-5, gt=0)
        """Epsilon of the layer norms."""
        trainable: bool = Field(False, description="False freezes the weights, as Stable Diffusion does")

        @model_validator(mode="after")
        def _heads_divide(self):
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(
                    f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}"
                )
            return self

    params: Params

    def example_input(self, batch: int) -> list[str]:
        return ["a photo of a cat"] * batch

    def __init__(self, params: Params | None = None) -> None:
        super().__init__(params)
        from transformers import CLIPTextConfig, CLIPTextModel

        p = self.params
        config = CLIPTextConfig(
            vocab_size=p.vocab_size,
            hidden_size=p.hidden_size,
            intermediate_size=p.intermediate_size,
            num_hidden_layers=p.num_hidden_layers,
            num_attention_heads=p.num_attention_heads,
            max_position_embeddings=p.max_position_embeddings,
            hidden_act=p.hidden_act,
            layer_norm_eps=p.layer_norm_eps,
        )
        model = CLIPTextModel(config)
        # older transformers wrap the transformer in ``text_model``; newer ones are the transformer itself
        text_model = getattr(model, "text_model", model)
        embeddings = text_model.embeddings
        if "position_ids" in embeddings._buffers:
            # position ids are a constant; keep them out of the state dict whatever the library version
            embeddings.register_buffer("position_ids", embeddings.position_ids, persistent=False)
        self.transformer = _TextModelHolder(text_model)
        self.register_load_state_dict_pre_hook(_drop_position_ids)
        if not p.trainable:
            self.transformer.requires_grad_(False)
        self.added_tokens = AddedTokens(embeddings, p.vocab_size, p.hidden_size)  # textual inversion

    @property
    def context_length(self) -> int:
        return self.params.max_position_embeddings

    def tokenize(self, raw: Any) -> Tensor:
        """Prompts or token ids -> validated LongTensor (B, L)."""
        known = self.params.vocab_size + len(self.added_tokens)
        if isinstance(raw, str) or (isinstance(raw, (list, tuple)) and raw and isinstance(raw[0], str)):
            texts = text_batch(raw)
            tokenizer = self.added_tokens.tokenizer or default_tokenizer()
            if self.added_tokens.tokenizer is not None:
                texts = [self.added_tokens.spell(text) for text in texts]
            tokens = tokenizer(texts, self.context_length, device=self.device)
            if int(tokens.max()) >= known:
                raise InputError(
                    f"this clip-text model has vocab_size {self.params.vocab_size}, smaller than the CLIP "
                    f"tokenizer's {default_tokenizer().vocab_size}; pass token ids instead of prompts"
                )
            return tokens
        return index_tensor(
            raw,
            what="CLIP token ids",
            high=known,
            ndim=2,
            device=self.device,
            length=self.context_length,
        )

    # -- new tokens (ldmkit.adapters.LearnsTokens) ----------------------------------------------
    @property
    def token_embedding_dim(self) -> int:
        """Width of one token embedding (``hidden_size``)."""
        return self.params.hidden_size

    def add_token_embeddings(self, embeddings: Mapping[str, Tensor]) -> None:
        """Bind each new token to its (hidden_size,) vector; prompts may use it from now on."""
        self.added_tokens.add(embeddings)

    def remove_token_embeddings(self, tokens: Iterable[str]) -> None:
        """Forget tokens added by :meth:`add_token_embeddings` (the weights were never changed)."""
        self.added_tokens.remove(tokens)

    def _encode(self, tokens: Tensor) -> Tensor:
        return self.transformer.text_model(input_ids=tokens).last_hidden_state  # (B, L, hidden_size)

    def forward(self, raw: Any) -> Conditioning:
        """``raw``: a prompt, a list of prompts, or CLIP token ids (B, L <= 77)."""
        return Conditioning(crossattn=self._encode(self.tokenize(raw)))

    def unconditional(self, batch: int) -> Conditioning:
        """The encoding of the empty prompt, as Stable Diffusion uses for guidance."""
        return self.forward([""] * check_batch(batch))


def _drop_position_ids(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """Stable Diffusion v1 checkpoints carry the constant position ids; they are not weights."""
    state_dict.pop(prefix + POSITION_IDS, None)
