"""The identity first stage: diffusion directly in pixel space."""

from __future__ import annotations

from pydantic import Field
from torch import Tensor

import ldmkit
from ldmkit.checks import image_tensor
from ldmkit_autoencoders.compvis import IdentityCompVis


class IdentityFirstStage(IdentityCompVis, ldmkit.FirstStage):
    """``encode`` and ``decode`` return their input; the 'latent' is the image itself (f = 1)."""

    name = "identity"
    example_params = {"channels": 3}

    class Params(ldmkit.Params):
        channels: int = Field(3, ge=1, description="image (and latent) channels")

    params: Params

    def __init__(self, params: Params | None = None) -> None:
        super().__init__(params)
        self.latent_channels = self.params.channels
        self.downsample = 1

    def encode(self, images: Tensor) -> Tensor:
        """(B, channels, H, W) -> the same tensor."""
        image_tensor(images, "images", channels=self.latent_channels, owner=self.name)
        return images

    def decode(self, latents: Tensor) -> Tensor:
        """(B, channels, H, W) -> the same tensor."""
        image_tensor(latents, "latents", channels=self.latent_channels, owner=self.name)
        return latents
