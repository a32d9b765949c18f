"""The conditioners' CompVis translations: an original ``cond_stage_config`` -> each class's ``Params``."""

from __future__ import annotations

from typing import Any, ClassVar

from ldmkit.conversions import CompVisContext
from ldmkit.errors import SpecError

__all__ = ["CLIPTextCompVis", "ClassEmbedderCompVis", "SpatialRescalerCompVis", "TransformerTextCompVis"]

SD_V1_CLIP = "openai/clip-vit-large-patch14"


def _keep(params: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: params[k] for k in keys if k in params}


class ClassEmbedderCompVis:
    """Mixin of ``class-embedder``: ids embedded for cross-attention, or handed to the UNet with ``adm``."""

    compvis_targets: ClassVar[tuple[str, ...]] = ("ldm.modules.encoders.modules.ClassEmbedder",)

    @classmethod
    def params_from_compvis(cls, params: dict[str, Any], context: CompVisContext) -> dict[str, Any]:
        """``embed_dim``, ``n_classes`` and ``key``; ``conditioning_key: adm`` feeds the ids to the UNet."""
        out = {"embed_dim": params["embed_dim"], "n_classes": params.get("n_classes", 1000)}
        if "key" in params:
            out["key"] = params["key"]
        out["target"] = "vector" if context.conditioning_key == "adm" else "crossattn"
        return out


class TransformerTextCompVis:
    """Mixin of ``transformer-text``: the original ``BERTEmbedder`` / ``TransformerEmbedder``, fed token ids."""

    compvis_targets: ClassVar[tuple[str, ...]] = (
        "ldm.modules.encoders.modules.BERTEmbedder",
        "ldm.modules.encoders.modules.TransformerEmbedder",
    )

    @classmethod
    def params_from_compvis(cls, params: dict[str, Any], context: CompVisContext) -> dict[str, Any]:
        """The transformer's sizes; SpecError when the original would download a BERT tokenizer."""
        if params.get("use_tokenizer", True):  # the original's default: a BERT tokenizer downloaded from a hub
            raise SpecError(
                f"{context.section}.params.use_tokenizer is true (the default): the BERT tokenizer is not "
                "bundled; set use_tokenizer: false and pass token ids"
            )
        keep = ("n_embed", "n_layer", "vocab_size", "max_seq_len", "use_tokenizer", "embedding_dropout")
        return _keep(params, keep)


class CLIPTextCompVis:
    """Mixin of ``clip-text``: the original ``FrozenCLIPEmbedder`` of Stable Diffusion v1."""

    compvis_targets: ClassVar[tuple[str, ...]] = ("ldm.modules.encoders.modules.FrozenCLIPEmbedder",)

    @classmethod
    def params_from_compvis(cls, params: dict[str, Any], context: CompVisContext) -> dict[str, Any]:
        """The defaults (CLIP ViT-L/14's text encoder); SpecError for any other ``version``."""
        version = params.get("version", SD_V1_CLIP)
        if version != SD_V1_CLIP:
            raise SpecError(f"{context.section}.params.version {version!r}: only the SD v1 CLIP ViT-L/14 text encoder")
        return {}


class SpatialRescalerCompVis:
    """Mixin of ``spatial-rescaler``: the original ``SpatialRescaler``; its map size is the latent's."""

    compvis_targets: ClassVar[tuple[str, ...]] = ("ldm.modules.encoders.modules.SpatialRescaler",)

    @classmethod
    def params_from_compvis(cls, params: dict[str, Any], context: CompVisContext) -> dict[str, Any]:
        """The original's settings, plus ``out_size`` from the model's ``image_size``."""
        out = _keep(params, ("n_stages", "method", "multiplier", "in_channels", "out_channels", "bias"))
        if context.image_size is not None:
            out["out_size"] = [context.image_size, context.image_size]
        return out
