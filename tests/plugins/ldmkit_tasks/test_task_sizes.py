"""Tasks at other sizes than the training size, on the shipped Shapes model (64x64, sides multiples of 16)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import ldmkit
from ldmkit.errors import InputError
from ldmkit.generation import default_model_dir, generate
from ldmkit.interfaces import SampleOptions
from ldmkit_shapes import CLASS_NAMES, ShapesDataset

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

ONE_STEP = {"steps": 1, "n": 1}


@pytest.fixture(scope="module")
def shipped() -> ldmkit.Pipeline:
    return ldmkit.Pipeline.load(default_model_dir())


@pytest.fixture(scope="module")
def sample() -> dict:
    return ShapesDataset.from_params({"seed": 3}).batch([0])


@pytest.mark.parametrize(
    ("task", "inputs"),
    [("uncond", {}), ("class2img", {"label": "red circle"}), ("text2img", {"prompt": "a red circle"})],
)
def test_tasks_without_spatial_input_make_the_size_asked(shipped: ldmkit.Pipeline, task: str, inputs: dict) -> None:
    images, _ = generate(shipped, task, inputs, SampleOptions(**ONE_STEP, size=(128, 96)))
    assert images.shape == (1, 3, 128, 96)


def test_spatial_tasks_take_the_size_of_their_input(shipped: ldmkit.Pipeline, sample: dict) -> None:
    seg = F.interpolate(sample["segmentation"][None].float(), scale_factor=2, mode="nearest")[0, 0].long()  # (128, 128)
    images, _ = generate(shipped, "semantic2img", {"segmentation": seg}, SampleOptions(**ONE_STEP))
    assert images.shape == (1, 3, 128, 128)
    lowres = F.interpolate(sample["lowres"], scale_factor=2, mode="area")[0]  # (3, 32, 32): x4 is 128
    images, _ = generate(shipped, "superres", {"image": lowres}, SampleOptions(**ONE_STEP))
    assert images.shape == (1, 3, 128, 128)
    image = F.interpolate(sample["image"], size=(96, 128), mode="bilinear")[0]  # (3, 96, 128)
    mask = torch.zeros(1, 96, 128)
    mask[:, 32:64, 48:80] = 1.0
    out, _ = generate(shipped, "inpaint", {"image": image, "mask": mask}, SampleOptions(**ONE_STEP))
    assert out.shape == (1, 3, 96, 128)
    keep = (mask == 0).expand(3, 96, 128)
    assert torch.equal(out[0][keep], image.clamp(-1, 1)[keep])  # known pixels pasted back, at the new size


def test_a_size_that_contradicts_the_input_is_refused(shipped: ldmkit.Pipeline, sample: dict) -> None:
    seg = sample["segmentation"][0]  # (64, 64)
    with pytest.raises(InputError, match="size 128x128 differs from 64x64, the size its input fixes"):
        generate(shipped, "semantic2img", {"segmentation": seg}, SampleOptions(**ONE_STEP, size=(128, 128)))
    # the same size as the input's is fine
    images, _ = generate(shipped, "semantic2img", {"segmentation": seg}, SampleOptions(**ONE_STEP, size=(64, 64)))
    assert images.shape == (1, 3, 64, 64)


def test_an_input_of_a_size_the_model_cannot_make_is_refused(shipped: ldmkit.Pipeline, sample: dict) -> None:
    image = F.interpolate(sample["image"], size=(72, 72), mode="bilinear")[0]  # 72 is no multiple of 16
    with pytest.raises(
        InputError, match="input's size: a picture of 72x72 pixels; each side must be a positive multiple of 16"
    ):
        generate(shipped, "inpaint", {"image": image, "mask": torch.zeros(1, 72, 72)}, SampleOptions(**ONE_STEP))


def test_a_conditioning_map_drawn_at_one_size_refuses_another(shipped: ldmkit.Pipeline, sample: dict) -> None:
    # the shipped layout conditioner draws its box map at 16x16 cells (spatial_map): it cannot be stretched
    layout = [{"label": CLASS_NAMES[o["label"]], "box": o["box"]} for o in sample["layout"][0]]
    with pytest.raises(InputError, match="maps are 16x16 cells but the latent is 32x32"):
        generate(shipped, "layout2img", {"layout": layout}, SampleOptions(**ONE_STEP, size=(128, 128)))
