"""Sampling options: one model, defaults layered once (spec < task < caller), one meaning of eta and spacing."""

from __future__ import annotations

import dataclasses
import math
import warnings

import pytest
import torch

import ldmkit
from ldmkit import Pipeline, SampleOptions
from ldmkit.errors import InputError, SpecError, UnknownComponentError
from ldmkit.options import SamplerRef, build_sampler, resolve_options
from ldmkit.sampling import alphas_cumprod64, spaced_timesteps
from ldmkit.schedules import NoiseSchedule
from ldmkit.specs import validate_spec
from ldmkit.tasks import default_guidance, default_sampling
from tests.tiny import tiny_pipeline_spec, tiny_unet_params

SHAPE = (2, 3, 8, 8)
SPACINGS = ["uniform", "quad", "leading", "linspace", "trailing"]
SAMPLERS = ["ddpm", "ddim", "plms", "dpmpp-2m", "euler-a"]


def spec(sampling: dict | None = None, task_params: dict | None = None) -> dict:
    return tiny_pipeline_spec(
        {"type": "identity", "params": {"channels": 3}},
        tiny_unet_params(channels=3, channel_mult=[1], num_head_channels=32),
        sampling=sampling or {},
        tasks={"uncond": {"type": "uncond", "params": task_params or {}}},
    )


def pipe(sampling: dict | None = None, task_params: dict | None = None) -> Pipeline:
    return Pipeline.from_spec(spec(sampling, task_params))


def fake_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    tt = t.to(torch.float32).view(-1, 1, 1, 1)  # (B, 1, 1, 1)
    return 0.7 * x + 0.2 * torch.sin(tt / 97.0)


def x_T(seed: int = 0) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))


def run(name: str, params: dict | None = None, seed: int = 1, **kwargs) -> torch.Tensor:
    sampler = ldmkit.get_registry().create("sampler", name, params)
    gen = torch.Generator().manual_seed(seed)
    return sampler.sample(
        fake_model, NoiseSchedule.from_spec(), x_T(), steps=kwargs.pop("steps", 10), generator=gen, **kwargs
    )


# -- the options model -------------------------------------------------------------------------------


def test_keyword_construction_and_reads_as_before():
    options = SampleOptions(n=4, steps=50)
    assert (options.n, options.seed, options.sampler, options.steps, options.eta) == (4, 0, "ddim", 50, None)
    assert dataclasses.replace(options, n=2).n == 2  # still a (frozen) dataclass
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.n = 3  # type: ignore[misc]


def test_sampler_forms_in_options():
    ref = SampleOptions(sampler={"type": "ddim", "params": {"spacing": "quad"}}).sampler
    assert ref == SamplerRef(type="ddim", params={"spacing": "quad"})
    assert SampleOptions(sampler=ref).sampler == ref


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"sampler": {"params": {}}}, "sampler"),
        ({"sampler": {"type": "ddim", "extra": 1}}, "sampler"),
        ({"eta": -0.5}, "eta"),
        ({"eta": math.inf}, "eta"),
        ({"callback": print}, "callback"),
    ],
)
def test_bad_options_name_the_field(values, field):
    with pytest.raises(InputError, match=rf"SampleOptions\.{field}"):
        SampleOptions(**values)


# -- layering: spec < task < caller ----------------------------------------------------------------------


def test_layering_order():
    p = pipe({"sampler": "plms", "steps": 20, "guidance_scale": 3.0}, {"steps": 30})
    options = resolve_options(p, "uncond")
    assert (options.sampler, options.steps, options.guidance_scale) == ("plms", 30, 3.0)  # task over spec
    options = resolve_options(p, "uncond", {"steps": 5, "guidance_scale": None, "n": 2})  # caller over task
    assert (options.sampler, options.steps, options.guidance_scale, options.n) == ("plms", 5, 3.0, 2)
    assert default_sampling(p, "uncond") == ("plms", 30) and default_guidance(p, "uncond") == 3.0


def test_eta_goes_with_its_sampler():
    p = pipe({"sampler": "ddim", "eta": 0.0}, {"sampler": "ddpm"})
    assert resolve_options(p, "uncond").eta is None  # the spec's eta was DDIM's: ddpm keeps its own default
    assert resolve_options(p, "uncond", {"eta": 0.3}).eta == 0.3
    same = pipe({"sampler": "ddim", "eta": 0.5})
    assert resolve_options(same, "uncond", {"sampler": "ddim"}).eta == 0.5


def test_sampler_forms_from_a_spec_and_a_task():
    p = pipe({"sampler": {"type": "dpmpp-2m", "params": {"spacing": "trailing"}}})
    assert resolve_options(p, "uncond").sampler == SamplerRef(type="dpmpp-2m", params={"spacing": "trailing"})
    p = pipe(task_params={"sampler": {"type": "ddim", "params": {"spacing": "quad"}}})
    options = resolve_options(p, "uncond", {"steps": 3})
    assert options.sampler == SamplerRef(type="ddim", params={"spacing": "quad"})
    expected = p.sample(sampler={"type": "ddim", "params": {"spacing": "quad"}}, steps=3, x_T=x_T())
    got = p.sample(sampler=options.sampler, steps=3, x_T=x_T())
    assert torch.equal(got, expected)
    images = p.task("uncond").run(p, p.task("uncond").parse_request({}), options)
    assert images.shape == (1, 3, 8, 8)


