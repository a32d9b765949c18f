"""Configuration of the UNet denoiser: the original UNetModel argument names, validated up front."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

import ldmkit


class UNetParams(ldmkit.Params):
    """UNet settings under the names of the CompVis ``UNetModel`` config (``unet_config.params``).

    ``in_channels`` counts the latent channels plus any channels concatenated by the conditioning.
    ``use_checkpoint`` and ``use_fp16`` are accepted for config compatibility and have no effect.
    """

    image_size: int = Field(gt=0, description="latent side length (informational)")
    in_channels: int = Field(gt=0, description="latent channels plus concatenated conditioning channels")
    model_channels: int = Field(gt=0, description="base width; level widths are model_channels * channel_mult")
    out_channels: int = Field(gt=0)
    """Channels the UNet predicts (the latent channels)."""
    num_res_blocks: int = Field(ge=1, description="residual blocks per level")
    attention_resolutions: list[int] = Field(description="downsampling factors (1, 2, 4, ...) that get attention")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout in the residual blocks in training."""
    channel_mult: list[int] = Field(default_factory=lambda: [1, 2, 4, 8], min_length=1)
    """Width multiplier of each level; one level per entry."""
    conv_resample: bool = True
    """Downsample and upsample with convolutions (else pooling and plain interpolation)."""
    dims: int = 2
    """Spatial dimensions; only 2 is supported."""
    num_classes: int | None = Field(None, ge=1, description="class-conditional through label_emb when set")
    use_checkpoint: bool = False
    """Accepted for config compatibility; no effect."""
    use_fp16: bool = False
    """Accepted for config compatibility; no effect."""
    num_heads: int = -1
    """Attention heads per block, or -1 to derive them from num_head_channels."""
    num_head_channels: int = -1
    """Channels per attention head, or -1 to use num_heads."""
    num_heads_upsample: int = -1
    """Attention heads in the upsampling half, or -1 for num_heads."""
    use_scale_shift_norm: bool = False
    """The timestep embedding scales and shifts the normalized features (FiLM) instead of being added."""
    resblock_updown: bool = False
    """Downsample and upsample with residual blocks."""
    use_new_attention_order: bool = False
    """Split qkv before the heads (the newer layout of the fused projection)."""
    use_spatial_transformer: bool = False
    """Attention blocks are spatial transformers with cross-attention to the context."""
    transformer_depth: int = Field(1, ge=1)
    """Transformer blocks per spatial transformer."""
    context_dim: int | None = Field(None, ge=1)
    """Width of the cross-attention context (the conditioner's output width)."""
    n_embed: int | None = None
    """Predicting codebook ids; not supported, leave unset."""
    legacy: bool = True
    """The original's per-head width rule for spatial transformers (always ch // num_heads)."""
    prediction: Literal["eps", "x0", "v"] = "eps"
    """What the network predicts: eps (the noise), x0 (the clean latent) or v."""

    @model_validator(mode="after")
    def _consistent(self) -> UNetParams:
        if self.dims != 2:
            raise ValueError(f"dims={self.dims} is not supported; only 2-D UNets (dims=2) are implemented")
        if self.n_embed is not None:
            raise ValueError("n_embed (predicting codebook ids) is not supported; leave it unset")
        if self.use_spatial_transformer and self.context_dim is None:
            raise ValueError("use_spatial_transformer needs context_dim (the width of the cross-attention context)")
        if self.context_dim is not None and not self.use_spatial_transformer:
            raise ValueError("context_dim is set but use_spatial_transformer is false; cross-attention needs both")
        if self.num_heads == -1 and self.num_head_channels == -1:
            raise ValueError("set num_heads or num_head_channels (both are -1)")
        for name in ("num_heads", "num_head_channels", "num_heads_upsample"):
            value = getattr(self, name)
            if value != -1 and value < 1:
                raise ValueError(f"{name} must be -1 (unset) or a positive integer, got {value}")
        if any(m < 1 for m in self.channel_mult):
            raise ValueError(f"channel_mult entries must be positive, got {self.channel_mult}")
        if any(r < 1 for r in self.attention_resolutions):
            raise ValueError(f"attention_resolutions entries must be positive, got {self.attention_resolutions}")
        for mult in self.channel_mult:
            if (self.model_channels * mult) % 32:
                raise ValueError(
                    f"model_channels * channel_mult = {self.model_channels * mult} is not divisible by 32, "
                    "the number of normalization groups"
                )
        for ch in self.attention_widths():
            heads, dim_head = attention_heads(self, ch, upsample=False)
            up_heads, _ = attention_heads(self, ch, upsample=True)
            if heads < 1 or dim_head < 1 or up_heads < 1:
                raise ValueError(
                    f"cannot lay out attention heads over {ch} channels with num_heads={self.num_heads}, "
                    f"num_head_channels={self.num_head_channels}"
                )
            if not self.use_spatial_transformer and (ch % heads or ch % up_heads):
                bad = heads if ch % heads else up_heads
                raise ValueError(f"attention over {ch} channels cannot be split into {bad} heads")
        return self

    def attention_widths(self) -> list[int]:
        """Channel widths that carry an attention layer (levels in attention_resolutions and the middle)."""
        # Level ``i`` runs at downsampling factor 2**i in both the encoder and the decoder.
        at = set(self.attention_resolutions)
        widths = [self.model_channels * m for level, m in enumerate(self.channel_mult) if 2**level in at]
        return widths + [self.model_channels * self.channel_mult[-1]]


def attention_heads(p: UNetParams, ch: int, upsample: bool) -> tuple[int, int]:
    """(heads, dim_head) of the attention layer at width ``ch``, resolved as the original UNetModel does.

    ``legacy`` only changes the per-head width of spatial transformers (always ch // num_heads) and lets
    plain attention blocks fall back to ``num_heads`` (``num_heads_upsample`` in the decoder) when
    ``num_head_channels`` is unset; otherwise the head width is ``num_head_channels`` or ch // num_heads.
    """
    num_heads, nhc = p.num_heads, p.num_head_channels
    if nhc == -1:
        dim_head = ch // num_heads
    else:
        num_heads = ch // nhc
        dim_head = nhc
    if p.legacy:
        dim_head = ch // num_heads if (p.use_spatial_transformer and num_heads > 0) else nhc
    if p.use_spatial_transformer:
        return num_heads, dim_head
    if dim_head == -1:  # legacy block without num_head_channels: the head count is given directly
        heads = (p.num_heads if p.num_heads_upsample == -1 else p.num_heads_upsample) if upsample else p.num_heads
    else:
        # The head width must tile the channels exactly (the original asserts it).
        heads = ch // dim_head if dim_head > 0 and ch % dim_head == 0 else 0
    return heads, (ch // heads if heads > 0 else 0)
