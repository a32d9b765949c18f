"""Labelled boxes drawn as a per-class coverage map at latent resolution."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _cover(low: Tensor, high: Tensor, cells: int) -> Tensor:
    """Share of each of ``cells`` equal cells of [0, 1] that the intervals [low, high] cover: (...) -> (..., cells)."""
    edges = torch.arange(cells + 1, dtype=low.dtype, device=low.device) / cells  # (cells + 1,)
    start = torch.maximum(low[..., None], edges[:-1])
    stop = torch.minimum(high[..., None], edges[1:])
    return (stop - start).clamp(min=0) * cells


def box_map(labels: Tensor, boxes: Tensor, n_classes: int, size: tuple[int, int]) -> Tensor:
    """Class ids (B, K), -1 for an empty slot, and boxes (B, K, 4) as [x0, y0, x1, y1] fractions -> (B, C, h, w).

    Channel ``c`` of a cell holds the share of the cell covered by boxes of class ``c`` (at most 1 where
    boxes overlap). Exact for any box, so positions finer than a cell survive.
    """
    h, w = size
    across = _cover(boxes[..., 0], boxes[..., 2], w)  # (B, K, w)
    down = _cover(boxes[..., 1], boxes[..., 3], h)  # (B, K, h)
    coverage = down[..., :, None] * across[..., None, :]  # (B, K, h, w)
    present = (labels >= 0).to(coverage.dtype)  # (B, K)
    onehot = F.one_hot(labels.clamp(min=0), n_classes).to(coverage.dtype) * present[..., None]  # (B, K, C)
    return torch.einsum("bkc,bkhw->bchw", onehot, coverage).clamp(max=1.0)
