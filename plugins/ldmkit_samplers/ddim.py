"""DDIM: Song, Meng & Ermon, "Denoising Diffusion Implicit Models" (ICLR 2021), as CompVis ``ddim.py`` runs it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

import ldmkit
from ldmkit.interfaces import ModelFn, StepCallback
from ldmkit.schedules import NoiseSchedule
from ldmkit_samplers.common import Generators, SamplingRun, check_eta, check_steps, compvis_timesteps


@dataclass(frozen=True)
class DDIMCoefficients:
    """Per-step float32 arrays of CompVis ``make_ddim_sampling_parameters``, indexed like ``timesteps``."""

    timesteps: list[int]  # ascending
    alphas: Tensor  # (n,) a_t
    alphas_prev: Tensor  # (n,) a_{t-1}; the first is alphas_cumprod[0]
    sigmas: Tensor  # (n,) eta * sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
    sqrt_one_minus_alphas: Tensor  # (n,)

    @classmethod
    def build(cls, schedule: NoiseSchedule, timesteps: list[int], eta: float) -> DDIMCoefficients:
        ac = schedule.alphas_cumprod.detach().to(device="cpu", dtype=torch.float32)  # (T,)
        alphas = ac[timesteps]  # (n,)
        alphas_prev = torch.cat([ac[:1], alphas[:-1]])  # (n,)
        # the original derives sigma in float64 from the float32 alphas, then stores it as float32
        a64, ap64 = alphas.double(), alphas_prev.double()
        sigmas = eta * torch.sqrt((1 - ap64) / (1 - a64) * (1 - a64 / ap64))
        return cls(timesteps, alphas, alphas_prev, sigmas.to(torch.float32), (1.0 - alphas).sqrt())

    def __len__(self) -> int:
        return len(self.timesteps)


def ddim_update(
    run: SamplingRun, c: DDIMCoefficients, index: int, x: Tensor, eps: Tensor, noise: Tensor | None
) -> tuple[Tensor, Tensor]:
    """One DDIM step from ``timesteps[index]`` to the one below it: returns ``(x_prev, pred_x0)``.

    The arithmetic follows CompVis ``p_sample_ddim`` (float32 scalars, same operation order).
    """
    a_t, a_prev, sigma = c.alphas[index], c.alphas_prev[index], c.sigmas[index]
    pred_x0 = (x - run.coeff(c.sqrt_one_minus_alphas[index]) * eps) / run.coeff(a_t.sqrt())
    dir_xt = run.coeff((1.0 - a_prev - sigma**2).sqrt()) * eps  # direction pointing to x_t
    x_prev = run.coeff(a_prev.sqrt()) * pred_x0 + dir_xt
    if noise is not None:
        x_prev = x_prev + run.coeff(sigma) * noise
    return x_prev, pred_x0


class DDIMSampler(ldmkit.Sampler):
    """Denoising Diffusion Implicit Models (Song et al. 2021, eq. 12), eta interpolating to DDPM-like noise.

    Timesteps are CompVis ``make_ddim_timesteps`` (``discretize``: "uniform" takes ``range(0, T, T // steps) + 1``,
    which has more than ``steps`` entries when ``steps`` does not divide ``T``; "quad" is quadratic up to 0.8 T);
    the first step lands on ``alphas_cumprod[0]``, not on 1.
    """

    name = "ddim"

    class Params(ldmkit.Params):
        discretize: Literal["uniform", "quad"] = "uniform"

    def sample(
        self,
        model_fn: ModelFn,
        schedule: NoiseSchedule,
        x_T: Tensor,
        *,
        steps: int,
        eta: float = 0.0,
        generator: Generators = None,
        callback: StepCallback | None = None,
        mask: Tensor | None = None,
        x0: Tensor | None = None,
        progress: bool = False,
    ) -> Tensor:
        steps = check_steps(steps, schedule.num_timesteps)
        eta = check_eta(eta, self.name, uses_eta=True)
        run = SamplingRun(
            self.name,
            model_fn,
            schedule,
            x_T,
            generator=generator,
            callback=callback,
            mask=mask,
            x0=x0,
            progress=progress,
        )
        c = DDIMCoefficients.build(
            schedule, compvis_timesteps(self.params.discretize, steps, schedule.num_timesteps), eta
        )
        x = x_T
        for i in run.steps(len(c)):
            index = len(c) - 1 - i
            t = c.timesteps[index]
            x = run.impose(x, t)
            eps = run.eps(x, t)
            x, pred_x0 = ddim_update(run, c, index, x, eps, run.noise() if eta > 0 else None)
            if run.report(i, t, x, pred_x0):
                return x
        return run.finish(x)
