"""Vector-quantized autoencoder: the discrete first stage of latent diffusion (LDM-VQ, VQGAN-style)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

import ldmkit
from ldmkit.checks import image_tensor
from ldmkit_autoencoders.compvis import VQCompVis
from ldmkit_autoencoders.diffusers import VQDiffusers
from ldmkit_autoencoders.encoder_decoder import Decoder, Encoder
from ldmkit_autoencoders.params import TINY_EXAMPLE, AutoencoderParams
from ldmkit_autoencoders.quantize import VectorQuantizer


class VQAutoencoder(VQCompVis, VQDiffusers, ldmkit.FirstStage):
    """Encoder -> ``quant_conv`` -> (codebook ``quantize``) -> ``post_quant_conv`` -> decoder.

    As in latent diffusion, the diffusion latent is the *pre-quantization* output of ``encode``;
    ``decode`` snaps it to the codebook before decoding. Submodule and buffer names follow the
    reference, so original ``first_stage_model.*`` weights load with ``strict=True``.
    """

    name = "vq-autoencoder"
    example_params = {**TINY_EXAMPLE, "double_z": False, "z_channels": 3, "embed_dim": 3, "n_embed": 16}

    class Params(AutoencoderParams):
        double_z: bool = Field(False, description="must be false: the VQ encoder outputs z_channels")
        z_channels: int = Field(3, ge=1)
        """Channels of the encoder output before quant_conv."""
        ch_mult: list[int] = Field(default_factory=lambda: [1, 2, 4], min_length=1)
        """Width multiplier of each level; one level per entry, each but the last halves the size."""
        embed_dim: int = Field(3, ge=1, description="codebook vector size = latent channels")
        n_embed: int = Field(8192, ge=1, description="codebook size")
        beta: float = Field(0.25, ge=0.0, description="weight of the (legacy: codebook) loss term")
        remap: list[int] | None = Field(None, description="codebook rows in use; indices then refer to this list")
        unknown_index: Literal["random", "extra"] | int = Field(
            "random", description="index for codes outside `remap`: a random one, one extra index, or a fixed one"
        )
        sane_index_shape: bool = Field(False, description="return indices as (B, h, w) instead of flat")
        legacy: bool = Field(True, description="reference loss, with beta on the codebook term")

        @model_validator(mode="after")
        def _consistent(self) -> VQAutoencoder.Params:
            if self.double_z:
                raise ValueError("double_z must be false for a VQ autoencoder (quant_conv takes z_channels)")
            if self.remap is not None:
                if not self.remap:
                    raise ValueError("remap must list at least one codebook row (or be null)")
                if len(set(self.remap)) != len(self.remap):
                    raise ValueError("remap must not list a codebook row twice")
                if min(self.remap) < 0 or max(self.remap) >= self.n_embed:
                    raise ValueError(f"remap entries must lie in [0, n_embed={self.n_embed})")
                if isinstance(self.unknown_index, int) and not 0 <= self.unknown_index < len(self.remap):
                    raise ValueError(f"unknown_index must lie in [0, len(remap)={len(self.remap)})")
            return self

    params: Params

    def __init__(self, params: Params | None = None) -> None:
        super().__init__(params)
        p = self.params
        self.encoder = Encoder(p)
        self.decoder = Decoder(p)
        self.quantize = VectorQuantizer(
            p.n_embed,
            p.embed_dim,
            beta=p.beta,
            remap=p.remap,
            unknown_index=p.unknown_index,
            sane_index_shape=p.sane_index_shape,
            legacy=p.legacy,
        )
        self.quant_conv = nn.Conv2d(p.z_channels, p.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(p.embed_dim, p.z_channels, 1)
        self.latent_channels = p.embed_dim
        self.downsample = p.downsample

    def encode(self, images: Tensor) -> Tensor:
        """Images (B, in_channels, H, W) -> pre-quantization latents (B, embed_dim, H/f, W/f)."""
        image_tensor(images, "images", channels=self.params.in_channels, owner=self.name, multiple_of=self.downsample)
        return self.quant_conv(self.encoder(images))

    def quantize_latents(
        self, latents: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Latents (B, embed_dim, h, w) -> (quantized, codebook loss, indices), for training.

        The quantized latents carry a straight-through gradient; indices are (B*h*w,) or (B, h, w)
        with ``sane_index_shape`` (positions in ``remap`` when one is set).
        """
        image_tensor(latents, "latents", channels=self.latent_channels, owner=self.name)
        return self.quantize(latents, generator)

    def decode(self, latents: Tensor, force_not_quantize: bool = False) -> Tensor:
        """Latents (B, embed_dim, h, w) -> images (B, out_ch, h*f, w*f), snapped to the codebook first."""
        image_tensor(latents, "latents", channels=self.latent_channels, owner=self.name)
        quant = latents if force_not_quantize else self.quantize.snap(latents)
        return self.decoder(self.post_quant_conv(quant))

    def decode_code(self, indices: Tensor) -> Tensor:
        """Code indices (B, h, w) (positions in ``remap`` if set) -> images (B, out_ch, h*f, w*f)."""
        if not isinstance(indices, Tensor) or indices.ndim != 3 or indices.is_floating_point():
            got = tuple(indices.shape) if isinstance(indices, Tensor) else type(indices).__name__
            raise ldmkit.InputError(f"{self.name}: indices must be an integer tensor (B, h, w), got {got}")
        b, h, w = indices.shape
        quant = self.quantize.get_codebook_entry(indices, (b, h, w, self.latent_channels))  # (B, C, h, w)
        return self.decoder(self.post_quant_conv(quant))

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Reconstruct ``images`` through the codebook; returns (reconstruction, codebook loss)."""
        quant, loss, _ = self.quantize_latents(self.encode(images), generator)
        return self.decoder(self.post_quant_conv(quant)), loss
