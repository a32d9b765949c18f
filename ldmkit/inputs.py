"""Typed task inputs: each reader turns what a caller holds into one canonical value, or refuses it.

A task reads its inputs from two kinds of callers: the CLI, which hands over strings and the bytes of
files, and Python code, which hands over PIL images, numpy arrays, tensors, lists and dicts. Each
reader here accepts both and returns one canonical form, or raises :class:`~ldmkit.InputError` naming
the input and the accepted forms, so that a picture in the wrong range or layout is refused rather
than sampled from:

- :func:`image_input`: an RGB picture, (3, H, W) float32 in [-1, 1];
- :func:`mask_input`: a mask, (1, H, W) float32 in [0, 1], 1 where to fill in;
- :func:`class_map_input`: a segmentation map of class ids, (H, W) int64;
- :func:`layout_input`: labelled boxes, a list of :class:`LayoutObject`;
- :func:`label_input`: a class id, from an id or a class name;
- :func:`prompt_input`: a non-empty prompt.

:func:`check_size` compares a read picture with the size a pipeline generates.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from typing import Any

import torch
from pydantic import BaseModel, Field, TypeAdapter, ValidationError, field_validator
from torch import Tensor

from ldmkit.errors import InputError
from ldmkit.validation import format_validation_error

__all__ = [
    "LayoutObject",
    "check_size",
    "class_map_input",
    "image_input",
    "label_input",
    "layout_input",
    "mask_input",
    "prompt_input",
]

# float pictures may overshoot [-1, 1] by rounding (e.g. after a resize), not by a wrong scale
_RANGE_SLACK = 1e-3
_MAX_PIXELS = 4096 * 4096


def _read_image(data: bytes, what: str, mode: str) -> Tensor:
    """Decode image file bytes (any format Pillow reads) into uint8 (H, W, 3) for "RGB" or (H, W) for "L"."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > _MAX_PIXELS:
                raise InputError(f"{what}: image of {img.width}x{img.height} is too large")
            arr = torch.frombuffer(bytearray(img.convert(mode).tobytes()), dtype=torch.uint8)
            if mode == "L":
                return arr.view(img.height, img.width)
            return arr.view(img.height, img.width, 3)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(f"{what}: not a readable image ({exc})") from None


