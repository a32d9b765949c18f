"""Input checks shared by the first stages: bad tensors fail early with an InputError naming the problem."""

from __future__ import annotations

import torch

from ldmkit.errors import InputError


def check_nchw(x: object, channels: int, what: str, owner: str, *, multiple_of: int = 1) -> None:
    """Raise InputError unless ``x`` is a floating-point tensor of shape (B, channels, H, W).

    ``multiple_of``: H and W must be multiples of it (an encoder's downsampling factor: other sizes
    would be cropped silently, and the decoded picture would come back smaller).
    """
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{owner}: {what} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4 or x.shape[1] != channels:
        raise InputError(f"{owner}: {what} must have shape (B, {channels}, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise InputError(f"{owner}: {what} must be a floating-point tensor, got {x.dtype}")
    height, width = x.shape[-2:]
    if height % multiple_of or width % multiple_of:
        raise InputError(
            f"{owner}: {what} of {height}x{width} pixels; height and width must be multiples of {multiple_of} "
            "(the encoder's downsampling factor)"
        )
