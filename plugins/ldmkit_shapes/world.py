"""The Shapes world: scenes of 1-3 coloured shapes on a grey background, 64x64 RGB.

Everything here is exact and deterministic, so results can be checked by anyone:

- background: flat grey, one integer level in [215, 250] for R, G and B;
- objects: circle (inscribed in its box), square (fills its box) or isosceles triangle (base on the bottom
  edge of the box, apex at the top centre); square boxes with integer side 12-28 and integer position, fully
  inside the picture, at least 2 px of background between any two boxes;
- colours: the six RGB triples of :data:`COLOURS`;
- class id ``shape_index * 6 + colour_index``, named like ``"red circle"`` (:data:`CLASS_NAMES`);
- antialiasing: coverage from 4x4 supersampling of the shape in its box, blended linearly with the background;
- segmentation: 0 background, 1 circle, 2 square, 3 triangle, where coverage >= 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

from ldmkit.errors import InputError

SIZE = 64
"""Picture side in pixels."""

SUPERSAMPLE = 4
"""Antialiasing: coverage is the fraction of SUPERSAMPLE x SUPERSAMPLE sub-pixel samples inside the shape."""

BACKGROUND_RANGE = (215, 250)
"""Inclusive range of the grey background level."""

SIDE_RANGE = (12, 28)
"""Inclusive range of a sampled box side in pixels."""

MIN_GAP = 2
"""Background pixels required between two boxes (along x or along y)."""

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 215),
    "yellow": (235, 200, 30),
    "magenta": (190, 50, 190),
    "cyan": (30, 180, 200),
}

COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)

CLASS_NAMES: list[str] = [f"{colour} {shape}" for shape in SHAPES for colour in COLOUR_NAMES]
"""The 18 class names; index = ``shape_index * 6 + colour_index``."""

_PALETTE = np.array([COLOURS[c] for c in COLOUR_NAMES], dtype=np.float32)  # (6, 3)


def class_label(shape: str, colour: str) -> int:
    """Class id of a ``colour`` ``shape`` pair."""
    return SHAPES.index(shape) * len(COLOUR_NAMES) + COLOUR_NAMES.index(colour)


@dataclass(frozen=True)
class ShapeObject:
    """One object: a shape of a palette colour in the square box ``[x, x + side) x [y, y + side)``."""

    shape: str
    colour: str
    x: int
    y: int
    side: int

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise InputError(f"unknown shape {self.shape!r}; shapes: {', '.join(SHAPES)}")
        if self.colour not in COLOURS:
            raise InputError(f"unknown colour {self.colour!r}; colours: {', '.join(COLOUR_NAMES)}")
        for field in ("x", "y", "side"):
            if not isinstance(getattr(self, field), (int, np.integer)):
                raise InputError(f"object {field} must be an integer, got {getattr(self, field)!r}")
        if self.side < 1 or self.x < 0 or self.y < 0 or self.x + self.side > SIZE or self.y + self.side > SIZE:
            raise InputError(
                f"object box x={self.x}, y={self.y}, side={self.side} is not a non-empty box inside {SIZE}x{SIZE}"
            )

    @property
    def label(self) -> int:
        """Class id ``shape_index * 6 + colour_index``."""
        return class_label(self.shape, self.colour)

    @property
    def name(self) -> str:
        """Class name, e.g. ``"red circle"``."""
        return f"{self.colour} {self.shape}"

    @property
    def box(self) -> tuple[int, int, int, int]:
        """Pixel box ``(x0, y0, x1, y1)``, end-exclusive."""
        return (int(self.x), int(self.y), int(self.x + self.side), int(self.y + self.side))

    @property
    def box_fraction(self) -> list[float]:
        """Box as picture fractions ``[x0, y0, x1, y1]`` with ``x1 = (x + side) / 64``."""
        return [c / SIZE for c in self.box]

    @property
    def centre(self) -> tuple[float, float]:
        """Box centre ``(cx, cy)`` in pixels."""
        return (self.x + self.side / 2, self.y + self.side / 2)


def caption_for(names_and_centres: list[tuple[str, tuple[float, float]]]) -> str:
    """Caption of objects given as ``(name, (cx, cy))``: left to right by centre x (then top to bottom).

    One object: ``"a red circle"``; two: ``"a red circle and a blue square"``; three or more: commas and a
    final ``"and"``.
    """
    ordered = [f"a {name}" for name, _ in sorted(names_and_centres, key=lambda nc: (nc[1][0], nc[1][1]))]
    if not ordered:
        return ""
    if len(ordered) == 1:
        return ordered[0]
    return ", ".join(ordered[:-1]) + " and " + ordered[-1]


@dataclass(frozen=True)
class Scene:
    """A grey ``background`` level and a tuple of :class:`ShapeObject` (sampled scenes are left to right)."""

    background: int
    objects: tuple[ShapeObject, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.background, (int, np.integer)) or not 0 <= self.background <= 255:
            raise InputError(f"background must be an integer grey level in [0, 255], got {self.background!r}")
        object.__setattr__(self, "objects", tuple(self.objects))
        for obj in self.objects:
            if not isinstance(obj, ShapeObject):
                raise InputError(f"scene objects must be ShapeObject, got {type(obj).__name__}")

    @property
    def caption(self) -> str:
        """E.g. ``"a red circle, a blue square and a green triangle"`` (left to right)."""
        return caption_for([(o.name, o.centre) for o in self.objects])

    @property
    def layout(self) -> list[dict]:
        """``[{"label": int, "box": [x0, y0, x1, y1]}, ...]`` with boxes as picture fractions."""
        return [{"label": o.label, "box": o.box_fraction} for o in self.objects]

    @property
    def labels(self) -> list[int]:
        """Class ids of the objects, in order."""
        return [o.label for o in self.objects]

    @property
    def main_object(self) -> ShapeObject:
        """The largest object (the first of the largest on ties): its label is the scene's class label."""
        if not self.objects:
            raise InputError("the scene has no objects")
        return max(self.objects, key=lambda o: o.side)  # max keeps the first of equal sides


