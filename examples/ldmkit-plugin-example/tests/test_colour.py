"""The example conditioner and task pass ldmkit's conformance checks, and colours reach the token."""

from __future__ import annotations

import functools

import pytest
import torch

import ldmkit
from ldmkit.testing import ConditionerConformance, TaskConformance
from ldmkit_plugin_example.colour import COLOURS, ColourConditioner, parse_colour
from ldmkit_plugin_example.colour_task import Colour2ImgTask

NAMES = ["red", "#336699", "cyan", "Yellow "]

# a small colour-conditional pipeline: pixel space (identity first stage), a UNet attending to the colour token
SPEC = {
    "first_stage": {"type": "identity", "params": {"channels": 3}},
    "denoiser": {
        "type": "unet",
        "params": {"image_size": 8, "in_channels": 3, "out_channels": 3, "model_channels": 32}
        | {"channel_mult": [1], "num_res_blocks": 1, "attention_resolutions": [1], "num_head_channels": 32}
        | {"use_spatial_transformer": True, "context_dim": 16},
    },
    "conditioner": {"type": "colour-example", "params": {"embed_dim": 16}},
    "latent_size": [8, 8],
    "tasks": {"colour2img-example": {"type": "colour2img-example", "params": {"guidance_scale": 2.0}}},
}


@functools.cache
def pipeline() -> ldmkit.Pipeline:
    torch.manual_seed(0)
    pipe = ldmkit.Pipeline.from_spec(SPEC)
    with torch.no_grad():  # an untrained UNet's zero-initialised output layers would hide the context
        for weight in pipe.denoiser.parameters():
            if not weight.any():
                weight.normal_(0.0, 0.05)
    return pipe


class TestColourConditioner(ConditionerConformance):
    component_cls = ColourConditioner
    params = {"embed_dim": 16}

    def make_raw(self, batch: int) -> list[str]:
        return [NAMES[i % len(NAMES)] for i in range(batch)]


class TestColour2ImgTask(TaskConformance):
    component_cls = Colour2ImgTask
    valid_request = {"colour": "orange"}
    invalid_requests = [{"colour": "mauve"}, {"colour": "#12345"}, {}]
    cli_inputs = {"colour": "#ff8000"}
    bad_inputs = [{"colour": "mauve"}, {"colour": ""}, {"colour": 7}, {}, {"colour": "red", "prompt": "a cat"}]
    options = {"n": 2, "steps": 2, "guidance_scale": 2.0}

    def make_pipeline(self) -> ldmkit.Pipeline:
        return pipeline()


def test_names_and_hex_give_the_same_token() -> None:
    torch.manual_seed(0)
    cond = ColourConditioner.from_params({"embed_dim": 8}).eval()
    by_name = cond(["red", "white"]).crossattn
    assert torch.equal(by_name, cond(["#FF0000", "#ffffff"]).crossattn)
    assert torch.equal(by_name, cond(torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])).crossattn)
    assert by_name.shape == (2, 1, 8) and not torch.equal(by_name[0], by_name[1])


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (["mauve"], "unknown colour 'mauve'"),
        ([], "non-empty list"),
        (torch.tensor([[0.5, 0.5]]), r"\(B, 3\)"),
        (torch.tensor([[2.0, 0.0, 0.0]]), r"\[0, 1\]"),
    ],
)
def test_bad_colours_are_input_errors(raw, message) -> None:
    with pytest.raises(ldmkit.InputError, match=message):
        ColourConditioner.from_params({"embed_dim": 8})(raw)


def test_every_named_colour_parses_to_its_rgb() -> None:
    for name, rgb in COLOURS.items():
        assert parse_colour(name.upper()) == tuple(v / 255 for v in rgb)


def test_the_task_samples_the_colour_it_is_given() -> None:
    pipe = pipeline()
    task = pipe.task("colour2img-example")
    options = ldmkit.SampleOptions(n=1, steps=2, guidance_scale=2.0)
    red = task.run(pipe, task.parse_request({"colour": "red"}), options)
    blue = task.run(pipe, task.parse_request({"colour": "blue"}), options)
    assert red.shape == (1, 3, 8, 8) and not torch.equal(red, blue)  # same seed: only the colour differs
