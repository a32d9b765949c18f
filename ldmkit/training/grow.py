"""Start a larger model from a smaller one's weights: new input channels begin at zero (``init_grow``)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from ldmkit.checkpoints import load_state_dict
from ldmkit.errors import SpecError


def grown(entries: list[str], denoiser: nn.Module, path: Path) -> dict[str, Tensor]:
    """The state dict at ``path`` with each named tensor zero-padded to the denoiser's shape.

    ``entries`` are ``denoiser.<key>``. The saved values keep their place at the start of every axis,
    so a convolution given extra input channels computes what it did until the new weights learn.
    """
    state = load_state_dict(path)
    target = denoiser.state_dict()
    for entry in entries:
        component, _, key = entry.partition(".")
        if component != "denoiser" or key not in target:
            raise SpecError(f"init_grow: {entry!r} must be 'denoiser.<key>' naming one of the denoiser's weights")
        if key not in state:
            raise SpecError(f"init_grow: {path} has no weight {key!r} to grow")
        old, new = state[key], target[key]
        if old.dim() != new.dim() or any(a > b for a, b in zip(old.shape, new.shape, strict=True)):
            raise SpecError(
                f"init_grow: {key} is {tuple(old.shape)} in {path} and {tuple(new.shape)} in the model; "
                "growing needs the same number of axes and no axis smaller"
            )
        padded = torch.zeros(new.shape, dtype=old.dtype)
        padded[tuple(slice(0, n) for n in old.shape)] = old
        state[key] = padded
    return state