@cache
def coverage(shape: str, side: int) -> np.ndarray:
    """Antialiased coverage (side, side) float32 in [0, 1] of ``shape`` in a box of ``side`` pixels.

    Exact fractions of the 4x4 sub-pixel samples inside the shape; positions are integers, so the coverage
    of a shape depends only on its side and is computed once.
    """
    if shape not in SHAPES:
        raise InputError(f"unknown shape {shape!r}; shapes: {', '.join(SHAPES)}")
    n = side * SUPERSAMPLE
    t = (np.arange(n, dtype=np.float64) + 0.5) / SUPERSAMPLE  # sample centres in box pixels
    yy, xx = np.meshgrid(t, t, indexing="ij")  # (n, n)
    half = side / 2
    if shape == "circle":
        inside = (xx - half) ** 2 + (yy - half) ** 2 <= half * half
    elif shape == "square":
        inside = np.ones((n, n), dtype=bool)
    else:  # apex (half, 0), base corners (0, side) and (side, side): half-width at depth y is y / 2
        inside = np.abs(xx - half) <= yy / 2
    cov = inside.reshape(side, SUPERSAMPLE, side, SUPERSAMPLE).mean(axis=(1, 3))  # (side, side)
    cov = cov.astype(np.float32)
    cov.setflags(write=False)
    return cov


def render(scene: Scene) -> np.ndarray:
    """The scene as a uint8 (64, 64, 3) RGB picture.

    Each object is blended over the picture in its box, ``pixel + coverage * (colour - pixel)`` in float32,
    and rounded to the nearest integer.
    """
    img = np.full((SIZE, SIZE, 3), scene.background, dtype=np.uint8)
    for obj in scene.objects:
        cov = coverage(obj.shape, int(obj.side))[..., None]  # (s, s, 1)
        colour = _PALETTE[COLOUR_NAMES.index(obj.colour)]  # (3,)
        x0, y0, x1, y1 = obj.box
        patch = img[y0:y1, x0:x1].astype(np.float32)  # (s, s, 3)
        img[y0:y1, x0:x1] = np.rint(patch + cov * (colour - patch))
    return img


