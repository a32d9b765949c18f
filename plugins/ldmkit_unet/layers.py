"""Small building blocks shared by the UNet modules: normalization and block dispatch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class GroupNorm32(nn.GroupNorm):
    """GroupNorm that always computes in float32 and returns the input's dtype.

    The affine weights are cast to float32 as well, so half-precision weights work on every
    device (CPU kernels refuse a float32 input with half weights); float32 runs are unchanged.
    """

    def forward(self, x: Tensor) -> Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).type(x.dtype)


def normalization(channels: int) -> GroupNorm32:
    """The UNet's standard normalization: 32 groups, eps 1e-5, computed in float32."""
    return GroupNorm32(32, channels)


def concat_channels(a: Tensor, b: Tensor) -> Tensor:
    """``torch.cat([a, b], dim=1)``; channels_last inputs are joined along their last memory dimension.

    Same values and layout in eager mode; torch.compile otherwise lays a 4-D concatenation out
    channels-first, and every later kernel then reads it across the grain.
    """
    if a.dim() == 4 and a.is_contiguous(memory_format=torch.channels_last) and not a.is_contiguous():
        joined = torch.cat([a.permute(0, 2, 3, 1), b.permute(0, 2, 3, 1)], dim=-1)  # (B, h, w, Ca + Cb)
        return joined.permute(0, 3, 1, 2)  # (B, Ca + Cb, h, w), channels_last
    return torch.cat([a, b], dim=1)


def repeat_rows(x: Tensor, rows: int) -> Tensor:
    """``x`` with its batch repeated up to ``rows`` rows (``[x; x]`` for two halves); unchanged if it has them.

    A guided call runs the rows that its unconditional and conditional halves share only once
    (:meth:`UNet.forward_guided`) and widens them where the conditioning first differs.
    """
    if x.shape[0] == rows:
        return x
    if rows % x.shape[0]:
        raise ValueError(f"cannot repeat {x.shape[0]} rows up to {rows}")
    return x.repeat(rows // x.shape[0], *(1,) * (x.dim() - 1))


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a module's parameters in place (output layers start as the identity residual)."""
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()
    return module


class TimestepBlock(nn.Module):
    """A block whose forward takes the timestep embedding: ``forward(x, emb)``."""


class ContextBlock(nn.Module):
    """A block whose forward takes the cross-attention context: ``forward(x, context)``."""


class TimestepEmbedSequential(nn.Sequential):
    """A Sequential that hands ``emb`` to timestep blocks and ``context`` to context blocks."""

    def forward(self, x: Tensor, emb: Tensor, context: Tensor | None = None) -> Tensor:  # type: ignore[override]
        for layer in self:
            if isinstance(layer, TimestepBlock):
                x = layer(x, emb[: x.shape[0]])  # x may hold only the rows a guided call shares
            elif isinstance(layer, ContextBlock):
                x = layer(x, context)
            else:
                x = layer(x)
        return x
