"""New tokens for the CLIP text encoder (textual inversion), without touching its weights.

The tokenizer learns the tokens (ids after CLIP's vocabulary, as ``add_tokens`` gives them) and a
forward pre-hook on the text model's embeddings looks those ids up in a table of their own, so the
token-embedding matrix and the state dict stay as they are and removing a token restores everything.
A prompt naming a multi-vector token ``<t>`` is spelled ``<t> <t>_1 ... <t>_k`` before tokenizing, as
diffusers does for multi-vector embeddings.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ldmkit import InputError
from ldmkit_conditioners.clip_tokenizer import CLIPTokenizer, default_tokenizer

__all__ = ["AddedTokens"]


class AddedTokens:
    """The tokens added to one text encoder: their vectors, a tokenizer that knows them, the lookup hook."""

    def __init__(self, embeddings_module: nn.Module, vocab_size: int, dim: int) -> None:
        self.embeddings_module = embeddings_module
        self.vocab_size = vocab_size
        self.dim = dim
        self.vectors: dict[str, Tensor] = {}  # token -> (dim,), in the order added (ids follow it)
        self.tokenizer: CLIPTokenizer | None = None
        self.table: Tensor | None = None  # (n, dim)
        self._hook: Any = None

    def __len__(self) -> int:
        return len(self.vectors)

    def add(self, embeddings: Mapping[str, Tensor]) -> None:
        base = default_tokenizer()
        if base.vocab_size != self.vocab_size:
            raise InputError(
                f"new tokens need the CLIP vocabulary of {base.vocab_size} tokens; this text encoder has "
                f"{self.vocab_size}"
            )
        known = base.encoder
        for token, vector in embeddings.items():
            if not isinstance(token, str) or not token or any(c.isspace() for c in token):
                raise InputError(f"token {token!r}: a token is a non-empty string without spaces")
            if token in self.vectors or token in known or token + "</w>" in known:
                raise InputError(f"token {token!r} is known to the tokenizer already; choose another")
            if not isinstance(vector, Tensor) or tuple(vector.shape) != (self.dim,) or not vector.is_floating_point():
                shape = tuple(vector.shape) if isinstance(vector, Tensor) else type(vector).__name__
                raise InputError(f"token {token!r}: its embedding has shape {shape}, not ({self.dim},)")
            if not bool(torch.isfinite(vector).all()):
                raise InputError(f"token {token!r}: its embedding holds NaN or Inf")
        self.vectors.update({t: v.detach().to(torch.float32).clone() for t, v in embeddings.items()})
        self._refresh()

    def remove(self, tokens: Iterable[str]) -> None:
        for token in tokens:
            self.vectors.pop(token, None)
        self._refresh()

    def _refresh(self) -> None:
        if not self.vectors:
            self.tokenizer, self.table = None, None
            if self._hook is not None:
                self._hook.remove()
                self._hook = None
            return
        tokenizer = CLIPTokenizer()  # a tokenizer of its own: the shared default one stays CLIP's
        tokenizer.backend.add_tokens(list(self.vectors))
        ids = [tokenizer.backend.convert_tokens_to_ids(t) for t in self.vectors]
        if ids != list(range(self.vocab_size, self.vocab_size + len(ids))):
            raise InputError(f"the tokenizer gave the new tokens ids {ids}, not the ids after its vocabulary")
        self.tokenizer = tokenizer
        self.table = torch.stack(list(self.vectors.values()))  # (n, dim)
        if self._hook is None:
            self._hook = self.embeddings_module.register_forward_pre_hook(self._embed, with_kwargs=True)

    def spell(self, text: str) -> str:
        """``text`` with each multi-vector token ``t`` written out as ``t t_1 ... t_k``."""
        assert self.tokenizer is not None
        for token in set(self.tokenizer.backend.tokenize(text)):
            if token in self.vectors and f"{token}_1" in self.vectors:
                parts, i = [token], 1
                while f"{token}_{i}" in self.vectors:
                    parts.append(f"{token}_{i}")
                    i += 1
                text = text.replace(token, " ".join(parts))
        return text

    def _embed(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Token embeddings with the added ids looked up in the table (the other ids as usual)."""
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None or kwargs.get("inputs_embeds") is not None or self.table is None:
            return None
        added = ids >= self.vocab_size  # (B, L)
        if not bool(added.any()):
            return None
        lookup: Any = module.token_embedding
        embeds = lookup(ids.clamp(max=self.vocab_size - 1))  # (B, L, dim)
        table = self.table.to(device=embeds.device, dtype=embeds.dtype)
        embeds = torch.where(added[..., None], table[(ids - self.vocab_size).clamp(min=0)], embeds)  # (B, L, dim)
        return args, {**kwargs, "inputs_embeds": embeds}
