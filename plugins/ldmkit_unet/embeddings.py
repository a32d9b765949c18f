"""Sinusoidal timestep embedding (the DDPM / "Attention is all you need" positional code)."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def timestep_embedding(timesteps: Tensor, dim: int, max_period: int = 10000) -> Tensor:
    """Embed (B,) timesteps (integer or fractional) into (B, dim) float32 features.

    The first half holds cosines, the second half sines, of ``t * max_period ** (-i / half)``;
    an odd ``dim`` gets a trailing zero column.
    """
    half = dim // 2
    # Keep the reference's operation order, exp(-log(P) * i / half), for bitwise-equal frequencies.
    steps = torch.arange(half, dtype=torch.float32, device=timesteps.device)  # (half,)
    exponent = -math.log(max_period) * steps / half
    freqs = torch.exp(exponent)  # (half,)
    args = timesteps[:, None].float() * freqs[None]  # (B, half)
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, 2 * half)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)  # (B, dim)
    return embedding
