"""Picture-like task inputs from what Python callers hold: file bytes, PIL images, arrays or tensors.

Each reader returns one canonical tensor, or raises :class:`InputError` naming the input and the
accepted forms, so that a picture in the wrong range or layout is refused rather than sampled from.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ldmkit.errors import InputError
from ldmkit_tasks.base import read_png, to_signed

# float pictures may overshoot [-1, 1] by rounding (e.g. after a resize), not by a wrong scale
_RANGE_SLACK = 1e-3


def _pil_bytes(data: Any) -> bytes | None:
    """PNG bytes of a PIL image (None if ``data`` is not one), so it takes the same path as a file."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a dependency
        return None
    if not isinstance(data, Image.Image):
        return None
    import io

    buffer = io.BytesIO()
    data.save(buffer, format="PNG")
    return buffer.getvalue()


def _as_tensor(data: Any, what: str, forms: str) -> Tensor:
    if isinstance(data, Tensor):
        return data.detach().cpu()
    try:
        return torch.as_tensor(data)
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


def image_input(data: Any, what: str = "image") -> Tensor:
    """An RGB picture -> (3, H, W) float32 in [-1, 1].

    Accepted: image file bytes, a PIL image, a uint8 array (H, W, 3) or (3, H, W) with values
    0..255, or a float tensor (3, H, W) or (1, 3, H, W) with values in [-1, 1].
    """
    forms = "image bytes, a PIL image, a uint8 (H, W, 3) array or a float (3, H, W) tensor in [-1, 1]"
    png = bytes(data) if isinstance(data, (bytes, bytearray)) else _pil_bytes(data)
    if png is not None:
        return to_signed(read_png(png, what, "RGB"))
    t = _squeeze_leading(_as_tensor(data, what, forms), 3)
    if t.dtype == torch.uint8 and t.dim() == 3 and t.shape[-1] == 3 and t.shape[0] != 3:
        return to_signed(t)  # (H, W, 3), as numpy and PIL hold pictures
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
    png = bytes(data) if isinstance(data, (bytes, bytearray)) else _pil_bytes(data)
    if png is not None:
        return (read_png(png, what, "L") > 127).float()[None]
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
    """A map of class ids -> (H, W) int64 with values in 0..n_classes-1.

    Accepted: 8-bit single-channel image bytes or a PIL image (pixel value = class id), or an
    integer-valued array shaped (H, W) or (1, H, W).
    """
    forms = "single-channel image bytes, a PIL image or an (H, W) integer array"
    png = bytes(data) if isinstance(data, (bytes, bytearray)) else _pil_bytes(data)
    if png is not None:
        t = read_png(png, what, "L")
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
