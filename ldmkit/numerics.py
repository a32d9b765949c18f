"""Numerical safety: a determinism switch and a decode that never hands back NaN or Inf.

``enable_determinism()`` changes process-wide settings (torch's deterministic-algorithms flag,
cuDNN flags and, for CUDA, ``CUBLAS_WORKSPACE_CONFIG``) and leaves them on. The object it returns
is also a context manager: leaving its ``with`` block restores the settings found on entry, for
code (such as tests) that wants determinism only for a while.

``safe_decode`` runs a first stage's ``decode``; when a half-precision (float16/bfloat16) decode
overflows to NaN/Inf it either retries in float32 on a private copy of the first stage (one
:class:`NonFiniteDecodeWarning`) or raises :class:`~ldmkit.errors.NumericsError`.
"""

from __future__ import annotations

import copy
import logging
import os
import warnings
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

from ldmkit.errors import NumericsError

if TYPE_CHECKING:
    from ldmkit.interfaces import FirstStage

log = logging.getLogger(__name__)

CUBLAS_ENV = "CUBLAS_WORKSPACE_CONFIG"
CUBLAS_WORKSPACE = ":4096:8"  # the value NVIDIA documents for deterministic cuBLAS
REDUCED_PRECISION = (torch.float16, torch.bfloat16)

OnNonFinite = Literal["retry", "raise"]

__all__ = [
    "DeterminismSettings",
    "NonFiniteDecodeWarning",
    "enable_determinism",
    "safe_decode",
]


class NonFiniteDecodeWarning(RuntimeWarning):
    """A half-precision decode produced NaN/Inf and was redone in float32."""


@dataclass(frozen=True)
class DeterminismSettings:
    """The settings :func:`enable_determinism` replaced; a context manager that puts them back on exit."""

    deterministic_algorithms: bool
    warn_only: bool
    cudnn_deterministic: bool
    cudnn_benchmark: bool
    cublas_workspace: str | None

    def restore(self) -> None:
        """Put back the settings found before :func:`enable_determinism` ran."""
        torch.use_deterministic_algorithms(self.deterministic_algorithms, warn_only=self.warn_only)
        torch.backends.cudnn.deterministic = self.cudnn_deterministic
        torch.backends.cudnn.benchmark = self.cudnn_benchmark
        if self.cublas_workspace is None:
            os.environ.pop(CUBLAS_ENV, None)
        else:
            os.environ[CUBLAS_ENV] = self.cublas_workspace

    def __enter__(self) -> DeterminismSettings:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.restore()


def enable_determinism() -> DeterminismSettings:
    """Make torch refuse nondeterministic kernels, process-wide, from now on.

    Sets ``torch.use_deterministic_algorithms(True, warn_only=False)`` (an operation without a
    deterministic implementation then raises instead of silently varying),
    ``torch.backends.cudnn.deterministic = True``, ``torch.backends.cudnn.benchmark = False`` and,
    unless already set, the environment variable ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` that cuBLAS
    needs for reproducible results on CUDA >= 10.2. cuBLAS reads that variable when CUDA starts, so
    call this before the first CUDA operation of the process.

    The settings stay on (they are global). Use the returned :class:`DeterminismSettings` as a
    context manager, ``with enable_determinism(): ...``, to restore the previous settings after
    the block.
    """
    previous = DeterminismSettings(
        deterministic_algorithms=torch.are_deterministic_algorithms_enabled(),
        warn_only=torch.is_deterministic_algorithms_warn_only_enabled(),
        cudnn_deterministic=bool(torch.backends.cudnn.deterministic),
        cudnn_benchmark=bool(torch.backends.cudnn.benchmark),
        cublas_workspace=os.environ.get(CUBLAS_ENV),
    )
    if previous.cublas_workspace is None:
        os.environ[CUBLAS_ENV] = CUBLAS_WORKSPACE
        if torch.cuda.is_initialized():
            log.warning("%s was set after CUDA started; cuBLAS may still be nondeterministic", CUBLAS_ENV)
    torch.use_deterministic_algorithms(True, warn_only=False)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    return previous


def _all_finite(x: Tensor) -> bool:
    return bool(torch.isfinite(x).all())


def _weights_dtype(module: torch.nn.Module) -> torch.dtype | None:
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return None


def safe_decode(first_stage: FirstStage, latents: Tensor, *, on_nonfinite: OnNonFinite = "retry") -> Tensor:
    """``first_stage.decode(latents)`` that never returns NaN or Inf.

    Non-finite ``latents`` raise :class:`NumericsError` at once (no precision can fix them). When
    the decode of finite latents is not finite and the first stage or the latents are float16 or
    bfloat16: with ``on_nonfinite="retry"`` (default) it is redone in float32 on a private float32
    copy of the first stage (the caller's module is never modified, so other threads may keep using
    it) after one :class:`NonFiniteDecodeWarning`, and float32 images are returned; with ``"raise"``
    :class:`NumericsError` is raised. A float32 decode that is not finite always raises.
    """
    if on_nonfinite not in ("retry", "raise"):
        raise ValueError(f"on_nonfinite must be 'retry' or 'raise', got {on_nonfinite!r}")
    if not _all_finite(latents):
        raise NumericsError("the latents to decode contain NaN or Inf; sampling diverged before decoding")
    with torch.no_grad():
        images = first_stage.decode(latents)
        if _all_finite(images):
            return images
        reduced = latents.dtype in REDUCED_PRECISION or _weights_dtype(first_stage) in REDUCED_PRECISION
        if not reduced:
            raise NumericsError("decoding produced NaN or Inf in float32; the first stage's weights may be broken")
        if on_nonfinite == "raise":
            raise NumericsError(
                f"decoding in {images.dtype} produced NaN or Inf (half-precision overflow); decode in float32 "
                "or pass on_nonfinite='retry'"
            )
        warnings.warn(
            f"decoding in {images.dtype} produced NaN or Inf; decoding again in float32",
            NonFiniteDecodeWarning,
            stacklevel=2,
        )
        # A copy, so the shared module's dtype never changes under another thread's feet.
        full = copy.deepcopy(first_stage).float()
        images = full.decode(latents.float())
        del full
    if not _all_finite(images):
        raise NumericsError("decoding produced NaN or Inf even in float32; the first stage's weights may be broken")
    return images
