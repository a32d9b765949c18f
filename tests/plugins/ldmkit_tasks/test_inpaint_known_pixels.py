"""Inpainting keeps what it was told to keep: on a scene the user drew (not the training generator),
the pixels outside the mask come back exactly as given."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import ldmkit
from ldmkit.generation import default_model_dir

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@functools.cache
def shipped() -> ldmkit.Pipeline:
    return ldmkit.Pipeline.load(default_model_dir())


def drawn_scene() -> tuple[np.ndarray, np.ndarray]:
    """A 64x64 scene drawn with PIL in the documented palette and sizes, and a mask over its circle."""
    picture = Image.new("RGB", (64, 64), (230, 230, 230))
    draw = ImageDraw.Draw(picture)
    draw.rectangle([4, 4, 31, 31], fill=(215, 40, 40))  # red square, 28 px
    draw.ellipse([38, 6, 57, 25], fill=(30, 180, 200))  # cyan circle, 20 px
    draw.polygon([(10, 58), (30, 58), (20, 40)], fill=(190, 50, 190))  # magenta triangle
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[3:29, 35:61] = 255  # over the circle, white = fill in
    return np.asarray(picture), mask


def test_pixels_outside_the_mask_are_kept_exactly():
    from ldmkit.tasks import SampleOptions

    picture, mask = drawn_scene()
    pipe = shipped()
    task = pipe.task("inpaint")
    request = task.parse_request({"image": picture, "mask": mask})
    out = task.run(pipe, request, SampleOptions(n=2, steps=10, seed=0))  # (2, 3, 64, 64) in [-1, 1]
    given = torch.from_numpy(np.array(picture)).permute(2, 0, 1).float() / 127.5 - 1  # (3, 64, 64)
    keep = torch.from_numpy(mask == 0)  # (64, 64)
    for picture_out in out:
        assert torch.equal(picture_out[:, keep], given[:, keep].to(picture_out))
    inside = torch.from_numpy(mask > 0)
    assert not torch.allclose(out[0][:, inside], given[:, inside], atol=0.05)  # the hole was filled anew
