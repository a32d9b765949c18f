"""The spec's noise schedule and the denoiser's prediction <-> a diffusers ``scheduler_config.json``."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from ldmkit.diffusers_interop.config import DIFFUSERS_VERSION
from ldmkit.errors import SpecError
from ldmkit.schedules import ScheduleSpec
from ldmkit.specs import format_validation_error

# ldmkit's beta_schedule names <-> diffusers' (CompVis "linear" is linear in sqrt(beta))
TO_DIFFUSERS = {
    "linear": "scaled_linear",
    "scaled_linear": "scaled_linear",
    "sqrt_linear": "linear",
    "cosine": "squaredcos_cap_v2",
}
FROM_DIFFUSERS = {"scaled_linear": "linear", "linear": "sqrt_linear", "squaredcos_cap_v2": "cosine"}
PREDICTIONS = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}
COSINE_S = 0.008  # the offset diffusers' squaredcos_cap_v2 fixes


def scheduler_config_to_diffusers(schedule: ScheduleSpec, prediction: str = "eps") -> dict[str, Any]:
    """A ``DDIMScheduler`` config with the betas of ``schedule`` and the given prediction."""
    name = TO_DIFFUSERS.get(schedule.beta_schedule)
    if name is None:
        raise SpecError(f"schedule beta_schedule={schedule.beta_schedule!r} has no diffusers counterpart")
    if name == "squaredcos_cap_v2" and not math.isclose(schedule.cosine_s, COSINE_S):
        raise SpecError(f"schedule cosine_s={schedule.cosine_s}: diffusers' cosine schedule fixes it at {COSINE_S}")
    if prediction not in PREDICTIONS:
        raise SpecError(f"prediction {prediction!r} has no diffusers counterpart (eps, v or x0)")
    return {
        "_class_name": "DDIMScheduler",
        "_diffusers_version": DIFFUSERS_VERSION,
        "num_train_timesteps": schedule.timesteps,
        "beta_start": schedule.linear_start,
        "beta_end": schedule.linear_end,
        "beta_schedule": name,
        "trained_betas": None,
        "prediction_type": PREDICTIONS[prediction],
        # the DDIM settings Stable Diffusion ships with; they shape sampling, not the forward process
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
    }


def schedule_from_diffusers(config: Mapping[str, Any]) -> tuple[ScheduleSpec, str]:
    """(ScheduleSpec, prediction) of any diffusers scheduler config (only the forward process is read)."""
    if config.get("trained_betas") is not None:
        raise SpecError("scheduler: trained_betas (an explicit beta list) is not supported; a spec names a schedule")
    if config.get("rescale_betas_zero_snr"):
        raise SpecError("scheduler: rescale_betas_zero_snr is not supported")
    name = config.get("beta_schedule", "linear")
    if name not in FROM_DIFFUSERS:
        raise SpecError(f"scheduler: beta_schedule {name!r} is not supported ({', '.join(FROM_DIFFUSERS)})")
    prediction = config.get("prediction_type", "epsilon")
    by_name = {v: k for k, v in PREDICTIONS.items()}
    if prediction not in by_name:
        raise SpecError(f"scheduler: prediction_type {prediction!r} is not supported ({', '.join(by_name)})")
    values: dict[str, Any] = {
        "beta_schedule": FROM_DIFFUSERS[name],
        "timesteps": config.get("num_train_timesteps", 1000),
    }
    for ours, theirs, default in (("linear_start", "beta_start", 1e-4), ("linear_end", "beta_end", 0.02)):
        value = config.get(theirs, default)
        values[ours] = float(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if name == "squaredcos_cap_v2":
        values["cosine_s"] = COSINE_S
    try:
        return ScheduleSpec.model_validate(values), by_name[prediction]
    except ValidationError as exc:
        raise SpecError(f"scheduler: {format_validation_error(exc)}") from None
