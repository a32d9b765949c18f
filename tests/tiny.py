"""A tiny class-conditional pipeline spec (KL autoencoder, cross-attention UNet) shared by CPU tests."""

from __future__ import annotations

from typing import Any

TINY_SPEC: dict[str, Any] = {
    "first_stage": {
        "type": "kl-autoencoder",
        "params": {"embed_dim": 4, "z_channels": 4, "resolution": 16, "ch": 32, "ch_mult": [1, 2]}
        | {"num_res_blocks": 1, "attn_resolutions": []},
    },
    "denoiser": {
        "type": "unet",
        "params": {"image_size": 8, "in_channels": 4, "out_channels": 4, "model_channels": 32, "channel_mult": [1, 2]}
        | {"num_res_blocks": 1, "attention_resolutions": [2], "num_head_channels": 32}
        | {"use_spatial_transformer": True, "context_dim": 32},
    },
    "conditioner": {"type": "class-embedder", "params": {"embed_dim": 32, "n_classes": 10, "null_class": 9}},
    "latent_size": [8, 8],
    "tasks": {"class2img": {"type": "class2img"}},
}
