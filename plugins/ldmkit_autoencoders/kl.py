"""KL-regularized autoencoder: the continuous first stage of latent diffusion (LDM-KL, Stable Diffusion's VAE)."""

from __future__ import annotations

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

import ldmkit
from ldmkit.checks import image_tensor
from ldmkit_autoencoders.compvis import KLCompVis
from ldmkit_autoencoders.diffusers import KLDiffusers
from ldmkit_autoencoders.distributions import DiagonalGaussian
from ldmkit_autoencoders.encoder_decoder import Decoder, Encoder
from ldmkit_autoencoders.params import TINY_EXAMPLE, AutoencoderParams


class KLAutoencoder(KLCompVis, KLDiffusers, ldmkit.FirstStage):
    """Encoder -> moments (mean, log-variance) -> latent of ``embed_dim`` channels -> decoder.

    Submodules carry the reference names (``encoder``, ``decoder``, ``quant_conv``, ``post_quant_conv``)
    so original ``first_stage_model.*`` weights load with ``load_state_dict(strict=True)``.
    """

    name = "kl-autoencoder"
    example_params = {**TINY_EXAMPLE, "embed_dim": 4}

    class Params(AutoencoderParams):
        embed_dim: int = Field(4, ge=1, description="latent channels")

        @model_validator(mode="after")
        def _needs_double_z(self) -> KLAutoencoder.Params:
            if not self.double_z:
                raise ValueError("double_z must be true: the encoder has to output both mean and log-variance")
            return self

    params: Params

    def __init__(self, params: Params | None = None) -> None:
        super().__init__(params)
        p = self.params
        self.encoder = Encoder(p)
        self.decoder = Decoder(p)
        self.quant_conv = nn.Conv2d(2 * p.z_channels, 2 * p.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(p.embed_dim, p.z_channels, 1)
        self.latent_channels = p.embed_dim
        self.downsample = p.downsample

    def encode_distribution(self, images: Tensor) -> DiagonalGaussian:
        """Images (B, in_channels, H, W) in [-1, 1] -> the posterior over latents (B, embed_dim, H/f, W/f)."""
        image_tensor(images, "images", channels=self.params.in_channels, owner=self.name, multiple_of=self.downsample)
        moments = self.quant_conv(self.encoder(images))  # (B, 2*embed_dim, H/f, W/f)
        return DiagonalGaussian(moments)

    def encode(self, images: Tensor) -> Tensor:
        """The posterior mode (its mean): (B, embed_dim, H/f, W/f), before any ``scale_factor``."""
        return self.encode_distribution(images).mode()

    def decode(self, latents: Tensor) -> Tensor:
        """Latents (B, embed_dim, h, w) -> images (B, out_ch, h*f, w*f)."""
        image_tensor(latents, "latents", channels=self.latent_channels, owner=self.name)
        return self.decoder(self.post_quant_conv(latents))

    def forward(
        self, images: Tensor, sample_posterior: bool = True, generator: torch.Generator | None = None
    ) -> tuple[Tensor, DiagonalGaussian]:
        """Reconstruct ``images`` through a posterior sample (or its mode); returns (reconstruction, posterior)."""
        posterior = self.encode_distribution(images)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(z), posterior
