"""``ldmkit.sampling``: a sampler written on its public names alone meets the Sampler contract.

The samplers below import nothing but ``ldmkit``, ``ldmkit.sampling`` and ``ldmkit.testing``, as a third-party
plugin would; the checks pin what such a plugin relies on: masked sampling keeps the known region, per-sample
generators reproduce one-by-one sampling, the argument checks raise ``InputError``.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import Tensor

import ldmkit
from ldmkit import InputError, NoiseSchedule, Params, ScheduleSpec
from ldmkit.sampling import (
    LoopSampler,
    SamplingRun,
    alphas_cumprod64,
    check_eta,
    check_generator,
    check_mask,
    check_steps,
    compvis_timesteps,
    draw_noise,
    spaced_timesteps,
)
from ldmkit.testing import SamplerConformance, gaussian_eps_fn

SCHEDULE = NoiseSchedule.from_spec(ScheduleSpec(timesteps=100, linear_start=0.0015, linear_end=0.1))
SHAPE = (3, 2, 4, 4)


class PlainEuler(LoopSampler):
    """Euler steps of the probability-flow ODE ``dx/dsigma = eps`` in the scale ``x / sqrt(a_t)``."""

    name = "sdk-euler"

    class Params(Params):
        pass

    def loop(self, run: SamplingRun, schedule: NoiseSchedule, x_T: Tensor, steps: int, eta: float) -> Tensor:
        timesteps = spaced_timesteps("trailing", steps, schedule.num_timesteps)[::-1]  # descending
        ac = alphas_cumprod64(schedule)
        sigmas = [math.sqrt((1.0 - float(ac[t])) / float(ac[t])) for t in timesteps] + [0.0]
        scales = [math.sqrt(1.0 + s * s) for s in sigmas]  # 1 / sqrt(a_t)
        x = x_T * scales[0]
        for i in run.steps(len(timesteps)):
            t = timesteps[i]
            if run.masked:
                x = run.impose(x / scales[i], t) * scales[i]
            eps = run.eps(x / scales[i], t)
            pred_x0 = x - sigmas[i] * eps
            x = x + (sigmas[i + 1] - sigmas[i]) * eps
            if run.report(i, t, x / scales[i + 1], pred_x0):
                return x / scales[i + 1]
        return run.finish(x)


class Renoising(LoopSampler):
    """Predict x_0, then noise it afresh to the next timestep: stochastic at every step but the last."""

    name = "sdk-renoise"

    class Params(Params):
        pass

    def loop(self, run: SamplingRun, schedule: NoiseSchedule, x_T: Tensor, steps: int, eta: float) -> Tensor:
        timesteps = spaced_timesteps("linspace", steps, schedule.num_timesteps)[::-1]  # descending
        ac = alphas_cumprod64(schedule)
        alphas = [float(ac[t]) for t in timesteps] + [1.0]
        x = x_T
        for i in run.steps(len(timesteps)):
            t = timesteps[i]
            x = run.impose(x, t)
            eps = run.eps(x, t)
            pred_x0 = (x - math.sqrt(1.0 - alphas[i]) * eps) / math.sqrt(alphas[i])
            x = math.sqrt(alphas[i + 1]) * pred_x0
            if alphas[i + 1] < 1.0:
                x = x + math.sqrt(1.0 - alphas[i + 1]) * run.noise()
            if run.report(i, t, x, pred_x0):
                return x
        return run.finish(x)


class _Plugin:
    """The two samplers as a plugin object, for a registry of their own."""

    LDMKIT_API_VERSION = ldmkit.API_VERSION

    @staticmethod
    @ldmkit.hookimpl
    def register_samplers(register) -> None:
        register(PlainEuler)
        register(Renoising)


@functools.cache
def _registry():
    from ldmkit.registry import Registry

    registry = Registry()
    assert registry.add_plugin(_Plugin(), None), registry.failures
    return registry


class TestPlainEuler(SamplerConformance):
    component_cls = PlainEuler
    noise_eta = None  # deterministic

    def registry(self):
        return _registry()


class TestRenoising(SamplerConformance):
    component_cls = Renoising
    noise_eta = 0.0  # always stochastic

    def registry(self):
        return _registry()


def _x(seed: int, shape: tuple[int, ...] = SHAPE) -> Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _model_fn():
    return gaussian_eps_fn(SCHEDULE, 0.5, 0.5)


# -- masked sampling ------------------------------------------------------------------------------
def _half_mask() -> Tensor:
    mask = torch.zeros(1, 1, *SHAPE[2:])  # (1, 1, h, w), 1 = known
    mask[..., : SHAPE[-1] // 2] = 1
    return mask


@pytest.mark.parametrize("sampler_cls", [PlainEuler, Renoising])
def test_masked_sampling_returns_x0_exactly_in_the_known_region(sampler_cls) -> None:
    mask, x0 = _half_mask(), _x(1)
    out = sampler_cls().sample(_model_fn(), SCHEDULE, _x(0), steps=6, mask=mask, x0=x0, generator=torch.Generator())
    known = mask.expand_as(out).bool()
    assert torch.equal(out[known], x0[known])
    assert not torch.equal(out[~known], x0[~known])


def test_impose_noises_x0_to_the_timestep_in_the_known_region_only() -> None:
    mask, x0, x = _half_mask(), _x(1), _x(2)
    run = SamplingRun("t", _model_fn(), SCHEDULE, x, generator=torch.Generator().manual_seed(3), mask=mask, x0=x0)
    t = 40
    imposed = run.impose(x, t)
    a = float(SCHEDULE.alphas_cumprod[t])
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    known = mask.expand_as(x).bool()
    torch.testing.assert_close(imposed[known], (math.sqrt(a) * x0 + math.sqrt(1 - a) * noise)[known])
    assert torch.equal(imposed[~known], x[~known])
    assert torch.equal(run.finish(x)[known], x0[known]) and torch.equal(run.finish(x)[~known], x[~known])


def test_without_a_mask_impose_and_finish_return_x_itself() -> None:
    x = _x(0)
    run = SamplingRun("t", _model_fn(), SCHEDULE, x)
    assert not run.masked
    assert run.impose(x, 10) is x and run.finish(x) is x


# -- per-sample generators --------------------------------------------------------------------------
def test_draw_noise_takes_sample_i_from_generator_i() -> None:
    batch = draw_noise(torch.Size(SHAPE), [torch.Generator().manual_seed(10 + i) for i in range(3)], _x(0))
    for i in range(3):
        assert torch.equal(batch[i], torch.randn(SHAPE[1:], generator=torch.Generator().manual_seed(10 + i)))


@pytest.mark.parametrize("sampler_cls", [Renoising, PlainEuler])
def test_per_sample_generators_reproduce_one_by_one_sampling(sampler_cls) -> None:
    x_T, x0, mask = _x(0), _x(1), _half_mask()
    seeds = [10, 11, 12]

    def sample(rows: slice, gens):
        return sampler_cls().sample(_model_fn(), SCHEDULE, x_T[rows], steps=6, generator=gens, mask=mask, x0=x0[rows])

    batched = sample(slice(None), [torch.Generator().manual_seed(s) for s in seeds])
    for i, seed in enumerate(seeds):
        alone = sample(slice(i, i + 1), torch.Generator().manual_seed(seed))
        assert torch.equal(batched[i : i + 1], alone), f"picture {i} differs from the same picture sampled alone"


# -- progress and callbacks ---------------------------------------------------------------------------
def test_progress_shows_a_bar_and_changes_nothing(capsys) -> None:
    quiet = Renoising().sample(_model_fn(), SCHEDULE, _x(0), steps=4, generator=torch.Generator().manual_seed(0))
    assert capsys.readouterr().err == ""
    shown = Renoising().sample(
        _model_fn(), SCHEDULE, _x(0), steps=4, generator=torch.Generator().manual_seed(0), progress=True
    )
    assert "sdk-renoise" in capsys.readouterr().err
    assert torch.equal(quiet, shown)


def test_report_stops_only_on_true() -> None:
    answers = iter([None, False, 1, True])
    run = SamplingRun("t", _model_fn(), SCHEDULE, _x(0), callback=lambda *args: next(answers))
    assert [run.report(i, 5, _x(0), _x(0)) for i in range(4)] == [False, False, False, True]


# -- argument checks and timesteps ------------------------------------------------------------------
@pytest.mark.parametrize("steps", [0, -1, 101, 2.0, True, "5"])
def test_check_steps_refuses(steps) -> None:
    with pytest.raises(InputError, match="steps"):
        check_steps(steps, 100)


def test_check_eta() -> None:
    assert check_eta(0, "x", uses_eta=False) == 0.0 and check_eta(0.5, "x", uses_eta=True) == 0.5
    for eta, uses in ((0.5, False), (-0.1, True), (math.inf, True), (True, True)):
        with pytest.raises(InputError, match="eta"):
            check_eta(eta, "x", uses_eta=uses)


def test_check_generator_and_mask() -> None:
    gens = (torch.Generator(), torch.Generator())
    assert check_generator(gens, 2) == list(gens)
    for bad in ([torch.Generator()], 7, [torch.Generator(), 3]):
        with pytest.raises(InputError, match="generator"):
            check_generator(bad, 2)
    x_T = _x(0)
    assert check_mask(None, None, x_T) == (None, None)
    with pytest.raises(InputError, match="both"):
        check_mask(_half_mask(), None, x_T)
    with pytest.raises(InputError, match="does not fit"):
        check_mask(torch.ones(1, 1, 3, 3), x_T, x_T)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        check_mask(2 * _half_mask(), x_T, x_T)


def test_timestep_spacings() -> None:
    assert spaced_timesteps("leading", 4, 100) == [0, 25, 50, 75]
    assert spaced_timesteps("leading", 4, 100, offset=1) == [1, 26, 51, 76]
    assert spaced_timesteps("trailing", 4, 100) == [24, 49, 74, 99]
    assert spaced_timesteps("linspace", 3, 100) == [33, 66, 99]
    assert compvis_timesteps("uniform", 4, 100) == [1, 26, 51, 76]
    with pytest.raises(InputError, match="spacing"):
        spaced_timesteps("middle", 4, 100)  # type: ignore[arg-type]
