"""``transformer-text``: the paper's text encoder, a transformer trained from scratch on token ids."""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, field_validator, model_validator
from torch import Tensor

import ldmkit
from ldmkit import Conditioner, Conditioning, InputError
from ldmkit.checks import check_batch, index_tensor, text_batch
from ldmkit.interfaces import Slot
from ldmkit_conditioners.compvis import TransformerTextCompVis
from ldmkit_conditioners.diffusers import TransformerTextDiffusers
from ldmkit_conditioners.word_tokenizer import FIRST_WORD_ID, PAD_ID, WordTokenizer, split_words
from ldmkit_conditioners.xtransformer import TransformerWrapper


class TransformerTextConditioner(TransformerTextCompVis, TransformerTextDiffusers, Conditioner):
    """Token ids (B, L) -> cross-attention context (B, L, n_embed).

    Numerically the CompVis ``BERTEmbedder`` (with ``use_tokenizer: false``) and loads its weights
    under the same keys (``transformer.token_emb.weight``, ``transformer.attn_layers.layers.0.1.to_q.weight``
    ...). Strings are accepted only with the built-in word tokenizer (``tokenizer: words`` and a
    ``vocabulary``): lowercase words, id 0 pads, id 1 is an unknown word, ``vocabulary[i]`` is ``i + 2``.
    """

    name = "transformer-text"
    example_params = {
        "n_embed": 16,
        "n_layer": 1,
        "vocab_size": 8,
        "max_seq_len": 6,
        "tokenizer": "words",
        "vocabulary": ["red", "blue", "circle", "square"],
    }
    slots: tuple[Slot, ...] = ("crossattn",)

    class Params(ldmkit.Params):
        n_embed: int = Field(gt=0, description="width of the embeddings (the UNet's context_dim)")
        n_layer: int = Field(ge=1, description="number of (attention, feed-forward) blocks")
        vocab_size: int = Field(30522, gt=0)
        """Token ids the embedding table holds."""
        max_seq_len: int = Field(77, gt=0)
        """Tokens per prompt (longer prompts are cut, shorter ones padded)."""
        use_tokenizer: bool = Field(False, description="the original's BERT tokenizer; not bundled, keep false")
        embedding_dropout: float = Field(0.0, ge=0.0, lt=1.0)
        """Dropout on the token embeddings in training."""
        tokenizer: Literal["words"] | None = Field(None, description="'words' turns strings into ids")
        vocabulary: list[str] | None = Field(None, description="the words of the 'words' tokenizer")

        @field_validator("use_tokenizer")
        @classmethod
        def _no_bert(cls, value: bool) -> bool:
            if value:
                raise ValueError(
                    "the BERT tokenizer is not bundled: set use_tokenizer to false and pass token ids "
                    "(or use tokenizer: words with a vocabulary)"
                )
            return value

        @model_validator(mode="after")
        def _vocabulary(self) -> TransformerTextConditioner.Params:
            if self.tokenizer is None:
                if self.vocabulary is not None:
                    raise ValueError("vocabulary is given but tokenizer is not set; add tokenizer: words")
                return self
            if not self.vocabulary:
                raise ValueError("tokenizer 'words' needs a non-empty vocabulary (a list of words)")
            seen: set[str] = set()
            for word in self.vocabulary:
                if split_words(word) != [word.lower()]:
                    raise ValueError(f"vocabulary entry {word!r} is not a single word of letters and digits")
                if word.lower() in seen:
                    raise ValueError(f"vocabulary entry {word!r} appears twice (case is ignored)")
                seen.add(word.lower())
            if len(self.vocabulary) + FIRST_WORD_ID > self.vocab_size:
                raise ValueError(
                    f"vocabulary of {len(self.vocabulary)} words needs vocab_size >= "
                    f"{len(self.vocabulary) + FIRST_WORD_ID} (ids 0 and 1 are padding and unknown)"
                )
            return self

    params: Params

    def example_input(self, batch: int) -> list[str]:
        words = " ".join((self.params.vocabulary or [])[:4])
        return [words] * batch

    def __init__(self, params: Params | None = None) -> None:
        super().__init__(params)
        p = self.params
        self.transformer = TransformerWrapper(p.vocab_size, p.max_seq_len, p.n_embed, p.n_layer, p.embedding_dropout)
        vocabulary = p.vocabulary if p.tokenizer == "words" else None  # the validator gives "words" one
        self.tokenizer = WordTokenizer(vocabulary, p.max_seq_len) if vocabulary is not None else None

    def tokenize(self, raw: Any) -> Tensor:
        """Strings (with the word tokenizer) or token ids -> validated LongTensor (B, L)."""
        is_text = isinstance(raw, str) or (isinstance(raw, (list, tuple)) and len(raw) > 0 and isinstance(raw[0], str))
        if is_text:
            if self.tokenizer is None:
                raise InputError(
                    "this transformer-text conditioner has no tokenizer: pass token ids (B, L) "
                    "or set tokenizer: words with a vocabulary"
                )
            return self.tokenizer(text_batch(raw, "captions"), device=self.device)
        p = self.params
        return index_tensor(raw, what="token ids", high=p.vocab_size, ndim=2, device=self.device, length=p.max_seq_len)

    def forward(self, raw: Any) -> Conditioning:
        """``raw``: LongTensor (B, L <= max_seq_len) of token ids, or captions with the word tokenizer."""
        tokens = self.tokenize(raw)
        return Conditioning(crossattn=self.transformer(tokens))  # (B, L, n_embed)

    def unconditional(self, batch: int) -> Conditioning:
        """The empty caption: ``max_seq_len`` padding ids (0) per sample."""
        shape = (check_batch(batch), self.params.max_seq_len)
        tokens = torch.full(shape, PAD_ID, dtype=torch.long, device=self.device)
        return Conditioning(crossattn=self.transformer(tokens))  # (B, max_seq_len, n_embed)
