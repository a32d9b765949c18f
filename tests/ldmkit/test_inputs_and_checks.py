"""ldmkit.inputs' layout, label and prompt readers and ldmkit.checks' picture check, as plugin authors call them."""

from __future__ import annotations

import json

import pytest
import torch

from ldmkit.checks import check_batch, image_tensor, index_tensor
from ldmkit.errors import InputError
from ldmkit.inputs import LayoutObject, label_input, layout_input, prompt_input

OBJECTS = [{"label": "red circle", "box": [0.1, 0.2, 0.5, 0.6]}, {"label": 3, "box": [0.0, 0.0, 1.0, 1.0]}]


def test_layout_from_json_text_bytes_and_python_objects_is_the_same() -> None:
    text = json.dumps(OBJECTS)
    layout = layout_input(text)
    assert layout == layout_input(text.encode()) == layout_input(OBJECTS) == layout_input(layout)
    assert [obj.model_dump() for obj in layout] == OBJECTS and isinstance(layout[0], LayoutObject)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("[{", "layout: not valid JSON"),
        ([], "1 to 16 objects"),
        ([{"label": 1, "box": [0.5, 0.1, 0.2, 0.9]}], "x0 < x1"),
        ([{"label": 1, "box": [0.0, 0.0, 1.5, 1.0]}], r"outside \[0, 1\]"),
        ([{"label": 1, "box": [0.0, 0.0, 1.0]}], "0.box"),
        ({"label": 1}, "layout: Input should be a valid list"),
        (OBJECTS * 9, "1 to 16 objects"),
    ],
)
def test_bad_layouts_are_refused(data, message) -> None:
    with pytest.raises(InputError, match=message):
        layout_input(data)


def test_labels_by_id_or_name() -> None:
    names = ["red circle", "Blue Square"]
    assert label_input(1, names) == label_input("1", names) == label_input(" blue square ", names) == 1
    assert label_input("7") == 7  # without names any non-negative id
    for label, message in [
        ("purple circle", "unknown label 'purple circle'; known labels: red circle, Blue Square"),
        (2, "label 2 is out of range"),
        ("-1", "label -1 is out of range"),
        (1.5, "expected a class id or name, got float"),
        (True, "got bool"),
    ]:
        with pytest.raises(InputError, match=message):
            label_input(label, names)
    with pytest.raises(InputError, match=r"\(class ids only\)"):
        label_input("cat")


def test_prompts() -> None:
    assert prompt_input("a red circle") == prompt_input(b"a red circle") == "a red circle"
    for data, message in [
        ("", "must not be empty"),
        ("x" * 11, "11 characters, more than the maximum 10"),
        (3, "expected a string, got int"),
    ]:
        with pytest.raises(InputError, match=f"prompt: {message}"):
            prompt_input(data, max_length=10)
    with pytest.raises(InputError, match="caption: not UTF-8"):
        prompt_input(b"\xff\xfe", what="caption")


def test_image_tensor_names_owner_input_and_problem() -> None:
    x = torch.zeros(2, 3, 8, 8)
    assert image_tensor(x, what="images", channels=3, multiple_of=4) is x
    for bad, kwargs, message in [
        (x, {"channels": 4}, "kl: images must have 4 channels, got 3"),
        (x[0], {}, r"kl: images must have shape \(B, C, H, W\)"),
        (x.long(), {}, "kl: images must be a float tensor"),
        (x[..., :6], {"multiple_of": 4}, "kl: images of 8x6 pixels; height and width must be multiples of 4"),
        (x[:0], {}, "the batch is empty"),
        (torch.full((1, 3, 8, 8), float("nan")), {"finite": True}, "NaN"),
        ([[0.0]], {}, "not list"),
    ]:
        with pytest.raises(InputError, match=message):
            image_tensor(bad, what="images", owner="kl", **kwargs)
    nan = torch.full((1, 3, 8, 8), float("nan"))
    assert image_tensor(nan, "latents") is nan  # unless asked, no full read (first stages on the sampling path)
    with pytest.raises(InputError, match="on cpu but the component is on meta"):
        image_tensor(x, what="images", device=torch.device("meta"))


def test_ids_and_batches() -> None:
    cpu = torch.device("cpu")
    assert index_tensor([1, 2], what="ids", high=3, ndim=1, device=cpu).dtype == torch.long
    with pytest.raises(InputError, match=r"ids must lie in \[0, 3\); got values in \[1, 3\]"):
        index_tensor([1, 3], what="ids", high=3, ndim=1, device=cpu)
    with pytest.raises(InputError, match="tokens have length 4, more than the maximum 3"):
        index_tensor([[1, 1, 1, 1]], what="tokens", high=3, ndim=2, device=cpu, length=3)
    assert check_batch(2) == 2
    for batch in (0, True, 1.0):
        with pytest.raises(InputError, match="positive int"):
            check_batch(batch)


def _png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width`` x ``height`` pixels (a decompression bomb's header)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("side", [5000, 30000])
def test_a_picture_declaring_too_many_pixels_is_refused_before_decoding(side):
    from ldmkit.inputs import image_input

    with pytest.raises(InputError, match="more pixels than ldmkit reads|more than the .* pixels ldmkit reads"):
        image_input(_png_declaring(side, side))


def test_an_unreadable_picture_is_named_without_internal_objects():
    from ldmkit.inputs import image_input

    with pytest.raises(InputError) as caught:
        image_input(b"hello, not a picture")
    assert "Pillow can read" in str(caught.value) and "BytesIO" not in str(caught.value)
