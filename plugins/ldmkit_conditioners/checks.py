"""Input checks shared by the conditioners: every problem becomes an :class:`ldmkit.InputError`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ldmkit.errors import InputError


def host_to_device(tensor: Tensor, device: torch.device | None) -> Tensor:
    """A tensor made on the host (token ids, dropout masks) sent to ``device``.

    A copy to a GPU from ordinary host memory first waits for the GPU to finish its queued work; from
    pinned memory it does not, so the host can prepare the next step while the GPU computes this one.
    """
    if device is None or tensor.device == device:
        return tensor
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def check_device(tensor: Tensor, device: torch.device, what: str) -> None:
    """Refuse a tensor on another device than the conditioner (nothing is moved silently)."""
    if tensor.device.type != device.type or (
        device.index is not None and tensor.device.index is not None and tensor.device.index != device.index
    ):
        raise InputError(f"{what} are on {tensor.device} but the conditioner is on {device}; move one of them first")


def index_tensor(
    raw: Any,
    *,
    what: str,
    high: int,
    ndim: int,
    device: torch.device,
    length: int | None = None,
) -> Tensor:
    """Validate integer ids (a tensor or nested Python ints) with values in ``[0, high)``.

    ``ndim`` is the expected number of dimensions (1 for class ids (B,), 2 for tokens (B, L));
    ``length`` fixes (or, for tokens, bounds) the size of the last dimension.
    """
    if isinstance(raw, Tensor):
        ids = raw
        check_device(ids, device, what)
    elif isinstance(raw, Sequence) and not isinstance(raw, (str, bytes)):
        try:
            ids = torch.as_tensor(raw, device=device)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise InputError(f"{what} must be integers in a rectangular list: {exc}") from None
    else:
        raise InputError(f"{what} must be a LongTensor or a list of ints, not {type(raw).__name__}")
    if ids.dtype == torch.bool or ids.dtype.is_floating_point or ids.dtype.is_complex:
        raise InputError(f"{what} must be integers, got dtype {ids.dtype}")
    if ids.ndim != ndim:
        shape = "(B,)" if ndim == 1 else "(B, L)"
        raise InputError(f"{what} must have shape {shape}, got {tuple(ids.shape)}")
    if ids.shape[0] == 0:
        raise InputError(f"{what}: the batch is empty")
    if length is not None and ndim == 2 and ids.shape[1] > length:
        raise InputError(f"{what} have length {ids.shape[1]}, more than the maximum {length}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= high):
        raise InputError(f"{what} must lie in [0, {high}); got values in [{int(ids.min())}, {int(ids.max())}]")
    return ids.long()


def image_tensor(raw: Any, *, what: str, channels: int | None, device: torch.device) -> Tensor:
    """Validate a float (B, C, H, W) tensor, optionally with a fixed channel count."""
    if not isinstance(raw, Tensor):
        raise InputError(f"{what} must be a float tensor (B, C, H, W), not {type(raw).__name__}")
    if not raw.dtype.is_floating_point:
        raise InputError(f"{what} must be a float tensor, got dtype {raw.dtype}")
    if raw.ndim != 4:
        raise InputError(f"{what} must have shape (B, C, H, W), got {tuple(raw.shape)}")
    if raw.shape[0] == 0:
        raise InputError(f"{what}: the batch is empty")
    if channels is not None and raw.shape[1] != channels:
        raise InputError(f"{what} must have {channels} channels, got {raw.shape[1]} (shape {tuple(raw.shape)})")
    check_device(raw, device, what)
    if not bool(torch.isfinite(raw).all()):
        raise InputError(f"{what} contains NaN or infinite values")
    return raw


def text_batch(raw: Any, what: str = "prompts") -> list[str]:
    """A single string or a non-empty list of strings -> list of strings."""
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, Sequence) and not isinstance(raw, bytes) and len(raw) > 0:
        bad = [type(item).__name__ for item in raw if not isinstance(item, str)]
        if not bad:
            return list(raw)
        raise InputError(f"{what} must all be strings, found {bad[0]}")
    raise InputError(f"{what} must be a string or a non-empty list of strings, not {type(raw).__name__}")


def check_batch(batch: Any) -> int:
    """The batch size given to ``unconditional``: a positive int."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise InputError(f"batch must be a positive int, got {batch!r}")
    return batch
