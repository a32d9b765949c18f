"""Tiny pipelines for CPU tests: UNet and autoencoder params, pipeline specs, a Stable-Diffusion-shaped pipeline.

Each builder fixes what the tiny models share and takes the rest as arguments, so a test names the details it
relies on (channels, attention levels, heads) where it builds its spec. Every call returns new dicts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

import ldmkit


def tiny_unet_params(*, channels: int, context_dim: int | None = None, **overrides: Any) -> dict[str, Any]:
    """Params of a ``unet`` denoiser over 8x8 latents: two levels 32 and 64 channels wide, one res block a level.

    ``channels``: latent channels in and out. ``context_dim``: cross-attention (spatial transformers) over a context
    of that width. No attention levels (``attention_resolutions=[]``) unless overridden, and no heads: the caller
    names ``num_heads`` or ``num_head_channels``.
    """
    params: dict[str, Any] = {
        "image_size": 8,
        "in_channels": channels,
        "out_channels": channels,
        "model_channels": 32,
        "channel_mult": [1, 2],
        "num_res_blocks": 1,
        "attention_resolutions": [],
    }
    if context_dim is not None:
        params |= {"use_spatial_transformer": True, "context_dim": context_dim}
    return params | overrides


def tiny_autoencoder_params(*, channels: int, **overrides: Any) -> dict[str, Any]:
    """Params of a KL (or, with ``n_embed``, VQ) autoencoder of 16x16 pictures: two levels (f=2), 32 channels wide.

    ``channels``: latent channels (``z_channels`` and ``embed_dim``). Self-attention levels are left to the
    autoencoder's default (none) unless ``attn_resolutions`` is given.
    """
    params = {"embed_dim": channels, "z_channels": channels, "resolution": 16, "ch": 32, "ch_mult": [1, 2]}
    return params | {"num_res_blocks": 1} | overrides


def tiny_pipeline_spec(
    first_stage: Mapping[str, Any],
    unet: Mapping[str, Any],
    conditioner: Mapping[str, Any] | None = None,
    *,
    version: int | None = None,
    latent_size: Sequence[int] | None = (8, 8),
    **fields: Any,
) -> dict[str, Any]:
    """A pipeline spec: ``first_stage`` and ``conditioner`` (components), a ``unet`` denoiser of ``unet`` params.

    8x8 latents unless ``latent_size`` says otherwise (None: no ``latent_size``). ``fields`` are the spec's other
    top-level fields (``schedule``, ``scale_factor``, ``sampling``, ``tasks``, ...). The keys come in one order:
    ``version``, the components, ``schedule``, ``scale_factor``, ``latent_size``, the rest as given.
    """
    spec: dict[str, Any] = {} if version is None else {"version": version}
    spec |= {"first_stage": dict(first_stage), "denoiser": {"type": "unet", "params": dict(unet)}}
    if conditioner is not None:
        spec["conditioner"] = dict(conditioner)
    spec |= {key: fields.pop(key) for key in ("schedule", "scale_factor") if key in fields}
    if latent_size is not None:
        spec["latent_size"] = list(latent_size)
    return spec | fields


# A tiny class-conditional pipeline (KL autoencoder, cross-attention UNet) shared by CPU tests.
TINY_SPEC: dict[str, Any] = tiny_pipeline_spec(
    {"type": "kl-autoencoder", "params": tiny_autoencoder_params(channels=4, attn_resolutions=[])},
    tiny_unet_params(channels=4, attention_resolutions=[2], num_head_channels=32, context_dim=32),
    {"type": "class-embedder", "params": {"embed_dim": 32, "n_classes": 10, "null_class": 9}},
    tasks={"class2img": {"type": "class2img"}},
)

# -- a tiny random Stable-Diffusion-architecture pipeline (diffusers: AutoencoderKL, UNet2DConditionModel,
# CLIPTextModel), for the tests against diffusers and transformers --------------------------------------------
TINY_SD_CLIP: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
}
"""Params of a ``clip-text`` conditioner: CLIP's vocabulary, a 32-wide text transformer of two layers."""

SD_SCHEDULE: dict[str, Any] = {"beta_schedule": "linear", "linear_start": 0.00085, "linear_end": 0.012}
SD_SCALE_FACTOR = 0.18215


def tiny_sd_spec(
    conditioner: Mapping[str, Any] | None = None, *, unet: Mapping[str, Any] | None = None, **fields: Any
) -> dict[str, Any]:
    """Stable Diffusion v1's shape, tiny: a KL autoencoder of 16x16 pictures to 4x8x8 latents (f=2), a UNet with
    cross-attention over a 32-wide context at both levels (2 heads), a ``clip-text`` conditioner
    (:data:`TINY_SD_CLIP`), SD's schedule and scale factor.

    ``conditioner`` replaces the CLIP text model; ``unet`` overrides UNet params; ``fields`` override or add
    top-level fields (``scale_factor=0.5``).
    """
    sd_unet = tiny_unet_params(channels=4, attention_resolutions=[1, 2], num_heads=2, context_dim=32)
    fields = {"schedule": dict(SD_SCHEDULE), "scale_factor": SD_SCALE_FACTOR} | fields
    return tiny_pipeline_spec(
        {"type": "kl-autoencoder", "params": tiny_autoencoder_params(channels=4)},
        sd_unet | dict(unet or {}),
        conditioner if conditioner is not None else {"type": "clip-text", "params": dict(TINY_SD_CLIP)},
        **fields,
    )


def randomize(module: torch.nn.Module, seed: int, std: float = 0.05) -> torch.nn.Module:
    """Every parameter drawn from N(0, std^2), from a generator seeded with ``seed`` (in parameter order).

    Many layers start at zero, which would hide mistakes in tests that compare two implementations.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


def tiny_sd_pipeline(seed: int = 10, std: float = 0.05, **spec: Any) -> ldmkit.Pipeline:
    """The pipeline of ``tiny_sd_spec(**spec)``, each component randomized (:func:`randomize`) from ``seed + i``,
    i its place in ``pipe.modules()``."""
    pipe = ldmkit.Pipeline.from_spec(tiny_sd_spec(**spec))
    for i, module in enumerate(pipe.modules().values()):
        randomize(module, seed=seed + i, std=std)
    return pipe
