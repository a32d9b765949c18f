"""The example sampler passes ldmkit's sampler conformance checks, and Heun is second order."""

from __future__ import annotations

import torch

from ldmkit.schedules import NoiseSchedule, ScheduleSpec
from ldmkit.testing import SamplerConformance, gaussian_eps_fn
from ldmkit_plugin_example.heun import HeunSampler


class TestHeunSampler(SamplerConformance):
    component_cls = HeunSampler
    params = {"discretize": "uniform"}
    noise_eta = None  # deterministic: eta must be 0


class TestHeunQuad(SamplerConformance):
    component_cls = HeunSampler
    params = {"discretize": "quad"}
    noise_eta = None


def test_timesteps_distinct_and_descending() -> None:
    sampler = HeunSampler.from_params({})
    for steps in (1, 2, 7, 99, 100):
        ts = sampler.timesteps(100, steps).tolist()
        assert len(ts) == steps and ts[0] == 99
        assert all(a > b for a, b in zip(ts, ts[1:], strict=False))


def test_converges_to_the_exact_ode_solution() -> None:
    # with Gaussian data the probability-flow ODE maps x_T to mean + std * x_T / sqrt(a_T + std^2 (1 - a_T)) ...
    # scaled back: the error of a second-order method shrinks roughly 4x per doubling of steps
    schedule = NoiseSchedule.from_spec(ScheduleSpec(timesteps=1000, linear_start=0.0015, linear_end=0.05))
    fn = gaussian_eps_fn(schedule, 0.5, 0.5)
    x_T = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    sampler = HeunSampler.from_params({})
    reference = sampler.sample(fn, schedule, x_T, steps=400)
    errors = [(sampler.sample(fn, schedule, x_T, steps=n) - reference).abs().max().item() for n in (10, 20, 40)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[1] / errors[2] > 2.5, errors
