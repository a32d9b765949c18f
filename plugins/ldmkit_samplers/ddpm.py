"""DDPM: Ho, Jain & Abbeel, "Denoising Diffusion Probabilistic Models" (NeurIPS 2020), ancestral sampling."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from ldmkit import NoiseSchedule
from ldmkit.sampling import (
    LoopSampler,
    SamplingRun,
    Spacing,
    SpacingParams,
    distinct_timesteps,
    select_timesteps,
)


def respaced_posterior(schedule: NoiseSchedule, timesteps: list[int]) -> dict[str, list[float]]:
    """Float32 coefficients of q(x_prev | x_t, x_0) between consecutive chosen timesteps, indexed like ``timesteps``.

    With all ``T`` timesteps this is CompVis ``register_schedule`` (float64 from the betas, stored as float32, with
    ``v_posterior = 0``); with fewer it is the same on the respaced chain (Nichol & Dhariwal 2021, sec. 4), whose
    betas are ``1 - a_t / a_prev`` and whose last step goes to ``a_prev = 1``.
    """
    schedule_betas = schedule.betas.detach().to(device="cpu", dtype=torch.float64)  # (T,)
    ac = torch.cumprod(1.0 - schedule_betas, dim=0)  # (T,)
    a_t = ac[timesteps]  # (n,)
    a_prev = torch.cat([a_t.new_ones(1), a_t[:-1]])  # (n,)
    # between consecutive timesteps the respaced beta is the schedule's own (taken as is, as the original does)
    previous = [-1, *timesteps[:-1]]
    consecutive = torch.tensor([t == p + 1 for p, t in zip(previous, timesteps, strict=True)])  # (n,)
    betas = torch.where(consecutive, schedule_betas[timesteps], 1.0 - a_t / a_prev)  # (n,)
    variance = betas * (1.0 - a_prev) / (1.0 - a_t)  # "fixed_small"
    coefs = {
        "sqrt_recip_alphas_cumprod": torch.sqrt(1.0 / a_t),
        "sqrt_recipm1_alphas_cumprod": torch.sqrt(1.0 / a_t - 1),
        "posterior_mean_coef1": betas * torch.sqrt(a_prev) / (1.0 - a_t),
        "posterior_mean_coef2": (1.0 - a_prev) * torch.sqrt(1.0 - betas) / (1.0 - a_t),
        # the original clips the log variance because it is 0 at the first step of the chain
        "posterior_log_std": 0.5 * torch.log(variance.clamp(min=1e-20)),
    }
    out = {name: value.to(torch.float32) for name, value in coefs.items()}  # stored as float32, like the buffers
    out["posterior_std"] = out.pop("posterior_log_std").exp()
    return {name: value.tolist() for name, value in out.items()}


class DDPMSampler(LoopSampler):
    """Ancestral sampling of DDPM (Ho et al. 2020, Algorithm 2) as LatentDiffusion ``p_sample`` runs it.

    Posterior variance "fixed_small" (``v_posterior = 0``), no clipping of the x_0 estimate, no noise on
    the last step. ``steps < T`` samples the respaced chain of timesteps ``i * (T // steps)`` (diffusers
    "leading" spacing, offset 0; ``spacing`` picks another), so ``steps = T`` is the original 1000-step loop.
    ``eta`` scales the posterior noise: the default 1 is Ho et al.'s sampler, 0 takes the posterior mean.
    """

    name = "ddpm"

    uses_eta = True
    default_eta = 1.0

    class Params(SpacingParams):
        spacing: Spacing = Field("leading", description="which timesteps the steps visit (see ldmkit.sampling)")

    params: Params

    def loop(self, run: SamplingRun, schedule: NoiseSchedule, x_T: Tensor, steps: int, eta: float) -> Tensor:
        spacing = self.params.spacing
        timesteps = distinct_timesteps(select_timesteps(spacing, steps, schedule.num_timesteps), spacing, steps)
        p = respaced_posterior(schedule, timesteps)
        _, x = run.start(x_T, timesteps[::-1])
        for i in run.steps(len(timesteps)):
            index = len(timesteps) - 1 - i
            t = timesteps[index]
            x = run.impose(x, t)
            eps = run.eps(x, t)
            pred_x0 = p["sqrt_recip_alphas_cumprod"][index] * x - p["sqrt_recipm1_alphas_cumprod"][index] * eps
            mean = p["posterior_mean_coef1"][index] * pred_x0 + p["posterior_mean_coef2"][index] * x
            sigma = eta * p["posterior_std"][index]  # a Python float: eta = 1 leaves it exactly as it is
            x = mean + sigma * run.noise() if index > 0 and eta > 0 else mean  # no noise on the last step
            if run.report(i, t, x, pred_x0):
                return x
        return run.finish(x)
