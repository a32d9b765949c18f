"""Load original CompVis latent-diffusion / Stable Diffusion v1 configs and checkpoints.

Each original ``target`` is translated through a fixed table to a registered ldmkit component;
nothing named in the YAML is ever imported. Parameter names are those of the original, so the
weights load without renaming.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor

from ldmkit.compvis_first_stage import first_stage_from_compvis
from ldmkit.errors import CheckpointError, SpecError
from ldmkit.pipeline import Pipeline
from ldmkit.specs import PipelineSpec, read_document, validate_spec

log = logging.getLogger(__name__)

DIFFUSION_TARGETS = {
    "ldm.models.diffusion.ddpm.LatentDiffusion",
}


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


def _unet(params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    unknown = sorted(set(params) - set(UNET_KEYS))
    if unknown:
        raise SpecError(f"unet_config.params: unsupported keys {unknown}")
    out = {k: params[k] for k in UNET_KEYS if k in params}
    for key in ("attention_resolutions", "channel_mult"):
        if key in out:
            out[key] = list(out[key])
    return "unet", out


def _class_embedder(params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    out = {"embed_dim": params["embed_dim"], "n_classes": params.get("n_classes", 1000)}
    if "key" in params:
        out["key"] = params["key"]
    return "class-embedder", out


def _bert(params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    if params.get("use_tokenizer", True):  # the original's default: a BERT tokenizer downloaded from a hub
        raise SpecError(
            "cond_stage_config.params.use_tokenizer is true (the default): the BERT tokenizer is not bundled; "
            "set use_tokenizer: false and pass token ids"
        )
    keep = ("n_embed", "n_layer", "vocab_size", "max_seq_len", "use_tokenizer", "embedding_dropout")
    return "transformer-text", {k: params[k] for k in keep if k in params}


def _clip(params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    version = params.get("version", "openai/clip-vit-large-patch14")
    if version != "openai/clip-vit-large-patch14":
        raise SpecError(f"cond_stage_config.params.version {version!r}: only the SD v1 CLIP ViT-L/14 text encoder")
    return "clip-text", {}


def _rescaler(params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    keep = ("n_stages", "method", "multiplier", "in_channels", "out_channels", "bias")
    return "spatial-rescaler", {k: params[k] for k in keep if k in params}


Translator = Callable[[dict[str, Any]], tuple[str, dict[str, Any]]]

UNET_TARGETS: dict[str, Translator] = {"ldm.modules.diffusionmodules.openaimodel.UNetModel": _unet}
COND_TARGETS: dict[str, Translator] = {
    "ldm.modules.encoders.modules.ClassEmbedder": _class_embedder,
    "ldm.modules.encoders.modules.BERTEmbedder": _bert,
    "ldm.modules.encoders.modules.TransformerEmbedder": _bert,
    "ldm.modules.encoders.modules.FrozenCLIPEmbedder": _clip,
    "ldm.modules.encoders.modules.SpatialRescaler": _rescaler,
}


def _params(section: str, config: dict[str, Any]) -> dict[str, Any]:
    params = config.get("params") or {}
    if not isinstance(params, dict):
        raise SpecError(f"{section}.params: expected a mapping, got {type(params).__name__}")
    return dict(params)


def _translate(section: str, config: Any, table: dict[str, Translator]) -> dict[str, Any]:
    if not isinstance(config, dict) or "target" not in config:
        raise SpecError(f"{section}: expected a mapping with 'target'")
    target = config["target"]
    if target not in table:
        known = ", ".join(sorted(table))
        raise SpecError(
            f"{section}.target {target!r} is not supported (nothing is imported from configs); known: {known}"
        )
    try:
        name, params = table[target](_params(section, config))
    except SpecError:
        raise
    except KeyError as exc:
        raise SpecError(f"{section}.params: missing {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:  # a value of the wrong kind, e.g. a number where a list belongs
        raise SpecError(f"{section}.params: {exc}") from None
    return {"type": name, "params": params}


def _first_stage(config: Any, channels: Any) -> dict[str, Any]:
    if not isinstance(config, dict):
        raise SpecError("first_stage_config: expected a mapping with 'target'")
    _params("first_stage_config", config)
    try:
        name, params = first_stage_from_compvis(config, channels=channels if isinstance(channels, int) else None)
    except SpecError:
        raise
    except (TypeError, ValueError) as exc:
        raise SpecError(f"first_stage_config.params: {exc}") from None
    return {"type": name, "params": params}


def _number(p: dict[str, Any], key: str, default: float, cast: type) -> Any:
    try:
        return cast(p.get(key, default))
    except (TypeError, ValueError):
        raise SpecError(f"model.params.{key}: expected a number, got {p[key]!r}") from None


def spec_from_config(config: dict[str, Any] | str | Path) -> PipelineSpec:
    """Translate an original CompVis model config into a validated ldmkit PipelineSpec."""
    if not isinstance(config, dict):
        config = read_document(config)
    model = config.get("model", config)
    target = model.get("target") if isinstance(model, dict) else None
    if target not in DIFFUSION_TARGETS:
        raise SpecError(f"model.target must be one of {sorted(DIFFUSION_TARGETS)}, got {target!r}")
    p = _params("model", model)
    cond_cfg = p.get("cond_stage_config")
    key = p.get("conditioning_key")
    conditioner = None
    if cond_cfg not in (None, "__is_unconditional__"):
        if cond_cfg == "__is_first_stage__":
            raise SpecError(
                "cond_stage_config '__is_first_stage__' is not supported; use the 'masked-image' conditioner"
            )
        conditioner = _translate("cond_stage_config", cond_cfg, COND_TARGETS)
        if conditioner["type"] == "class-embedder":
            conditioner["params"]["target"] = "vector" if key == "adm" else "crossattn"
        if conditioner["type"] == "spatial-rescaler" and isinstance(p.get("image_size"), int):
            conditioner["params"]["out_size"] = [p["image_size"], p["image_size"]]
    if key not in (None, "crossattn", "concat", "hybrid", "adm"):
        raise SpecError(f"conditioning_key {key!r}: expected crossattn, concat, hybrid or adm")
    denoiser = _translate("unet_config", p.get("unet_config"), UNET_TARGETS)
    parameterization = p.get("parameterization", "eps")
    if parameterization not in ("eps", "x0", "v"):
        raise SpecError(f"parameterization {parameterization!r}: expected eps, x0 or v")
    denoiser["params"]["prediction"] = parameterization
    image_size = p.get("image_size")
    spec = {
        "version": 1,
        "first_stage": _first_stage(p.get("first_stage_config"), p.get("channels")),
        "denoiser": denoiser,
        "conditioner": conditioner,
        "schedule": {
            "beta_schedule": p.get("beta_schedule", "linear"),
            "linear_start": _number(p, "linear_start", 1e-4, float),
            "linear_end": _number(p, "linear_end", 2e-2, float),
            "timesteps": _number(p, "timesteps", 1000, int),
            "cosine_s": _number(p, "cosine_s", 8e-3, float),
        },
        "scale_factor": _number(p, "scale_factor", 1.0, float),
        "latent_size": [int(image_size), int(image_size)] if isinstance(image_size, int) else None,
    }
    return validate_spec(spec, source="CompVis config")


# state-dict prefixes of the original LatentDiffusion
PREFIXES = {
    "denoiser": "model.diffusion_model.",
    "first_stage": "first_stage_model.",
    "conditioner": "cond_stage_model.",
}
EMA_PREFIX = "model_ema."
# bookkeeping the original keeps in its state dict: the schedule, EMA counters, loss modules
IGNORED_KEYS = {
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "logvar",
    "scale_factor",
    "lvlb_weights",
    "cond_ids",
    "model_ema.decay",
    "model_ema.num_updates",
    "ddim_sigmas",
    # a constant of the CLIP text model that SD v1 files carry; not a weight
    "cond_stage_model.transformer.text_model.embeddings.position_ids",
}
IGNORED_PREFIXES = ("first_stage_model.loss.", "loss.")


def split_state_dict(state: dict[str, Tensor], pipe: Pipeline, ema: bool = False) -> dict[str, dict[str, Tensor]]:
    """Route original keys to components; list every key that fits nowhere and every missing one."""
    parts: dict[str, dict[str, Tensor]] = {name: {} for name in pipe.modules()}
    unexpected = []
    ema_keys = {}
    if ema:
        # LitEma stores each denoiser parameter under its dotted name with the dots removed
        for name in pipe.denoiser.state_dict():
            ema_keys[EMA_PREFIX + ("diffusion_model." + name).replace(".", "")] = name
    for key, value in state.items():
        if key in IGNORED_KEYS or key.startswith(IGNORED_PREFIXES):
            continue
        if key in ema_keys:
            parts["denoiser"][ema_keys[key]] = value
            continue
        if key.startswith(EMA_PREFIX):
            continue
        for part, prefix in PREFIXES.items():
            if key.startswith(prefix):
                if part not in parts:
                    unexpected.append(key)
                elif not (ema and part == "denoiser"):
                    parts[part][key[len(prefix) :]] = value
                break
        else:
            unexpected.append(key)
    if unexpected:
        shown = ", ".join(unexpected[:20])
        raise CheckpointError(f"{len(unexpected)} unexpected keys in the checkpoint: {shown}")
    if ema and not parts["denoiser"]:
        raise CheckpointError("ema=True but the checkpoint holds no model_ema.* weights")
    return parts


def load(config_yaml: str | Path | dict[str, Any], ckpt: str | Path, ema: bool = False) -> Pipeline:
    """Build a Pipeline from an original CompVis config and checkpoint (``ema=True``: the EMA weights)."""
    from ldmkit.checkpoints import check_scale_factor, load_checkpoint, load_into

    spec = spec_from_config(config_yaml)
    pipe = Pipeline.from_spec(spec)
    raw = load_checkpoint(ckpt)
    state = raw.get("state_dict", raw) if isinstance(raw, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"{ckpt}: no state_dict found")
    if "scale_factor" in state:  # scale_by_std stores the measured factor as a buffer
        pipe.scale_factor = check_scale_factor(state["scale_factor"], str(ckpt))
        pipe.spec = pipe.spec.model_copy(update={"scale_factor": pipe.scale_factor})
    for name, part in split_state_dict(state, pipe, ema=ema).items():
        load_into(pipe.modules()[name], part, what=f"{name} of {Path(str(ckpt)).name}")
    return pipe
