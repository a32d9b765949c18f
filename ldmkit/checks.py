"""Tensor checks for component authors: a bad input fails early with an :class:`~ldmkit.InputError` naming it.

Conditioners, first stages and tasks receive tensors and lists from callers they do not control. Each
function here checks one kind of input and either returns it in canonical form or raises
``InputError`` with a message that names the input (``what``), what was expected and what came, so a
wrong shape or range is refused before it reaches the network rather than producing wrong pictures::

    from ldmkit.checks import check_batch, index_tensor

    def forward(self, raw):
        ids = index_tensor(raw, what="class ids", high=self.params.n_classes, ndim=1, device=self.device)
        ...

    def unconditional(self, batch):
        batch = check_batch(batch)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ldmkit.errors import InputError
from ldmkit.specs import format_validation_error

__all__ = [
    "check_batch",
    "check_device",
    "format_validation_error",
    "host_to_device",
    "image_tensor",
    "index_tensor",
    "text_batch",
]


def host_to_device(tensor: Tensor, device: torch.device | None) -> Tensor:
    """A tensor made on the host (token ids, dropout masks) sent to ``device`` (None: left where it is).

    A copy to a GPU from ordinary host memory first waits for the GPU to finish its queued work; from
    pinned memory it does not, so the host can prepare the next step while the GPU computes this one.
    """
    if device is None or tensor.device == device:
        return tensor
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def check_device(tensor: Tensor, device: torch.device, what: str) -> None:
    """Refuse a tensor on another device than the component's ``device`` (nothing is moved silently)."""
    if tensor.device.type != device.type or (
        device.index is not None and tensor.device.index is not None and tensor.device.index != device.index
    ):
        raise InputError(f"{what} are on {tensor.device} but the component is on {device}; move one of them first")


def index_tensor(
    raw: Any,
    *,
    what: str,
    high: int,
    ndim: int,
    device: torch.device,
    length: int | None = None,
) -> Tensor:
    """Integer ids (a tensor or nested Python ints) with values in ``[0, high)``, as a LongTensor.

    ``ndim`` is the expected number of dimensions (1 for class ids (B,), 2 for tokens (B, L));
    ``length`` bounds the size of the last dimension of (B, L) ids. Lists are made on ``device``;
    a tensor on another device is refused.
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


def image_tensor(
    raw: Any,
    what: str,
    *,
    channels: int | None = None,
    device: torch.device | None = None,
    multiple_of: int = 1,
    finite: bool = False,
    owner: str | None = None,
) -> Tensor:
    """A floating-point (B, C, H, W) tensor, returned unchanged, or InputError naming ``what``.

    ``channels``: the required C (None: any). ``device``: the tensor must be on it (None: any).
    ``multiple_of``: H and W must be multiples of it (an encoder's downsampling factor: other sizes
    would be cropped silently, and the decoded picture would come back smaller). ``finite``: also
    refuse NaN and Inf (this reads every value, so the first stages, on the sampling path, leave it
    off). ``owner``: the component named at the start of each message.
    """
    who = f"{owner}: " if owner else ""
    if not isinstance(raw, Tensor):
        raise InputError(f"{who}{what} must be a float tensor (B, C, H, W), not {type(raw).__name__}")
    if not raw.dtype.is_floating_point:
        raise InputError(f"{who}{what} must be a float tensor, got dtype {raw.dtype}")
    if raw.ndim != 4:
        raise InputError(f"{who}{what} must have shape (B, C, H, W), got {tuple(raw.shape)}")
    if raw.shape[0] == 0:
        raise InputError(f"{who}{what}: the batch is empty")
    if channels is not None and raw.shape[1] != channels:
        raise InputError(f"{who}{what} must have {channels} channels, got {raw.shape[1]} (shape {tuple(raw.shape)})")
    height, width = raw.shape[-2:]
    if height % multiple_of or width % multiple_of:
        raise InputError(
            f"{who}{what} of {height}x{width} pixels; height and width must be multiples of {multiple_of} "
            "(the encoder's downsampling factor)"
        )
    if device is not None:
        check_device(raw, device, what)
    if finite and not bool(torch.isfinite(raw).all()):
        raise InputError(f"{who}{what} contains NaN or infinite values")
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
    """The batch size given to ``Conditioner.unconditional``: a positive int, else InputError."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise InputError(f"batch must be a positive int, got {batch!r}")
    return batch
