"""Euler ancestral: the ancestral Euler sampler of Karras, Aittala, Aila & Laine, "Elucidating the Design Space of
Diffusion-Based Generative Models" (NeurIPS 2022) as k-diffusion's ``sample_euler_ancestral`` and diffusers'
EulerAncestralDiscreteScheduler run it on a discrete schedule."""

from __future__ import annotations

import math

from pydantic import Field
from torch import Tensor

from ldmkit import NoiseSchedule
from ldmkit.sampling import (
    LoopSampler,
    SamplingRun,
    Spacing,
    SpacingParams,
    alphas_cumprod64,
    distinct_timesteps,
    select_timesteps,
)


class EulerAncestralSampler(LoopSampler):
    """Euler ancestral sampling in the variance-exploding scale ``x / sqrt(a_t)``, ``sigma_t^2 = (1 - a_t) / a_t``.

    Each step takes an Euler step of the probability-flow ODE down to ``sigma_down`` and adds fresh noise of
    ``sigma_up`` (with ``sigma_down^2 + sigma_up^2 = sigma_next^2``); the last step goes to ``sigma = 0``. As diffusers'
    EulerAncestralDiscreteScheduler with ``timestep_spacing="leading"``, ``steps_offset=1`` (``spacing`` may pick
    another, "linspace" rounded to integer timesteps). ``x_T``, ``x`` given to the callback and an
    early-stopped result are in the usual (VP) scale. ``eta`` is k-diffusion's: ``sigma_up`` is ``eta`` times
    the full ancestral noise (capped at ``sigma_next``); the default 1 is full ancestral sampling, 0 the
    deterministic Euler method.
    """

    name = "euler-a"

    uses_eta = True
    default_eta = 1.0

    class Params(SpacingParams):
        spacing: Spacing = Field("leading", description="which timesteps the steps visit (see ldmkit.sampling)")

    params: Params

    def loop(self, run: SamplingRun, schedule: NoiseSchedule, x_T: Tensor, steps: int, eta: float) -> Tensor:
        spacing = self.params.spacing
        ascending = select_timesteps(spacing, steps, schedule.num_timesteps, offset=1)
        timesteps = distinct_timesteps(ascending, spacing, steps)[::-1]  # descending
        ac = alphas_cumprod64(schedule)
        sigmas = [math.sqrt((1.0 - float(ac[t])) / float(ac[t])) for t in timesteps] + [0.0]
        # scale[i] = sqrt(1 + sigma_i^2) = 1 / sqrt(a_t) turns the VP x into the VE one
        scales = [math.sqrt(1.0 + s * s) for s in sigmas]

        first, x = run.start(x_T, timesteps)
        x = x * scales[first]
        for i in run.steps(len(timesteps)):
            t, sigma, sigma_next = timesteps[i], sigmas[i], sigmas[i + 1]
            if run.masked:
                x = run.impose(x / scales[i], t) * scales[i]
            eps = run.eps(x / scales[i], t)
            pred_x0 = x - sigma * eps
            sigma_up = eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2)
            if eta > 1 and sigma_up > sigma_next:  # no more noise than the next level holds
                sigma_up = sigma_next
            sigma_down = math.sqrt(max(sigma_next**2 - sigma_up**2, 0.0))
            x = x + eps * (sigma_down - sigma)  # Euler step; (x - pred_x0) / sigma = eps
            if sigma_up > 0:
                x = x + run.noise() * sigma_up
            if run.report(i, t, x / scales[i + 1], pred_x0):
                return x / scales[i + 1]
        return run.finish(x)
