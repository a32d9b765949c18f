"""The img2img task and negative conditioning on the shipped Shapes model (CPU): requests, parts, defaults, errors."""

from __future__ import annotations

import itertools
import logging

import pytest
import torch

import ldmkit
from ldmkit.errors import InputError, SpecError
from ldmkit.generation import default_model_dir
from ldmkit.tasks import PROMPT_KINDS
from ldmkit_shapes import ShapesDataset
from tests.tiny import tiny_pipeline_spec, tiny_unet_params

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

STEPS = 10
STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


@pytest.fixture(scope="module")
def shipped() -> ldmkit.Pipeline:
    return ldmkit.Pipeline.load(default_model_dir())


@pytest.fixture(scope="module")
def pictures() -> torch.Tensor:
    return ShapesDataset.from_params({"seed": 11}).batch(range(3))["image"]  # (3, 3, 64, 64) in [-1, 1]


def redraw(pipe: ldmkit.Pipeline, image: torch.Tensor, strength: float, **inputs) -> torch.Tensor:
    task = pipe.task("img2img")
    request = task.parse_request({"image": image, "strength": strength, **inputs})
    return task.run(pipe, request, ldmkit.SampleOptions(n=1, steps=STEPS, guidance_scale=1.0))[0]  # (3, H, W)


def test_strength_zero_is_the_autoencoder_reconstruction(shipped, pictures):
    image = pictures[0]
    reconstruction = shipped.decode(shipped.encode(image[None])).clamp(-1, 1)[0]
    assert torch.equal(redraw(shipped, image, 0.0), reconstruction)
    # fewer than one step's worth of strength takes no step either (int(10 * 0.05) = 0)
    assert torch.equal(redraw(shipped, image, 0.05), reconstruction)


@pytest.mark.slow
def test_the_distance_to_the_picture_grows_with_strength(shipped, pictures):
    distance = []
    for strength in STRENGTHS:
        diffs = [float((redraw(shipped, image, strength) - image).abs().mean()) for image in pictures]
        distance.append(sum(diffs) / len(diffs))
    # a small strength redraws few steps: its distance may tie the reconstruction's (within 1e-3, a few
    # pixel values of the mean); from there on it grows
    assert all(later > earlier - 1e-3 for earlier, later in itertools.pairwise(distance)), distance
    assert distance[1] < distance[2] < distance[3] < distance[4], distance
    assert distance[0] < 0.05 < 0.2 < distance[-1]  # a close reconstruction; at 1 a new picture


def test_the_spec_sets_the_default_strength_and_a_request_overrides_it(shipped, pictures):
    task = shipped.task("img2img")
    assert task.params.strength == 0.75  # the shipped spec's
    assert task.parse_request({"image": pictures[0]}).strength == 0.75
    assert task.parse_request({"image": pictures[0], "strength": "0.3"}).strength == 0.3
    assert task.input_defaults() == {"strength": 0.75}


@pytest.mark.parametrize(
    "inputs, match",
    [
        ({"strength": 1.5}, "strength"),
        ({"strength": -0.2}, "strength"),
        ({"strength": "much"}, "strength"),
        ({"label": "purple circle"}, "label"),
        ({"prompt": ""}, "prompt"),
    ],
)
def test_bad_requests_are_input_errors(shipped, pictures, inputs, match):
    with pytest.raises(InputError, match=match):
        shipped.task("img2img").parse_request({"image": pictures[0], **inputs})


def test_the_result_takes_the_input_pictures_size(shipped):
    task = shipped.task("img2img")
    request = task.parse_request({"image": torch.zeros(3, 32, 48)})
    pictures = task.run(shipped, request, ldmkit.SampleOptions(n=1, steps=2))
    assert tuple(pictures.shape) == (1, 3, 32, 48)


def test_a_picture_the_model_cannot_tile_is_refused(shipped):
    task = shipped.task("img2img")
    request = task.parse_request({"image": torch.zeros(3, 40, 40)})
    with pytest.raises(InputError, match="multiple of 16"):
        task.run(shipped, request, ldmkit.SampleOptions(n=1, steps=2))
    with pytest.raises(InputError, match="differs from 40x40"):
        task.run(shipped, request, ldmkit.SampleOptions(n=1, steps=2, size=(64, 64)))


def test_prompt_and_label_go_to_their_parts_and_the_rest_stay_unconditional(shipped, pictures):
    task = shipped.task("img2img")
    request = task.parse_request({"image": pictures[0], "prompt": "a red circle", "label": "blue square"})
    raw = task.raw_input(shipped, request, 2)
    assert set(raw) == {"text", "label"} and raw["text"] == ["a red circle"] * 2
    assert raw["label"].tolist() == [8, 8]
    cond, uncond = task.conditioning(shipped, request, 2)
    assert torch.equal(cond.crossattn, shipped.conditioner(raw).crossattn)
    assert torch.equal(uncond.crossattn, shipped.conditioner.unconditional(2).crossattn)


