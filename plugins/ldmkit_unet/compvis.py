"""The UNet's CompVis translation: the original ``UNetModel`` config entry -> ``UNetParams``.

The parameter names are the original's, so the checkpoint's keys load unchanged.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ldmkit.conversions import CompVisContext
from ldmkit.errors import SpecError

__all__ = ["UNET_KEYS", "UNetCompVis"]

UNET_KEYS = (
    "image_size",
    "in_channels",
    "model_channels",
    "out_channels",
    "num_res_blocks",
    "attention_resolutions",
    "dropout",
    "channel_mult",
    "conv_resample",
    "dims",
    "num_classes",
    "use_checkpoint",
    "use_fp16",
    "num_heads",
    "num_head_channels",
    "num_heads_upsample",
    "use_scale_shift_norm",
    "resblock_updown",
    "use_new_attention_order",
    "use_spatial_transformer",
    "transformer_depth",
    "context_dim",
    "n_embed",
    "legacy",
)
"""The ``unet_config.params`` keys of the original ``UNetModel`` that the UNet accepts."""


class UNetCompVis:
    """Mixin of the UNet: the CompVis target it answers to and its params translation."""

    compvis_targets: ClassVar[tuple[str, ...]] = ("ldm.modules.diffusionmodules.openaimodel.UNetModel",)

    @classmethod
    def params_from_compvis(cls, params: dict[str, Any], context: CompVisContext) -> dict[str, Any]:
        """The original ``params`` (names unchanged, lists for sequences) plus the model's parameterization."""
        unknown = sorted(set(params) - set(UNET_KEYS))
        if unknown:
            raise SpecError(f"{context.section}.params: unsupported keys {unknown}")
        out = {k: params[k] for k in UNET_KEYS if k in params}
        for key in ("attention_resolutions", "channel_mult"):
            if key in out:
                out[key] = list(out[key])
        out["prediction"] = context.parameterization
        return out
