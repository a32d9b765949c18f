"""Residual blocks and the plain 2x up/down-sampling layers of the UNet."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ldmkit_unet.layers import TimestepBlock, normalization, zero_module


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling, optionally followed by a 3x3 convolution (``conv``)."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None) -> None:
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, self.out_channels, 3, padding=1)
        elif self.out_channels != channels:
            raise ValueError("Upsample without a convolution cannot change the number of channels")

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")  # (B, C, 2h, 2w)
        if self.use_conv:
            x = self.conv(x)
        return x


class Downsample(nn.Module):
    """2x downsampling: a strided 3x3 convolution, or 2x2 average pooling (both named ``op``)."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None) -> None:
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        if use_conv:
            self.op: nn.Module = nn.Conv2d(channels, self.out_channels, 3, stride=2, padding=1)
        elif self.out_channels != channels:
            raise ValueError("Downsample without a convolution cannot change the number of channels")
        else:
            self.op = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)  # (B, C_out, h/2, w/2)


class ResBlock(TimestepBlock):
    """Residual block conditioned on the timestep embedding, optionally resampling (``up``/``down``).

    The embedding is either added after the first convolution or, with ``use_scale_shift_norm``,
    applied FiLM-style to the second normalization: ``norm(h) * (1 + scale) + shift``.
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int | None = None,
        use_scale_shift_norm: bool = False,
        up: bool = False,
        down: bool = False,
    ) -> None:
        super().__init__()
        if up and down:
            raise ValueError("a ResBlock resamples up or down, not both")
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        # forward() calls out_layers[0] on its own before the scale and shift: a fast path must not
        # fold the SiLU that follows it into the norm
        self.fuse_norm_activation = not use_scale_shift_norm
        out_ch = self.out_channels

        self.in_layers = nn.Sequential(
            normalization(channels),
            nn.SiLU(),
            nn.Conv2d(channels, out_ch, 3, padding=1),
        )
        self.updown = up or down
        if up:
            self.h_upd: nn.Module = Upsample(channels, False)
            self.x_upd: nn.Module = Upsample(channels, False)
        elif down:
            self.h_upd = Downsample(channels, False)
            self.x_upd = Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()

        self.emb_layers = nn.Sequential(
            nn.SiLU(),
            nn.Linear(emb_channels, 2 * out_ch if use_scale_shift_norm else out_ch),
        )
        self.out_layers = nn.Sequential(
            normalization(out_ch),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            zero_module(nn.Conv2d(out_ch, out_ch, 3, padding=1)),
        )
        # Only a 1x1 convolution when the width changes; the key name is part of the checkpoint format.
        self.skip_connection: nn.Module = nn.Identity() if out_ch == channels else nn.Conv2d(channels, out_ch, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """x (B, C, h, w), emb (B, emb_channels) -> (B, C_out, h', w')."""
        if self.updown:
            # Resample between the activation and the convolution, the input path alike.
            h = self.in_layers[:-1](x)  # (B, C, h, w)
            h = self.h_upd(h)  # (B, C, h', w')
            x = self.x_upd(x)  # (B, C, h', w')
            h = self.in_layers[-1](h)  # (B, C_out, h', w')
        else:
            h = self.in_layers(x)  # (B, C_out, h, w)
        emb_out = self.emb_layers(emb).type(h.dtype)[:, :, None, None]  # (B, C_out or 2*C_out, 1, 1)
        if self.use_scale_shift_norm:
            scale, shift = torch.chunk(emb_out, 2, dim=1)  # (B, C_out, 1, 1) each
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        elif getattr(self.out_layers[0], "takes_add", False):
            # a norm that adds the embedding itself, in float32 (the fast path's GroupNorm kernels)
            h = self.out_layers[1:](self.out_layers[0](h, add=emb_out))
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h  # (B, C_out, h', w')
