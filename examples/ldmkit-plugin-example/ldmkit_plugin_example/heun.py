"""Heun's second-order method on the probability-flow ODE (Karras et al. 2022, Algorithm 1)."""

from __future__ import annotations

import logging
from typing import Literal

import torch
from torch import Tensor

from ldmkit import InputError, NoiseSchedule, Params, Sampler
from ldmkit.interfaces import ModelFn, StepCallback

log = logging.getLogger(__name__)


class HeunSampler(Sampler):
    """Deterministic Heun sampler (EDM, Karras et al. 2022, "Elucidating the Design Space of
    Diffusion-Based Generative Models", Algorithm 1, without churn) on a discrete VP schedule.

    The VP latent ``x_t = sqrt(a) x_0 + sqrt(1 - a) eps`` is rescaled to the variance-exploding
    form ``x_t / sqrt(a) = x_0 + sigma eps`` with ``sigma = sqrt((1 - a) / a)``, where the ODE is
    ``dx/dsigma = eps``. Every step takes an Euler step to the next sigma and corrects it with the
    slope there (trapezoidal rule); the last step, to sigma = 0, is plain Euler. ``steps`` steps
    cost ``2 * steps - 1`` model evaluations. All sigmas sit on integer timesteps of the schedule,
    so the model is only queried where it was trained.
    """

    name = "heun-example"

    class Params(Params):
        discretize: Literal["uniform", "quad"] = "uniform"
        """How the timesteps are spread: evenly, or quadratically (denser near t = 0), as in DDIM."""

    def timesteps(self, num_timesteps: int, steps: int) -> Tensor:
        """Distinct integer timesteps, descending from the last one, shape (steps,)."""
        if not 1 <= steps <= num_timesteps:
            raise InputError(f"steps must be between 1 and {num_timesteps} for this schedule, got {steps}")
        last = num_timesteps - 1
        u = torch.linspace(1.0, 0.0, steps, dtype=torch.float64)
        if self.params.discretize == "quad":
            u = u**2
        ts = (u * last).round().long()  # (steps,), may repeat when steps is close to num_timesteps
        # force strictly decreasing values while keeping the end points
        for i in range(1, steps):
            ts[i] = min(int(ts[i]), int(ts[i - 1]) - 1)
        for i in range(steps - 2, -1, -1):
            ts[i] = max(int(ts[i]), int(ts[i + 1]) + 1)
        return ts

    @torch.no_grad()
    def sample(
        self,
        model_fn: ModelFn,
        schedule: NoiseSchedule,
        x_T: Tensor,
        *,
        steps: int,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        callback: StepCallback | None = None,
        mask: Tensor | None = None,
        x0: Tensor | None = None,
        progress: bool = False,
    ) -> Tensor:
        if eta != 0.0:
            raise InputError(f"{self.name} is deterministic; eta must be 0, got {eta}")
        if (mask is None) != (x0 is None):
            raise InputError("masked sampling needs both mask and x0")
        ts = self.timesteps(schedule.num_timesteps, steps)
        alphas = schedule.alphas_cumprod.to(device=x_T.device, dtype=torch.float64)[ts]  # (steps,)
        sigmas = torch.cat([((1 - alphas) / alphas).sqrt(), alphas.new_zeros(1)])  # (steps + 1,)
        batch = x_T.shape[0]

        def eps_at(x_ve: Tensor, i: int) -> Tensor:
            scale = float(1.0 / (1.0 + sigmas[i] ** 2) ** 0.5)  # sqrt(a) at sigma_i
            t = torch.full((batch,), int(ts[i]), dtype=torch.long, device=x_T.device)  # (B,)
            return model_fn(x_ve * scale, t)

        x = x_T * float((1.0 + sigmas[0] ** 2) ** 0.5)  # (B, C, h, w) in the VE scaling
        indices = range(steps)
        if progress:
            from tqdm.auto import tqdm

            indices = tqdm(indices, desc=self.name)
        for i in indices:
            s, s_next = float(sigmas[i]), float(sigmas[i + 1])
            if mask is not None:
                # re-noise the known region to the current noise level, as DDIM inpainting does
                known = x0 + s * _randn_like(x, generator)
                x = mask * known + (1 - mask) * x
            d = eps_at(x, i)  # (B, C, h, w), dx/dsigma at sigma_i
            pred_x0 = x - s * d
            x_next = x + (s_next - s) * d
            if s_next > 0:
                d_next = eps_at(x_next, i + 1)
                x_next = x + (s_next - s) * 0.5 * (d + d_next)
            x = x_next
            if callback is not None and callback(i, int(ts[i]), _to_vp(x, s_next), pred_x0):
                log.debug("%s stopped by the callback after step %d", self.name, i)
                return _to_vp(x, s_next)
        if mask is not None:
            x = mask * x0 + (1 - mask) * x
        return x


def _to_vp(x_ve: Tensor, sigma: float) -> Tensor:
    """The VP latent (the scaling samplers return) of a VE state at ``sigma``."""
    return x_ve / (1.0 + sigma**2) ** 0.5


def _randn_like(x: Tensor, generator: torch.Generator | list[torch.Generator] | None) -> Tensor:
    """Noise shaped like ``x``; a list holds one generator per sample (drawn on each generator's device)."""
    if isinstance(generator, list):
        if len(generator) != x.shape[0]:
            raise InputError(f"got {len(generator)} generators for a batch of {x.shape[0]}")
        noise = torch.stack([torch.randn(x.shape[1:], generator=g, device=g.device) for g in generator])
    elif generator is not None:
        noise = torch.randn(x.shape, generator=generator, device=generator.device)
    else:
        noise = torch.randn(x.shape, device=x.device)
    return noise.to(device=x.device, dtype=x.dtype)
