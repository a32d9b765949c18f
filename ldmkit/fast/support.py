"""Helpers that the fast path's kernels and module swaps share: is Triton there, and structural copies."""

from __future__ import annotations

import copy
import functools

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
