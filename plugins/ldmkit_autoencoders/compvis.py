"""The first stages' CompVis translation: an original ``first_stage_config`` -> each class's ``Params``.

The KL and VQ autoencoders take the original ``ddconfig`` keys unchanged (their submodule names are the
original's too, so the weights load without renaming); training options are skipped, options ldmkit does
not implement are accepted only at the value that means "off".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from ldmkit.conversions import CompVisContext
from ldmkit.errors import SpecError

__all__ = [
    "TARGETS",
    "AutoencoderCompVis",
    "IdentityCompVis",
    "KLCompVis",
    "VQCompVis",
    "first_stage_from_compvis",
]

KL_TARGETS = ("ldm.models.autoencoder.AutoencoderKL",)
VQ_TARGETS = ("ldm.models.autoencoder.VQModelInterface", "ldm.models.autoencoder.VQModel")
IDENTITY_TARGETS = ("ldm.models.autoencoder.IdentityFirstStage",)
TARGETS = {
    **dict.fromkeys(KL_TARGETS, "kl-autoencoder"),
    **dict.fromkeys(VQ_TARGETS, "vq-autoencoder"),
    **dict.fromkeys(IDENTITY_TARGETS, "identity"),
}
"""Original class path -> the registered name of the first stage of this plugin that stands in for it."""

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


def _autoencoder_params(raw: Mapping[str, Any], allowed: tuple[str, ...], section: str, target: str) -> dict[str, Any]:
    """The ddconfig keys plus the ``allowed`` top-level keys; SpecError for anything unsupported."""
    raw = dict(raw)
    out: dict[str, Any] = {}
    ddconfig = dict(raw.pop("ddconfig", None) or {})
    for key, value in ddconfig.items():
        if key in DDCONFIG_KEYS:
            out[key] = list(value) if isinstance(value, (list, tuple)) else value
        elif key in DDCONFIG_FIXED:
            if value != DDCONFIG_FIXED[key]:
                raise SpecError(f"{section}.params.ddconfig.{key}={value!r} is not supported")
        else:
            raise SpecError(f"{section}.params.ddconfig.{key} is not a known autoencoder option")
    for key, value in raw.items():
        if key in TRAINING_KEYS:
            continue
        if key not in allowed:
            raise SpecError(f"{section}.params.{key} is not supported for {target}")
        if key == "remap" and isinstance(value, str):
            raise SpecError(f"{section}.params.remap names a .npy file; give the used code indices as a list instead")
        out[key] = value
    return out


class AutoencoderCompVis:
    """Mixin of the KL and VQ autoencoders: ``ddconfig`` plus ``compvis_keys`` become the params."""

    compvis_targets: ClassVar[tuple[str, ...]] = ()
    compvis_keys: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def params_from_compvis(cls, params: dict[str, Any], context: CompVisContext) -> dict[str, Any]:
        """The ``ddconfig`` keys and the class's top-level keys, unchanged; training options skipped."""
        return _autoencoder_params(params, cls.compvis_keys, context.section, context.target)


class KLCompVis(AutoencoderCompVis):
    """Mixin of the KL autoencoder (``AutoencoderKL``)."""

    compvis_targets = KL_TARGETS
    compvis_keys = ("embed_dim",)


class VQCompVis(AutoencoderCompVis):
    """Mixin of the VQ autoencoder (``VQModel`` and ``VQModelInterface``)."""

    compvis_targets = VQ_TARGETS
    compvis_keys = VQ_KEYS


class IdentityCompVis:
    """Mixin of the identity first stage: its channel count is the diffusion model's ``channels``."""

    compvis_targets: ClassVar[tuple[str, ...]] = IDENTITY_TARGETS

    @classmethod
    def params_from_compvis(cls, params: dict[str, Any], context: CompVisContext) -> dict[str, Any]:
        """``{"channels": context.channels}`` (the original takes nothing from its own params)."""
        return {} if context.channels is None else {"channels": context.channels}


_MIXINS: dict[str, type[AutoencoderCompVis] | type[IdentityCompVis]] = {
    "kl-autoencoder": KLCompVis,
    "vq-autoencoder": VQCompVis,
    "identity": IdentityCompVis,
}


def first_stage_from_compvis(config: Mapping[str, Any], channels: int | None = None) -> tuple[str, dict[str, Any]]:
    """``{"target": ..., "params": {...}}`` -> (registered name, params) for this plugin's first stages.

    ``channels`` sets the identity first stage's channel count. Raises SpecError for unknown targets or
    unsupported options.
    """
    target = str(config.get("target", ""))
    name = TARGETS.get(target)
    if name is None:
        known = ", ".join(sorted(TARGETS))
        raise SpecError(f"first_stage_config.target {target!r} is not a supported first stage ({known})")
    context = CompVisContext(section="first_stage_config", target=target, channels=channels)
    return name, _MIXINS[name].params_from_compvis(dict(config.get("params") or {}), context)
