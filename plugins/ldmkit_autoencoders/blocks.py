"""Building blocks of the LDM autoencoder (Rombach et al. 2022, after the VQGAN encoder/decoder).

Attribute names (``norm1``, ``conv1``, ``nin_shortcut``, ``q``, ``proj_out``, ``conv`` ...) are part of
the checkpoint format: they are the keys of the original state dicts and must not change.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


def swish(x: Tensor) -> Tensor:
    """x * sigmoid(x), written out so the numerics follow the reference implementation exactly."""
    return x * torch.sigmoid(x)


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups and eps 1e-6, the only normalization the autoencoder uses."""
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """norm -> swish -> conv3x3, twice (dropout before the second conv), plus a 1x1 skip if widths differ."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(swish(self.norm1(x)))  # (B, C_out, H, W)
        h = self.conv2(self.dropout(swish(self.norm2(h))))  # (B, C_out, H, W)
        if self.in_channels != self.out_channels:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all H*W positions, with 1x1 convolutions as projections."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.in_channels = channels
        self.norm = group_norm(channels)
        self.q = nn.Conv2d(channels, channels, kernel_size=1, stride=1, padding=0)
        self.k = nn.Conv2d(channels, channels, kernel_size=1, stride=1, padding=0)
        self.v = nn.Conv2d(channels, channels, kernel_size=1, stride=1, padding=0)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1, stride=1, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        h = x.shape[2]  # the height, to fold the tokens back
        normed = self.norm(x)

        def tokens(t: Tensor) -> Tensor:
            return rearrange(t, "b c h w -> b 1 (h w) c")  # (B, 1, HW, C): one head

        q, k, v = tokens(self.q(normed)), tokens(self.k(normed)), tokens(self.v(normed))
        # default scale 1/sqrt(C), softmax over key positions: the reference computation
        out = F.scaled_dot_product_attention(q, k, v)  # (B, 1, HW, C)
        out = rearrange(out, "b 1 (h w) c -> b c h w", h=h)  # (B, C, H, W)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Stride-2 3x3 convolution after padding one zero row/column at the bottom/right only."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        # torch convolutions pad symmetrically; the reference pads (left 0, right 1, top 0, bottom 1)
        x = F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0)
        return self.conv(x)  # (B, C, H/2, W/2)


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling followed by a 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")  # (B, C, 2H, 2W)
        return self.conv(x)


class MidBlock(nn.Module):
    """The bottleneck: resnet block, self-attention, resnet block (keys ``block_1``, ``attn_1``, ``block_2``)."""

    def __init__(self, channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels, dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Level(nn.Module):
    """One resolution level: resnet blocks, each followed by attention when the level has it.

    ``resample`` is stored under ``downsample`` or ``upsample`` (the key the reference uses) when given.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_blocks: int,
        with_attention: bool,
        dropout: float,
        resample: Downsample | Upsample | None = None,
    ) -> None:
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleList()
        for i in range(num_blocks):
            self.block.append(ResnetBlock(in_channels if i == 0 else out_channels, out_channels, dropout))
            if with_attention:
                self.attn.append(AttnBlock(out_channels))
        self.resample_name: str | None = None
        if resample is not None:
            self.resample_name = "downsample" if isinstance(resample, Downsample) else "upsample"
            self.add_module(self.resample_name, resample)

    def forward(self, x: Tensor) -> Tensor:
        for i, block in enumerate(self.block):
            x = block(x)
            if len(self.attn) > 0:
                x = self.attn[i](x)
        if self.resample_name is not None:
            x = getattr(self, self.resample_name)(x)
        return x
