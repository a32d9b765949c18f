"""Each sampler, driven by the exact noise predictor of a known 1-D Gaussian mixture, draws that mixture.

Data: weights 0.3 / 0.7, means -2 / +1.5, standard deviations 0.3 / 0.5. Under the forward process
``x_t = sqrt(a) x_0 + sqrt(1 - a) eps`` each component stays Gaussian, so ``E[x_0 | x_t]`` (posterior over the
components times each component's linear posterior mean) and with it the exact ``eps`` are analytic.

The schedule is the cosine one (Nichol & Dhariwal 2021) with T = 200: it reaches a signal-to-noise ratio of
~0 at T and spends enough timesteps at low noise that the discretization error stays a few percent at the
near-full chains below, while a timestep off by one is a visible change of noise level. x_T is drawn from the
exact marginal at the sampler's first timestep (found with a callback that stops at once). Two checks per run:
every intermediate state has the mean and standard deviation of the exact marginal at its timestep, and the
final samples have the mixture's weights, component means and standard deviations.

Tolerances (N = 20000 samples; sampling error, one standard error: weight 0.003, means 0.005, std ratio 0.01):
final: weight of the first component +-0.02, component means +-0.04, std ratio (sample / true) within 6 %;
intermediate states: mean within 0.03 of the exact std, std ratio within 3 %.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from ldmkit import NoiseSchedule, ScheduleSpec, get_registry
from ldmkit.interfaces import ModelFn

WEIGHTS = torch.tensor([0.3, 0.7], dtype=torch.float64)
MEANS = torch.tensor([-2.0, 1.5], dtype=torch.float64)
STDS = torch.tensor([0.3, 0.5], dtype=torch.float64)
SPLIT = -0.5  # between the components: each has < 0.3 % of its mass on the other side
N = 20_000
WEIGHT_TOL, MEAN_TOL, STD_RATIO_TOL = 0.02, 0.04, 0.06
PATH_MEAN_TOL, PATH_STD_RATIO_TOL = 0.03, 0.03  # intermediate states: mean in units of the exact std

T = 200
# (sampler, steps, eta): near-full chains, where a timestep off by one is a visible change of noise level
CASES = [
    ("ddpm", 200, 1.0),
    ("ddpm", 100, 1.0),  # respaced chain
    ("ddim", 100, 0.0),
    ("ddim", 199, 1.0),
    ("plms", 100, 0.0),
    ("dpmpp-2m", 100, 0.0),
    ("euler-a", 199, 1.0),
]


# elementwise work on a few thousand scalars: extra threads only contend for the CPU
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def cosine_schedule() -> NoiseSchedule:
    return NoiseSchedule.from_spec(ScheduleSpec(beta_schedule="cosine", timesteps=T))


def mixture_eps(schedule: NoiseSchedule) -> ModelFn:
    """The exact E[eps | x_t] for the mixture (float64 inside)."""
    alphas_cumprod = schedule.alphas_cumprod.double()

    def model_fn(x: Tensor, t: Tensor) -> Tensor:
        a = alphas_cumprod[t].view(-1, 1)  # (B, 1)
        xt = x.double()  # (B, 1)
        var = a * STDS**2 + 1 - a  # (B, K): variance of x_t within each component
        centred = xt - a.sqrt() * MEANS  # (B, K)
        resp = (WEIGHTS.log() - 0.5 * var.log() - centred**2 / (2 * var)).softmax(-1)  # (B, K)
        x0_mean = (resp * (MEANS + a.sqrt() * STDS**2 / var * centred)).sum(-1, keepdim=True)  # (B, 1)
        return ((xt - a.sqrt() * x0_mean) / (1 - a).sqrt()).to(x.dtype)

    return model_fn


def marginal(schedule: NoiseSchedule, t: int, n: int, generator: torch.Generator) -> Tensor:
    """n draws of x_t for the mixture, (n, 1)."""
    a = schedule.alphas_cumprod.double()[t]
    component = torch.multinomial(WEIGHTS, n, replacement=True, generator=generator)  # (n,)
    x0 = MEANS[component] + STDS[component] * torch.randn(n, generator=generator, dtype=torch.float64)
    noise = torch.randn(n, generator=generator, dtype=torch.float64)
    return (a.sqrt() * x0 + (1 - a).sqrt() * noise).to(torch.float32).view(n, 1)


def first_timestep(sampler, schedule: NoiseSchedule, steps: int, eta: float) -> int:
    seen: list[int] = []
    sampler.sample(
        mixture_eps(schedule),
        schedule,
        torch.zeros(1, 1),
        steps=steps,
        eta=eta,
        callback=lambda i, t, x, p: seen.append(t) or True,
    )
    return seen[0]


def marginal_moments(schedule: NoiseSchedule, t: int) -> tuple[float, float]:
    """Mean and standard deviation of x_t."""
    a = float(schedule.alphas_cumprod.double()[t])
    mean = float((WEIGHTS * MEANS).sum())
    var = float((WEIGHTS * (STDS**2 + MEANS**2)).sum()) - mean**2
    return a**0.5 * mean, (a * var + 1 - a) ** 0.5


@pytest.mark.parametrize(("name", "steps", "eta"), CASES, ids=[f"{n}-{s}-eta{e}" for n, s, e in CASES])
def test_sampler_draws_the_mixture(name: str, steps: int, eta: float) -> None:
    schedule = cosine_schedule()
    sampler = get_registry().create("sampler", name)
    t0 = first_timestep(sampler, schedule, steps, eta)
    x_T = marginal(schedule, t0, N, torch.Generator().manual_seed(0))
    states: list[tuple[int, Tensor]] = []

    def record(step: int, t: int, x: Tensor, pred_x0: Tensor) -> None:
        states.append((t, x.double().flatten()))

    generator = torch.Generator().manual_seed(1)
    out = sampler.sample(
        mixture_eps(schedule), schedule, x_T, steps=steps, eta=eta, generator=generator, callback=record
    )

    # on the way: the state after each step is at the timestep the next step evaluates, with its marginal's moments
    for (_, x), (t_next, _) in zip(states[:-1], states[1:], strict=True):
        mean, std = marginal_moments(schedule, t_next)
        where = (
            f"{name}: state at t={t_next} has mean {float(x.mean()):.4f} (exact {mean:.4f}), std {float(x.std()):.4f}"
        )
        assert abs(float(x.mean()) - mean) <= PATH_MEAN_TOL * std, f"{where} (exact {std:.4f})"
        assert abs(float(x.std()) / std - 1) <= PATH_STD_RATIO_TOL, f"{where} (exact {std:.4f})"

    # at the end: the mixture's weights, means and standard deviations
    x = out.double().flatten()
    assert torch.isfinite(x).all()
    low = x < SPLIT
    weight = float(low.double().mean())
    parts = [x[low], x[~low]]
    means = [round(float(p.mean()), 4) for p in parts]
    ratios = [round(float(p.std() / s), 4) for p, s in zip(parts, STDS, strict=True)]
    report = f"{name} {steps} steps, eta {eta}: weight {weight:.4f}, means {means}, std ratios {ratios}"
    assert abs(weight - float(WEIGHTS[0])) <= WEIGHT_TOL, report
    for part, mean, std in zip(parts, MEANS, STDS, strict=True):
        assert abs(float(part.mean() - mean)) <= MEAN_TOL, report
        assert abs(float(part.std() / std) - 1) <= STD_RATIO_TOL, report
