"""A denoiser with a closed form, for testing samplers without a network."""

from __future__ import annotations

from torch import Tensor

from ldmkit.interfaces import ModelFn
from ldmkit.schedules import NoiseSchedule


def gaussian_eps_fn(schedule: NoiseSchedule, mean: float | Tensor = 0.0, std: float = 1.0) -> ModelFn:
    """The exact ``E[eps | x_t]`` when the data are ``N(mean, std^2 I)``: ``model_fn(x, t) -> eps``.

    With ``x_t = sqrt(a) x_0 + sqrt(1 - a) eps`` both terms are Gaussian, so the posterior mean of
    ``eps`` is linear in ``x_t``. Each sample and each element is treated independently.
    """
    alphas_cumprod = schedule.alphas_cumprod

    def model_fn(x: Tensor, t: Tensor) -> Tensor:
        a = alphas_cumprod.to(x.device)[t.long()].to(x.dtype).view(-1, *([1] * (x.dim() - 1)))  # (B, 1, 1, 1)
        # Cov(eps, x_t) = sqrt(1 - a); Var(x_t) = a std^2 + 1 - a
        return (1 - a).sqrt() * (x - a.sqrt() * mean) / (a * std**2 + 1 - a)  # (B, C, h, w)

    return model_fn
