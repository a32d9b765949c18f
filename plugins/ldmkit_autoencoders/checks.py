"""Input checks shared by the first stages: bad tensors fail early with an InputError naming the problem."""

from __future__ import annotations

import torch

from ldmkit.errors import InputError


def check_nchw(x: object, channels: int, what: str, owner: str) -> None:
    """Raise InputError unless ``x`` is a floating-point tensor of shape (B, channels, H, W)."""
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{owner}: {what} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4 or x.shape[1] != channels:
        raise InputError(f"{owner}: {what} must have shape (B, {channels}, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise InputError(f"{owner}: {what} must be a floating-point tensor, got {x.dtype}")
