"""Spatial transformer: the cross-attention conditioning mechanism of latent diffusion."""

from __future__ import annotations

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ldmkit_unet.layers import ContextBlock, repeat_rows, zero_module


class CrossAttention(nn.Module):
    """Multi-head attention of queries from ``x`` over keys/values from ``context`` (or ``x``)."""

    computes_attention = True  # the fast path may compute it by another kernel (ldmkit.fast.attention)

    def __init__(
        self, query_dim: int, context_dim: int | None = None, heads: int = 8, dim_head: int = 64, dropout: float = 0.0
    ) -> None:
        super().__init__()
        inner_dim = heads * dim_head
        context_dim = query_dim if context_dim is None else context_dim
        self.heads = heads
        self.scale = dim_head**-0.5
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, query_dim), nn.Dropout(dropout))

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """x (B, N, query_dim), context (B, L, context_dim) or None (self-attention) -> (B, N, query_dim)."""
        context = x if context is None else context
        q = rearrange(self.to_q(x), "b n (h d) -> b h n d", h=self.heads)  # (B, heads, N, d)
        k = rearrange(self.to_k(context), "b l (h d) -> b h l d", h=self.heads)  # (B, heads, L, d)
        v = rearrange(self.to_v(context), "b l (h d) -> b h l d", h=self.heads)  # (B, heads, L, d)
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)  # (B, heads, N, d)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))  # (B, N, query_dim)


class GEGLU(nn.Module):
    """Gated GELU projection: ``a * gelu(b)`` where ``[a, b] = proj(x)``."""

    computes_geglu = True  # the fast path may swap in its fused GEGLU kernel (ldmkit.fast.geglu)

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: Tensor) -> Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)  # (B, N, dim_out) each
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU feed-forward network, ``net = [GEGLU, Dropout, Linear]`` with a 4x hidden width."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        inner_dim = dim * mult
        self.net = nn.Sequential(GEGLU(dim, inner_dim), nn.Dropout(dropout), nn.Linear(inner_dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)  # (B, N, dim)


class BasicTransformerBlock(nn.Module):
    """Pre-norm self-attention, cross-attention and feed-forward, each with a residual."""

    def __init__(
        self, dim: int, n_heads: int, d_head: int, dropout: float = 0.0, context_dim: int | None = None
    ) -> None:
        super().__init__()
        self.attn1 = CrossAttention(dim, heads=n_heads, dim_head=d_head, dropout=dropout)  # self-attention
        self.ff = FeedForward(dim, dropout=dropout)
        self.attn2 = CrossAttention(dim, context_dim=context_dim, heads=n_heads, dim_head=d_head, dropout=dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """x (B, N, dim), context (B, L, context_dim) -> (B, N, dim).

        Context with k * B rows widens x to k * B rows after self-attention (guided calls).
        """
        x = x + self.attn1(self.norm1(x))
        if context is not None:
            x = repeat_rows(x, context.shape[0])  # a guided call's halves differ from here on
        x = x + self.attn2(self.norm2(x), context=context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(ContextBlock):
    """Treat a feature map as a sequence of h*w tokens and run transformer blocks over it.

    ``proj_in`` / ``proj_out`` are 1x1 convolutions between ``in_channels`` and ``n_heads * d_head``.
    """

    def __init__(
        self,
        in_channels: int,
        n_heads: int,
        d_head: int,
        depth: int = 1,
        dropout: float = 0.0,
        context_dim: int | None = None,
    ) -> None:
        super().__init__()
        inner_dim = n_heads * d_head
        self.in_channels = in_channels
        # Plain GroupNorm with eps 1e-6 here, unlike the float32 GroupNorm32 of the rest of the UNet.
        self.norm = nn.GroupNorm(num_groups=32, num_channels=in_channels, eps=1e-6, affine=True)
        self.proj_in = nn.Conv2d(in_channels, inner_dim, kernel_size=1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner_dim, n_heads, d_head, dropout=dropout, context_dim=context_dim)
            for _ in range(depth)
        )
        self.proj_out = zero_module(nn.Conv2d(inner_dim, in_channels, kernel_size=1))

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """x (B, C, h, w), context (B, L, context_dim) -> (B, C, h, w)."""
        _, _, height, width = x.shape
        h = self.proj_in(self.norm(x))  # (B, inner, h, w)
        h = rearrange(h, "b c h w -> b (h w) c")  # (B, h*w, inner)
        for block in self.transformer_blocks:
            h = block(h, context=context)
        h = rearrange(h, "b (h w) c -> b c h w", h=height, w=width)  # (B, inner, h, w)
        return self.proj_out(h) + repeat_rows(x, h.shape[0])
