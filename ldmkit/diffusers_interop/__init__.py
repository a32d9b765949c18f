"""Conversion between ldmkit pipelines/components and diffusers' folder layout.

``from_diffusers(dir) -> Pipeline`` and ``to_diffusers(pipeline, dir)`` convert whole pipelines;
the per-kind functions give (config, state dict) pairs, so the same weights can be put in both
libraries. Which component reads or writes which diffusers model is declared by the component classes
themselves and found through the registry (see :mod:`ldmkit.conversions`); this package holds the file
I/O and the generic helpers (:mod:`~ldmkit.diffusers_interop.mapping`,
:mod:`~ldmkit.diffusers_interop.config`). Only safetensors weights are read or written, never pickles;
diffusers itself is not needed.

The earlier names ``unet_*``, ``autoencoder_*`` and ``clip_text_*`` remain as aliases of the
``denoiser_*``, ``first_stage_*`` and ``conditioner_*`` functions.
"""

from __future__ import annotations

from ldmkit.diffusers_interop.models import (
    component_from_diffusers,
    component_to_diffusers,
    conditioner_from_diffusers,
    conditioner_params_from_diffusers,
    conditioner_to_diffusers,
    denoiser_from_diffusers,
    denoiser_params_from_diffusers,
    denoiser_to_diffusers,
    first_stage_from_diffusers,
    first_stage_params_from_diffusers,
    first_stage_to_diffusers,
)
from ldmkit.diffusers_interop.pipeline import from_diffusers, to_diffusers
from ldmkit.diffusers_interop.scheduler import schedule_from_diffusers, scheduler_config_to_diffusers

unet_to_diffusers = denoiser_to_diffusers
unet_from_diffusers = denoiser_from_diffusers
unet_params_from_diffusers = denoiser_params_from_diffusers
autoencoder_to_diffusers = first_stage_to_diffusers
autoencoder_from_diffusers = first_stage_from_diffusers
autoencoder_params_from_diffusers = first_stage_params_from_diffusers
clip_text_to_transformers = conditioner_to_diffusers
clip_text_from_transformers = conditioner_from_diffusers
clip_text_params_from_transformers = conditioner_params_from_diffusers

__all__ = [
    "autoencoder_from_diffusers",
    "autoencoder_params_from_diffusers",
    "autoencoder_to_diffusers",
    "clip_text_from_transformers",
    "clip_text_params_from_transformers",
    "clip_text_to_transformers",
    "component_from_diffusers",
    "component_to_diffusers",
    "conditioner_from_diffusers",
    "conditioner_params_from_diffusers",
    "conditioner_to_diffusers",
    "denoiser_from_diffusers",
    "denoiser_params_from_diffusers",
    "denoiser_to_diffusers",
    "first_stage_from_diffusers",
    "first_stage_params_from_diffusers",
    "first_stage_to_diffusers",
    "from_diffusers",
    "schedule_from_diffusers",
    "scheduler_config_to_diffusers",
    "to_diffusers",
    "unet_from_diffusers",
    "unet_params_from_diffusers",
    "unet_to_diffusers",
]
