"""Picture-like task inputs given from Python: every accepted form reads the same; others are refused."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from ldmkit.errors import InputError
from ldmkit.inputs import class_map_input, image_input, mask_input


def _png(array: np.ndarray, mode: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def rgb() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(8, 6, 3), dtype=np.uint8)  # (H, W, 3)


def test_every_picture_form_reads_the_same(rgb):
    expected = torch.from_numpy(rgb).permute(2, 0, 1).float() / 127.5 - 1.0  # (3, H, W) in [-1, 1]
    forms = {
        "png bytes": _png(rgb, "RGB"),
        "PIL image": Image.fromarray(rgb, "RGB"),
        "uint8 (H, W, 3)": rgb,
        "uint8 (3, H, W)": torch.from_numpy(rgb).permute(2, 0, 1),
        "float (3, H, W)": expected.clone(),
        "float (1, 3, H, W)": expected[None].clone(),
    }
    for name, data in forms.items():
        got = image_input(data)
        assert got.shape == (3, 8, 6) and got.dtype == torch.float32, name
        torch.testing.assert_close(got, expected, msg=name)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (torch.rand(3, 8, 8) * 255, r"float values must lie in \[-1, 1\], found .* \(pass 0..255 pictures as uint8\)"),
        (torch.zeros(4, 8, 8), r"got shape \(4, 8, 8\)"),
        (torch.zeros(2, 3, 8, 8), r"got shape \(2, 3, 8, 8\)"),
        (torch.full((3, 8, 8), float("nan")), "NaN or Inf"),
        (torch.zeros(3, 8, 8, dtype=torch.int32), "expected float or uint8 values"),
        ("a picture", "expected image bytes"),
        (b"not a picture", "not a readable image"),
    ],
)
def test_bad_pictures_are_refused(data, message):
    with pytest.raises(InputError, match=message):
        image_input(data)


def test_every_mask_form_reads_the_same():
    fill = np.zeros((8, 6), bool)
    fill[2:5, 1:4] = True
    expected = torch.from_numpy(fill).float()[None]  # (1, H, W)
    forms = {
        "png bytes": _png(fill.astype(np.uint8) * 255, "L"),
        "PIL image": Image.fromarray(fill.astype(np.uint8) * 255, "L"),
        "bool (H, W)": fill,
        "uint8 0/255": fill.astype(np.uint8) * 255,
        "float (1, 1, H, W)": expected[None].clone(),
    }
    for name, data in forms.items():
        torch.testing.assert_close(mask_input(data), expected, msg=name)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (torch.full((8, 8), 2.0), r"float values must lie in \[0, 1\]"),
        (torch.zeros(3, 8, 8), r"got shape \(3, 8, 8\)"),
    ],
)
def test_bad_masks_are_refused(data, message):
    with pytest.raises(InputError, match=message):
        mask_input(data)


def test_class_maps_from_images_and_arrays():
    ids = np.array([[0, 1, 2], [3, 0, 1]], np.uint8)
    for data in (_png(ids, "L"), Image.fromarray(ids, "L"), ids, torch.from_numpy(ids).float()[None]):
        got = class_map_input(data, n_classes=4)
        assert got.dtype == torch.int64 and torch.equal(got, torch.from_numpy(ids).long())


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (torch.tensor([[0, 4]]), "value 4 found; classes are 0..3"),
        (torch.tensor([[0, -1]]), "value -1 found; classes are 0..3"),
        (torch.tensor([[0.0, 0.5]]), "class ids must be whole numbers"),
        (torch.zeros(2, 2, 2), "expected a single-channel map"),
    ],
)
def test_bad_class_maps_are_refused(data, message):
    with pytest.raises(InputError, match=message):
        class_map_input(data, n_classes=4)
