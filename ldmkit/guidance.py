"""Classifier-free guidance, assembled in one place for every sampling path.

A sampling path (the plain pipeline, the fast path) supplies a :data:`DenoiseStep`: one denoiser
call that returns epsilon, given the conditioning and the guidance scale. :func:`guided_model_fn`
decides whether guidance applies and which conditioning the step gets ([uncond; cond] as one
batched call when it does); :func:`eps_from_output` turns the call's output into the guided
epsilon. Both paths therefore guide with the same arithmetic, in the same order.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

from torch import Tensor

from ldmkit.conditioning import Conditioning, guided_pair
from ldmkit.errors import InputError
from ldmkit.interfaces import Denoiser, ModelFn, Prediction
from ldmkit.prediction import guided_eps, to_eps

__all__ = [
    "DenoiseStep",
    "check_guidance_scale",
    "denoiser_step",
    "eps_from_output",
    "guided_conditioning",
    "guided_model_fn",
]

DenoiseStep = Callable[[Tensor, Tensor, Conditioning, "float | None"], Tensor]
"""``step(x, t, conditioning, scale) -> eps`` (B, C, h, w): one denoiser call.

With ``scale`` None the conditioning holds B rows and the step returns the plain epsilon; with a
scale it holds [uncond; cond] (2B rows, a shared ``concat`` possibly B) and the step returns the
guided epsilon (see :func:`eps_from_output`).
"""


def check_guidance_scale(scale: object) -> float:
    """``scale`` as a float, refused with :class:`InputError` unless a finite number (NaN would only show at decode)."""
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale):
        raise InputError(f"guidance_scale must be a finite number, got {scale!r}")
    return float(scale)


def guided_conditioning(
    cond: Conditioning, uncond: Conditioning | None, guidance_scale: float
) -> tuple[Conditioning, float | None]:
    """The conditioning of one denoiser call and the scale to guide with (None: no guidance).

    Guidance applies when an unconditional input is given and the scale is not 1 (at 1 the guided
    epsilon equals the conditional one, so the cheaper unguided call is made).
    """
    scale = check_guidance_scale(guidance_scale)
    if uncond is None or scale == 1.0:
        return cond, None
    return guided_pair(uncond, cond), scale


def eps_from_output(
    out: Tensor, x: Tensor, t: Tensor, alphas_cumprod: Tensor, prediction: Prediction, scale: float | None
) -> Tensor:
    """Epsilon (B, C, h, w) from a denoiser's output: (B, ...) without ``scale``, [uncond; cond] (2B, ...) with it."""
    if scale is None:
        return to_eps(out, x, t, alphas_cumprod, prediction)
    return guided_eps(out, x, t, alphas_cumprod, prediction, scale)


def denoiser_step(denoiser: Denoiser, alphas_cumprod: Tensor) -> DenoiseStep:
    """The plain :data:`DenoiseStep` of ``denoiser``: a guided call goes through ``forward_guided``."""

    def step(x: Tensor, t: Tensor, conditioning: Conditioning, scale: float | None) -> Tensor:
        if scale is None:
            out = denoiser(x, t, conditioning)  # (B, C, h, w)
        else:
            out = denoiser.forward_guided(x, t, conditioning)  # (2B, C, h, w)
        return eps_from_output(out, x, t, alphas_cumprod, denoiser.prediction, scale)

    return step


def guided_model_fn(
    step: DenoiseStep, cond: Conditioning, uncond: Conditioning | None, guidance_scale: float = 1.0
) -> ModelFn:
    """``model_fn(x, t) -> eps`` with classifier-free guidance as one batched ``step`` call.

    ``step`` is :func:`denoiser_step` of a denoiser, or a faster path's own; every sampling path of
    :class:`ldmkit.Pipeline` builds its ``model_fn`` here.
    """
    conditioning, scale = guided_conditioning(cond, uncond, guidance_scale)

    def model_fn(x: Tensor, t: Tensor) -> Tensor:
        return step(x, t, conditioning, scale)

    return model_fn
