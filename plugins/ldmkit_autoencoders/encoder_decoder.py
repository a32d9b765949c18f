"""The convolutional encoder and decoder of the LDM autoencoders.

Both are configured by :class:`AutoencoderParams`. Module names follow the reference checkpoints:
``conv_in``, ``down.<level>.block.<i>``, ``down.<level>.attn.<i>``, ``down.<level>.downsample``,
``mid.block_1`` / ``mid.attn_1`` / ``mid.block_2``, ``up.<level>.upsample``, ``norm_out``, ``conv_out``.
"""

from __future__ import annotations

from torch import Tensor, nn

from ldmkit_autoencoders.blocks import Downsample, Level, MidBlock, Upsample, group_norm, swish
from ldmkit_autoencoders.params import AutoencoderParams


class Encoder(nn.Module):
    """Images (B, in_channels, H, W) -> (B, z_channels or 2*z_channels, H/f, W/f)."""

    def __init__(self, params: AutoencoderParams) -> None:
        super().__init__()
        p = params
        levels = len(p.ch_mult)
        self.conv_in = nn.Conv2d(p.in_channels, p.ch, kernel_size=3, stride=1, padding=1)
        self.down = nn.ModuleList()
        widths_in = [p.ch] + [p.ch * m for m in p.ch_mult[:-1]]
        res = p.resolution
        for i, mult in enumerate(p.ch_mult):
            last = i == levels - 1
            width = p.ch * mult
            self.down.append(
                Level(
                    widths_in[i],
                    width,
                    p.num_res_blocks,
                    with_attention=res in p.attn_resolutions,
                    dropout=p.dropout,
                    resample=None if last else Downsample(width),
                )
            )
            if not last:
                res //= 2
        width = p.ch * p.ch_mult[-1]
        self.mid = MidBlock(width, p.dropout)
        self.norm_out = group_norm(width)
        z_out = 2 * p.z_channels if p.double_z else p.z_channels
        self.conv_out = nn.Conv2d(width, z_out, kernel_size=3, stride=1, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)  # (B, ch, H, W)
        for level in self.down:
            h = level(h)  # (B, ch*mult, H/2^i, W/2^i) after its downsample
        h = self.mid(h)  # (B, ch*ch_mult[-1], H/f, W/f)
        return self.conv_out(swish(self.norm_out(h)))  # (B, z_out, H/f, W/f)


class Decoder(nn.Module):
    """Latents (B, z_channels, h, w) -> images (B, out_ch, h*f, w*f)."""

    def __init__(self, params: AutoencoderParams) -> None:
        super().__init__()
        p = params
        levels = len(p.ch_mult)
        width = p.ch * p.ch_mult[-1]
        res = p.resolution // 2 ** (levels - 1)
        self.conv_in = nn.Conv2d(p.z_channels, width, kernel_size=3, stride=1, padding=1)
        self.mid = MidBlock(width, p.dropout)
        # built from the lowest resolution up, stored so that up[i] is level i (as in the reference)
        built: list[Level] = []
        for i in reversed(range(levels)):
            out_width = p.ch * p.ch_mult[i]
            built.append(
                Level(
                    width,
                    out_width,
                    p.num_res_blocks + 1,
                    with_attention=res in p.attn_resolutions,
                    dropout=p.dropout,
                    resample=Upsample(out_width) if i != 0 else None,
                )
            )
            width = out_width
            if i != 0:
                res *= 2
        self.up = nn.ModuleList(reversed(built))
        self.norm_out = group_norm(width)
        self.conv_out = nn.Conv2d(width, p.out_ch, kernel_size=3, stride=1, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))  # (B, ch*ch_mult[-1], h, w)
        for level in reversed(self.up):
            h = level(h)  # (B, ch*mult, ...) then 2x upsampled except at level 0
        return self.conv_out(swish(self.norm_out(h)))  # (B, out_ch, h*f, w*f)
