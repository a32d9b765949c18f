"""One registry per pipeline: a pipeline built from its own registry never consults the process one."""

from __future__ import annotations

import pytest
import torch

import ldmkit
from ldmkit import Params, UnknownComponentError, hookimpl
from ldmkit import registry as registry_module
from ldmkit.building import build_component, building_with, current_registry
from ldmkit.interfaces import SampleOptions
from ldmkit.registry import Registry, discover
from tests.tiny import tiny_pipeline_spec, tiny_unet_params

EXTRA_SAMPLER = "test-constant"
EXTRA_CONDITIONER = "test-labels"
FILL = 7.0
ClassEmbedder = ldmkit.get_registry().get("conditioner", "class-embedder")


class ConstantSampler(ldmkit.Sampler):
    """Calls the model once, then returns latents filled with FILL: its output shows it ran."""

    name = EXTRA_SAMPLER

    class Params(Params):
        pass

    def sample(self, model_fn, schedule, x_T, *, steps, **kwargs):
        t = torch.full((x_T.shape[0],), len(schedule.alphas_cumprod) - 1, dtype=torch.long)
        eps = model_fn(x_T, t)  # (B, C, h, w)
        return torch.full_like(eps, FILL)


class ExtraLabels(ClassEmbedder):
    """A class embedder under a name only the test's registry knows (a composite part)."""

    name = EXTRA_CONDITIONER


class ExtraPlugin:
    @hookimpl
    def register_samplers(self, register):
        register(ConstantSampler)

    @hookimpl
    def register_conditioners(self, register):
        register(ExtraLabels)


LABELS = {"type": EXTRA_CONDITIONER, "params": {"embed_dim": 32, "n_classes": 5, "null_class": 4}}
SPEC = tiny_pipeline_spec(
    {"type": "identity", "params": {"channels": 3}},
    tiny_unet_params(channels=3, channel_mult=[1], attention_resolutions=[1], num_head_channels=32, context_dim=32),
    {"type": "composite", "params": {"parts": {"label": LABELS}}},
    version=1,
    tasks={"class2img": {"type": "class2img", "params": {"part": "label"}}},
)


@pytest.fixture(scope="module")
def own_registry() -> Registry:
    registry = discover()  # the installed plugins, in a registry of its own
    assert registry.add_plugin(ExtraPlugin())
    return registry


@pytest.fixture
def no_global_registry(monkeypatch, own_registry):
    """Make any use of the process registry fail the test."""
    global_names = registry_module.get_registry().names("sampler")
    assert EXTRA_SAMPLER not in global_names and EXTRA_SAMPLER in own_registry.names("sampler")

    def consulted() -> Registry:
        raise AssertionError("the process registry was consulted")

    monkeypatch.setattr(registry_module, "get_registry", consulted)
    monkeypatch.setattr(ldmkit, "get_registry", consulted)


def test_a_pipeline_samples_with_a_sampler_only_its_registry_has(own_registry, no_global_registry):
    pipe = ldmkit.Pipeline.from_spec(SPEC, registry=own_registry)
    assert pipe.registry is own_registry
    assert isinstance(pipe.conditioner.parts["label"], ExtraLabels)  # the part came from the same registry
    cond = pipe.conditioner({"label": torch.tensor([1, 2])})
    uncond = pipe.conditioner.unconditional(2)
    latents = pipe.sample(cond, uncond=uncond, guidance_scale=2.0, sampler=EXTRA_SAMPLER, steps=2)
    assert latents.shape == (2, 3, 8, 8) and bool((latents == FILL).all())


def test_a_task_of_that_pipeline_runs_without_the_process_registry(own_registry, no_global_registry):
    pipe = ldmkit.Pipeline.from_spec(SPEC, registry=own_registry)
    task = pipe.task("class2img")
    request = task.parse_request({"label": "3"})
    options = SampleOptions(n=2, seed=1, sampler=EXTRA_SAMPLER, steps=2, guidance_scale=3.0)
    images = task.run(pipe, request, options)  # (2, 3, 8, 8), the identity first stage: FILL clamped
    assert images.shape == (2, 3, 8, 8) and bool((images == 1.0).all())


def test_a_loaded_pipeline_keeps_the_registry_it_was_loaded_with(own_registry, no_global_registry, tmp_path):
    ldmkit.Pipeline.from_spec(SPEC, registry=own_registry).save(tmp_path / "model")
    pipe = ldmkit.Pipeline.load(tmp_path / "model", registry=own_registry)
    assert pipe.registry is own_registry
    latents = pipe.sample({"label": torch.tensor([0])}, sampler=EXTRA_SAMPLER, steps=1)
    assert bool((latents == FILL).all())


def test_the_process_registry_lacks_what_only_the_own_registry_has(own_registry):
    pipe = ldmkit.Pipeline.from_spec(SPEC, registry=own_registry)
    plain = ldmkit.Pipeline(pipe.first_stage, pipe.denoiser, latent_size=(8, 8))
    assert plain.registry is ldmkit.get_registry()  # made without a registry: the process one
    with pytest.raises(UnknownComponentError, match=EXTRA_SAMPLER):
        plain.sample(None, sampler=EXTRA_SAMPLER, steps=1)
    with pytest.raises(UnknownComponentError, match=EXTRA_CONDITIONER):
        ldmkit.Pipeline.from_spec(SPEC)  # the composite's part is unknown to the process registry


def test_current_registry_is_the_building_one_and_the_process_one_outside(own_registry):
    assert current_registry() is ldmkit.get_registry()
    with building_with(own_registry):
        assert current_registry() is own_registry
    assert current_registry() is ldmkit.get_registry()


def test_a_composite_builds_its_parts_from_the_registry_it_is_given(own_registry, no_global_registry):
    CompositeConditioner = own_registry.get("conditioner", "composite")
    params = CompositeConditioner.Params.model_validate({"parts": {"label": LABELS}})
    direct = CompositeConditioner(params, registry=own_registry)
    built = build_component(own_registry, "conditioner", "composite", {"parts": {"outer": SPEC["conditioner"]}})
    assert isinstance(direct.parts["label"], ExtraLabels)
    assert isinstance(built.parts["outer"].parts["label"], ExtraLabels)  # a nested composite too


def test_registry_create_builds_a_composites_parts_from_the_same_registry(own_registry, monkeypatch):
    def refuse():
        raise AssertionError("the process registry was consulted")

    monkeypatch.setattr(registry_module, "get_registry", refuse)
    monkeypatch.setattr(ldmkit, "get_registry", refuse)
    composite = own_registry.create("conditioner", "composite", {"parts": {"label": LABELS}})
    assert type(composite.parts["label"]).name == EXTRA_CONDITIONER
