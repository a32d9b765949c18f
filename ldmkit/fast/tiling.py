"""Tiled decoding: pictures larger than memory allows, decoded in overlapping tiles and blended.

Tiles of ``tile`` x ``tile`` latent pixels (the last one in a row or column is moved back so that
it ends at the border) overlap by at least ``overlap`` latent pixels. Each tile is decoded from a
window that adds ``pad`` latent pixels of context on every side (kept inside the picture, so every
window has the same shape), and the context is cropped away again. Each decoded tile is weighted
by a ramp that rises linearly across its overlap with the previous tile and falls across its
overlap with the next one; the weighted tiles are summed and divided by the summed weights, so the
seams vanish. Inside a window the decoder sees only that window, so normalisation statistics and
attention are local: the result approximates the untiled decode, closely when windows are large
compared with the structures in the picture.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ldmkit.errors import InputError


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of length ``tile`` covering ``0..size`` with at least ``overlap`` shared."""
    if size <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride))
    return starts + [size - tile]


def _ramp(length: int, rise: int, fall: int, device: torch.device) -> Tensor:
    """(length,) weights: linear up over the first ``rise`` entries, down over the last ``fall``, 1 between."""
    w = torch.ones(length, dtype=torch.float32, device=device)
    i = torch.arange(length, dtype=torch.float32, device=device)
    if rise > 0:
        w = torch.minimum(w, (i + 0.5) / rise)
    if fall > 0:
        w = torch.minimum(w, (length - i - 0.5) / fall)
    return w


def _axis_weights(starts: list[int], tile: int, scale: int, device: torch.device) -> list[Tensor]:
    """One ramp (in output pixels) per tile along an axis, from its actual overlaps with its neighbours."""
    ramps = []
    for k, start in enumerate(starts):
        rise = starts[k - 1] + tile - start if k > 0 else 0
        fall = start + tile - starts[k + 1] if k + 1 < len(starts) else 0
        ramps.append(_ramp(tile * scale, rise * scale, fall * scale, device))
    return ramps


def _windows(size: int, tile: int, overlap: int, pad: int) -> tuple[list[int], list[int], int]:
    """Tile starts, the start of each tile's decoding window, and the window length, along one axis."""
    starts = tile_starts(size, tile, overlap)
    window = min(size, tile + 2 * pad)
    return starts, [min(max(s - pad, 0), size - window) for s in starts], window


def tiled_decode(
    decode: Callable[[Tensor], Tensor], latents: Tensor, *, tile: int, overlap: int = 8, pad: int = 8
) -> Tensor:
    """Decode (B, C, h, w) latents tile by tile with ``decode`` and blend the tiles; returns float32 images.

    ``decode`` maps (B, C, th, tw) latents to (B, 3, th*f, tw*f) images (``f`` is read from the first
    window). Latents no larger than ``tile`` are decoded in one call.
    """
    if latents.dim() != 4:
        raise InputError(f"latents must be (B, C, h, w), got shape {tuple(latents.shape)}")
    if tile < 1 or overlap < 0 or pad < 0 or 2 * overlap >= tile:
        raise InputError(
            f"need tile >= 1, pad >= 0 and 0 <= overlap < tile / 2, got tile={tile}, overlap={overlap}, pad={pad}"
        )
    _, _, height, width = latents.shape
    if height <= tile and width <= tile:
        return decode(latents).float()
    th, tw = min(tile, height), min(tile, width)
    ys, wys, win_h = _windows(height, th, overlap, pad)
    xs, wxs, win_w = _windows(width, tw, overlap, pad)
    out: Tensor  # (B, 3, H, W), weight (1, 1, H, W) and the ramps are sized by the first window
    weight: Tensor
    ramps_y: list[Tensor]
    ramps_x: list[Tensor]
    for iy, (y0, wy0) in enumerate(zip(ys, wys, strict=True)):
        for ix, (x0, wx0) in enumerate(zip(xs, wxs, strict=True)):
            window = decode(latents[:, :, wy0 : wy0 + win_h, wx0 : wx0 + win_w]).float()  # (B, 3, win_h*f, win_w*f)
            f = window.shape[-1] // win_w
            if iy == 0 and ix == 0:
                out = window.new_zeros(window.shape[0], window.shape[1], height * f, width * f)  # (B, 3, H, W)
                weight = window.new_zeros(1, 1, height * f, width * f)  # (1, 1, H, W)
                ramps_y = _axis_weights(ys, th, f, window.device)
                ramps_x = _axis_weights(xs, tw, f, window.device)
            oy, ox = (y0 - wy0) * f, (x0 - wx0) * f
            part = window[:, :, oy : oy + th * f, ox : ox + tw * f]  # (B, 3, th*f, tw*f)
            w = ramps_y[iy][:, None] * ramps_x[ix][None, :]  # (th*f, tw*f)
            rows, cols = slice(y0 * f, (y0 + th) * f), slice(x0 * f, (x0 + tw) * f)
            out[:, :, rows, cols] += part * w
            weight[:, :, rows, cols] += w
    return out / weight
