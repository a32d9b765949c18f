"""DPM-Solver++(2M): Lu, Zhou, Bao, Chen, Li & Zhu, "DPM-Solver++: Fast Solver for Guided Sampling of
Diffusion Probabilistic Models" (2022, arXiv 2211.01095), Algorithm 2, on discrete timesteps."""

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


class DPMPP2MSampler(LoopSampler):
    """DPM-Solver++(2M): multistep second-order solver of the data-prediction ODE (Lu et al. 2022, Algorithm 2).

    Works on ``x`` of the VP process with ``alpha_t = sqrt(a_t)``, ``sigma_t = sqrt(1 - a_t)`` and
    ``lambda_t = log(alpha_t / sigma_t)``. The first step is first order (no history yet), so is the last, which
    goes to ``sigma = 0`` and returns the final data prediction; this is diffusers' DPMSolverMultistepScheduler
    with ``algorithm_type="dpmsolver++"``, ``solver_order=2``, ``lower_order_final=True`` and its default
    "linspace" spacing (``spacing`` picks another, "leading" with offset 1). No fresh noise: ``eta`` must be 0
    (or None).
    """

    name = "dpmpp-2m"

    class Params(SpacingParams):
        spacing: Spacing = Field("linspace", description="which timesteps the steps visit (see ldmkit.sampling)")

    params: Params

    def loop(self, run: SamplingRun, schedule: NoiseSchedule, x_T: Tensor, steps: int, eta: float) -> Tensor:
        spacing = self.params.spacing
        ascending = select_timesteps(spacing, steps, schedule.num_timesteps, offset=1)
        timesteps = distinct_timesteps(ascending, spacing, steps)[::-1]  # descending
        ac = alphas_cumprod64(schedule)
        alphas = [math.sqrt(float(ac[t])) for t in timesteps] + [1.0]  # the chain ends at sigma = 0
        sigmas = [math.sqrt(1.0 - float(ac[t])) for t in timesteps] + [0.0]
        lambdas = [math.log(a) - math.log(s) for a, s in zip(alphas[:-1], sigmas[:-1], strict=True)]

        _, x = run.start(x_T, timesteps)
        prev_x0: Tensor | None = None
        for i in run.steps(len(timesteps)):
            t = timesteps[i]
            x = run.impose(x, t)
            eps = run.eps(x, t)
            pred_x0 = (x - sigmas[i] * eps) / alphas[i]  # data prediction
            if i == len(timesteps) - 1:
                x = pred_x0  # first-order step to sigma = 0: exactly the data prediction
            else:
                h = lambdas[i + 1] - lambdas[i]
                phi = alphas[i + 1] * (math.exp(-h) - 1.0)
                if prev_x0 is None:  # DPM-Solver++ 1 (= DDIM)
                    d = pred_x0
                else:  # 2M: D0 + D1 / 2 with D1 = (x0 - x0_prev) / r0
                    r0 = (lambdas[i] - lambdas[i - 1]) / h
                    d = pred_x0 + 0.5 / r0 * (pred_x0 - prev_x0)
                x = sigmas[i + 1] / sigmas[i] * x - phi * d
            prev_x0 = pred_x0
            if run.report(i, t, x, pred_x0):
                return x
        return run.finish(x)
