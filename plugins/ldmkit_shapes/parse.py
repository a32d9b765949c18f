"""Read a Shapes picture back into objects (colour, shape, box) without any model.

Method: the background is the modal grey; every pixel is explained as a blend ``background + a * (colour -
background)`` of the background with each palette colour, and takes the colour whose blend line passes
closest (so antialiased edges keep their colour). Pixels with ``a >= 0.5`` form the objects' cores;
connected cores of one colour are objects (tiny ones are ignored). Each shape is then fitted to the
object's soft coverage: a box sized so that the shape holds the object's mass (a shape fills its box to 1
as a square, pi/4 as a circle, 1/2 as a triangle) and placed at the coverage centroid (the box centre, or
2/3 down for a triangle, which is not symmetric top to bottom); the shape whose rendered coverage matches
best wins. Mass and centroid survive a blur, so slightly soft pictures still parse.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ldmkit.errors import InputError
from ldmkit_shapes.world import COLOUR_NAMES, COLOURS, SHAPES, caption_for, class_label, coverage

MIN_AREA = 20
"""Cores with fewer pixels are noise, not objects (the smallest real object has about 70)."""

CORE_ALPHA = 0.47
"""Coverage threshold of the core; just below 0.5 so that exact half coverage (rounded to uint8) counts."""

EDGE_ALPHA = 0.08
"""Coverage that still counts towards an object's mass when next to its core (antialiased or blurred edges)."""

_PALETTE = np.array([COLOURS[c] for c in COLOUR_NAMES], dtype=np.float32)  # (6, 3)

_SHAPE_FILL = {SHAPES.index("circle"): np.pi / 4, SHAPES.index("square"): 1.0, SHAPES.index("triangle"): 0.5}
_MAX_FIT_ERROR = 0.35
_MAX_COLOUR_ERROR = 24.0
_MIN_CORE_ALPHA = 0.85
_MAX_STRAY_PIXELS = 8
_STRAY_DISTANCE = 60.0


@dataclass(frozen=True)
class ParsedObject:
    """An object found in a picture.

    ``box`` is ``(x0, y0, x1, y1)`` in picture fractions (like a layout box), ``pixel_box`` the same in
    end-exclusive pixels, ``area`` the number of core pixels. ``fill`` (coverage / box area: square 1, circle
    pi/4, triangle 1/2), ``drop`` (coverage centroid below the box centre / side: a triangle's is 1/6),
    ``fit_error`` (L1 distance of the coverage from the fitted shape / coverage), ``colour_error`` (mean RGB
    distance of core pixels from the palette blend) and ``core_alpha`` (median coverage of the core) explain
    the decision; ``recognized`` says whether they all look like a clean Shapes object.
    """

    colour: str
    shape: str
    box: tuple[float, float, float, float]
    pixel_box: tuple[int, int, int, int]
    area: int
    fill: float
    drop: float
    fit_error: float
    colour_error: float
    core_alpha: float
    recognized: bool

    @property
    def label(self) -> int:
        """Class id ``shape_index * 6 + colour_index``."""
        return class_label(self.shape, self.colour)

    @property
    def name(self) -> str:
        """Class name, e.g. ``"red circle"``."""
        return f"{self.colour} {self.shape}"

    @property
    def centre(self) -> tuple[float, float]:
        """Box centre ``(cx, cy)`` in pixels."""
        x0, y0, x1, y1 = self.pixel_box
        return ((x0 + x1) / 2, (y0 + y1) / 2)


@dataclass(frozen=True)
class PictureParse:
    """Everything read from one picture: objects (left to right), their segmentation, the background grey."""

    objects: list[ParsedObject]
    segmentation: np.ndarray
    background: np.ndarray
    stray_pixels: int

    @property
    def caption(self) -> str:
        """Caption of the parsed objects, worded like :attr:`Scene.caption`."""
        return caption_for([(o.name, o.centre) for o in self.objects])

    @property
    def valid(self) -> bool:
        """1-3 recognized objects, non-overlapping boxes, and no unexplained foreground."""
        if not 1 <= len(self.objects) <= 3 or self.stray_pixels > _MAX_STRAY_PIXELS:
            return False
        if not all(o.recognized for o in self.objects):
            return False
        boxes = [o.pixel_box for o in self.objects]
        return all(
            a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
            for i, a in enumerate(boxes)
            for b in boxes[i + 1 :]
        )


