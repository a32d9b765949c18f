"""Noise schedules (the forward process), as the original code builds them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import ConfigDict, Field
from torch import Tensor

from ldmkit.validation import StrictModel

__all__ = ["NoiseSchedule", "ScheduleSpec", "make_betas"]


class ScheduleSpec(StrictModel):
    """How the betas of the forward process are made (CompVis ``make_beta_schedule``)."""

    model_config = ConfigDict(frozen=True)

    beta_schedule: Literal["linear", "scaled_linear", "cosine", "sqrt_linear", "sqrt"] = "linear"
    linear_start: float = Field(0.00085, gt=0, lt=1)
    linear_end: float = Field(0.012, gt=0, lt=1)
    timesteps: int = Field(1000, ge=1, le=100_000)
    cosine_s: float = Field(8e-3, ge=0)


def make_betas(spec: ScheduleSpec) -> Tensor:
    """Betas in float64, shape (T,)."""
    n, start, end = spec.timesteps, spec.linear_start, spec.linear_end
    if spec.beta_schedule in ("linear", "scaled_linear"):
        # the "linear" of latent diffusion is linear in sqrt(beta)
        betas = torch.linspace(start**0.5, end**0.5, n, dtype=torch.float64) ** 2
    elif spec.beta_schedule == "sqrt_linear":
        betas = torch.linspace(start, end, n, dtype=torch.float64)
    elif spec.beta_schedule == "sqrt":
        betas = torch.linspace(start, end, n, dtype=torch.float64) ** 0.5
    else:  # cosine (Nichol & Dhariwal)
        steps = torch.arange(n + 1, dtype=torch.float64) / n + spec.cosine_s
        alphas = torch.cos(steps / (1 + spec.cosine_s) * math.pi / 2) ** 2
        alphas = alphas / alphas[0]
        betas = (1 - alphas[1:] / alphas[:-1]).clamp(0, 0.999)
    return betas


@dataclass(frozen=True)
class NoiseSchedule:
    """Discrete forward process: ``x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps`` with ``a_t = alphas_cumprod[t]``.

    ``alphas_cumprod`` is float32, as the original registers it; ``betas`` keep float64.
    """

    betas: Tensor  # (T,) float64
    alphas_cumprod: Tensor  # (T,) float32

    @classmethod
    def from_spec(cls, spec: ScheduleSpec | None = None) -> NoiseSchedule:
        betas = make_betas(spec or ScheduleSpec())
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        return cls(betas=betas, alphas_cumprod=alphas_cumprod.to(torch.float32))

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod: Tensor) -> NoiseSchedule:
        ac = alphas_cumprod.to(torch.float64)
        prev = torch.cat([ac.new_ones(1), ac[:-1]])
        return cls(betas=1 - ac / prev, alphas_cumprod=alphas_cumprod.to(torch.float32))

    @property
    def num_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """q(x_t | x_0) for timesteps ``t`` (B,)."""
        a = self.alphas_cumprod.to(x0.device)[t].to(x0.dtype).view(-1, *([1] * (x0.dim() - 1)))  # (B, 1, 1, 1)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise
