"""``ShapesDataset``: an endless, file-free source of Shapes training samples, deterministic from a seed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, Field, ValidationError, model_validator
from torch.utils.data import Dataset

import ldmkit
from ldmkit.checks import format_validation_error
from ldmkit.errors import InputError, SpecError
from ldmkit_shapes.world import CLASS_NAMES, SIZE, Scene, render, sample_scene, segmentation, uniform_int

LOWRES_FACTOR = 4
"""Low-resolution inputs are the image area-downsampled by this factor (64 -> 16)."""


class SampleIndexError(InputError, IndexError):
    """A sample index outside the dataset (an IndexError too, so iteration stops)."""


class ShapesDataset(Dataset):
    """Virtual dataset of Shapes scenes; sample ``i`` is a pure function of ``(seed, i)``.

    Sample ``i`` draws from ``numpy.random.default_rng([seed, i])``: first ``rng.random(5)`` (is the sample
    forced to a single object? the inpainting rectangle's width, height, x and y, each ``floor(u * n)``),
    then the scene (:func:`sample_scene`).
    """

    example_params: ClassVar[dict[str, Any]] = {"seed": 3, "size": 10}
    example_item_shapes: ClassVar[dict[str, tuple[int, ...]]] = {
        "image": (3, 64, 64),
        "segmentation": (64, 64),
        "lowres": (3, 16, 16),
        "mask": (1, 64, 64),
    }
    example_value_ranges: ClassVar[dict[str, tuple[float, float]]] = {
        "image": (-1, 1),
        "lowres": (-1, 1),
        "mask": (0, 1),
        "segmentation": (0, 3),
    }

    name: ClassVar[str] = "shapes"

    class Params(ldmkit.Params):
        seed: int = Field(0, ge=0)
        """Sample i is a pure function of (seed, i)."""
        size: int = Field(1_000_000, ge=1)
        """Number of samples (the dataset's length)."""
        min_objects: int = Field(1, ge=1, le=3)
        """Fewest objects in a scene."""
        max_objects: int = Field(3, ge=1, le=3)
        """Most objects in a scene."""
        single_object: bool = False
        """Every scene has exactly one object (class-conditional training)."""
        single_object_fraction: float = Field(0.0, ge=0.0, le=1.0)
        """Fraction of samples forced to exactly one object (the rest use min/max_objects)."""
        multi_object_label: int | None = Field(None, ge=len(CLASS_NAMES))
        """``class_label`` of scenes with more than one object. None: the largest object's class. An id
        outside the 18 classes (the label conditioner's ``null_class``, 18 in the Shapes model) pairs each
        class label with a one-object picture only, so a label learns to mean exactly one object; in
        'one-part' training a multi-object sample whose label part is kept becomes an unconditional one."""
        mask_min: int = Field(16, ge=1, le=SIZE)
        """Smallest side of an inpainting mask, in pixels."""
        mask_max: int = Field(40, ge=1, le=SIZE)
        """Largest side of an inpainting mask, in pixels."""

        @model_validator(mode="after")
        def _ranges(self) -> ShapesDataset.Params:
            if self.min_objects > self.max_objects:
                raise ValueError(f"min_objects ({self.min_objects}) exceeds max_objects ({self.max_objects})")
            if self.mask_min > self.mask_max:
                raise ValueError(f"mask_min ({self.mask_min}) exceeds mask_max ({self.mask_max})")
            return self

    def __init__(self, params: ShapesDataset.Params | None = None) -> None:
        self.params = params if params is not None else type(self).Params()

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | ShapesDataset.Params | None = None) -> ShapesDataset:
        """Validate ``params`` and build the dataset; invalid params raise SpecError naming the field."""
        if not isinstance(params, BaseModel):
            try:
                params = cls.Params.model_validate(dict(params or {}))
            except ValidationError as exc:
                raise SpecError(f"dataset {cls.name!r}: {format_validation_error(exc, 'params')}") from None
        return cls(params)

    def __len__(self) -> int:
        return self.params.size

    # -- raw samples ----------------------------------------------------------------------------
    def _index(self, i: Any) -> int:
        try:
            index = int(i)
        except (TypeError, ValueError):
            raise SampleIndexError(f"sample index must be an integer, got {i!r}") from None
        n = self.params.size
        if not -n <= index < n:
            raise SampleIndexError(f"sample index {index} is out of range for a dataset of {n} samples")
        return index % n

    def draw(self, i: int) -> tuple[Scene, tuple[int, int, int, int]]:
        """Scene and inpainting rectangle ``(x0, y0, x1, y1)`` (end-exclusive pixels) of sample ``i``."""
        p = self.params
        rng = np.random.default_rng([p.seed, self._index(i)])
        u_single, uw, uh, ux, uy = rng.random(5).tolist()
        w = p.mask_min + uniform_int(uw, p.mask_max - p.mask_min + 1)
        h = p.mask_min + uniform_int(uh, p.mask_max - p.mask_min + 1)
        x, y = uniform_int(ux, SIZE - w + 1), uniform_int(uy, SIZE - h + 1)
        single = p.single_object or u_single < p.single_object_fraction
        scene = sample_scene(rng, 1, 1) if single else sample_scene(rng, p.min_objects, p.max_objects)
        return scene, (x, y, x + w, y + h)

    def scene(self, i: int) -> Scene:
        """The scene of sample ``i``."""
        return self.draw(i)[0]

    def class_label(self, scene: Scene) -> int:
        """The class label a sample of ``scene`` carries (see ``Params.multi_object_label``)."""
        label = self.params.multi_object_label
        return scene.main_object.label if label is None or len(scene.objects) == 1 else label

    # -- tensors --------------------------------------------------------------------------------
    def __getitem__(self, i: int) -> dict[str, Any]:
        """One sample: image, class_label, caption, layout, segmentation, lowres, mask (see :meth:`batch`)."""
        out = self.batch([i])
        return {k: (v[0] if k != "class_label" else int(v[0])) for k, v in out.items()}

    def batch(self, indices: Sequence[int]) -> dict[str, Any]:
        """A collated batch of samples, built in one pass (faster than collating ``__getitem__`` results).

        Returns ``image`` (B, 3, 64, 64) float in [-1, 1], ``class_label`` (B,) long (the largest object, first
        on ties; ``multi_object_label`` for scenes of several objects when that is set), ``caption`` list[str],
        ``layout`` list of ``[{"label", "box"}]`` (boxes as fractions), ``segmentation`` (B, 64, 64) long,
        ``lowres`` (B, 3, 16, 16) float in [-1, 1] (the image area-downsampled 4x) and ``mask``
        (B, 1, 64, 64) float (1 = region to fill in).
        """
        n = len(indices)
        pictures = np.empty((n, SIZE, SIZE, 3), dtype=np.uint8)
        seg = np.empty((n, SIZE, SIZE), dtype=np.uint8)
        mask = np.zeros((n, 1, SIZE, SIZE), dtype=np.float32)
        labels, captions, layouts = [], [], []
        for k, i in enumerate(indices):
            scene, (x0, y0, x1, y1) = self.draw(i)
            pictures[k] = render(scene)
            seg[k] = segmentation(scene)
            mask[k, 0, y0:y1, x0:x1] = 1.0
            labels.append(self.class_label(scene))
            captions.append(scene.caption)
            layouts.append(scene.layout)
        image = torch.from_numpy(pictures.transpose(0, 3, 1, 2).copy()).float().div_(127.5).sub_(1.0)  # (B, 3, 64, 64)
        return {
            "image": image,
            "class_label": torch.tensor(labels, dtype=torch.long),  # (B,)
            "caption": captions,
            "layout": layouts,
            "segmentation": torch.from_numpy(seg).long(),  # (B, 64, 64)
            "lowres": area_downsample(image, LOWRES_FACTOR),  # (B, 3, 16, 16)
            "mask": torch.from_numpy(mask),  # (B, 1, 64, 64)
        }

    @staticmethod
    def collate(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """``collate_fn`` for a DataLoader over this dataset: stacks tensors, keeps captions and layouts as lists."""
        if not samples:
            raise InputError("cannot collate an empty list of samples")
        out: dict[str, Any] = {}
        for key in samples[0]:
            values = [s[key] for s in samples]
            if isinstance(values[0], torch.Tensor):
                out[key] = torch.stack(values)
            elif key == "class_label":
                out[key] = torch.tensor(values, dtype=torch.long)
            else:
                out[key] = values
        return out


def area_downsample(images: torch.Tensor, factor: int) -> torch.Tensor:
    """Mean over ``factor`` x ``factor`` blocks: (B, C, H, W) -> (B, C, H/factor, W/factor)."""
    h, w = images.shape[-2:]
    if h % factor or w % factor:
        raise InputError(f"image size {h}x{w} is not divisible by {factor}")
    return torch.nn.functional.avg_pool2d(images, factor)
