"""The autoencoders: ``kl-autoencoder`` <-> diffusers ``AutoencoderKL``, ``vq-autoencoder`` <-> ``VQModel``.

The encoder and decoder are the same network in both libraries. diffusers names the levels
``down_blocks`` / ``up_blocks`` (the decoder's listed from the deepest level up) and its middle
self-attention uses linear projections where the original uses 1x1 convolutions.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, ValidationError
from torch import Tensor

from ldmkit.checks import format_validation_error
from ldmkit.conversions import DiffusersContext, DiffusersModel
from ldmkit.diffusers_interop.config import DIFFUSERS_VERSION, ConfigReader
from ldmkit.diffusers_interop.mapping import (
    IDENTITY,
    ConvToLinear,
    Pair,
    Rename,
    from_diffusers_state,
    to_diffusers_state,
)
from ldmkit.errors import SpecError

log = logging.getLogger(__name__)

__all__ = [
    "AutoencoderDiffusers",
    "KLDiffusers",
    "VQDiffusers",
    "autoencoder_config_to_diffusers",
    "autoencoder_pairs",
    "autoencoder_params_from_diffusers",
]

KL_CLASS = "AutoencoderKL"
VQ_CLASS = "VQModel"
NAMES = {KL_CLASS: "kl-autoencoder", VQ_CLASS: "vq-autoencoder"}
CLASSES = {v: k for k, v in NAMES.items()}

_SHARED_DEFAULTS: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",),
    "up_block_types": ("UpDecoderBlock2D",),
    "block_out_channels": (64,),
    "layers_per_block": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "sample_size": 32,
    "scaling_factor": 0.18215,
    "mid_block_add_attention": True,
    "force_upcast": True,
}
DEFAULTS: dict[str, dict[str, Any]] = {
    KL_CLASS: {
        **_SHARED_DEFAULTS,
        "latent_channels": 4,
        "shift_factor": None,
        "latents_mean": None,
        "latents_std": None,
        "use_quant_conv": True,
        "use_post_quant_conv": True,
    },
    VQ_CLASS: {
        **_SHARED_DEFAULTS,
        "latent_channels": 3,
        "num_vq_embeddings": 256,
        "vq_embed_dim": None,
        "norm_type": "group",
        "lookup_from_codebook": False,
        "force_upcast": False,
    },
}
DOWN_BLOCKS = ("AttnDownEncoderBlock2D", "DownEncoderBlock2D")
UP_BLOCKS = ("AttnUpDecoderBlock2D", "UpDecoderBlock2D")

RESNET = Rename({"nin_shortcut": "conv_shortcut"})
ATTENTION = ConvToLinear({"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}, 2)


def _attention_levels(p: Any) -> tuple[list[bool], list[bool]]:
    """Which levels carry attention in the encoder and in the decoder (the resolutions each one tracks)."""
    levels = len(p.ch_mult)
    at = set(p.attn_resolutions)
    encoder = [(p.resolution // 2**i) in at for i in range(levels)]
    lowest = p.resolution // 2 ** (levels - 1)
    decoder = [(lowest * 2 ** (levels - 1 - i)) in at for i in range(levels)]
    return encoder, decoder


def autoencoder_pairs(p: Any) -> list[Pair]:
    """The module correspondence of a KL or VQ autoencoder with params ``p``."""
    levels, n = len(p.ch_mult), p.num_res_blocks
    enc_attn, dec_attn = _attention_levels(p)
    pairs: list[Pair] = [
        ("quant_conv", "quant_conv", IDENTITY),
        ("post_quant_conv", "post_quant_conv", IDENTITY),
        ("quantize", "quantize", IDENTITY),
    ]
    for part in ("encoder", "decoder"):
        pairs += [
            (f"{part}.conv_in", f"{part}.conv_in", IDENTITY),
            (f"{part}.norm_out", f"{part}.conv_norm_out", IDENTITY),
            (f"{part}.conv_out", f"{part}.conv_out", IDENTITY),
            (f"{part}.mid.block_1", f"{part}.mid_block.resnets.0", RESNET),
            (f"{part}.mid.attn_1", f"{part}.mid_block.attentions.0", ATTENTION),
            (f"{part}.mid.block_2", f"{part}.mid_block.resnets.1", RESNET),
        ]
    for i in range(levels):
        src, dst = f"encoder.down.{i}", f"encoder.down_blocks.{i}"
        for j in range(n):
            pairs.append((f"{src}.block.{j}", f"{dst}.resnets.{j}", RESNET))
            if enc_attn[i]:
                pairs.append((f"{src}.attn.{j}", f"{dst}.attentions.{j}", ATTENTION))
        if i < levels - 1:
            pairs.append((f"{src}.downsample.conv", f"{dst}.downsamplers.0.conv", IDENTITY))
        src, dst = f"decoder.up.{i}", f"decoder.up_blocks.{levels - 1 - i}"
        for j in range(n + 1):
            pairs.append((f"{src}.block.{j}", f"{dst}.resnets.{j}", RESNET))
            if dec_attn[i]:
                pairs.append((f"{src}.attn.{j}", f"{dst}.attentions.{j}", ATTENTION))
        if i > 0:
            pairs.append((f"{src}.upsample.conv", f"{dst}.upsamplers.0.conv", IDENTITY))
    return pairs


# -- config ------------------------------------------------------------------------------------------
def autoencoder_config_to_diffusers(name: str, p: Any, scaling_factor: float = 1.0) -> dict[str, Any]:
    """The diffusers config of a ``kl-autoencoder`` / ``vq-autoencoder`` with params ``p``."""
    cls = CLASSES.get(name)
    if cls is None:
        raise SpecError(f"first stage {name!r} has no diffusers counterpart (kl-autoencoder or vq-autoencoder)")
    enc_attn, dec_attn = _attention_levels(p)
    config: dict[str, Any] = {
        "_class_name": cls,
        "_diffusers_version": DIFFUSERS_VERSION,
        "in_channels": p.in_channels,
        "out_channels": p.out_ch,
        "block_out_channels": [p.ch * m for m in p.ch_mult],
        "layers_per_block": p.num_res_blocks,
        "down_block_types": [DOWN_BLOCKS[0] if a else DOWN_BLOCKS[1] for a in enc_attn],
        "up_block_types": [UP_BLOCKS[0] if a else UP_BLOCKS[1] for a in reversed(dec_attn)],
        "latent_channels": p.z_channels,
        "act_fn": "silu",
        "norm_num_groups": 32,
        "sample_size": p.resolution,
        "scaling_factor": scaling_factor,
        "mid_block_add_attention": True,
    }
    if p.ch_mult[0] != 1:
        # diffusers' stem convolution outputs block_out_channels[0]; ldmkit's outputs ch
        raise SpecError(f"{name}: ch_mult[0]={p.ch_mult[0]} is not supported by diffusers (it needs 1)")
    if p.dropout:
        log.warning(
            "%s: dropout=%s is a training setting diffusers' autoencoders lack; it is left out", name, p.dropout
        )
    if cls == KL_CLASS:
        if p.embed_dim != p.z_channels:
            raise SpecError(
                f"{name}: embed_dim={p.embed_dim} differs from z_channels={p.z_channels}; "
                "diffusers' AutoencoderKL has one latent_channels for both"
            )
        config.update(use_quant_conv=True, use_post_quant_conv=True, force_upcast=True)
    else:
        if p.remap is not None:
            raise SpecError(f"{name}: a codebook remap has no diffusers counterpart")
        config.update(num_vq_embeddings=p.n_embed, vq_embed_dim=p.embed_dim, norm_type="group", force_upcast=False)
    return config


def _levels_with_attention(r: ConfigReader, levels: int) -> tuple[list[bool], list[bool]]:
    down, up = r.str_list("down_block_types"), r.str_list("up_block_types")
    if len(down) != levels or len(up) != levels:
        raise SpecError(f"{r.what}: {levels} block_out_channels but {len(down)} down and {len(up)} up block types")
    for name, known in [(n, DOWN_BLOCKS) for n in down] + [(n, UP_BLOCKS) for n in up]:
        if name not in known:
            raise SpecError(f"{r.what}: block type {name!r} is not supported ({' or '.join(known)})")
    return [n == DOWN_BLOCKS[0] for n in down], [n == UP_BLOCKS[0] for n in reversed(up)]


def autoencoder_params_from_diffusers(config: Mapping[str, Any], params_cls: type[BaseModel]) -> Any:
    """Validated ``params_cls`` for a diffusers AutoencoderKL / VQModel config."""
    cls = config.get("_class_name")
    if cls not in NAMES:
        raise SpecError(f"first stage config: _class_name {cls!r} is not supported ({KL_CLASS} or {VQ_CLASS})")
    r = ConfigReader(config, DEFAULTS[cls], f"first stage ({cls})")
    r.expect("act_fn", ["silu"])
    r.expect("norm_num_groups", [32])
    r.expect("mid_block_add_attention", [True], "the autoencoder always has a middle attention block")
    widths = r.int_list("block_out_channels")
    base = widths[0]
    if any(w % base for w in widths):
        raise SpecError(f"{r.what}: block_out_channels {widths} must be multiples of the first entry")
    enc_attn, dec_attn = _levels_with_attention(r, len(widths))
    if enc_attn != dec_attn:
        raise SpecError(f"{r.what}: the ldmkit autoencoder needs attention at the same levels in encoder and decoder")
    # attention is placed by feature-map size: pick a resolution whose halvings are exact
    levels = len(widths)
    sample = r.get("sample_size")
    step = 2 ** (levels - 1)
    sample = sample if isinstance(sample, int) and not isinstance(sample, bool) and sample > 0 else 256
    resolution = -(-sample // step) * step  # rounded up to a multiple of 2 ** (levels - 1)
    latent = r.integer("latent_channels")
    out: dict[str, Any] = {
        "in_channels": r.integer("in_channels"),
        "out_ch": r.integer("out_channels"),
        "ch": base,
        "ch_mult": [w // base for w in widths],
        "num_res_blocks": r.integer("layers_per_block"),
        "resolution": resolution,
        "attn_resolutions": [resolution // 2**i for i, a in enumerate(enc_attn) if a],
        "z_channels": latent,
    }
    if cls == KL_CLASS:
        r.expect("use_quant_conv", [True])
        r.expect("use_post_quant_conv", [True])
        r.expect("shift_factor", [None, 0, 0.0], "ldmkit scales latents by one factor only")
        r.expect("latents_mean", [None])
        r.expect("latents_std", [None])
        out.update(double_z=True, embed_dim=latent)
    else:
        r.expect("norm_type", ["group"], "spatially conditioned normalization (MoVQ) is not built")
        r.expect("lookup_from_codebook", [False])
        embed = r.get("vq_embed_dim")
        out.update(double_z=False, embed_dim=latent if embed is None else embed, n_embed=r.integer("num_vq_embeddings"))
    r.finish()
    try:
        return params_cls.model_validate(out)
    except ValidationError as exc:
        raise SpecError(f"{r.what}: {format_validation_error(exc)}") from None


# -- the components' declaration -------------------------------------------------------------------
class AutoencoderDiffusers:
    """Mixin of the KL and VQ autoencoders: diffusers ``AutoencoderKL`` / ``VQModel`` both ways.

    A class sets ``diffusers_classes`` to the one diffusers class it corresponds to.
    """

    diffusers_classes: ClassVar[tuple[str, ...]] = ()
    name: ClassVar[str]
    params: Any

    @classmethod
    def params_from_diffusers(cls, config: Mapping[str, Any], context: DiffusersContext) -> Any:
        """Validated params for the diffusers config (its ``_class_name`` must be this class's)."""
        if config.get("_class_name") not in cls.diffusers_classes:
            raise SpecError(f"{cls.name}: expected a {' or '.join(cls.diffusers_classes)} config")
        return autoencoder_params_from_diffusers(config, cls.Params)  # type: ignore[attr-defined]

    @classmethod
    def state_dict_from_diffusers(cls, state: Mapping[str, Tensor], params: Any) -> dict[str, Tensor]:
        """diffusers autoencoder keys -> this autoencoder's (CompVis) keys."""
        return from_diffusers_state(state, autoencoder_pairs(params), cls.name)

    def to_diffusers(self, context: DiffusersContext) -> DiffusersModel:
        """The diffusers folder of this autoencoder (``scaling_factor`` from the context)."""
        config = autoencoder_config_to_diffusers(self.name, self.params, context.scale_factor)
        state = to_diffusers_state(self.state_dict(), autoencoder_pairs(self.params), self.name)  # type: ignore[attr-defined]
        return DiffusersModel("diffusers", config["_class_name"], config, state)


class KLDiffusers(AutoencoderDiffusers):
    """Mixin of the KL autoencoder (diffusers ``AutoencoderKL``)."""

    diffusers_classes = (KL_CLASS,)


class VQDiffusers(AutoencoderDiffusers):
    """Mixin of the VQ autoencoder (diffusers ``VQModel``)."""

    diffusers_classes = (VQ_CLASS,)
