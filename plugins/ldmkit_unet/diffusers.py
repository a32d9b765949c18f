"""The UNet <-> diffusers ``UNet2DConditionModel`` (cross-attention) and ``UNet2DModel`` (none).

The CompVis UNet and diffusers' two UNets compute the same function when the configurations
correspond: ``block_out_channels = model_channels * channel_mult`` (with ``channel_mult[0] == 1``),
``layers_per_block = num_res_blocks``, a level carries attention when ``2**level`` is in
``attention_resolutions``. Head counts differ in name: ``UNet2DConditionModel.attention_head_dim``
is the number of heads per block, ``UNet2DModel.attention_head_dim`` is the width of one head.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from pydantic import ValidationError
from torch import Tensor

from ldmkit.checks import format_validation_error
from ldmkit.conversions import DiffusersContext, DiffusersModel
from ldmkit.diffusers_interop.config import DIFFUSERS_VERSION, ConfigReader
from ldmkit.diffusers_interop.mapping import (
    IDENTITY,
    Converter,
    ConvToLinear,
    Pair,
    Rename,
    from_diffusers_state,
    to_diffusers_state,
)
from ldmkit.errors import CheckpointError, SpecError
from ldmkit_unet.params import UNetParams, attention_heads

log = logging.getLogger(__name__)

__all__ = ["FusedQKV", "UNetDiffusers", "unet_config_to_diffusers", "unet_pairs", "unet_params_from_diffusers"]

CROSS_ATTN_CLASS = "UNet2DConditionModel"
PLAIN_CLASS = "UNet2DModel"

NEW_ORDER_KEY = "_ldmkit_use_new_attention_order"

# constructor defaults of the two diffusers classes (older folders leave keys out)
_SHARED_DEFAULTS: dict[str, Any] = {
    "sample_size": None,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "dropout": 0.0,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "attention_head_dim": 8,
    "class_embed_type": None,
    "num_class_embeds": None,
    "resnet_time_scale_shift": "default",
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
}
CROSS_ATTN_DEFAULTS: dict[str, Any] = {
    **_SHARED_DEFAULTS,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "only_cross_attention": False,
    "cross_attention_dim": 1280,
    "transformer_layers_per_block": 1,
    "reverse_transformer_layers_per_block": None,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "num_attention_heads": None,
    "dual_cross_attention": False,
    "use_linear_projection": False,
    "addition_embed_type": None,
    "addition_time_embed_dim": None,
    "upcast_attention": False,
    "resnet_skip_time_act": False,
    "resnet_out_scale_factor": 1.0,
    "time_embedding_act_fn": None,
    "timestep_post_act": None,
    "time_cond_proj_dim": None,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "projection_class_embeddings_input_dim": None,
    "attention_type": "default",
    "class_embeddings_concat": False,
    "mid_block_only_cross_attention": None,
    "cross_attention_norm": None,
    "addition_embed_type_num_heads": 64,
}
PLAIN_DEFAULTS: dict[str, Any] = {
    **_SHARED_DEFAULTS,
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownBlock2D",) + ("AttnDownBlock2D",) * 3,
    "mid_block_type": "UNetMidBlock2D",
    "up_block_types": ("AttnUpBlock2D",) * 3 + ("UpBlock2D",),
    "block_out_channels": (224, 448, 672, 896),
    "downsample_type": "conv",
    "upsample_type": "conv",
    "attn_norm_num_groups": None,
    "add_attention": True,
    "num_train_timesteps": None,
}
# block type names: (down with attention, down without, up with, up without)
_BLOCKS = {
    CROSS_ATTN_CLASS: ("CrossAttnDownBlock2D", "DownBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    PLAIN_CLASS: ("AttnDownBlock2D", "DownBlock2D", "AttnUpBlock2D", "UpBlock2D"),
}
_MID = {CROSS_ATTN_CLASS: "UNetMidBlock2DCrossAttn", PLAIN_CLASS: "UNetMidBlock2D"}

RESBLOCK = Rename(
    {
        "in_layers.0": "norm1",
        "in_layers.2": "conv1",
        "emb_layers.1": "time_emb_proj",
        "out_layers.0": "norm2",
        "out_layers.3": "conv2",
        "skip_connection": "conv_shortcut",
    }
)


def _widths(p: Any) -> list[int]:
    return [p.model_channels * m for m in p.channel_mult]


def _has_attention(p: Any, level: int) -> bool:
    return 2**level in set(p.attention_resolutions)


def _heads(p: Any, ch: int, upsample: bool) -> tuple[int, int]:
    return attention_heads(p, ch, upsample)


class FusedQKV:
    """The UNet's ``AttentionBlock`` (fused 1-D conv ``qkv``) <-> diffusers ``Attention`` (to_q, to_k, to_v).

    The fused channels are laid out [head][q|k|v][d] (legacy order) or [q|k|v][head][d] (new order);
    diffusers' separate projections hold [head][d].
    """

    def __init__(self, heads: int, new_order: bool) -> None:
        self.heads = heads
        self.new_order = new_order
        self.rest = ConvToLinear({"norm": "group_norm", "proj_out": "to_out.0"}, conv_dims=1)

    def _split(self, fused: Tensor) -> list[Tensor]:
        """(3C, ...) -> three (C, ...) tensors q, k, v."""
        tail = fused.shape[1:]
        if self.new_order:
            parts = fused.reshape(3, -1, *tail)  # (3, C, ...)
        else:
            parts = fused.reshape(self.heads, 3, -1, *tail).transpose(0, 1)  # (3, heads, d, ...)
        return [p.reshape(-1, *tail).contiguous() for p in parts.unbind(0)]

    def _fuse(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Three (C, ...) tensors -> (3C, ...)."""
        tail = q.shape[1:]
        if self.new_order:
            return torch.cat([q, k, v], dim=0)
        per_head = [t.reshape(self.heads, -1, *tail) for t in (q, k, v)]  # (heads, d, ...) each
        return torch.stack(per_head, dim=1).reshape(-1, *tail)  # (heads * 3 * d, ...)

    def to_diffusers(self, sub: dict[str, Tensor]) -> dict[str, Tensor]:
        """ldmkit keys (fused ``qkv``) -> diffusers keys (``to_q``, ``to_k``, ``to_v``)."""
        sub = dict(sub)
        out: dict[str, Tensor] = {}
        for leaf in ("weight", "bias"):
            fused = sub.pop(f"qkv.{leaf}", None)
            if fused is None:
                continue
            if leaf == "weight":
                fused = fused.reshape(fused.shape[0], fused.shape[1])  # (3C, C)
            for name, part in zip(("to_q", "to_k", "to_v"), self._split(fused), strict=True):
                out[f"{name}.{leaf}"] = part
        out.update(self.rest.to_diffusers(sub))
        return out

    def from_diffusers(self, sub: dict[str, Tensor]) -> dict[str, Tensor]:
        """diffusers keys -> ldmkit keys (the three projections fused again)."""
        sub = dict(sub)
        out: dict[str, Tensor] = {}
        for leaf in ("weight", "bias"):
            names = [f"{n}.{leaf}" for n in ("to_q", "to_k", "to_v")]
            if not any(n in sub for n in names):
                continue
            if not all(n in sub for n in names):
                raise CheckpointError(f"attention {leaf}: to_q, to_k and to_v must all be present")
            fused = self._fuse(*(sub.pop(n) for n in names))
            out[f"qkv.{leaf}"] = fused[..., None] if leaf == "weight" else fused  # (3C, C, 1)
        out.update(self.rest.from_diffusers(sub))
        return out


