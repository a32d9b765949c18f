"""Picture sizes: which ones a pipeline can make, and conditioning fitted to the latent of the size asked for.

A latent diffusion model's denoiser is convolutional, so it samples latents of other sizes than it was
trained on (the paper samples its convolutional LDMs at larger sizes, section 4.3.2). A picture of
(H, W) pixels is a latent of (H / f, W / f) cells, ``f`` the first stage's downsampling; a UNet halves
the latent at each level but the last, so its sides must also be multiples of the denoiser's
``size_multiple``. :func:`size_multiple` is the product: every side of a picture must be a multiple of it.

Conditioning made at the training size (the constant map a spatial conditioner gives for "no map")
is fitted to the latent by :func:`fit_concat`; a map that varies over space is never resized, since
what it says would move: it must come from an input of the picture's size.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from ldmkit.conditioning import Conditioning
from ldmkit.errors import InputError

__all__ = ["check_picture_size", "common_map_size", "fit_concat", "latent_size_for", "size_multiple", "varies"]


def size_multiple(pipeline: Any) -> int:
    """The number every side (pixels) of the pipeline's pictures must be a multiple of.

    The first stage's downsampling times the denoiser's ``size_multiple`` (1 if it declares none).
    """
    return int(pipeline.first_stage.downsample) * int(getattr(pipeline.denoiser, "size_multiple", 1))


def _examples(multiple: int, side: int) -> str:
    below = max(multiple, side // multiple * multiple)
    return f"{below} or {below + multiple}" if below != side else str(side)


def check_picture_size(pipeline: Any, size: Any, what: str = "size") -> tuple[int, int]:
    """``size`` (H, W) in pixels as ints, refused unless each side is a positive multiple of :func:`size_multiple`.

    :raises InputError: naming the valid multiples (and the nearest ones) and where ``what`` came from.
    """
    if (
        isinstance(size, (str, bytes))
        or not isinstance(size, (tuple, list))
        or len(size) != 2
        or any(isinstance(side, bool) or not hasattr(side, "__index__") for side in size)
    ):
        raise InputError(f"{what} must be (height, width) in pixels, got {size!r}")
    height, width = (int(side) for side in size)
    multiple = size_multiple(pipeline)
    factor = int(pipeline.first_stage.downsample)
    bad = [side for side in (height, width) if side < 1 or side % multiple]
    if bad:
        why = f"the first stage's factor {factor}"
        if multiple != factor:
            why += f" times the denoiser's {multiple // factor}"
        near = _examples(multiple, max(bad[0], 1))
        raise InputError(
            f"{what}: a picture of {height}x{width} pixels; each side must be a positive multiple of {multiple} "
            f"({why}): e.g. {near} instead of {bad[0]}"
        )
    return height, width


def latent_size_for(pipeline: Any, size: Any, what: str = "size") -> tuple[int, int]:
    """The latent (h, w) of a picture of ``size`` (H, W) pixels, checked by :func:`check_picture_size`."""
    height, width = check_picture_size(pipeline, size, what)
    factor = int(pipeline.first_stage.downsample)
    return height // factor, width // factor


def varies(maps: Tensor) -> bool:
    """Whether maps (B, C, h, w) vary over space (a constant map is the same map at any size)."""
    return not torch.equal(maps, maps[:, :, :1, :1].expand_as(maps))


def common_map_size(conds: list[Conditioning]) -> tuple[int, int] | None:
    """The size (h, w) the ``concat`` maps of several conditionings are to share before they are merged.

    The size of the maps that vary over space (drawn from an input, possibly at another size than the
    training one), else of the first maps; None if no conditioning has maps. Fit each with :func:`fit_concat`.
    """
    maps = [cond.concat for cond in conds if cond.concat is not None]
    if not maps:
        return None
    drawn = [m for m in maps if varies(m)]
    first = (drawn or maps)[0]
    return int(first.shape[-2]), int(first.shape[-1])


def _fit(maps: Tensor, latent: tuple[int, int], which: str) -> Tensor:
    """``maps`` (B, C, h, w) at the latent size: as they are, or expanded if constant over space."""
    if tuple(maps.shape[-2:]) == latent:
        return maps
    if not varies(maps):
        return maps[:, :, :1, :1].expand(*maps.shape[:2], *latent).contiguous()  # (B, C, h', w'): the same map
    raise InputError(
        f"the {which} conditioning maps are {maps.shape[-2]}x{maps.shape[-1]} cells but the latent is "
        f"{latent[0]}x{latent[1]}: a map that varies over space is drawn at one size (give the task's "
        "spatial input at the size of the picture, or sample at the size the maps were made for)"
    )


def fit_concat(cond: Conditioning, latent: tuple[int, int], which: str = "concat") -> Conditioning:
    """``cond`` with its ``concat`` maps fitted to the latent (h, w): constant maps expanded, others checked.

    :raises InputError: for maps of another size that vary over space.
    """
    if cond.concat is None or tuple(cond.concat.shape[-2:]) == tuple(latent):
        return cond
    return replace(cond, concat=_fit(cond.concat, (int(latent[0]), int(latent[1])), which))
