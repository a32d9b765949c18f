"""The encoder/decoder configuration shared by the KL and VQ autoencoders (the original ``ddconfig``)."""

from __future__ import annotations

from pydantic import Field, model_validator

import ldmkit

GROUPS = 32  # every GroupNorm in the autoencoder has 32 groups

TINY_EXAMPLE: dict = {
    "z_channels": 4,
    "resolution": 16,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 32,
    "ch_mult": [1, 2],
    "num_res_blocks": 1,
    "attn_resolutions": [],
    "dropout": 0.0,
}
"""A 16x16 autoencoder of two levels (downsampling 2): the example params of both kinds."""


class AutoencoderParams(ldmkit.Params):
    """Fields of the reference ``ddconfig``, flattened. Defaults: the 256px, f8 configuration."""

    double_z: bool = Field(True, description="encoder outputs 2*z_channels (mean and log-variance)")
    z_channels: int = Field(4, ge=1, description="channels at the encoder output / decoder input")
    resolution: int = Field(256, ge=1, description="training image size; places the attention levels")
    in_channels: int = Field(3, ge=1, description="image channels fed to the encoder")
    out_ch: int = Field(3, ge=1, description="image channels produced by the decoder")
    ch: int = Field(128, ge=1, description="base width; level i has ch * ch_mult[i] channels")
    ch_mult: list[int] = Field(default_factory=lambda: [1, 2, 4, 4], min_length=1)
    """Width multiplier of each level; one level per entry, each but the last halves the size."""
    num_res_blocks: int = Field(2, ge=1, description="resnet blocks per encoder level (decoder: one more)")
    attn_resolutions: list[int] = Field(
        default_factory=list, description="feature-map sizes (relative to `resolution`) that get self-attention"
    )
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout in the residual blocks in training."""

    @model_validator(mode="after")
    def _widths_fit_group_norm(self) -> AutoencoderParams:
        if any(m < 1 for m in self.ch_mult):
            raise ValueError(f"ch_mult entries must be >= 1, got {self.ch_mult}")
        widths = sorted({self.ch} | {self.ch * m for m in self.ch_mult})
        bad = [w for w in widths if w % GROUPS]
        if bad:
            raise ValueError(
                f"every width ch * ch_mult[i] (and ch) must be a multiple of {GROUPS} for GroupNorm; "
                f"got widths {widths} (not multiples: {bad})"
            )
        return self

    @property
    def downsample(self) -> int:
        """Spatial reduction factor f = 2 ** (len(ch_mult) - 1)."""
        return 2 ** (len(self.ch_mult) - 1)