def test_bad_sampler_params_name_the_field():
    with pytest.raises(SpecError, match=r"sampling\.sampler\.params\.spacing"):
        validate_spec(spec({"sampler": {"type": "ddim", "params": {"spacing": "cubic"}}}))
    with pytest.raises(SpecError, match=r"sampling\.sampler\.params\.wobble"):
        validate_spec(spec({"sampler": {"type": "ddim", "params": {"wobble": 1}}}))
    with pytest.raises(UnknownComponentError, match=r"sampling\.sampler"):
        validate_spec(spec({"sampler": {"type": "no-such-sampler"}}))
    p = pipe()
    with pytest.raises(InputError, match=r"options\.sampler\.params\.spacing"):
        resolve_options(p, "uncond", {"sampler": {"type": "euler-a", "params": {"spacing": 3}}})
    with pytest.raises(InputError, match=r"sampler\.params\.spacing"):
        p.sample(sampler={"type": "plms", "params": {"spacing": "cubic"}}, steps=2)
    with pytest.raises(InputError, match=r"options\.steps"):
        resolve_options(p, "uncond", {"steps": "7"})


def test_pipeline_sample_takes_each_sampler_form():
    p = pipe()
    by_name = p.sample(sampler="ddim", steps=3, x_T=x_T())
    by_dict = p.sample(sampler={"type": "ddim", "params": {}}, steps=3, x_T=x_T())
    by_ref = p.sample(sampler=SamplerRef(type="ddim"), steps=3, x_T=x_T())
    instance = build_sampler(p.registry, {"type": "ddim", "params": {"spacing": "quad"}})
    by_instance = p.sample(sampler=instance, steps=3, x_T=x_T())
    assert torch.equal(by_name, by_dict) and torch.equal(by_name, by_ref)
    assert instance.params.spacing == "quad" and not torch.equal(by_name, by_instance)


# -- eta: the scale of fresh noise -------------------------------------------------------------------------


def old_euler_ancestral(steps: int, seed: int) -> torch.Tensor:
    """Euler ancestral as it was before eta applied to it (full ancestral noise, "leading" offset 1)."""
    schedule = NoiseSchedule.from_spec()
    timesteps = spaced_timesteps("leading", steps, schedule.num_timesteps, 1)[::-1]
    ac = alphas_cumprod64(schedule)
    sigmas = [math.sqrt((1.0 - float(ac[t])) / float(ac[t])) for t in timesteps] + [0.0]
    scales = [math.sqrt(1.0 + s * s) for s in sigmas]
    gen = torch.Generator().manual_seed(seed)
    x = x_T() * scales[0]
    for i, t in enumerate(timesteps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        eps = fake_model(x / scales[i], torch.full((SHAPE[0],), t, dtype=torch.long))
        sigma_up = math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2)
        sigma_down = math.sqrt(max(sigma_next**2 - sigma_up**2, 0.0))
        x = x + eps * (sigma_down - sigma)
        if sigma_up > 0:
            x = x + torch.randn(SHAPE, generator=gen) * sigma_up
    return x


def test_euler_a_eta_one_is_the_old_sampler_bit_for_bit():
    old = old_euler_ancestral(10, seed=1)
    assert torch.equal(run("euler-a", eta=1.0), old)
    assert torch.equal(run("euler-a"), old)  # the default eta is 1
    assert torch.equal(run("euler-a", eta=None), old)


@pytest.mark.parametrize("name", ["ddpm", "euler-a", "ddim"])
def test_eta_zero_is_deterministic(name):
    assert torch.equal(run(name, eta=0.0, seed=1), run(name, eta=0.0, seed=2))
    assert not torch.equal(run(name, eta=1.0, seed=1), run(name, eta=1.0, seed=2))


def test_ddpm_eta_scales_the_posterior_noise():
    assert torch.equal(run("ddpm"), run("ddpm", eta=1.0))
    half, full, none = run("ddpm", eta=0.5), run("ddpm", eta=1.0), run("ddpm", eta=0.0)
    assert not torch.equal(half, full) and not torch.equal(half, none)


def test_ddim_default_eta_is_zero():
    assert torch.equal(run("ddim"), run("ddim", eta=0.0))


@pytest.mark.parametrize("name", ["plms", "dpmpp-2m"])
def test_samplers_without_fresh_noise_take_only_zero(name):
    assert torch.equal(run(name), run(name, eta=0.0))
    with pytest.raises(InputError, match=r"adds no fresh noise.*eta must be 0 \(or None\)"):
        run(name, eta=0.5)


# -- spacing: one name, one set of values ------------------------------------------------------------------


@pytest.mark.parametrize("name", SAMPLERS)
@pytest.mark.parametrize("spacing", SPACINGS)
def test_every_sampler_takes_every_spacing(name, spacing):
    out = run(name, {"spacing": spacing}, steps=8)
    assert out.shape == SHAPE and bool(torch.isfinite(out).all())


@pytest.mark.parametrize(("name", "default"), [("ddim", "uniform"), ("plms", "uniform"), ("ddpm", "leading")])
def test_each_sampler_keeps_its_default_spacing(name, default):
    assert ldmkit.get_registry().create("sampler", name).params.spacing == default
    assert torch.equal(run(name), run(name, {"spacing": default}))


@pytest.mark.parametrize("name", ["ddim", "plms"])
def test_discretize_is_read_as_spacing_with_a_warning(name):
    with pytest.warns(DeprecationWarning, match="'spacing'"):
        sampler = ldmkit.get_registry().create("sampler", name, {"discretize": "quad"})
    assert sampler.params.spacing == "quad"
    with pytest.raises(SpecError, match="spacing"), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ldmkit.get_registry().create("sampler", name, {"discretize": "quad", "spacing": "uniform"})


def test_unknown_spacing_is_refused_naming_the_field():
    with pytest.raises(SpecError, match="spacing"):
        ldmkit.get_registry().create("sampler", "euler-a", {"spacing": "cubic"})
