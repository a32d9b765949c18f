"""Image-to-image at the sampler level: every built-in sampler starts from given latents (``init``, ``strength``).

The timesteps taken and the latent the first model call sees follow diffusers' image-to-image pipelines: of ``n``
steps the last ``int(n * strength)`` are taken, starting from ``init`` noised to the first of them.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import ldmkit
from ldmkit import InputError, NoiseSchedule, Params, PluginError, ScheduleSpec
from ldmkit.sampling import LoopSampler, SamplingRun, check_init

SCHEDULE = NoiseSchedule.from_spec(ScheduleSpec(timesteps=1000))
SAMPLERS = ("ddim", "plms", "ddpm", "dpmpp-2m", "euler-a")
STEPS = 10
SHAPE = (2, 3, 4, 4)


def latents(seed: int) -> Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))


class Recorder:
    """A model_fn that predicts a fixed fraction of x as eps and records each call's (x, t)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Tensor, int]] = []

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.calls.append((x.clone(), int(t[0])))
        return 0.3 * x


def run(name: str, strength: float | None, init: Tensor | None, noise: Tensor) -> tuple[Tensor, Recorder]:
    sampler = ldmkit.get_registry().create("sampler", name)
    model = Recorder()
    out = sampler.sample(
        model, SCHEDULE, noise, steps=STEPS, eta=0.0, generator=torch.Generator().manual_seed(1), init=init,
        strength=strength,
    )  # fmt: skip
    return out, model


def full_timesteps(name: str) -> list[int]:
    """The timesteps a plain run (no init) visits, first call of each step (PLMS' warm-up call left out)."""
    _, model = run(name, None, None, latents(0))
    ts = [t for _, t in model.calls]
    return [ts[0], *ts[2:]] if name == "plms" else ts


@pytest.mark.parametrize("name", SAMPLERS)
def test_strength_zero_returns_init_without_a_model_call(name):
    init = latents(1)
    out, model = run(name, 0.0, init, latents(2))
    assert torch.equal(out, init) and model.calls == []


@pytest.mark.parametrize("name", SAMPLERS)
@pytest.mark.parametrize("strength", [0.35, 0.8, 1.0])
def test_the_last_steps_are_taken_from_init_noised_to_the_first_of_them(name, strength):
    init, noise = latents(1), latents(2)
    full = full_timesteps(name)
    kept = full[len(full) - int(len(full) * strength) :]
    _, model = run(name, strength, init, noise)
    seen = [t for _, t in model.calls]
    assert ([seen[0], *seen[2:]] if name == "plms" else seen) == kept
    a = SCHEDULE.alphas_cumprod[kept[0]]
    expected = a.sqrt() * init + (1 - a).sqrt() * noise  # q_sample, float32 as diffusers' add_noise
    assert torch.allclose(model.calls[0][0], expected, rtol=0, atol=1e-6)


def test_a_plain_run_is_unchanged_by_the_new_arguments():
    noise = latents(3)
    plain, _ = run("ddim", None, None, noise)
    sampler = ldmkit.get_registry().create("sampler", "ddim")
    again = sampler.sample(Recorder(), SCHEDULE, noise, steps=STEPS, eta=0.0)
    assert torch.equal(plain, again)


@pytest.mark.parametrize(
    "init, strength, match",
    [
        (None, 0.5, "strength goes with init"),
        (torch.zeros(1, 3, 4, 4), 0.5, "x_T's shape"),
        ("latents", 0.5, "x_T's shape"),
        (torch.zeros(SHAPE), 1.5, r"\[0, 1\]"),
        (torch.zeros(SHAPE), -0.1, r"\[0, 1\]"),
        (torch.zeros(SHAPE), True, r"\[0, 1\]"),
        (torch.zeros(SHAPE), float("nan"), r"\[0, 1\]"),
    ],
)
def test_bad_init_or_strength_is_an_input_error(init, strength, match):
    with pytest.raises(InputError, match=match):
        check_init(init, strength, torch.zeros(SHAPE))


class NoStart(LoopSampler):
    """A loop written before image-to-image: it never calls run.start."""

    name = "no-start"

    class Params(Params):
        pass

    def loop(self, run: SamplingRun, schedule: NoiseSchedule, x_T: Tensor, steps: int, eta: float) -> Tensor:
        x = x_T
        for i in run.steps(steps):
            x = x - 0.01 * run.eps(x, 999 - i)
        return run.finish(x)


def test_a_loop_that_does_not_call_start_is_refused_before_any_model_call():
    model = Recorder()
    with pytest.raises(PluginError, match="run.start"):
        NoStart().sample(model, SCHEDULE, latents(0), steps=3, init=latents(1), strength=0.5)
    assert model.calls == []
    assert NoStart().sample(model, SCHEDULE, latents(0), steps=3).shape == SHAPE  # without init it runs as before