def test_img2img_without_prompt_or_label_samples_the_unconditional_input(shipped, pictures):
    task = shipped.task("img2img")
    cond, uncond = task.conditioning(shipped, task.parse_request({"image": pictures[0]}), 2)
    assert uncond is None and torch.equal(cond.crossattn, shipped.conditioner.unconditional(2).crossattn)


# -- negative conditioning ---------------------------------------------------------------------------------------
def test_a_negative_prompt_fills_the_text_part_of_the_unconditional_branch(shipped):
    task = shipped.task("text2img")
    request = task.parse_request({"prompt": "a red circle", "negative_prompt": "a blue square"})
    cond, uncond = task.conditioning(shipped, request, 2)
    # the composite's other parts (label, layout, maps ...) stay as in the plain unconditional branch
    expected = shipped.conditioner({"text": ["a blue square"] * 2})
    assert torch.equal(uncond.crossattn, expected.crossattn)
    assert not torch.equal(uncond.crossattn, shipped.conditioner.unconditional(2).crossattn)
    assert torch.equal(cond.crossattn, shipped.conditioner({"text": ["a red circle"] * 2}).crossattn)


def test_a_negative_label_fills_the_label_part(shipped):
    task = shipped.task("class2img")
    request = task.parse_request({"label": "red circle", "negative_label": "green circle"})
    assert request.negative_label == 1
    _, uncond = task.conditioning(shipped, request, 1)
    expected = shipped.conditioner({"label": torch.tensor([1])})
    assert torch.equal(uncond.crossattn, expected.crossattn)


def test_a_negative_changes_guided_pictures(shipped):
    task = shipped.task("text2img")
    options = ldmkit.SampleOptions(n=1, steps=4, guidance_scale=3.0)
    plain = task.run(shipped, task.parse_request({"prompt": "a red circle"}), options)
    negative = task.run(shipped, task.parse_request({"prompt": "a red circle", "negative_prompt": "a circle"}), options)
    assert not torch.equal(plain, negative)


def test_without_guidance_a_negative_is_a_logged_no_op(shipped, caplog):
    task = shipped.task("text2img")
    options = ldmkit.SampleOptions(n=1, steps=3, guidance_scale=1.0)
    plain = task.run(shipped, task.parse_request({"prompt": "a red circle"}), options)
    with caplog.at_level(logging.WARNING, logger="ldmkit.tasks"):
        request = task.parse_request({"prompt": "a red circle", "negative_prompt": "a circle"})
        negative = task.run(shipped, request, options)
    assert torch.equal(plain, negative)
    assert "negative_prompt has no effect" in caplog.text


def test_a_negative_without_a_part_to_take_it_is_a_spec_error():
    spec = tiny_pipeline_spec(
        {"type": "identity"},
        tiny_unet_params(channels=3, channel_mult=[1], num_head_channels=32, num_classes=4),
        {"type": "class-embedder", "params": {"embed_dim": 8, "n_classes": 4, "null_class": 3}},
    )
    pipe = ldmkit.Pipeline.from_spec(spec)
    task = pipe.task("img2img")
    request = task.parse_request({"image": torch.zeros(3, 8, 8), "negative_prompt": "a red circle"})
    with pytest.raises(SpecError, match="takes no prompt"):
        task.conditioning(pipe, request, 1)


def test_a_sampler_that_cannot_start_from_latents_is_refused(shipped, pictures):
    class Plain(ldmkit.Sampler):
        name = "plain"

        def sample(self, model_fn, schedule, x_T, **kwargs):
            return x_T

    task = shipped.task("img2img")
    request = task.parse_request({"image": pictures[0]})
    with pytest.raises(InputError, match="cannot start from given latents"):
        shipped.sample(None, sampler=Plain(), steps=2, **task.sample_kwargs(shipped, request, 1))


def test_text2img_sends_its_negative_where_its_prompt_goes_whatever_the_conditioner():
    class MyText:  # a third-party text conditioner without parts, unknown to the built-in kinds
        name = "my-text"

    registry = ldmkit.get_registry()
    assert registry.create("task", "text2img").part_taking(MyText(), PROMPT_KINDS, "prompt") is None
    with pytest.raises(SpecError, match=r"\(my-text\) takes no prompt"):
        registry.create("task", "img2img").part_taking(MyText(), PROMPT_KINDS, "prompt")