# -- state dict ------------------------------------------------------------------------------------
def unet_pairs(p: Any) -> list[Pair]:
    """The module correspondence of a UNet with params ``p`` (ldmkit path, diffusers path, converter)."""
    n, levels, widths = p.num_res_blocks, len(p.channel_mult), _widths(p)

    def attn(ch: int, upsample: bool) -> Converter:
        if p.use_spatial_transformer:
            return IDENTITY  # SpatialTransformer and Transformer2DModel share their key names
        return FusedQKV(_heads(p, ch, upsample)[0], p.use_new_attention_order)

    pairs: list[Pair] = [
        ("input_blocks.0.0", "conv_in", IDENTITY),
        ("time_embed.0", "time_embedding.linear_1", IDENTITY),
        ("time_embed.2", "time_embedding.linear_2", IDENTITY),
        ("out.0", "conv_norm_out", IDENTITY),
        ("out.2", "conv_out", IDENTITY),
    ]
    if p.num_classes is not None:
        pairs.append(("label_emb", "class_embedding", IDENTITY))
    for level in range(levels):
        for j in range(n):
            index = 1 + level * (n + 1) + j
            pairs.append((f"input_blocks.{index}.0", f"down_blocks.{level}.resnets.{j}", RESBLOCK))
            if _has_attention(p, level):
                pairs.append(
                    (f"input_blocks.{index}.1", f"down_blocks.{level}.attentions.{j}", attn(widths[level], False))
                )
        if level < levels - 1:
            index = (level + 1) * (n + 1)
            pairs.append((f"input_blocks.{index}.0.op", f"down_blocks.{level}.downsamplers.0.conv", IDENTITY))
    pairs += [
        ("middle_block.0", "mid_block.resnets.0", RESBLOCK),
        ("middle_block.1", "mid_block.attentions.0", attn(widths[-1], False)),
        ("middle_block.2", "mid_block.resnets.1", RESBLOCK),
    ]
    for block in range(levels):  # decoder blocks run from the deepest level up
        level = levels - 1 - block
        with_attn = _has_attention(p, level)
        for j in range(n + 1):
            index = block * (n + 1) + j
            pairs.append((f"output_blocks.{index}.0", f"up_blocks.{block}.resnets.{j}", RESBLOCK))
            if with_attn:
                pairs.append(
                    (f"output_blocks.{index}.1", f"up_blocks.{block}.attentions.{j}", attn(widths[level], True))
                )
        if level > 0:
            index = block * (n + 1) + n
            pairs.append(
                (
                    f"output_blocks.{index}.{2 if with_attn else 1}.conv",
                    f"up_blocks.{block}.upsamplers.0.conv",
                    IDENTITY,
                )
            )
    return pairs


