"""``spatial-rescaler``: resize a map or image to the latent size and concatenate it to the latent."""

from __future__ import annotations

import logging
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt
from torch import Tensor, nn

import ldmkit
from ldmkit import Conditioner, Conditioning, InputError
from ldmkit.checks import check_batch, image_tensor
from ldmkit.interfaces import Slot
from ldmkit_conditioners.compvis import SpatialRescalerCompVis

log = logging.getLogger(__name__)


class SpatialRescaler(SpatialRescalerCompVis, Conditioner):
    """(B, in_channels, H, W) -> (B, out_channels, H * multiplier**n_stages, ...) for the ``concat`` slot.

    As the CompVis ``SpatialRescaler``: ``n_stages`` successive interpolations by ``multiplier``,
    then, when ``out_channels`` is set, a 1x1 convolution ``channel_mapper``. The unconditional input
    is a constant map (``uncond_value``) of ``out_size``, since a conditioner cannot know the map
    size otherwise.
    """

    name = "spatial-rescaler"
    example_params = {"n_stages": 2, "out_channels": 2, "out_size": [4, 4]}
    slots: tuple[Slot, ...] = ("concat",)

    class Params(ldmkit.Params):
        n_stages: int = Field(1, ge=0)
        """Successive interpolations by multiplier (0 keeps the size)."""
        method: Literal["nearest", "bilinear", "bicubic", "area"] = "bilinear"
        """Interpolation mode of each stage."""
        multiplier: float = Field(0.5, gt=0)
        """Scale factor of each stage."""
        in_channels: int = Field(3, gt=0)
        """Channels of the input map."""
        out_channels: int | None = Field(None, gt=0, description="adds a 1x1 conv to this many channels")
        bias: bool = False
        """Give the 1x1 channel mapper (out_channels) a bias."""
        uncond_value: float = Field(0.0, description="value of the unconditional map")
        one_hot: bool = Field(
            False, description="also accept maps of class ids (B, H, W), one-hot encoded into in_channels classes"
        )
        out_size: list[PositiveInt] | None = Field(
            None, min_length=2, max_length=2, description="(h, w) of the unconditional map, i.e. the latent size"
        )

    params: Params

    def example_input(self, batch: int) -> Tensor:
        g = torch.Generator().manual_seed(batch)
        return torch.randn(batch, self.params.in_channels, 16, 16, generator=g)  # (B, C, 16, 16)

    def __init__(self, params: Params | None = None) -> None:
        super().__init__(params)
        p = self.params
        if p.out_channels is not None:
            log.debug("spatial rescaler maps %d to %d channels after resizing", p.in_channels, p.out_channels)
            self.channel_mapper = nn.Conv2d(p.in_channels, p.out_channels, 1, bias=p.bias)

    @property
    def out_channels(self) -> int:
        return self.params.out_channels or self.params.in_channels

    def forward(self, raw: Any) -> Conditioning:
        """``raw``: float maps or images (B, in_channels, H, W)."""
        p = self.params
        if p.one_hot and isinstance(raw, torch.Tensor) and raw.dim() == 3 and not raw.is_floating_point():
            if raw.numel() and (int(raw.min()) < 0 or int(raw.max()) >= p.in_channels):
                raise InputError(f"maps: class ids must lie in 0..{p.in_channels - 1}")
            raw = F.one_hot(raw.long(), p.in_channels).permute(0, 3, 1, 2).float()  # (B, C, H, W)
        x = image_tensor(raw, what="maps", channels=p.in_channels, device=self.device, finite=True)
        for _ in range(p.n_stages):
            if min(x.shape[-2:]) * p.multiplier < 1:
                raise InputError(f"maps of size {tuple(raw.shape[-2:])} are too small for {p.n_stages} stages")
            x = F.interpolate(x, scale_factor=p.multiplier, mode=p.method)  # (B, C, H*m, W*m)
        if p.out_channels is not None:
            x = self.channel_mapper(x)  # (B, out_channels, h, w)
        return Conditioning(concat=x)

    def unconditional(self, batch: int) -> Conditioning:
        """A constant map (B, out_channels, *out_size) filled with ``uncond_value``."""
        p = self.params
        if p.out_size is None:
            raise InputError(
                "spatial-rescaler: unconditional conditioning needs out_size (the latent h, w) in its params"
            )
        shape = (check_batch(batch), self.out_channels, *p.out_size)
        dtype = self.channel_mapper.weight.dtype if p.out_channels is not None else torch.float32
        return Conditioning(concat=torch.full(shape, p.uncond_value, dtype=dtype, device=self.device))
