"""Conversions between eps, x0 and v parameterizations (the one place samplers rely on)."""

from __future__ import annotations

import torch
from torch import Tensor

from ldmkit.interfaces import Prediction

__all__ = ["eps_to_x0", "guided_eps", "target_for", "to_eps"]


def _coeffs(alphas_cumprod: Tensor, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
    a = alphas_cumprod.to(like.device)[t.long()].to(like.dtype).view(-1, *([1] * (like.dim() - 1)))  # (B, 1, 1, 1)
    return a.sqrt(), (1 - a).sqrt()


def to_eps(pred: Tensor, x_t: Tensor, t: Tensor, alphas_cumprod: Tensor, prediction: Prediction) -> Tensor:
    """Epsilon implied by a model output in the ``prediction`` parameterization."""
    if prediction == "eps":
        return pred
    sqrt_a, sqrt_1ma = _coeffs(alphas_cumprod, t, x_t)
    if prediction == "x0":
        return (x_t - sqrt_a * pred) / sqrt_1ma
    if prediction == "v":
        return sqrt_a * pred + sqrt_1ma * x_t
    raise ValueError(f"unknown prediction type {prediction!r}; expected eps, x0 or v")


def guided_eps(
    pred: Tensor, x_t: Tensor, t: Tensor, alphas_cumprod: Tensor, prediction: Prediction, scale: float
) -> Tensor:
    """Classifier-free-guided epsilon (B, ...) from a guided call's output (2B, ...), [uncond; cond] rows."""
    eps = to_eps(pred, torch.cat([x_t, x_t]), torch.cat([t, t]), alphas_cumprod, prediction)  # (2B, ...)
    e_uncond, e_cond = eps.chunk(2)  # (B, ...) each
    return e_uncond + scale * (e_cond - e_uncond)


def eps_to_x0(eps: Tensor, x_t: Tensor, t: Tensor, alphas_cumprod: Tensor) -> Tensor:
    sqrt_a, sqrt_1ma = _coeffs(alphas_cumprod, t, x_t)
    return (x_t - sqrt_1ma * eps) / sqrt_a


def target_for(prediction: Prediction, x0: Tensor, noise: Tensor, t: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """The training target of a denoiser in the ``prediction`` parameterization."""
    if prediction == "eps":
        return noise
    if prediction == "x0":
        return x0
    sqrt_a, sqrt_1ma = _coeffs(alphas_cumprod, t, x0)
    return sqrt_a * noise - sqrt_1ma * x0  # v
