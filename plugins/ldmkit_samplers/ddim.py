"""DDIM: Song, Meng & Ermon, "Denoising Diffusion Implicit Models" (ICLR 2021), as CompVis ``ddim.py`` runs it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pydantic import Field
from torch import Tensor

from ldmkit import NoiseSchedule
from ldmkit.sampling import LoopSampler, SamplingRun, Spacing, SpacingParams, select_timesteps


@dataclass(frozen=True)
class DDIMCoefficients:
    """Per-step coefficients of CompVis ``make_ddim_sampling_parameters``, indexed like ``timesteps``.

    The alphas are the schedule's float32 ``alphas_cumprod`` at the timesteps (``alphas_prev`` starts with
    ``alphas_cumprod[0]``). Every value is computed as the original computes it: sigma mostly in float64 and then
    stored as float32, ``sqrt(1 - a_t)`` with numpy's (correctly rounded) root, the other roots with torch in float32.
    """

    timesteps: list[int]  # ascending
    sqrt_alphas: list[float]  # sqrt(a_t)
    sqrt_one_minus_alphas: list[float]  # sqrt(1 - a_t)
    sqrt_alphas_prev: list[float]  # sqrt(a_prev)
    dir_coefs: list[float]  # sqrt(1 - a_prev - sigma^2), the weight of the direction pointing to x_t
    sigmas: list[float]  # eta * sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))

    @classmethod
    def build(cls, schedule: NoiseSchedule, timesteps: list[int], eta: float) -> DDIMCoefficients:
        ac = schedule.alphas_cumprod.detach().to(device="cpu", dtype=torch.float32)  # (T,)
        alphas = ac[timesteps]  # (n,)
        alphas_prev = torch.cat([ac[:1], alphas[:-1]])  # (n,)
        a64, ap64 = alphas.double(), alphas_prev.double()
        # (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev); the original's mixed numpy/torch arithmetic takes the
        # reciprocal of (1 - a_t) in float32 and the rest in float64
        ratio = (1.0 - alphas).reciprocal().double() * (1 - ap64)  # (n,)
        sigmas = (eta * torch.sqrt(ratio * (1 - a64 / ap64))).to(torch.float32)  # (n,)
        return cls(
            timesteps=list(timesteps),
            sqrt_alphas=alphas.sqrt().tolist(),
            # the original takes this root with numpy (correctly rounded, as a float64 root rounded to float32 is)
            sqrt_one_minus_alphas=(1.0 - alphas).double().sqrt().to(torch.float32).tolist(),
            sqrt_alphas_prev=alphas_prev.sqrt().tolist(),
            dir_coefs=(1.0 - alphas_prev - sigmas**2).sqrt().tolist(),
            sigmas=sigmas.tolist(),
        )

    def __len__(self) -> int:
        return len(self.timesteps)


def ddim_update(c: DDIMCoefficients, index: int, x: Tensor, eps: Tensor, noise: Tensor | None) -> tuple[Tensor, Tensor]:
    """One DDIM step from ``timesteps[index]`` to the one below it: returns ``(x_prev, pred_x0)``.

    Same operation order as CompVis ``p_sample_ddim``.
    """
    pred_x0 = (x - c.sqrt_one_minus_alphas[index] * eps) / c.sqrt_alphas[index]
    dir_xt = c.dir_coefs[index] * eps
    x_prev = c.sqrt_alphas_prev[index] * pred_x0 + dir_xt
    if noise is not None:
        x_prev = x_prev + c.sigmas[index] * noise
    return x_prev, pred_x0


class DDIMSampler(LoopSampler):
    """Denoising Diffusion Implicit Models (Song et al. 2021, eq. 12), eta interpolating to DDPM-like noise.

    Timesteps by default are CompVis ``make_ddim_timesteps`` (``spacing``: "uniform" takes
    ``range(0, T, T // steps) + 1``, which has more than ``steps`` entries when ``steps`` does not divide ``T``;
    "quad" is quadratic up to 0.8 T; "leading" (offset 1), "linspace" and "trailing" as
    :func:`ldmkit.sampling.spaced_timesteps`); the first step lands on ``alphas_cumprod[0]``, not on 1.
    ``eta`` scales the fresh noise of each step (default 0: deterministic).
    """

    name = "ddim"

    uses_eta = True
    default_eta = 0.0

    class Params(SpacingParams):
        spacing: Spacing = Field("uniform", description="which timesteps the steps visit (see ldmkit.sampling)")

    params: Params

    def loop(self, run: SamplingRun, schedule: NoiseSchedule, x_T: Tensor, steps: int, eta: float) -> Tensor:
        c = DDIMCoefficients.build(
            schedule, select_timesteps(self.params.spacing, steps, schedule.num_timesteps, offset=1), eta
        )
        _, x = run.start(x_T, c.timesteps[::-1])
        for i in run.steps(len(c)):
            index = len(c) - 1 - i
            t = c.timesteps[index]
            x = run.impose(x, t)
            eps = run.eps(x, t)
            x, pred_x0 = ddim_update(c, index, x, eps, run.noise() if eta > 0 else None)
            if run.report(i, t, x, pred_x0):
                return x
        return run.finish(x)
