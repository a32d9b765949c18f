"""cuDNN's convolution autotuner switched on around the fast path's own calls (``FastConfig.cudnn_benchmark``).

With ``torch.backends.cudnn.benchmark`` cuDNN times its candidate algorithms the first time it
meets a convolution shape and keeps the fastest; without it a heuristic picks one. The flag is
global, so the fast path sets it only for the duration of its calls and restores it after; a CUDA
graph captured meanwhile keeps the kernels chosen then.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["autotuned_convolutions"]


def _determinism_asked() -> bool:
    """Whether the process asked for deterministic algorithms (the autotuner may pick nondeterministic ones)."""
    return bool(torch.backends.cudnn.deterministic) or torch.are_deterministic_algorithms_enabled()


@contextlib.contextmanager
def autotuned_convolutions(enabled: bool) -> Iterator[None]:
    """``torch.backends.cudnn.benchmark`` on inside the block when ``enabled`` and no determinism is asked for."""
    if not enabled or torch.backends.cudnn.benchmark or _determinism_asked():
        yield
        return
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = False
