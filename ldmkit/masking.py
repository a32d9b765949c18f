"""Inpainting masks: painting a hole from the known pixels around it, before a picture is encoded.

Masks are (B, 1, H, W) with 1 = hole (fill in), 0 = known.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["blur_fill"]


def _gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of (B, C, H, W), edges replicated."""
    radius = max(1, int(3 * sigma))
    taps = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-(taps**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()  # (2r + 1,)
    c = x.shape[1]
    rows = kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1)  # (C, 1, 1, 2r + 1)
    cols = kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1)  # (C, 1, 2r + 1, 1)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), rows, groups=c)
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), cols, groups=c)


def blur_fill(image: Tensor, mask: Tensor, sigma: float) -> Tensor:
    """``image`` (B, C, H, W) with its hole (``mask`` (B, 1, H, W), 1 = hole) painted from the known pixels.

    Each hole pixel gets the Gaussian-weighted mean of the known pixels near it (normalised
    convolution); where none is near, the mean of all known pixels. Known pixels are unchanged.
    """
    known = 1.0 - mask  # (B, 1, H, W)
    weight = _gaussian_blur(known, sigma)  # (B, 1, H, W)
    near = _gaussian_blur(image * known, sigma) / weight.clamp(min=1e-6)  # (B, C, H, W)
    count = known.sum(dim=(2, 3), keepdim=True)  # (B, 1, 1, 1)
    overall = (image * known).sum(dim=(2, 3), keepdim=True) / count.clamp(min=1.0)  # (B, C, 1, 1)
    fill = torch.where(weight > 1e-3, near, overall)
    return image * known + fill * mask
