"""The small bidirectional transformer that the paper trains from scratch on token ids.

It reproduces, with the same parameter names, the ``TransformerWrapper`` + ``Encoder`` pair that the
CompVis ``BERTEmbedder`` builds with its defaults: token and learned absolute position embeddings,
``depth`` blocks of pre-norm self-attention (8 heads of 64, no q/k/v bias) and a GELU feed-forward
(4x), each added back to its input, then a final LayerNorm. ``to_logits`` is never used for
conditioning but is part of the original checkpoints, so it is kept for strict loading.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

DIM_HEAD = 64
HEADS = 8
FF_MULT = 4


class AbsolutePositionalEmbedding(nn.Module):
    """A learned embedding per position, added to the token embeddings."""

    def __init__(self, dim: int, max_seq_len: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(max_seq_len, dim)
        nn.init.normal_(self.emb.weight, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        positions = torch.arange(x.shape[1], device=x.device)
        return self.emb(positions)[None]  # (1, L, D)


class Attention(nn.Module):
    """Multi-head self-attention over the whole sequence (no mask, as in the original)."""

    def __init__(self, dim: int, heads: int = HEADS, dim_head: int = DIM_HEAD) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.Linear(inner, dim)

    def forward(self, x: Tensor) -> Tensor:
        def split(t: Tensor) -> Tensor:
            return rearrange(t, "b l (h d) -> b h l d", h=self.heads)  # (B, heads, L, d)

        q, k, v = split(self.to_q(x)), split(self.to_k(x)), split(self.to_v(x))
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, L, d), scale d**-0.5
        out = rearrange(out, "b h l d -> b l (h d)")  # (B, L, heads * d)
        return self.to_out(out)


class FeedForward(nn.Module):
    """Linear -> GELU -> Dropout -> Linear; nested like the original so the keys are ``net.0.0`` and ``net.2``."""

    def __init__(self, dim: int, mult: int = FF_MULT, dropout: float = 0.0) -> None:
        super().__init__()
        inner = dim * mult
        project_in = nn.Sequential(nn.Linear(dim, inner), nn.GELU())
        self.net = nn.Sequential(project_in, nn.Dropout(dropout), nn.Linear(inner, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Encoder(nn.Module):
    """``depth`` (attention, feed-forward) pairs; each entry of ``layers`` is ``[LayerNorm, block]``."""

    def __init__(self, dim: int, depth: int) -> None:
        super().__init__()
        self.dim = dim
        self.layers = nn.ModuleList()
        for _ in range(depth):
            # the original's third entry (the residual add) has no weights, so the keys stay ``layers.i.0/1``
            self.layers.append(nn.ModuleList([nn.LayerNorm(dim), Attention(dim)]))
            self.layers.append(nn.ModuleList([nn.LayerNorm(dim), FeedForward(dim)]))

    def forward(self, x: Tensor) -> Tensor:
        for pair in self.layers:
            norm, block = cast(nn.ModuleList, pair)  # [LayerNorm, Attention or FeedForward]
            x = x + block(norm(x))  # (B, L, D), pre-norm residual
        return x


class TransformerWrapper(nn.Module):
    """Token ids (B, L) -> embeddings (B, L, dim)."""

    def __init__(self, num_tokens: int, max_seq_len: int, dim: int, depth: int, emb_dropout: float = 0.0) -> None:
        super().__init__()
        self.max_seq_len = max_seq_len
        self.num_tokens = num_tokens
        self.token_emb = nn.Embedding(num_tokens, dim)
        nn.init.normal_(self.token_emb.weight, std=0.02)
        self.pos_emb = AbsolutePositionalEmbedding(dim, max_seq_len)
        self.emb_dropout = nn.Dropout(emb_dropout)
        self.attn_layers = Encoder(dim, depth)
        self.norm = nn.LayerNorm(dim)
        self.to_logits = nn.Linear(dim, num_tokens)

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.token_emb(tokens)  # (B, L, D)
        x = x + self.pos_emb(x)
        x = self.emb_dropout(x)
        x = self.attn_layers(x)
        return self.norm(x)  # (B, L, D)
