"""PLMS: Liu, Ren, Lin & Zhao, "Pseudo Numerical Methods for Diffusion Models on Manifolds" (ICLR 2022).

As CompVis ``plms.py`` runs it: the DDIM transfer with a linear multistep estimate of epsilon.
"""

from __future__ import annotations

from pydantic import Field
from torch import Tensor

from ldmkit import NoiseSchedule
from ldmkit.sampling import LoopSampler, SamplingRun, Spacing, SpacingParams, select_timesteps
from ldmkit_samplers.ddim import DDIMCoefficients, ddim_update


def multistep_eps(eps: Tensor, old_eps: list[Tensor]) -> Tensor:
    """Adams-Bashforth combination of the current and up to three previous epsilons (orders 2, 3, 4)."""
    if len(old_eps) == 1:
        return (3 * eps - old_eps[-1]) / 2
    if len(old_eps) == 2:
        return (23 * eps - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
    return (55 * eps - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24


class PLMSSampler(LoopSampler):
    """Pseudo linear multistep (PLMS, Liu et al. 2022) with CompVis' warm-up.

    The first step is a pseudo improved Euler (2nd order, Heun-like) step: a DDIM step, a second model call
    at the next timestep, and a DDIM step with the mean of both epsilons. Later steps use Adams-Bashforth
    of order 2, 3 and then 4 over the previous epsilons. Timesteps as in :class:`DDIMSampler`; one model
    call per step plus one for the warm-up. No fresh noise: ``eta`` must be 0 (or None).
    """

    name = "plms"

    class Params(SpacingParams):
        spacing: Spacing = Field("uniform", description="which timesteps the steps visit (see ldmkit.sampling)")

    params: Params

    def loop(self, run: SamplingRun, schedule: NoiseSchedule, x_T: Tensor, steps: int, eta: float) -> Tensor:
        c = DDIMCoefficients.build(
            schedule, select_timesteps(self.params.spacing, steps, schedule.num_timesteps, offset=1), 0.0
        )
        _, x = run.start(x_T, c.timesteps[::-1])
        old_eps: list[Tensor] = []
        for i in run.steps(len(c)):
            index = len(c) - 1 - i
            t = c.timesteps[index]
            t_next = c.timesteps[max(index - 1, 0)]
            x = run.impose(x, t)
            eps = run.eps(x, t)
            if not old_eps:
                x_pred, _ = ddim_update(c, index, x, eps, None)
                eps_prime = (eps + run.eps(x_pred, t_next)) / 2
            else:
                eps_prime = multistep_eps(eps, old_eps)
            x, pred_x0 = ddim_update(c, index, x, eps_prime, None)
            old_eps = [*old_eps, eps][-3:]
            if run.report(i, t, x, pred_x0):
                return x
        return run.finish(x)
