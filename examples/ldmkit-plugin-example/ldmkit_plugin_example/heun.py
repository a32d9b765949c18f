"""Heun's second-order method on the probability-flow ODE (Karras et al. 2022, Algorithm 1)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ldmkit import InputError, NoiseSchedule, Params
from ldmkit.sampling import Discretization, LoopSampler, SamplingRun, alphas_cumprod64


class HeunSampler(LoopSampler):
    """Deterministic Heun sampler (EDM, Karras et al. 2022, "Elucidating the Design Space of
    Diffusion-Based Generative Models", Algorithm 1, without churn) on a discrete VP schedule.

    The VP latent ``x_t = sqrt(a) x_0 + sqrt(1 - a) eps`` is rescaled to the variance-exploding
    form ``x_t / sqrt(a) = x_0 + sigma eps`` with ``sigma = sqrt((1 - a) / a)``, where the ODE is
    ``dx/dsigma = eps``. Every step takes an Euler step to the next sigma and corrects it with the
    slope there (trapezoidal rule); the last step, to sigma = 0, is plain Euler. ``steps`` steps
    cost ``2 * steps - 1`` model evaluations. All sigmas sit on integer timesteps of the schedule,
    so the model is only queried where it was trained. ``eta`` must be 0.
    """

    name = "heun-example"

    class Params(Params):
        discretize: Discretization = "uniform"
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

    def loop(self, run: SamplingRun, schedule: NoiseSchedule, x_T: Tensor, steps: int, eta: float) -> Tensor:
        ts = self.timesteps(schedule.num_timesteps, steps).tolist()
        ac = alphas_cumprod64(schedule)  # (T,)
        sigmas = [math.sqrt((1.0 - float(ac[t])) / float(ac[t])) for t in ts] + [0.0]  # the chain ends at sigma = 0
        # scales[i] = sqrt(1 + sigma_i^2) = 1 / sqrt(a_t) turns the VP latent into the VE one
        scales = [math.sqrt(1.0 + s * s) for s in sigmas]

        def slope(x_ve: Tensor, i: int) -> Tensor:
            """dx/dsigma at sigma_i: the model's epsilon, which it computes on the VP latent."""
            return run.eps(x_ve / scales[i], ts[i])

        x = x_T * scales[0]  # (B, C, h, w) in the VE scale
        for i in run.steps(steps):
            s, s_next = sigmas[i], sigmas[i + 1]
            if run.masked:  # re-noise the known region to this noise level (in the VP scale, as run does)
                x = run.impose(x / scales[i], ts[i]) * scales[i]
            d = slope(x, i)  # (B, C, h, w)
            pred_x0 = x - s * d
            x_next = x + (s_next - s) * d  # Euler
            if s_next > 0:
                x_next = x + (s_next - s) * 0.5 * (d + slope(x_next, i + 1))  # trapezoidal correction
            x = x_next
            if run.report(i, ts[i], x / scales[i + 1], pred_x0):
                return x / scales[i + 1]
        return run.finish(x)  # sigma = 0: the VE and VP scales agree
