"""Translate an original ``first_stage_config`` (target + params) into a registered name and ``Params``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ldmkit.errors import SpecError

# reference class name -> registered first-stage name
TARGETS = {
    "ldm.models.autoencoder.AutoencoderKL": "kl-autoencoder",
    "ldm.models.autoencoder.VQModelInterface": "vq-autoencoder",
    "ldm.models.autoencoder.VQModel": "vq-autoencoder",
    "ldm.models.autoencoder.IdentityFirstStage": "identity",
}
DDCONFIG_KEYS = (
    "double_z",
    "z_channels",
    "resolution",
    "in_channels",
    "out_ch",
    "ch",
    "ch_mult",
    "num_res_blocks",
    "attn_resolutions",
    "dropout",
)
# ddconfig options ldmkit does not implement: accepted only at the value that means "off"
DDCONFIG_FIXED = {
    "resamp_with_conv": True,
    "use_linear_attn": False,
    "attn_type": "vanilla",
    "give_pre_end": False,
    "tanh_out": False,
}
# training and bookkeeping options that do not change what the model computes
TRAINING_KEYS = {
    "lossconfig",
    "ckpt_path",
    "ignore_keys",
    "image_key",
    "colorize_nlabels",
    "monitor",
    "batch_resize_range",
    "scheduler_config",
    "lr_g_factor",
    "use_ema",
    "vq_interface",
}
VQ_KEYS = ("embed_dim", "n_embed", "remap", "sane_index_shape")


def first_stage_from_compvis(config: Mapping[str, Any], channels: int | None = None) -> tuple[str, dict[str, Any]]:
    """``{"target": ..., "params": {...}}`` -> (registered name, params for that component's ``Params``).

    ``channels`` sets the identity first stage's channel count (the reference takes it from the
    diffusion model's ``channels``). Raises SpecError for unknown targets or unsupported options.
    """
    target = str(config.get("target", ""))
    kind = TARGETS.get(target)
    if kind is None:
        known = ", ".join(sorted(TARGETS))
        raise SpecError(f"first_stage_config.target {target!r} is not a supported first stage ({known})")
    raw = dict(config.get("params") or {})
    if kind == "identity":
        return kind, ({} if channels is None else {"channels": channels})

    out: dict[str, Any] = {}
    ddconfig = dict(raw.pop("ddconfig", None) or {})
    for key, value in ddconfig.items():
        if key in DDCONFIG_KEYS:
            out[key] = list(value) if isinstance(value, (list, tuple)) else value
        elif key in DDCONFIG_FIXED:
            if value != DDCONFIG_FIXED[key]:
                raise SpecError(f"first_stage_config.params.ddconfig.{key}={value!r} is not supported")
        else:
            raise SpecError(f"first_stage_config.params.ddconfig.{key} is not a known autoencoder option")
    allowed = ("embed_dim",) if kind == "kl-autoencoder" else VQ_KEYS
    for key, value in raw.items():
        if key in TRAINING_KEYS:
            continue
        if key not in allowed:
            raise SpecError(f"first_stage_config.params.{key} is not supported for {target}")
        if key == "remap" and isinstance(value, str):
            raise SpecError(
                "first_stage_config.params.remap names a .npy file; give the used code indices as a list instead"
            )
        out[key] = value
    return kind, out
