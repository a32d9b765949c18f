"""Helpers that the fast path's kernels and module swaps share: is Triton there, is it a Hopper, structural copies."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


@functools.cache
def triton_available() -> bool:
    """Whether Triton can be imported (it ships with CUDA builds of torch, not with CPU builds)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def structural_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module``'s structure that shares its parameters and buffers (for swapping submodules)."""
    memo = {id(t): t for t in [*module.parameters(), *module.buffers()]}
    return copy.deepcopy(module, memo)


@functools.cache
def _hopper(index: int) -> bool:
    return torch.cuda.get_device_capability(index)[0] == 9


def hopper_with_triton(device: torch.device) -> bool:
    """Whether the fast path's Hopper kernels can run on ``device``: a Hopper (sm_90) CUDA device, with Triton.

    Older GPUs lack TMA and warpgroup MMA, some newer ones give a program less shared memory than
    the kernels' tiles need, and the kernels were measured only on Hopper, so all others keep the
    compiled modules.
    """
    if device.type != "cuda" or not torch.cuda.is_available() or not triton_available():
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _hopper(index)


def swap_modules(module: nn.Module, wanted: Callable[[nn.Module], bool], swap: Callable[[Any], nn.Module]) -> nn.Module:
    """A structural copy of ``module`` in which every submodule for which ``wanted`` holds is ``swap(it)``.

    ``module`` itself is swapped if ``wanted`` holds for it (it has no parent to swap it in).
    """
    if wanted(module):
        return swap(module)
    module = structural_copy(module)
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if wanted(child):
                setattr(parent, name, swap(child))
    return module