def check_picture(picture: np.ndarray) -> np.ndarray:
    """``picture`` as a uint8 (H, W, 3) array, or InputError naming what is wrong."""
    arr = np.asarray(picture)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise InputError(f"a picture must be (H, W, 3) RGB, got shape {tuple(arr.shape)}")
    if arr.dtype != np.uint8:
        raise InputError(f"a picture must be uint8, got {arr.dtype}")
    return arr


def estimate_background(picture: np.ndarray) -> np.ndarray:
    """The background colour (3,) float: the modal level among near-grey pixels (per-pixel median as fallback)."""
    grey = (picture.max(axis=2) - picture.min(axis=2)) <= 12  # uint8: max >= min, no wrap-around
    if grey.sum() < 16:
        return np.median(picture.reshape(-1, 3).astype(np.float32), axis=0)
    p = picture[grey].astype(np.float32)  # (n, 3)
    levels = np.rint(p.mean(axis=1)).astype(np.int64)  # (n,)
    hist = np.bincount(levels, minlength=256).astype(np.float32)
    smooth = np.convolve(hist, np.ones(5, dtype=np.float32), mode="same")  # tolerate noisy backgrounds
    mode = int(np.argmax(smooth))
    return p[np.abs(levels - mode) <= 3].mean(axis=0)


def _blend_fit(picture: np.ndarray, background: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel and palette colour: coverage a (H, W, 6) and distance from the blend line (H, W, 6)."""
    d = picture.astype(np.float32) - background  # (H, W, 3)
    v = _PALETTE - background  # (6, 3)
    vv = np.maximum((v * v).sum(axis=1), 1.0)  # (6,)
    dv = d @ v.T  # (H, W, 6)
    alpha = np.clip(dv / vv, 0.0, 1.0)  # (H, W, 6)
    # |d - a v|^2 expanded, so that no (H, W, 6, 3) array is needed
    sq = (d * d).sum(axis=2, keepdims=True) - 2 * alpha * dv + alpha * alpha * vv  # (H, W, 6)
    return alpha, np.sqrt(np.maximum(sq, 0.0))


def connected_components(groups: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of equal non-negative values of ``groups`` (H, W) int; -1 marks outside.

    Returns labels (H, W) int64 (0 = outside, components numbered from 1) and their count.
    """
    h, w = groups.shape
    inside = groups >= 0
    index = np.arange(h * w, dtype=np.int64).reshape(h, w)
    big = h * w
    labels = np.where(inside, index, big)  # each pixel starts as its own component
    pad_groups = np.pad(groups, 1, constant_values=-1)
    same = [  # neighbour (dy, dx) is in the same group
        (dy, dx, inside & (pad_groups[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] == groups))
        for dy in (-1, 0, 1)
        for dx in (-1, 0, 1)
        if dy or dx
    ]
    while True:  # hook each pixel to its smallest neighbouring label, then jump pointers to the roots
        padded = np.pad(labels, 1, constant_values=big)
        best = labels.copy()
        for dy, dx, ok in same:
            np.minimum(best, np.where(ok, padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w], big), out=best)
        flat = np.append(best.ravel(), big)
        while True:
            jumped = flat[flat]
            if np.array_equal(jumped, flat):
                break
            flat = jumped
        best = flat[:-1].reshape(h, w)
        if np.array_equal(best, labels):
            break
        labels = best
    roots, numbered = np.unique(labels, return_inverse=True)
    numbered = numbered.reshape(h, w) + 1
    numbered[~inside] = 0
    count = len(roots) - (1 if roots[-1] == big else 0)
    return numbered, count


def _dilate(mask: np.ndarray) -> np.ndarray:
    """Boolean (H, W) mask grown by one pixel in all 8 directions."""
    h, w = mask.shape
    padded = np.pad(mask, 1)
    out = mask.copy()
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            out |= padded[dy : dy + h, dx : dx + w]
    return out


def _fit_shape(soft: np.ndarray, shape: int) -> tuple[tuple[int, int, int, int], float]:
    """Box of ``shape`` with the mass and centroid of ``soft`` (H, W), and its L1 misfit / mass."""
    h, w = soft.shape
    mass = float(soft.sum())
    ys, xs = np.arange(h) + 0.5, np.arange(w) + 0.5
    cx = float((soft.sum(axis=0) * xs).sum() / mass)
    cy = float((soft.sum(axis=1) * ys).sum() / mass)
    side = int(np.clip(np.rint(np.sqrt(mass / _SHAPE_FILL[shape])), 1, min(h, w)))
    depth = 2 / 3 if SHAPES[shape] == "triangle" else 1 / 2  # where the centroid sits in the box
    x0 = int(np.clip(np.rint(cx - side / 2), 0, w - side))
    y0 = int(np.clip(np.rint(cy - depth * side), 0, h - side))
    template = np.zeros((h, w), dtype=np.float32)
    template[y0 : y0 + side, x0 : x0 + side] = coverage(SHAPES[shape], side)
    return (x0, y0, x0 + side, y0 + side), float(np.abs(soft - template).sum() / mass)


