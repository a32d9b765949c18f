"""Conversion between ldmkit pipelines/components and diffusers' folder layout.

``from_diffusers(dir) -> Pipeline`` and ``to_diffusers(pipeline, dir)`` convert whole pipelines;
the per-model functions give (config, state dict) pairs, so the same weights can be put in both
libraries. Only safetensors weights are read or written, never pickles; diffusers itself is not
needed.
"""

from __future__ import annotations

from ldmkit.diffusers_interop.clip import (
    clip_text_from_transformers,
    clip_text_params_from_transformers,
    clip_text_to_transformers,
)
from ldmkit.diffusers_interop.pipeline import from_diffusers, to_diffusers
from ldmkit.diffusers_interop.scheduler import schedule_from_diffusers, scheduler_config_to_diffusers
from ldmkit.diffusers_interop.unet import (
    unet_config_to_diffusers,
    unet_from_diffusers,
    unet_params_from_diffusers,
    unet_to_diffusers,
)
from ldmkit.diffusers_interop.vae import (
    autoencoder_config_to_diffusers,
    autoencoder_from_diffusers,
    autoencoder_params_from_diffusers,
    autoencoder_to_diffusers,
)

__all__ = [
    "autoencoder_config_to_diffusers",
    "autoencoder_from_diffusers",
    "autoencoder_params_from_diffusers",
    "autoencoder_to_diffusers",
    "clip_text_from_transformers",
    "clip_text_params_from_transformers",
    "clip_text_to_transformers",
    "from_diffusers",
    "schedule_from_diffusers",
    "scheduler_config_to_diffusers",
    "to_diffusers",
    "unet_config_to_diffusers",
    "unet_from_diffusers",
    "unet_params_from_diffusers",
    "unet_to_diffusers",
]
