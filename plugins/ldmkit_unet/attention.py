"""Spatial self-attention block of the UNet (used when there is no spatial transformer).

Two channel layouts of the fused qkv projection exist in checkpoints: the legacy one groups
channels per head and then into q, k, v; the new one splits q, k, v first and then heads.
"""

from __future__ import annotations

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ldmkit_unet.layers import normalization, zero_module


class QKVAttentionLegacy(nn.Module):
    """Attention over a fused (B, heads * 3 * d, T) tensor laid out as [head][q|k|v][d]."""

    def __init__(self, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads

    def forward(self, qkv: Tensor) -> Tensor:
        """(B, heads * 3 * d, T) -> (B, heads * d, T)."""
        width = qkv.shape[1]
        d = width // (3 * self.n_heads)
        qkv = rearrange(qkv, "b (h three d) t -> three b h t d", h=self.n_heads, three=3)  # (3, B, heads, T, d)
        q, k, v = qkv.unbind(dim=0)  # (B, heads, T, d) each
        out = F.scaled_dot_product_attention(q, k, v, scale=d**-0.5)  # (B, heads, T, d)
        return rearrange(out, "b h t d -> b (h d) t")  # (B, heads * d, T)


class QKVAttention(nn.Module):
    """Attention over a fused (B, 3 * heads * d, T) tensor laid out as [q|k|v][head][d]."""

    def __init__(self, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads

    def forward(self, qkv: Tensor) -> Tensor:
        """(B, 3 * heads * d, T) -> (B, heads * d, T)."""
        width = qkv.shape[1]
        d = width // (3 * self.n_heads)
        qkv = rearrange(qkv, "b (three h d) t -> three b h t d", h=self.n_heads, three=3)  # (3, B, heads, T, d)
        q, k, v = qkv.unbind(dim=0)  # (B, heads, T, d) each
        out = F.scaled_dot_product_attention(q, k, v, scale=d**-0.5)  # (B, heads, T, d)
        return rearrange(out, "b h t d -> b (h d) t")  # (B, heads * d, T)


class AttentionBlock(nn.Module):
    """Residual multi-head self-attention over all spatial positions.

    ``num_heads`` is the resolved head count (it must divide ``channels``); the UNet works it out
    from its ``num_heads`` / ``num_head_channels`` settings.
    """

    def __init__(self, channels: int, num_heads: int, use_new_attention_order: bool = False) -> None:
        super().__init__()
        if num_heads < 1 or channels % num_heads:
            raise ValueError(f"attention over {channels} channels cannot be split into {num_heads} heads")
        self.channels = channels
        self.num_heads = num_heads
        self.norm = normalization(channels)
        # 1-D convolutions (not Linear) so checkpoint weights keep their (out, in, 1) shape.
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        order = QKVAttention if use_new_attention_order else QKVAttentionLegacy
        self.attention = order(num_heads)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, h, w) -> (B, C, h, w)."""
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)  # (B, C, T)
        qkv = self.qkv(self.norm(x))  # (B, 3C, T)
        h = self.proj_out(self.attention(qkv))  # (B, C, T)
        return (x + h).reshape(b, c, *spatial)