def _describe(
    colour: int, core: np.ndarray, alpha: np.ndarray, resid: np.ndarray, contrast: float
) -> ParsedObject | None:
    """The object of one core (H, W bool) of palette colour ``colour`` (``contrast``: its distance from the
    background); None if it has no coverage."""
    h, w = core.shape
    a = alpha[..., colour]  # (H, W)
    # soft coverage of this colour on the core and the ring around it (antialiased or blurred edges)
    clean = resid[..., colour] <= np.maximum(12.0, 0.5 * a * contrast)
    soft = np.where(core | (_dilate(core) & clean & (a >= EDGE_ALPHA)), a, 0.0).astype(np.float32)  # (H, W)
    mass = float(soft.sum())
    if mass <= 0:
        return None
    fits = [_fit_shape(soft, k) for k in range(len(SHAPES))]
    shape = int(np.argmin([err for _, err in fits]))
    (x0, y0, x1, y1), fit_error = fits[shape]
    side = x1 - x0
    centroid_y = float((soft.sum(axis=1) * (np.arange(h) + 0.5)).sum() / mass)
    colour_error = float(resid[..., colour][core].mean())
    core_alpha = float(np.median(a[core]))
    recognized = bool(
        fit_error <= _MAX_FIT_ERROR
        and side >= 8
        and colour_error <= _MAX_COLOUR_ERROR
        and core_alpha >= _MIN_CORE_ALPHA
    )
    return ParsedObject(
        colour=COLOUR_NAMES[colour],
        shape=SHAPES[shape],
        box=(x0 / w, y0 / h, x1 / w, y1 / h),
        pixel_box=(x0, y0, x1, y1),
        area=int(core.sum()),
        fill=mass / (side * side),
        drop=(centroid_y - (y0 + y1) / 2) / side,
        fit_error=fit_error,
        colour_error=colour_error,
        core_alpha=core_alpha,
        recognized=recognized,
    )


def analyse_picture(picture: np.ndarray, min_area: int = MIN_AREA) -> PictureParse:
    """Parse ``picture`` (uint8 (H, W, 3)) into objects, a segmentation map and a stray-pixel count."""
    picture = check_picture(picture)
    h, w, _ = picture.shape
    background = estimate_background(picture)
    alpha, resid = _blend_fit(picture, background)
    nearest = np.argmin(resid, axis=2)  # (H, W)
    best_alpha = np.take_along_axis(alpha, nearest[..., None], axis=2)[..., 0]  # (H, W)
    labels, count = connected_components(np.where(best_alpha >= CORE_ALPHA, nearest, -1))
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    found: list[tuple[ParsedObject, np.ndarray]] = []
    for k in np.nonzero(sizes[1:] >= min_area)[0] + 1:
        core = labels == k
        colour = int(nearest[core][0])
        contrast = float(np.linalg.norm(_PALETTE[colour] - background))
        obj = _describe(colour, core, alpha, resid, contrast)
        if obj is not None:
            found.append((obj, core))
    found.sort(key=lambda oc: oc[0].centre)
    seg = np.zeros((h, w), dtype=np.uint8)
    explained = np.zeros((h, w), dtype=bool)
    for obj, core in found:
        seg[core] = SHAPES.index(obj.shape) + 1
        x0, y0, x1, y1 = obj.pixel_box
        explained[max(y0 - 1, 0) : y1 + 1, max(x0 - 1, 0) : x1 + 1] = True
    far = np.linalg.norm(picture.astype(np.float32) - background, axis=2) > _STRAY_DISTANCE
    stray = int((far & ~explained).sum())
    return PictureParse([o for o, _ in found], seg, background, stray)


def parse_picture(picture: np.ndarray, min_area: int = MIN_AREA) -> list[ParsedObject]:
    """The objects of a uint8 (H, W, 3) Shapes picture, left to right (by box centre x, then y)."""
    return analyse_picture(picture, min_area).objects