# -- config: ldmkit -> diffusers -------------------------------------------------------------------
def _check_exportable(p: Any) -> None:
    if p.channel_mult[0] != 1:
        raise SpecError(
            f"unet channel_mult[0]={p.channel_mult[0]}: diffusers UNets need 1 (their stem and time embedding "
            "have block_out_channels[0] channels, ldmkit's have model_channels)"
        )
    if not p.conv_resample:
        raise SpecError("unet conv_resample=false (average-pool downsampling) has no diffusers counterpart")
    if p.resblock_updown:
        raise SpecError("unet resblock_updown=true (resampling residual blocks) is not supported for diffusers")


def _cross_attention_heads(p: Any) -> list[int]:
    heads = []
    for level, ch in enumerate(_widths(p)):
        h, d = _heads(p, ch, False)
        used = _has_attention(p, level) or level == len(p.channel_mult) - 1  # the last level sets the middle's
        if used and (h < 1 or d != ch // h):
            raise SpecError(
                f"unet attention over {ch} channels uses {h} heads of width {d}; diffusers' transformer "
                f"needs width {ch} // heads"
            )
        heads.append(h if h >= 1 else 1)
    return heads


def _plain_head_dim(p: Any) -> int | None:
    widths = _widths(p)
    layers = [(widths[-1], False)]
    for level, ch in enumerate(widths):
        if _has_attention(p, level):
            layers += [(ch, False), (ch, True)]
    found = {(ch, _heads(p, ch, up)[0]) for ch, up in layers}
    dims = {ch // h for ch, h in found}
    if len(dims) == 1:
        return dims.pop()
    if all(h == 1 for _, h in found):
        return None
    shown = ", ".join(f"{h} heads over {ch} channels" for ch, h in sorted(found))
    raise SpecError(
        f"unet attention layout ({shown}) has no UNet2DModel counterpart: it needs one head width "
        "for every attention layer (num_head_channels) or a single head everywhere"
    )


def unet_config_to_diffusers(p: Any) -> dict[str, Any]:
    """The diffusers config of a UNet with params ``p`` (``UNet2DConditionModel`` when it has cross-attention)."""
    _check_exportable(p)
    cls = CROSS_ATTN_CLASS if p.use_spatial_transformer else PLAIN_CLASS
    down_attn, down_plain, up_attn, up_plain = _BLOCKS[cls]
    levels = range(len(p.channel_mult))
    config: dict[str, Any] = {
        "_class_name": cls,
        "_diffusers_version": DIFFUSERS_VERSION,
        "sample_size": p.image_size,
        "in_channels": p.in_channels,
        "out_channels": p.out_channels,
        "block_out_channels": _widths(p),
        "layers_per_block": p.num_res_blocks,
        "down_block_types": [down_attn if _has_attention(p, i) else down_plain for i in levels],
        "up_block_types": [up_attn if _has_attention(p, i) else up_plain for i in reversed(levels)],
        "mid_block_type": _MID[cls],
        "num_class_embeds": p.num_classes,
        "class_embed_type": None,
        "resnet_time_scale_shift": "scale_shift" if p.use_scale_shift_norm else "default",
        "dropout": p.dropout,
        "act_fn": "silu",
        "norm_num_groups": 32,
        "norm_eps": 1e-5,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "center_input_sample": False,
        "downsample_padding": 1,
        "mid_block_scale_factor": 1,
        "time_embedding_type": "positional",
    }
    if cls == CROSS_ATTN_CLASS:
        heads = _cross_attention_heads(p)
        config.update(
            {
                "cross_attention_dim": p.context_dim,
                "attention_head_dim": heads[0] if len(set(heads)) == 1 else heads,
                "transformer_layers_per_block": p.transformer_depth,
                "use_linear_projection": False,
                "only_cross_attention": False,
                "dual_cross_attention": False,
                "upcast_attention": False,
            }
        )
    else:
        config.update(
            {
                "attention_head_dim": _plain_head_dim(p),
                # set explicitly: diffusers drops the middle attention's norm with scale_shift otherwise
                "attn_norm_num_groups": 32,
                "add_attention": True,
                "downsample_type": "conv",
                "upsample_type": "conv",
            }
        )
        if p.use_new_attention_order:
            # diffusers ignores "_" keys; this one keeps the fused qkv layout, so a round trip is bit-exact
            config[NEW_ORDER_KEY] = True
    return config


# -- config: diffusers -> ldmkit -------------------------------------------------------------------
def _attention_levels(r: ConfigReader, cls: str, levels: int) -> list[int]:
    down_attn, down_plain, up_attn, up_plain = _BLOCKS[cls]
    down = r.str_list("down_block_types")
    up = r.str_list("up_block_types")
    if len(down) != levels or len(up) != levels:
        raise SpecError(f"{r.what}: {levels} block_out_channels but {len(down)} down and {len(up)} up block types")
    for name in down:
        if name not in (down_attn, down_plain):
            raise SpecError(f"{r.what}: down block type {name!r} is not supported ({down_attn} or {down_plain})")
    for name in up:
        if name not in (up_attn, up_plain):
            raise SpecError(f"{r.what}: up block type {name!r} is not supported ({up_attn} or {up_plain})")
    with_attn = [name == down_attn for name in down]
    if [name == up_attn for name in reversed(up)] != with_attn:
        raise SpecError(
            f"{r.what}: attention must sit at the same levels going down and up "
            f"(down {down}, up {up}); the ldmkit unet places it by attention_resolutions"
        )
    r.expect("mid_block_type", [_MID[cls]], "the ldmkit unet always has a middle block with attention")
    return [2**i for i, a in enumerate(with_attn) if a]


def _common_params(r: ConfigReader, cls: str) -> dict[str, Any]:
    for key in ("center_input_sample", "class_embeddings_concat"):
        r.expect(key, [False, None])
    r.expect("flip_sin_to_cos", [True], "the CompVis embedding puts cosines first")
    r.expect("freq_shift", [0])
    r.expect("act_fn", ["silu"])
    r.expect("norm_num_groups", [32])
    r.expect("norm_eps", [1e-5])
    r.expect("downsample_padding", [1])
    r.expect("mid_block_scale_factor", [1])
    r.expect("time_embedding_type", ["positional"])
    r.expect("class_embed_type", [None], "only class ids embedded by a table (num_class_embeds)")
    shift = r.expect("resnet_time_scale_shift", ["default", "scale_shift"])
    widths = r.int_list("block_out_channels")
    base = widths[0]
    if any(w % base for w in widths):
        raise SpecError(f"{r.what}: block_out_channels {widths} must be multiples of the first entry")
    if r.get("time_embedding_dim") not in (None, 4 * base):
        raise SpecError(f"{r.what}: time_embedding_dim must be 4 * block_out_channels[0] = {4 * base}")
    sample = r.get("sample_size")
    if isinstance(sample, (list, tuple)) and sample and all(s == sample[0] for s in sample):
        sample = sample[0]
    num_classes = r.get("num_class_embeds")
    dropout = r.get("dropout")
    return {
        "image_size": sample if isinstance(sample, int) and sample > 0 else 64,
        "in_channels": r.integer("in_channels"),
        "out_channels": r.integer("out_channels"),
        "model_channels": base,
        "channel_mult": [w // base for w in widths],
        "num_res_blocks": r.integer("layers_per_block"),
        "attention_resolutions": _attention_levels(r, cls, len(widths)),
        "dropout": float(dropout) if isinstance(dropout, (int, float)) else dropout,
        "num_classes": num_classes,
        "use_scale_shift_norm": shift == "scale_shift",
    }


def _cross_attention_params(r: ConfigReader, out: dict[str, Any]) -> None:
    for key in (
        "only_cross_attention",
        "dual_cross_attention",
        "encoder_hid_dim",
        "encoder_hid_dim_type",
        "addition_embed_type",
        "addition_time_embed_dim",
        "resnet_skip_time_act",
        "time_embedding_act_fn",
        "timestep_post_act",
        "time_cond_proj_dim",
        "projection_class_embeddings_input_dim",
        "mid_block_only_cross_attention",
        "cross_attention_norm",
        "reverse_transformer_layers_per_block",
        "num_attention_heads",
    ):
        r.expect(key, [None, False])
    r.expect("use_linear_projection", [False], "linear transformer projections (Stable Diffusion 2) are not built")
    r.expect("resnet_out_scale_factor", [1, 1.0])
    r.expect("conv_in_kernel", [3])
    r.expect("conv_out_kernel", [3])
    r.expect("attention_type", ["default"])
    if r.get("upcast_attention"):
        log.debug("%s: upcast_attention only changes half-precision numerics; ldmkit computes as given", r.what)
    context = r.get("cross_attention_dim")
    if isinstance(context, bool) or not isinstance(context, int) or context < 1:
        raise SpecError(f"{r.what}: cross_attention_dim must be one positive integer, got {context!r}")
    levels = len(out["channel_mult"])
    depth = r.int_list("transformer_layers_per_block", levels)
    if len(set(depth)) != 1:
        raise SpecError(f"{r.what}: transformer_layers_per_block {depth} must be equal for all blocks")
    heads = r.int_list("attention_head_dim", levels)
    widths = [out["model_channels"] * m for m in out["channel_mult"]]
    used = sorted({i for i in range(levels) if 2**i in out["attention_resolutions"]} | {levels - 1})
    counts = {heads[i] for i in used}
    head_widths = {widths[i] // heads[i] for i in used if widths[i] % heads[i] == 0}
    if len(counts) == 1:
        out["num_heads"] = counts.pop()
    elif len(head_widths) == 1 and all(widths[i] % heads[i] == 0 for i in used):
        out["num_head_channels"] = head_widths.pop()
    else:
        raise SpecError(
            f"{r.what}: attention_head_dim {heads} (heads per block) has no ldmkit counterpart: "
            "it needs the same head count, or the same head width, in every block with attention"
        )
    out.update(use_spatial_transformer=True, context_dim=context, transformer_depth=depth[0])


def _plain_attention_params(r: ConfigReader, out: dict[str, Any]) -> None:
    r.expect("downsample_type", ["conv"])
    r.expect("upsample_type", ["conv"])
    r.expect("add_attention", [True], "the ldmkit unet always has attention in its middle block")
    shift = out["use_scale_shift_norm"]
    groups = r.get("attn_norm_num_groups")
    if groups not in (None, 32) or (groups is None and shift):
        raise SpecError(
            f"{r.what}: attn_norm_num_groups={groups!r} with resnet_time_scale_shift="
            f"{'scale_shift' if shift else 'default'}: ldmkit's attention always normalizes with 32 groups"
        )
    out["use_new_attention_order"] = r.config.get(NEW_ORDER_KEY) is True
    head_dim = r.get("attention_head_dim")
    if head_dim is None:
        out["num_heads"] = 1
    elif isinstance(head_dim, int) and not isinstance(head_dim, bool) and head_dim > 0:
        out["num_head_channels"] = head_dim
    else:
        raise SpecError(f"{r.what}: attention_head_dim must be a positive integer or null, got {head_dim!r}")


def unet_params_from_diffusers(config: Mapping[str, Any], prediction: str = "eps") -> Any:
    """Validated ``unet`` params for a diffusers UNet config (``_class_name`` picks the kind)."""
    cls = config.get("_class_name")
    if cls not in (CROSS_ATTN_CLASS, PLAIN_CLASS):
        raise SpecError(f"unet config: _class_name {cls!r} is not supported ({CROSS_ATTN_CLASS} or {PLAIN_CLASS})")
    r = ConfigReader(config, CROSS_ATTN_DEFAULTS if cls == CROSS_ATTN_CLASS else PLAIN_DEFAULTS, f"unet ({cls})")
    out = _common_params(r, cls)
    if cls == CROSS_ATTN_CLASS:
        _cross_attention_params(r, out)
    else:
        _plain_attention_params(r, out)
    r.finish()
    out["prediction"] = prediction
    try:
        params = UNetParams.model_validate(out)
    except ValidationError as exc:
        raise SpecError(f"{r.what}: {format_validation_error(exc)}") from None
    if cls == CROSS_ATTN_CLASS:  # the translated head settings must reproduce every block's layout
        heads = r.int_list("attention_head_dim", len(params.channel_mult))
        actual = _cross_attention_heads(params)
        last = len(heads) - 1
        if any(actual[i] != h for i, h in enumerate(heads) if 2**i in params.attention_resolutions or i == last):
            raise SpecError(f"{r.what}: attention_head_dim {heads} cannot be reproduced by the ldmkit unet")
    return params


# -- the component's declaration -----------------------------------------------------------------
class UNetDiffusers:
    """Mixin of the UNet: ``UNet2DConditionModel`` (cross-attention) and ``UNet2DModel`` both ways."""

    diffusers_classes: ClassVar[tuple[str, ...]] = (CROSS_ATTN_CLASS, PLAIN_CLASS)
    params: UNetParams

    @classmethod
    def params_from_diffusers(cls, config: Mapping[str, Any], context: DiffusersContext) -> UNetParams:
        """Validated params for a diffusers UNet config, predicting ``context.prediction``."""
        return unet_params_from_diffusers(config, context.prediction)

    @classmethod
    def state_dict_from_diffusers(cls, state: Mapping[str, Tensor], params: UNetParams) -> dict[str, Tensor]:
        """diffusers UNet keys -> this UNet's (CompVis) keys."""
        return from_diffusers_state(state, unet_pairs(params), "unet")

    def to_diffusers(self, context: DiffusersContext) -> DiffusersModel:
        """The diffusers UNet folder of this UNet; tensors share storage with the module."""
        config = unet_config_to_diffusers(self.params)
        state = to_diffusers_state(self.state_dict(), unet_pairs(self.params), "unet")  # type: ignore[attr-defined]
        return DiffusersModel("diffusers", config["_class_name"], config, state)

    def diffusers_conditioner(self) -> tuple[str, dict[str, Any]] | None:
        """A class-conditional UNet's class ids come from a ``class-embedder`` with no weights of its own."""
        if self.params.num_classes is None:
            return None
        return "class-embedder", {
            "embed_dim": 4 * self.params.model_channels,
            "n_classes": self.params.num_classes,
            "target": "vector",
        }
