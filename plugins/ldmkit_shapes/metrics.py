"""Fidelity metrics for generated Shapes pictures, computed by parsing them (no model involved).

Every metric takes ``pictures`` as a uint8 (N, H, W, 3) array, a list of uint8 (H, W, 3) arrays, a float
tensor (N, 3, H, W) in [-1, 1] (what pipelines return), or the :class:`PictureParse` results of
:func:`parse_all` (to parse a set once and score it several ways).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ldmkit.errors import InputError
from ldmkit_shapes.parse import PictureParse, analyse_picture, check_picture

_CLASSES = (1, 2, 3)  # foreground classes of a segmentation map


def to_pictures(pictures: Any) -> list[np.ndarray]:
    """Pictures as a list of uint8 (H, W, 3) arrays (float NCHW in [-1, 1] is rescaled and rounded)."""
    if isinstance(pictures, torch.Tensor):
        t = pictures.detach().cpu()
        if t.ndim == 3:
            t = t[None]
        if t.dtype == torch.uint8:
            return [check_picture(p) for p in t.numpy()]
        if t.ndim != 4 or t.shape[1] != 3:
            raise InputError(f"a picture tensor must be (N, 3, H, W) in [-1, 1], got shape {tuple(t.shape)}")
        t = ((t.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # (N, 3, H, W)
        return list(t.permute(0, 2, 3, 1).numpy())
    if isinstance(pictures, np.ndarray) and pictures.ndim == 3:
        return [check_picture(pictures)]
    return [check_picture(p) for p in pictures]


def parse_all(pictures: Any) -> list[PictureParse]:
    """Parse every picture once (PictureParse items pass through unchanged)."""
    if isinstance(pictures, (list, tuple)) and all(isinstance(p, PictureParse) for p in pictures):
        return list(pictures)
    return [analyse_picture(p) for p in to_pictures(pictures)]


def _paired(pictures: Any, targets: Sequence[Any], what: str) -> list[PictureParse]:
    parses = parse_all(pictures)
    if len(parses) != len(targets):
        raise InputError(f"got {len(parses)} pictures but {len(targets)} {what}")
    if not parses:
        raise InputError("no pictures to score")
    return parses


def class_accuracy(pictures: Any, labels: Sequence[int] | torch.Tensor) -> float:
    """Fraction of pictures that show exactly one object, of the requested class id.

    A label names one object: a picture with a second object (even one more of the class) or none is wrong.
    """
    labels = [int(v) for v in (labels.tolist() if isinstance(labels, torch.Tensor) else labels)]
    parses = _paired(pictures, labels, "labels")
    hits = sum(len(p.objects) == 1 and p.objects[0].label == label for p, label in zip(parses, labels, strict=True))
    return hits / len(parses)


def _normalise_caption(text: str) -> str:
    return " ".join(text.lower().replace(",", " , ").split()).rstrip(" .")


def caption_exact_match(pictures: Any, captions: Sequence[str]) -> float:
    """Fraction of pictures whose parsed objects, captioned left to right, give exactly the requested caption
    (case, spacing and a final full stop ignored)."""
    parses = _paired(pictures, captions, "captions")
    hits = sum(_normalise_caption(p.caption) == _normalise_caption(c) for p, c in zip(parses, captions, strict=True))
    return hits / len(parses)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two ``[x0, y0, x1, y1]`` boxes."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _layout_items(layout: Any) -> list[tuple[int, list[float]]]:
    items = []
    for item in layout:
        label, box = (item["label"], item["box"]) if isinstance(item, Mapping) else item
        box = [float(v) for v in box]
        if len(box) != 4:
            raise InputError(f"a layout box must be [x0, y0, x1, y1], got {box}")
        items.append((int(label), box))
    return items


def layout_iou(pictures: Any, layouts: Sequence[Any]) -> float:
    """Mean over all requested boxes of the IoU with the best parsed box of the same label (0 if none).

    A layout is a list of ``{"label": int, "box": [x0, y0, x1, y1]}`` (fractions) or ``(label, box)`` pairs.
    """
    parses = _paired(pictures, layouts, "layouts")
    scores = []
    for parse, layout in zip(parses, layouts, strict=True):
        for label, box in _layout_items(layout):
            scores.append(max((box_iou(box, o.box) for o in parse.objects if o.label == label), default=0.0))
    if not scores:
        raise InputError("the layouts request no boxes")
    return float(np.mean(scores))


def semantic_fg_iou(pictures: Any, maps: Any) -> float:
    """IoU of the parsed segmentation with the requested maps, per foreground class (circle, square,
    triangle) over the whole set, averaged over the classes that occur in either."""
    maps = maps.detach().cpu().numpy() if isinstance(maps, torch.Tensor) else maps
    maps = [np.asarray(m) for m in maps]
    parses = _paired(pictures, maps, "maps")
    inter = np.zeros(len(_CLASSES))
    union = np.zeros(len(_CLASSES))
    for parse, target in zip(parses, maps, strict=True):
        if target.shape != parse.segmentation.shape:
            raise InputError(f"a map of shape {target.shape} does not fit a picture of {parse.segmentation.shape}")
        for k, cls in enumerate(_CLASSES):
            got, want = parse.segmentation == cls, target == cls
            inter[k] += (got & want).sum()
            union[k] += (got | want).sum()
    present = union > 0
    if not present.any():
        raise InputError("neither the maps nor the pictures contain any foreground")
    return float((inter[present] / union[present]).mean())


def valid_scene_rate(pictures: Any) -> float:
    """Fraction of pictures that read as valid scenes: 1-3 objects, each a clean palette colour and a
    recognizable shape, boxes not overlapping, no unexplained foreground."""
    parses = parse_all(pictures)
    if not parses:
        raise InputError("no pictures to score")
    return sum(p.valid for p in parses) / len(parses)


def valid_fill_rate(pictures: Any) -> float:
    """Fraction of inpainted pictures whose hole holds a valid object or background: a valid scene, or one
    emptied cleanly of its only object (no objects, no stray foreground pixels)."""
    parses = parse_all(pictures)
    if not parses:
        raise InputError("no pictures to score")
    return sum(p.valid or (not p.objects and p.stray_pixels == 0) for p in parses) / len(parses)


def _as_float_array(x: Any) -> np.ndarray:
    return x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)


def psnr(a: Any, b: Any, mask: Any = None, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB between images ``a`` and ``b`` (mean over images for batches).

    ``data_range`` defaults to 255 for uint8 inputs and 2 for float inputs (images in [-1, 1]). With ``mask``
    (broadcastable to the images, or their shape without the channel axis), only pixels where mask > 0
    count. Identical images give ``inf``. A 4-d input is a batch (first axis), anything else one image.
    """
    is_uint8 = getattr(a, "dtype", None) in (np.uint8, torch.uint8)
    peak = float(data_range) if data_range is not None else (255.0 if is_uint8 else 2.0)
    x, y = _as_float_array(a), _as_float_array(b)
    if x.shape != y.shape:
        raise InputError(f"psnr needs images of one shape, got {x.shape} and {y.shape}")
    weights = np.ones_like(x)
    if mask is not None:
        m = _as_float_array(mask) > 0
        if m.shape == x.shape[:-1]:  # (N, H, W) mask for (N, H, W, C) images
            m = m[..., None]
        try:
            weights = np.broadcast_to(m, x.shape).astype(np.float64)
        except ValueError:
            raise InputError(f"mask of shape {m.shape} does not fit images of shape {x.shape}") from None
    if x.ndim != 4:
        x, y, weights = x[None], y[None], weights[None]
    values = []
    for xi, yi, wi in zip(x, y, weights, strict=True):
        count = wi.sum()
        if count == 0:
            raise InputError("the mask selects no pixels")
        mse = float((wi * (xi - yi) ** 2).sum() / count)
        values.append(math.inf if mse == 0 else 10.0 * math.log10(peak * peak / mse))
    return float(np.mean(values))