@cache
def _inside(shape: str, side: int) -> np.ndarray:
    """Where the coverage of ``shape`` in a box of ``side`` is at least 0.5: (side, side) bool."""
    mask = coverage(shape, side) >= 0.5
    mask.setflags(write=False)
    return mask


def segmentation(scene: Scene) -> np.ndarray:
    """Per-pixel class map uint8 (64, 64): 0 background, 1 circle, 2 square, 3 triangle (coverage >= 0.5)."""
    seg = np.zeros((SIZE, SIZE), dtype=np.uint8)
    for obj in scene.objects:
        x0, y0, x1, y1 = obj.box
        np.copyto(seg[y0:y1, x0:x1], SHAPES.index(obj.shape) + 1, where=_inside(obj.shape, int(obj.side)))
    return seg


def boxes_apart(a: tuple[int, int, int, int], b: tuple[int, int, int, int], gap: int = MIN_GAP) -> bool:
    """Whether end-exclusive pixel boxes ``a`` and ``b`` have at least ``gap`` background pixels between them."""
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


MAX_OBJECTS = 8
"""Most objects :func:`sample_scene` places (the world spec uses 1-3; more can still be placed quickly)."""

_MAX_TRIES = 64  # placements of one box before the whole placement restarts
_BLOCK = 16  # placements drawn from the generator at a time


def uniform_int(u: float, n: int) -> int:
    """An integer uniform in [0, n) from a uniform float ``u`` in [0, 1)."""
    return min(int(u * n), n - 1)


def sample_scene(rng: np.random.Generator, min_objects: int = 1, max_objects: int = 3) -> Scene:
    """A random scene drawn from ``rng`` (objects sorted left to right).

    Draw order (fixed, so scenes can be reproduced; every integer is ``floor(u * n)`` of a uniform ``u``):
    ``rng.random(2 + 2 * max_objects)`` gives the background level, the object count and a shape and colour
    for each of ``max_objects`` slots (the first ``count`` are used); then blocks of ``rng.random((16, 3))``
    give placements (side, x, y) one row at a time. A box closer than 2 px to an earlier one is redrawn, and
    after 64 failures for one box the whole placement restarts.
    """
    if not 1 <= min_objects <= max_objects <= MAX_OBJECTS:
        raise InputError(f"need 1 <= min_objects <= max_objects <= {MAX_OBJECTS}, got {min_objects} and {max_objects}")
    head = rng.random(2 + 2 * max_objects).tolist()
    background = BACKGROUND_RANGE[0] + uniform_int(head[0], BACKGROUND_RANGE[1] - BACKGROUND_RANGE[0] + 1)
    count = min_objects + uniform_int(head[1], max_objects - min_objects + 1)
    kinds = [
        (
            SHAPES[uniform_int(head[2 + 2 * k], len(SHAPES))],
            COLOUR_NAMES[uniform_int(head[3 + 2 * k], len(COLOUR_NAMES))],
        )
        for k in range(count)
    ]
    n_sides = SIDE_RANGE[1] - SIDE_RANGE[0] + 1
    draws: list[list[float]] = []
    while True:
        boxes: list[tuple[int, int, int, int]] = []
        for _ in range(count):
            for _try in range(_MAX_TRIES):
                if not draws:
                    draws = rng.random((_BLOCK, 3)).tolist()[::-1]  # reversed: pop() takes rows in order
                us, ux, uy = draws.pop()
                side = SIDE_RANGE[0] + uniform_int(us, n_sides)
                x, y = uniform_int(ux, SIZE - side + 1), uniform_int(uy, SIZE - side + 1)
                box = (x, y, x + side, y + side)
                if all(boxes_apart(box, other) for other in boxes):
                    boxes.append(box)
                    break
            else:
                break  # no room left: restart the placement
        if len(boxes) == count:
            break
    objects = [ShapeObject(s, c, x0, y0, x1 - x0) for (s, c), (x0, y0, x1, _) in zip(kinds, boxes, strict=True)]
    objects.sort(key=lambda o: o.centre)
    return Scene(background, tuple(objects))
