"""The built-in samplers: step-by-step agreement with diffusers' schedulers, and the Sampler contract.

The reference loops feed diffusers the same model outputs (a fixed fake ``model_fn``) and the same noise
(a generator seeded alike, drawn in the same order), so the final samples agree up to float32 rounding.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import Tensor

from ldmkit import InputError, NoiseSchedule, Sampler, ScheduleSpec, get_registry
from ldmkit.sampling import compvis_timesteps, spaced_timesteps
from ldmkit.testing import SamplerConformance
from ldmkit_samplers.ddim import DDIMSampler
from ldmkit_samplers.ddpm import DDPMSampler
from ldmkit_samplers.dpmpp_2m import DPMPP2MSampler
from ldmkit_samplers.euler_ancestral import EulerAncestralSampler
from ldmkit_samplers.plms import PLMSSampler

NAMES = ["ddpm", "ddim", "plms", "dpmpp-2m", "euler-a"]
T = 1000
SHAPE = (2, 3, 4, 4)
SD_BETAS = {"num_train_timesteps": T, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


@functools.cache
def _fake_weights(shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(1234)
    c = shape[0]
    w = 0.6 * torch.eye(c) + 0.1 * torch.randn(c, c, generator=gen)  # (C, C)
    phase = torch.rand(shape, generator=gen)  # (C, h, w)
    return w, phase


def fake_model(x: Tensor, t: Tensor) -> Tensor:
    """A fixed linear map of x plus a function of t; each sample independent of the others."""
    w, phase = _fake_weights(tuple(x.shape[1:]))
    tt = t.to(torch.float32).view(-1, *([1] * (x.dim() - 1)))  # (B, 1, 1, 1)
    return torch.einsum("bchw,cd->bdhw", x, w.to(x)) + 0.2 * torch.sin(tt / 97.0 + 6 * phase.to(x))


def rel_err(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm())


def x_T(seed: int = 0, shape: tuple[int, ...] = SHAPE) -> Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def schedule_of(scheduler) -> NoiseSchedule:
    # both sides then use the very same float32 alphas_cumprod
    return NoiseSchedule.from_alphas_cumprod(scheduler.alphas_cumprod.clone())


def ldm_schedule() -> NoiseSchedule:
    return NoiseSchedule.from_spec()


# -- agreement with diffusers ---------------------------------------------------------------------


def run_diffusers(scheduler, x: Tensor, steps: int, generator=None, scale_input: bool = False, **step_kwargs) -> Tensor:
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        model_in = scheduler.scale_model_input(x, t) if scale_input else x
        eps = fake_model(model_in, t.long().expand(x.shape[0]))
        if generator is not None:
            step_kwargs["generator"] = generator
        x = scheduler.step(eps, t, x, **step_kwargs).prev_sample
    return x


@pytest.mark.parametrize(("steps", "eta"), [(50, 0.0), (20, 0.0), (10, 0.7)])
def test_ddim_matches_diffusers(steps: int, eta: float) -> None:
    diffusers = pytest.importorskip("diffusers")
    # steps_offset=1 + "leading" spacing is CompVis' "uniform" (range(0, T, T // steps) + 1) when steps divides T;
    # set_alpha_to_one=False is CompVis' alphas_prev[0] = alphas_cumprod[0]
    sched = diffusers.DDIMScheduler(
        **SD_BETAS, steps_offset=1, set_alpha_to_one=False, clip_sample=False, timestep_spacing="leading"
    )
    expected = run_diffusers(sched, x_T(), steps, torch.Generator().manual_seed(7), eta=eta)
    got = DDIMSampler().sample(
        fake_model, schedule_of(sched), x_T(), steps=steps, eta=eta, generator=torch.Generator().manual_seed(7)
    )
    assert rel_err(got, expected) < 1e-5


@pytest.mark.parametrize("steps", [50, 4, 2])  # with 1 step diffusers skips the warm-up; CompVis does not
def test_plms_matches_diffusers_pndm(steps: int) -> None:
    diffusers = pytest.importorskip("diffusers")
    # PNDM with skip_prk_steps runs the PLMS warm-up (improved Euler) over a repeated timestep
    sched = diffusers.PNDMScheduler(
        **SD_BETAS, skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False, timestep_spacing="leading"
    )
    expected = run_diffusers(sched, x_T(), steps)
    calls = []

    def counting_model(x: Tensor, t: Tensor) -> Tensor:
        calls.append(int(t[0]))
        return fake_model(x, t)

    got = PLMSSampler().sample(counting_model, schedule_of(sched), x_T(), steps=steps)
    assert rel_err(got, expected) < 1e-5
    assert calls == [int(t) for t in sched.timesteps]  # same model calls, same order


@pytest.mark.parametrize("steps", [1000, 50])
def test_ddpm_matches_diffusers(steps: int) -> None:
    diffusers = pytest.importorskip("diffusers")
    # default "leading" spacing, steps_offset 0: all 1000 timesteps, or i * (T // steps) respaced
    sched = diffusers.DDPMScheduler(**SD_BETAS, clip_sample=False, variance_type="fixed_small")
    small = (1, 2, 3, 3)
    expected = run_diffusers(sched, x_T(1, small), steps, torch.Generator().manual_seed(3))
    got = DDPMSampler().sample(
        fake_model, schedule_of(sched), x_T(1, small), steps=steps, generator=torch.Generator().manual_seed(3)
    )
    # over 1000 float32 steps diffusers' own rounding drifts by ~1.5e-5 from a float64 run (ours by ~1e-6)
    assert rel_err(got, expected) < (5e-5 if steps == 1000 else 1e-5)


@pytest.mark.parametrize(("steps", "spacing"), [(20, "linspace"), (7, "linspace"), (25, "trailing"), (2, "linspace")])
def test_dpmpp_2m_matches_diffusers(steps: int, spacing: str) -> None:
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DPMSolverMultistepScheduler(
        **SD_BETAS, algorithm_type="dpmsolver++", solver_order=2, lower_order_final=True, timestep_spacing=spacing
    )
    expected = run_diffusers(sched, x_T(), steps)
    got = DPMPP2MSampler.from_params({"spacing": spacing}).sample(fake_model, schedule_of(sched), x_T(), steps=steps)
    assert rel_err(got, expected) < 1e-5


@pytest.mark.parametrize(("steps", "spacing"), [(30, "leading"), (20, "trailing")])
def test_euler_ancestral_matches_diffusers(steps: int, spacing: str) -> None:
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.EulerAncestralDiscreteScheduler(**SD_BETAS, timestep_spacing=spacing, steps_offset=1)
    sched.set_timesteps(steps)
    # diffusers' init_noise_sigma is sqrt(sigma_max^2 + 1) for "leading" but only sigma_max for "trailing";
    # the exact VP -> VE conversion is the former, so the reference starts from it in both cases
    start = x_T() * math.sqrt(float(sched.sigmas[0]) ** 2 + 1)
    expected = run_diffusers(sched, start, steps, torch.Generator().manual_seed(5), scale_input=True)
    got = EulerAncestralSampler.from_params({"spacing": spacing}).sample(
        fake_model, schedule_of(sched), x_T(), steps=steps, generator=torch.Generator().manual_seed(5)
    )
    assert rel_err(got, expected) < 1e-5


def test_compvis_timesteps_follow_make_ddim_timesteps() -> None:
    np = pytest.importorskip("numpy")
    for steps in (1, 3, 7, 9, 10, 36, 50, 200, 600, 1000):
        c = T // steps
        uniform = (np.asarray(list(range(0, T, c))) + 1).tolist()
        # where the original's +1 lands on T (an index past the schedule) that timestep is dropped
        assert compvis_timesteps("uniform", steps, T) == [t for t in uniform if t < T]
        quad = ((np.linspace(0, np.sqrt(T * 0.8), steps)) ** 2).astype(int) + 1
        assert compvis_timesteps("quad", steps, T) == quad.tolist()
    assert len(compvis_timesteps("uniform", 30, T)) == 31  # CompVis keeps every 33rd timestep: 31 of them
    assert len(compvis_timesteps("uniform", 9, T)) == 9  # range(0, 1000, 111) + 1 ends at 1000


def test_spaced_timesteps_match_diffusers() -> None:
    diffusers = pytest.importorskip("diffusers")
    for steps in (1, 7, 20, 50):
        dpm = diffusers.DPMSolverMultistepScheduler(**SD_BETAS)
        dpm.set_timesteps(steps)
        assert spaced_timesteps("linspace", steps, T)[::-1] == dpm.timesteps.tolist()
        euler = diffusers.EulerAncestralDiscreteScheduler(**SD_BETAS, timestep_spacing="trailing")
        euler.set_timesteps(steps)
        assert spaced_timesteps("trailing", steps, T)[::-1] == euler.timesteps.long().tolist()


# -- the contract -----------------------------------------------------------------------------------


def make(name: str) -> Sampler:
    return get_registry().create("sampler", name)


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def stochastic_eta(name: str) -> float:
    """An eta at which the sampler draws fresh noise (0 for those that have none)."""
    return {"ddim": 0.5, "ddpm": 1.0, "euler-a": 1.0}.get(name, 0.0)


def test_all_registered() -> None:
    registry = get_registry()
    classes = [DDPMSampler, DDIMSampler, PLMSSampler, DPMPP2MSampler, EulerAncestralSampler]
    assert set(NAMES) <= set(registry.list("sampler"))
    for name, cls in zip(NAMES, classes, strict=True):
        assert registry.get("sampler", name) is cls
        assert isinstance(make(name), Sampler)


@pytest.mark.parametrize("name", NAMES)
def test_callback_sees_every_step_and_can_stop(name: str) -> None:
    seen: list[tuple[int, int, Tensor, Tensor]] = []

    def record(step: int, t: int, x: Tensor, pred_x0: Tensor) -> None:
        seen.append((step, t, x.clone(), pred_x0.clone()))

    full = make(name).sample(fake_model, ldm_schedule(), x_T(), steps=8, callback=record, generator=seeded())
    assert [s[0] for s in seen] == list(range(len(seen))) and len(seen) >= 8
    ts = [s[1] for s in seen]
    assert ts == sorted(ts, reverse=True) and all(isinstance(t, int) for t in ts)
    assert torch.equal(seen[-1][2], full) and seen[0][3].shape == full.shape

    calls = []

    def counting(x: Tensor, t: Tensor) -> Tensor:
        calls.append(int(t[0]))
        return fake_model(x, t)

    stopped = make(name).sample(
        counting, ldm_schedule(), x_T(), steps=8, callback=lambda s, t, x, p: s == 2, generator=seeded()
    )
    assert torch.equal(stopped, seen[2][2])  # the x after step 2, nothing more
    assert len(calls) == (4 if name == "plms" else 3)  # plms' warm-up calls the model twice


@pytest.mark.parametrize("name", NAMES)
def test_model_gets_long_timesteps_per_sample(name: str) -> None:
    def check(x: Tensor, t: Tensor) -> Tensor:
        assert t.dtype == torch.long and t.shape == (x.shape[0],) and t.device == x.device
        assert 0 <= int(t.min()) and int(t.max()) < T
        return fake_model(x, t)

    make(name).sample(check, ldm_schedule(), x_T(), steps=5, eta=stochastic_eta(name))


@pytest.mark.parametrize("name", NAMES)
def test_masked_sampling_renoises_known_region_and_returns_x0(name: str) -> None:
    schedule = ldm_schedule()
    shape = (2, 4, 16, 16)
    x0 = x_T(11, shape)
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., :, :8] = 1.0  # left half known
    inputs: list[tuple[int, Tensor]] = []

    def record(x: Tensor, t: Tensor) -> Tensor:
        inputs.append((int(t[0]), x.clone()))
        return fake_model(x, t)

    out = make(name).sample(
        record, schedule, x_T(0, shape), steps=6, mask=mask, x0=x0, generator=torch.Generator().manual_seed(0)
    )
    known = mask.expand(shape).bool()
    assert torch.equal(out[known], x0[known])
    assert not torch.allclose(out[~known], x0[~known], atol=0.1)
    if name == "plms":
        inputs.pop(1)  # the warm-up's second call sees a predicted x, not the re-noised one
    ac = schedule.alphas_cumprod.double()
    for t, x in inputs:
        # the known region is q_sample(x0, t) at the timestep the model is asked about
        noise = (x.double() - ac[t].sqrt() * x0) / (1 - ac[t]).sqrt()
        assert abs(float(noise[known].std()) - 1.0) < 0.15 and abs(float(noise[known].mean())) < 0.15


@pytest.mark.parametrize("name", ["ddim", "plms", "dpmpp-2m"])
def test_empty_mask_is_plain_sampling(name: str) -> None:
    plain = make(name).sample(fake_model, ldm_schedule(), x_T(), steps=6)
    masked = make(name).sample(fake_model, ldm_schedule(), x_T(), steps=6, mask=torch.zeros(1, 1, 4, 4), x0=x_T(3))
    assert torch.equal(plain, masked)


@pytest.mark.parametrize("name", NAMES)
def test_generator_list_reproduces_single_seed_sampling(name: str) -> None:
    seeds = [3, 5, 8]
    batch = torch.cat([x_T(s, (1, 3, 4, 4)) for s in seeds])  # (3, 3, 4, 4)
    x0 = x_T(1, (3, 3, 4, 4))
    mask = torch.zeros(3, 1, 4, 4)
    mask[:, :, :2] = 1.0
    kwargs = {"steps": 7, "eta": stochastic_eta(name)}
    together = make(name).sample(
        fake_model,
        ldm_schedule(),
        batch,
        generator=[torch.Generator().manual_seed(s) for s in seeds],
        mask=mask,
        x0=x0,
        **kwargs,
    )
    for i, s in enumerate(seeds):
        alone = make(name).sample(
            fake_model,
            ldm_schedule(),
            batch[i : i + 1],
            generator=torch.Generator().manual_seed(s),
            mask=mask[i : i + 1],
            x0=x0[i : i + 1],
            **kwargs,
        )
        torch.testing.assert_close(together[i : i + 1], alone, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_and_stateless(name: str) -> None:
    sampler = make(name)
    kwargs = {"eta": stochastic_eta(name)}

    def once(steps: int = 6) -> Tensor:
        return sampler.sample(
            fake_model, ldm_schedule(), x_T(), steps=steps, generator=torch.Generator().manual_seed(42), **kwargs
        )

    first = once()
    once(steps=9)  # a different run in between must leave nothing behind
    assert torch.equal(once(), first)
    fresh = make(name).sample(
        fake_model, ldm_schedule(), x_T(), steps=6, generator=torch.Generator().manual_seed(42), **kwargs
    )
    assert torch.equal(fresh, first)


@pytest.mark.parametrize("name", ["ddpm", "ddim", "euler-a"])
def test_stochastic_samplers_use_the_generator(name: str) -> None:
    a, b = (
        make(name).sample(
            fake_model,
            ldm_schedule(),
            x_T(),
            steps=5,
            eta=stochastic_eta(name),
            generator=torch.Generator().manual_seed(s),
        )
        for s in (1, 2)
    )
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("steps", [0, -1, T + 1, 2.5, True, None])
def test_bad_steps_raise_input_error(name: str, steps: object) -> None:
    with pytest.raises(InputError, match="steps"):
        make(name).sample(fake_model, ldm_schedule(), x_T(), steps=steps)


@pytest.mark.parametrize("name", NAMES)
def test_bad_arguments_raise_input_error(name: str) -> None:
    sampler, schedule = make(name), ldm_schedule()
    with pytest.raises(InputError, match="eta"):
        sampler.sample(fake_model, schedule, x_T(), steps=4, eta=-0.1)
    with pytest.raises(InputError, match="generator"):
        sampler.sample(fake_model, schedule, x_T(), steps=4, generator=[torch.Generator()])
    with pytest.raises(InputError, match="x0"):
        sampler.sample(fake_model, schedule, x_T(), steps=4, mask=torch.ones(1, 1, 4, 4))
    with pytest.raises(InputError, match="mask"):
        sampler.sample(fake_model, schedule, x_T(), steps=4, mask=torch.ones(1, 1, 5, 4), x0=x_T())
    with pytest.raises(InputError, match="model_fn"):
        sampler.sample(lambda x, t: x[:, :1], schedule, x_T(), steps=4)


@pytest.mark.parametrize("name", ["plms", "dpmpp-2m"])
def test_eta_refused_where_no_fresh_noise(name: str) -> None:
    with pytest.raises(InputError, match="eta"):
        make(name).sample(fake_model, ldm_schedule(), x_T(), steps=4, eta=0.5)


def test_tiny_schedule_without_valid_timesteps_is_an_input_error() -> None:
    tiny = NoiseSchedule.from_spec(ScheduleSpec(timesteps=1))
    for name in ("ddim", "plms"):
        with pytest.raises(InputError, match="no timestep"):
            make(name).sample(fake_model, tiny, x_T(), steps=1)


@pytest.mark.parametrize("name", NAMES)
def test_keeps_device_and_dtype_of_x(name: str) -> None:
    # a meta tensor has no data: anything moved to the CPU (or elsewhere) behind the caller's back would fail
    meta = torch.empty(SHAPE, device="meta")
    out = make(name).sample(lambda x, t: 0.5 * x, ldm_schedule(), meta, steps=3, eta=stochastic_eta(name))
    assert out.device.type == "meta" and out.shape == SHAPE
    out64 = make(name).sample(fake_model, ldm_schedule(), x_T().double(), steps=3, eta=stochastic_eta(name))
    assert out64.dtype == torch.float64


def test_progress_bar_is_opt_in(capsys: pytest.CaptureFixture[str]) -> None:
    make("ddim").sample(fake_model, ldm_schedule(), x_T(), steps=3)
    assert capsys.readouterr().err == ""
    make("ddim").sample(fake_model, ldm_schedule(), x_T(), steps=3, progress=True)
    assert "ddim" in capsys.readouterr().err


# -- the shared conformance checks ------------------------------------------------------------------


class TestDDPMConformance(SamplerConformance):
    component_cls = DDPMSampler
    noise_eta = 1.0


class TestDDIMConformance(SamplerConformance):
    component_cls = DDIMSampler
    noise_eta = 1.0


class TestDDIMQuadConformance(SamplerConformance):
    component_cls = DDIMSampler
    params = {"spacing": "quad"}
    noise_eta = 1.0


class TestPLMSConformance(SamplerConformance):
    component_cls = PLMSSampler
    noise_eta = None  # deterministic


class TestDPMPP2MConformance(SamplerConformance):
    component_cls = DPMPP2MSampler
    noise_eta = None


class TestEulerAncestralConformance(SamplerConformance):
    component_cls = EulerAncestralSampler
    params = {"spacing": "trailing"}
    noise_eta = 1.0
