"""``masked-image``: inpainting conditioning, the encoded masked image and the mask at latent size."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt
from torch import Tensor

import ldmkit
from ldmkit import Conditioner, Conditioning, FirstStage, InputError
from ldmkit.checks import check_batch, image_tensor
from ldmkit.interfaces import Slot
from ldmkit.masking import blur_fill

RANGE_TOLERANCE = 1e-3  # images slightly outside [-1, 1] from resampling are fine


@dataclass(frozen=True)
class MaskedImage:
    """An inpainting request: ``image`` (B, 3, H, W) in [-1, 1], ``mask`` (B, 1, H, W) with 1 = fill."""

    image: Tensor
    mask: Tensor


class MaskedImageConditioner(Conditioner):
    """{image, mask} -> concat (B, latent_channels + 1, h, w), as the paper's inpainting model.

    The hole is blanked out of the image, the result is encoded by the pipeline's first stage (given
    through :meth:`attach`) and multiplied by ``scale_factor``, and the mask, resized to the latent,
    is appended as one more channel.

    ``convention: ldm`` (the paper's inpainting model) blanks the hole to black (-1) and gives the
    mask channel in {-1, 1}; ``convention: zero`` (Stable Diffusion's inpainting models) blanks it to
    0 and gives the mask in {0, 1}. ``mask_first`` puts the mask channel before the latent (Stable
    Diffusion's order). The mask is binarized at 0.5.

    ``hole: blur`` paints the hole from the known pixels around it instead of a constant: a first
    stage with attention sees a constant block everywhere, and the known region's latents drift from
    the whole picture's (on the Shapes autoencoder a black hole costs the decoded known pixels about
    10 dB; docs/shapes.md).
    """

    name = "masked-image"
    example_params = {"latent_size": [8, 8]}
    slots: tuple[Slot, ...] = ("concat",)

    class Params(ldmkit.Params):
        scale_factor: float = Field(1.0, gt=0, description="multiplies the encoded masked image")
        mask_resize: Literal["nearest", "area"] = "nearest"
        """How the mask is resized to the latent: nearest or area (fractional coverage)."""
        convention: Literal["ldm", "zero"] = "ldm"
        """ldm: hole -1, mask channel in {-1, 1} (the paper's model); zero: hole 0, mask in {0, 1} (SD inpainting)."""
        mask_first: bool = False
        """Put the mask channel before the latent channels instead of after them."""
        hole: Literal["constant", "blur"] = Field(
            "constant", description="constant: the convention's value (-1 or 0); blur: painted from the known pixels"
        )
        blur_sigma: float = Field(2.0, gt=0, description="'blur' hole: Gaussian width in pixels")
        latent_size: list[PositiveInt] | None = Field(
            None, min_length=2, max_length=2, description="(h, w) of the latent, for unconditional"
        )

    params: Params

    # a 16x16 KL autoencoder of two levels: latents (4, 8, 8), the example's latent_size
    example_first_stage = {
        "type": "kl-autoencoder",
        "params": {"z_channels": 4, "embed_dim": 4, "resolution": 16, "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1},
    }

    def example_input(self, batch: int) -> dict[str, Tensor]:
        image = torch.rand(batch, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1  # (B, 3, 16, 16)
        mask = torch.zeros(batch, 1, 16, 16)
        mask[..., 4:12, 4:12] = 1  # a square hole
        return {"image": image, "mask": mask}

    def __init__(self, params: Params | None = None) -> None:
        super().__init__(params)
        self._first_stage_ref: tuple[FirstStage, ...] = ()

    def attach(self, first_stage: FirstStage) -> None:
        """Use ``first_stage`` to encode the masked image (it stays out of this module's state dict)."""
        self._first_stage_ref = (first_stage,)  # a tuple, so nn.Module does not adopt it as a child

    @property
    def first_stage(self) -> FirstStage:
        if not self._first_stage_ref:
            raise InputError("masked-image needs a first stage: build it in a Pipeline or call attach(first_stage)")
        return self._first_stage_ref[0]

    def _inputs(self, raw: Any) -> tuple[Tensor, Tensor]:
        if isinstance(raw, MaskedImage):
            image, mask = raw.image, raw.mask
        elif isinstance(raw, Mapping):
            if set(raw) != {"image", "mask"}:
                raise InputError(f"masked-image input needs exactly the keys 'image' and 'mask', got {sorted(raw)}")
            image, mask = raw["image"], raw["mask"]
        else:
            kind = type(raw).__name__
            raise InputError(f"masked-image input must be a MaskedImage or a dict with image and mask, not {kind}")
        device = self.first_stage_device()
        image = image_tensor(image, what="image", channels=3, device=device, finite=True)
        if isinstance(mask, Tensor) and mask.dtype == torch.bool:
            mask = mask.to(image.dtype)
        mask = image_tensor(mask, what="mask", channels=1, device=device, finite=True)
        if mask.shape[0] != image.shape[0] or mask.shape[-2:] != image.shape[-2:]:
            raise InputError(f"mask {tuple(mask.shape)} does not match image {tuple(image.shape)} (need (B, 1, H, W))")
        low, high = float(image.min()), float(image.max())
        if low < -1 - RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
            raise InputError(f"image values must lie in [-1, 1], got [{low:.3g}, {high:.3g}]")
        low, high = float(mask.min()), float(mask.max())
        if low < 0 or high > 1:
            raise InputError(f"mask values must lie in [0, 1] (1 = region to fill), got [{low:.3g}, {high:.3g}]")
        return image, (mask >= 0.5).to(image.dtype)

    def first_stage_device(self) -> torch.device:
        for p in self.first_stage.parameters():
            return p.device
        return torch.device("cpu")

    def forward(self, raw: Any) -> Conditioning:
        """``raw``: a :class:`MaskedImage` or a dict ``{"image": (B, 3, H, W), "mask": (B, 1, H, W)}``."""
        p = self.params
        image, mask = self._inputs(raw)
        if p.hole == "blur":
            masked = blur_fill(image, mask, p.blur_sigma)
        elif p.convention == "ldm":
            masked = image * (1 - mask) - mask  # the hole is black, as blanking in [0, 1] then rescaling gives
        else:
            masked = image * (1 - mask)
        mask_channel = mask * 2 - 1 if p.convention == "ldm" else mask
        latent = self.first_stage.encode(masked) * p.scale_factor  # (B, C, h, w)
        small = F.interpolate(mask_channel, size=latent.shape[-2:], mode=p.mask_resize)  # (B, 1, h, w)
        parts = [small, latent] if p.mask_first else [latent, small]
        return Conditioning(concat=torch.cat(parts, dim=1))  # (B, C + 1, h, w)

    def unconditional(self, batch: int) -> Conditioning:
        """Zeros (B, latent_channels + 1, *latent_size)."""
        if self.params.latent_size is None:
            raise InputError("masked-image: unconditional conditioning needs latent_size (h, w) in its params")
        channels = self.first_stage.latent_channels + 1
        shape = (check_batch(batch), channels, *self.params.latent_size)
        return Conditioning(concat=torch.zeros(shape, device=self.first_stage_device()))