def _to_signed(images_u8: Tensor) -> Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float in [-1, 1]."""
    return images_u8.permute(2, 0, 1).float() / 127.5 - 1.0


def _image_bytes(data: Any) -> bytes | None:
    """File bytes as they are, a PIL image as PNG bytes (so it takes the same path as a file), else None."""
    if isinstance(data, (bytes, bytearray)):
        return bytes(data)
    from PIL import Image

    if not isinstance(data, Image.Image):
        return None
    buffer = io.BytesIO()
    data.save(buffer, format="PNG")
    return buffer.getvalue()


def _as_tensor(data: Any, what: str, forms: str) -> Tensor:
    if isinstance(data, Tensor):
        return data.detach().cpu()
    try:  # a copy: the caller's array may be read-only (np.asarray of a picture), and stays untouched
        return torch.tensor(data)
    except (TypeError, ValueError, RuntimeError):
        raise InputError(f"{what}: expected {forms}, got {type(data).__name__}") from None


def _squeeze_leading(t: Tensor, dims: int) -> Tensor:
    """Drop leading size-1 dimensions (a batch of one) down to ``dims`` dimensions."""
    while t.dim() > dims and t.shape[0] == 1:
        t = t[0]
    return t


def _finite_float(t: Tensor, what: str) -> Tensor:
    if t.dtype == torch.bool or not (t.is_floating_point() or t.dtype == torch.uint8):
        raise InputError(f"{what}: expected float or uint8 values, got {t.dtype}")
    t = t.float()
    if not bool(torch.isfinite(t).all()):
        raise InputError(f"{what}: contains NaN or Inf")
    return t


def _problems(exc: ValidationError) -> str:
    return format_validation_error(exc, top=None)


def image_input(data: Any, what: str = "image") -> Tensor:
    """An RGB picture -> (3, H, W) float32 in [-1, 1].

    Accepted: image file bytes, a PIL image, a uint8 array (H, W, 3) or (3, H, W) with values
    0..255, or a float tensor (3, H, W) or (1, 3, H, W) with values in [-1, 1].
    """
    forms = "image bytes, a PIL image, a uint8 (H, W, 3) array or a float (3, H, W) tensor in [-1, 1]"
    png = _image_bytes(data)
    if png is not None:
        return _to_signed(_read_image(png, what, "RGB"))
    t = _squeeze_leading(_as_tensor(data, what, forms), 3)
    if t.dtype == torch.uint8 and t.dim() == 3 and t.shape[-1] == 3 and t.shape[0] != 3:
        return _to_signed(t)  # (H, W, 3), as numpy and PIL hold pictures
    if t.dim() != 3 or t.shape[0] != 3:
        raise InputError(f"{what}: expected {forms}; got shape {tuple(t.shape)}")
    if t.dtype == torch.uint8:
        return t.float() / 127.5 - 1.0
    t = _finite_float(t, what)
    low, high = float(t.min()), float(t.max())
    if low < -1 - _RANGE_SLACK or high > 1 + _RANGE_SLACK:
        raise InputError(
            f"{what}: float values must lie in [-1, 1], found {low:.4g} to {high:.4g} (pass 0..255 pictures as uint8)"
        )
    return t.clamp(-1.0, 1.0)


def mask_input(data: Any, what: str = "mask") -> Tensor:
    """A mask, 1 (or white) where to fill in -> (1, H, W) float32 in [0, 1].

    Accepted: image file bytes or a PIL image (white = fill in), a bool array, a uint8 array with
    values 0..255 (over 127 = fill in), or a float array in [0, 1]; shaped (H, W), (1, H, W) or
    (1, 1, H, W).
    """
    forms = "image bytes, a PIL image, or an (H, W) bool, uint8 or float array"
    png = _image_bytes(data)
    if png is not None:
        return (_read_image(png, what, "L") > 127).float()[None]
    t = _squeeze_leading(_as_tensor(data, what, forms), 2)
    if t.dim() != 2:
        raise InputError(f"{what}: expected {forms}; got shape {tuple(t.shape)}")
    if t.dtype == torch.bool:
        return t.float()[None]
    if t.dtype == torch.uint8:
        return (t > 127).float()[None]
    t = _finite_float(t, what)
    low, high = float(t.min()), float(t.max())
    if low < 0 or high > 1:
        raise InputError(f"{what}: float values must lie in [0, 1], found {low:.4g} to {high:.4g}")
    return t[None]


def class_map_input(data: Any, n_classes: int, what: str = "segmentation") -> Tensor:
    """A segmentation map of class ids -> (H, W) int64 with values in 0..n_classes-1.

    Accepted: 8-bit single-channel image bytes or a PIL image (pixel value = class id), or an
    integer-valued array shaped (H, W) or (1, H, W).
    """
    forms = "single-channel image bytes, a PIL image or an (H, W) integer array"
    png = _image_bytes(data)
    if png is not None:
        t = _read_image(png, what, "L")
    else:
        t = _squeeze_leading(_as_tensor(data, what, forms), 2)
    if t.dim() != 2:
        raise InputError(f"{what}: expected a single-channel map ({forms}); got shape {tuple(t.shape)}")
    if t.dtype == torch.bool or t.is_complex():
        raise InputError(f"{what}: expected integer class ids, got {t.dtype}")
    if t.is_floating_point() and not bool((torch.isfinite(t) & (t == t.round())).all()):
        raise InputError(f"{what}: class ids must be whole numbers")
    ids = t.long()
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= n_classes:
        bad = low if low < 0 else high
        raise InputError(f"{what}: value {bad} found; classes are 0..{n_classes - 1}")
    return ids


class LayoutObject(BaseModel):
    """One labelled box of a layout: a class id or name, and where it lies in the picture."""

    label: int | str
    box: list[float] = Field(min_length=4, max_length=4, description="[x0, y0, x1, y1] as fractions of the picture")

    @field_validator("box")
    @classmethod
    def _inside(cls, box: list[float]) -> list[float]:
        x0, y0, x1, y1 = box
        if not all(0.0 <= v <= 1.0 for v in box):
            raise ValueError(f"box {box} is outside [0, 1]")
        if not (x0 < x1 and y0 < y1):
            raise ValueError(f"box {box} needs x0 < x1 and y0 < y1")
        return box


_LAYOUT = TypeAdapter(list[LayoutObject])


def layout_input(data: Any, what: str = "layout", max_objects: int = 16) -> list[LayoutObject]:
    """Labelled boxes -> a list of 1 to ``max_objects`` :class:`LayoutObject`.

    Accepted: JSON text or bytes (``[{"label": "red circle", "box": [0.1, 0.1, 0.5, 0.5]}]``), or
    the same as Python objects (a list of dicts or of ``LayoutObject``). Labels are checked against
    the classes by the conditioner that reads them, not here.
    """
    try:
        objects = json.loads(data) if isinstance(data, (bytes, bytearray, str)) else data
        layout = _LAYOUT.validate_python(objects)
    except json.JSONDecodeError as exc:
        raise InputError(f"{what}: not valid JSON ({exc})") from None
    except ValidationError as exc:
        raise InputError(f"{what}: {_problems(exc)}") from None
    if not 1 <= len(layout) <= max_objects:
        raise InputError(f"{what}: expected 1 to {max_objects} objects, got {len(layout)}")
    return layout


def label_input(label: Any, class_names: Sequence[str] | None = None, what: str = "label") -> int:
    """A class id from an id (int or digits) or, when ``class_names`` are known, a class name.

    Names match case-insensitively after trimming; ids must lie in 0..len(class_names)-1 when the
    names are known, else be non-negative.
    """
    names = [name.lower() for name in class_names] if class_names is not None else None
    if isinstance(label, bool) or not isinstance(label, (int, str)):
        raise InputError(f"{what}: expected a class id or name, got {type(label).__name__}")
    if isinstance(label, str) and not label.strip().lstrip("-").isdigit():
        if not names or label.strip().lower() not in names:
            known = ", ".join(class_names or [])
            raise InputError(f"unknown {what} {label!r}; known {what}s: {known or '(class ids only)'}")
        return names.index(label.strip().lower())
    value = int(label)
    if value < 0 or (names is not None and value >= len(names)):
        raise InputError(f"{what} {value} is out of range")
    return value


def prompt_input(data: Any, what: str = "prompt", max_length: int = 1000) -> str:
    """A prompt: a string (or UTF-8 bytes of a text file) of 1 to ``max_length`` characters."""
    if isinstance(data, (bytes, bytearray)):
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{what}: not UTF-8 text") from None
    if not isinstance(data, str):
        raise InputError(f"{what}: expected a string, got {type(data).__name__}")
    if not data:
        raise InputError(f"{what}: must not be empty")
    if len(data) > max_length:
        raise InputError(f"{what}: {len(data)} characters, more than the maximum {max_length}")
    return data


def check_size(picture: Tensor, expected: tuple[int, int], what: str) -> None:
    """Refuse a picture (C, H, W) or (H, W) whose size is not ``expected`` (H, W)."""
    if tuple(picture.shape[-2:]) != tuple(expected) and not (
        picture.dim() == 3 and tuple(picture.shape[:2]) == tuple(expected)
    ):
        raise InputError(f"{what}: expected {expected[0]}x{expected[1]} pixels, got {tuple(picture.shape)}")
