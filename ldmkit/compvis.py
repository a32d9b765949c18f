"""Load original CompVis latent-diffusion / Stable Diffusion v1 configs and checkpoints.

This module reads the YAML and the checkpoint, splits the state dict by the LatentDiffusion prefixes and
dispatches: each ``*_config`` entry goes to the registered component whose ``compvis_targets`` include
its ``target``, which translates the original params (and, if it declares so, the original key names);
see :mod:`ldmkit.conversions`. Nothing named in the YAML is ever imported.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from torch import Tensor

from ldmkit.conversions import CompVisContext, find_compvis_component, state_dict_from_compvis
from ldmkit.errors import CheckpointError, SpecError
from ldmkit.pipeline import Pipeline
from ldmkit.specs import PipelineSpec, read_document, validate_spec

if TYPE_CHECKING:
    from ldmkit.registry import Registry

log = logging.getLogger(__name__)

__all__ = ["DIFFUSION_TARGETS", "PREFIXES", "load", "spec_from_config", "split_state_dict"]

DIFFUSION_TARGETS = {
    "ldm.models.diffusion.ddpm.LatentDiffusion",
}
CONDITIONING_KEYS = (None, "crossattn", "concat", "hybrid", "adm")
PARAMETERIZATIONS = ("eps", "x0", "v")


def _params(section: str, config: dict[str, Any]) -> dict[str, Any]:
    params = config.get("params") or {}
    if not isinstance(params, dict):
        raise SpecError(f"{section}.params: expected a mapping, got {type(params).__name__}")
    return dict(params)


def _translate(section: str, kind: str, config: Any, context: CompVisContext, registry: Registry) -> dict[str, Any]:
    """One config entry -> ``{"type": ..., "params": ...}`` through the component declaring its target."""
    if not isinstance(config, dict) or "target" not in config:
        raise SpecError(f"{section}: expected a mapping with 'target'")
    target = str(config["target"])
    info = find_compvis_component(registry, kind, target, section)
    params = _params(section, config)
    try:
        out = info.cls.params_from_compvis(params, replace(context, section=section, target=target))
    except SpecError:
        raise
    except KeyError as exc:
        raise SpecError(f"{section}.params: missing {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:  # a value of the wrong kind, e.g. a number where a list belongs
        raise SpecError(f"{section}.params: {exc}") from None
    if isinstance(out, BaseModel):
        out = out.model_dump(mode="json")
    return {"type": info.name, "params": dict(out)}


def _number(p: dict[str, Any], key: str, default: float, cast: type) -> Any:
    try:
        return cast(p.get(key, default))
    except (TypeError, ValueError):
        raise SpecError(f"model.params.{key}: expected a number, got {p[key]!r}") from None


def spec_from_config(config: dict[str, Any] | str | Path, registry: Registry | None = None) -> PipelineSpec:
    """Translate an original CompVis model config into a validated ldmkit PipelineSpec.

    Each ``target`` is looked up among the ``compvis_targets`` that the components of ``registry`` (the
    process's by default) declare; see :mod:`ldmkit.conversions`.
    """
    from ldmkit.registry import get_registry

    registry = registry or get_registry()
    if not isinstance(config, dict):
        config = read_document(config)
    model = config.get("model", config)
    target = model.get("target") if isinstance(model, dict) else None
    if target not in DIFFUSION_TARGETS:
        raise SpecError(f"model.target must be one of {sorted(DIFFUSION_TARGETS)}, got {target!r}")
    p = _params("model", model)
    key = p.get("conditioning_key")
    if key not in CONDITIONING_KEYS:
        raise SpecError(f"conditioning_key {key!r}: expected crossattn, concat, hybrid or adm")
    parameterization = p.get("parameterization", "eps")
    if parameterization not in PARAMETERIZATIONS:
        raise SpecError(f"parameterization {parameterization!r}: expected eps, x0 or v")
    image_size = p.get("image_size")
    channels = p.get("channels")
    context = CompVisContext(
        section="",
        target="",
        conditioning_key=key,
        image_size=image_size if isinstance(image_size, int) and not isinstance(image_size, bool) else None,
        channels=channels if isinstance(channels, int) and not isinstance(channels, bool) else None,
        parameterization=parameterization,
        model_params=MappingProxyType(p),
    )
    cond_cfg = p.get("cond_stage_config")
    conditioner = None
    if cond_cfg not in (None, "__is_unconditional__"):
        if cond_cfg == "__is_first_stage__":
            raise SpecError(
                "cond_stage_config '__is_first_stage__' is not supported; use the 'masked-image' conditioner"
            )
        conditioner = _translate("cond_stage_config", "conditioner", cond_cfg, context, registry)
    denoiser = _translate("unet_config", "denoiser", p.get("unet_config"), context, registry)
    spec = {
        "version": 1,
        "first_stage": _translate("first_stage_config", "first_stage", p.get("first_stage_config"), context, registry),
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
    return validate_spec(spec, registry, source="CompVis config")


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


def _ema_names(state: dict[str, Tensor], pipe: Pipeline) -> dict[str, str]:
    """LitEma key -> the original denoiser key (without its prefix) it shadows.

    LitEma stores each parameter under its dotted name with the dots removed; the names come from the
    checkpoint's own denoiser keys and, for files holding only EMA weights, from the module's.
    """
    prefix = PREFIXES["denoiser"]
    names = {k[len(prefix) :] for k in state if k.startswith(prefix)} | set(pipe.denoiser.state_dict())
    return {EMA_PREFIX + ("diffusion_model." + name).replace(".", ""): name for name in names}


def split_state_dict(state: dict[str, Tensor], pipe: Pipeline, ema: bool = False) -> dict[str, dict[str, Tensor]]:
    """Route original keys to components (prefixes removed, names still the original's).

    Raises CheckpointError listing every key that fits nowhere.
    """
    parts: dict[str, dict[str, Tensor]] = {name: {} for name in pipe.modules()}
    unexpected = []
    ema_keys = _ema_names(state, pipe) if ema else {}
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


def load(
    config_yaml: str | Path | dict[str, Any],
    ckpt: str | Path,
    ema: bool = False,
    registry: Registry | None = None,
) -> Pipeline:
    """Build a Pipeline from an original CompVis config and checkpoint (``ema=True``: the EMA weights).

    Components are found through ``registry`` (the process's by default) by the ``compvis_targets`` they
    declare; each renames its part of the state dict with its ``state_dict_from_compvis``, if it has one.
    """
    from ldmkit.checkpoints import check_scale_factor, load_checkpoint, load_into
    from ldmkit.registry import get_registry

    registry = registry or get_registry()
    spec = spec_from_config(config_yaml, registry)
    pipe = Pipeline.from_spec(spec, registry)
    raw = load_checkpoint(ckpt)
    state = raw.get("state_dict", raw) if isinstance(raw, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"{ckpt}: no state_dict found")
    if "scale_factor" in state:  # scale_by_std stores the measured factor as a buffer
        pipe.scale_factor = check_scale_factor(state["scale_factor"], str(ckpt))
        assert pipe.spec is not None  # the pipeline was built from one
        pipe.spec = pipe.spec.model_copy(update={"scale_factor": pipe.scale_factor})
    for name, part in split_state_dict(state, pipe, ema=ema).items():
        module = pipe.modules()[name]
        ours = state_dict_from_compvis(type(module), part, getattr(module, "params", None))
        load_into(module, ours, what=f"{name} of {Path(str(ckpt)).name}")
    return pipe
