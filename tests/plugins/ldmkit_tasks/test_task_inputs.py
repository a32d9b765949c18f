"""Task inputs: every accepted picture-like form reads the same, others are refused; the annotated
input types of request models read CLI text and Python objects and name the field of each problem."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import Field, ValidationError
from pydantic.fields import FieldInfo

import ldmkit
from ldmkit.errors import InputError
from ldmkit.generation import default_model_dir
from ldmkit.inputs import (
    Label,
    Layout,
    Mask,
    Number,
    Picture,
    Prompt,
    SegmentationMap,
    Text,
    class_map_input,
    describe_request,
    image_input,
    input_kind,
    mask_input,
)
from ldmkit.specs import format_validation_error
from ldmkit.tasks import Request


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
        (b"not a picture", "not a picture Pillow can read"),
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


def test_a_jpeg_mask_reads_as_its_png(tmp_path):
    """Masks in any format Pillow reads are accepted (as help and docs say), JPEG bytes under a .png name too."""
    fill = np.zeros((64, 64), np.uint8)
    fill[13:37, 5:43] = 255  # edges off JPEG's 8-pixel blocks, so compression rings around them
    buffer = io.BytesIO()
    Image.fromarray(fill, "L").save(buffer, format="JPEG", quality=85)
    jpeg = buffer.getvalue()
    decoded = np.asarray(Image.open(io.BytesIO(jpeg)))
    assert jpeg[:2] == b"\xff\xd8" and not np.array_equal(decoded, fill)  # lossy: grey levels moved (by ~15)
    expected = mask_input(_png(fill, "L"))
    torch.testing.assert_close(mask_input(jpeg), expected)  # the 127 threshold absorbs the noise
    (tmp_path / "mask.png").write_bytes(jpeg)  # named .png, JPEG inside: the bytes decide
    inpaint = ldmkit.Pipeline.load(default_model_dir()).task("inpaint")
    request = inpaint.parse_request({"image": torch.zeros(3, 64, 64), "mask": (tmp_path / "mask.png").read_bytes()})
    torch.testing.assert_close(request.mask, expected)


def test_help_and_task_listing_say_masks_may_be_jpeg(capsys):
    from ldmkit.cli import main

    fields = {f.name: f for f in describe_request(ldmkit.Pipeline.load(default_model_dir()).task("inpaint").Request)}
    assert fields["mask"].shown_as == "a mask picture (PNG, JPEG ...), white = fill in"  # `ldmkit tasks inpaint`
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--mask PATH mask picture (PNG, JPEG ...), white = fill in" in help_text


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


# -- annotated input types in request models ------------------------------------------------------
class _Request(Request):
    label: Label = Field(description="a class")
    strength: Number = Field(0.5, ge=0, le=1, description="how strong")
    note: Text = ""
    mask: Mask | None = None


def test_annotated_types_read_cli_text_with_the_task_context():
    request = _Request.model_validate({"label": "Blue", "strength": "0.25"}, context={"class_names": ["red", "blue"]})
    assert (request.label, request.strength, request.note, request.mask) == (1, 0.25, "", None)
    request = _Request.model_validate({"label": 3, "mask": np.ones((4, 4), bool)})
    assert request.mask.shape == (1, 4, 4) and request.mask.dtype == torch.float32


@pytest.mark.parametrize(
    ("values", "field", "message"),
    [
        ({"label": "pink"}, "label", "unknown label 'pink'"),
        ({"label": 0, "strength": "nan"}, "strength", "must be a finite number"),
        ({"label": 0, "strength": "2"}, "strength", "less than or equal to 1"),
        ({"label": 0, "mask": torch.zeros(3, 4, 4)}, "mask", r"got shape \(3, 4, 4\)"),
    ],
)
def test_annotated_types_name_the_field(values, field, message):
    with pytest.raises(ValidationError) as caught:
        _Request.model_validate(values, context={"class_names": ["red", "blue"]})
    text = format_validation_error(caught.value)
    assert text.startswith(f"{field}: ") and re.search(message, text), text
    assert f"{field}: {field}:" not in text, "the field is named once"


def test_describe_request_lists_kinds_defaults_and_descriptions():
    fields = {f.name: f for f in describe_request(_Request)}
    assert list(fields) == ["label", "strength", "note", "mask"]
    assert (fields["label"].kind, fields["label"].required, fields["label"].takes_file) == ("label", True, False)
    assert (fields["strength"].kind, fields["strength"].default, fields["strength"].description) == (
        "number",
        0.5,
        "how strong",
    )
    assert (fields["mask"].kind, fields["mask"].takes_file, fields["mask"].required) == ("mask", True, False)
    for typed, kind in ((Picture, "picture"), (Layout, "layout"), (SegmentationMap, "segmentation map")):
        assert input_kind(FieldInfo.from_annotation(typed)).name == kind
    assert input_kind(FieldInfo.from_annotation(Prompt)).takes_file is False


def test_every_builtin_task_declares_typed_described_inputs():
    registry = ldmkit.get_registry()
    for name in registry.names("task"):
        cls = registry.get("task", name)
        for field in describe_request(cls.Request):
            assert field.description, f"{name}.{field.name} has no description"
            assert input_kind(cls.Request.model_fields[field.name]) is not None, f"{name}.{field.name} is untyped"


def test_segmentation_maps_are_checked_against_the_tasks_classes():
    pipe = ldmkit.Pipeline.load(default_model_dir())
    task = pipe.task("semantic2img")
    with pytest.raises(InputError, match=r"task 'semantic2img': segmentation: value 7 found; classes are 0..3"):
        task.parse_request({"segmentation": torch.full((64, 64), 7)})
    with pytest.raises(InputError, match="mask .* and image .* differ in size"):
        pipe.task("inpaint").parse_request({"image": torch.zeros(3, 64, 64), "mask": torch.zeros(1, 32, 32)})
