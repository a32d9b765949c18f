"""Loading checkpoints: scan, then weights-only torch.load with scoped stand-ins; load_into a module."""

from __future__ import annotations

import logging
import math
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch

from ldmkit.checkpoints.allowlist import _stand_ins
from ldmkit.checkpoints.detect import PathLike, _detect, _open, _shown
from ldmkit.checkpoints.limits import PickleLimits
from ldmkit.checkpoints.pickle_scan import _scan_checkpoint
from ldmkit.checkpoints.safetensors_io import _load_safetensors
from ldmkit.errors import CheckpointError, CheckpointFormatError

logger = logging.getLogger(__name__)

MIN_TORCH_VERSION = (2, 10)
_LIST_LIMIT = 20  # names shown per category in error messages
# safe_globals edits a process-wide set on enter/exit; serialize so one load's exit cannot
# remove the stand-ins while another thread's load still needs them.
_TORCH_LOAD_LOCK = threading.Lock()


def _check_torch_version() -> None:
    match = re.match(r"(\d+)\.(\d+)", str(torch.__version__))
    if match is None or (int(match[1]), int(match[2])) < MIN_TORCH_VERSION:
        need = ".".join(map(str, MIN_TORCH_VERSION))
        raise CheckpointError(
            f"loading pickle checkpoints needs torch >= {need} (older weights_only loaders have known "
            f"bypasses); found torch {torch.__version__}. Convert the file to safetensors or upgrade torch."
        )


def _torch_load_safe(f: IO[bytes], path: Path) -> Any:
    _check_torch_version()
    from torch.serialization import safe_globals

    f.seek(0)
    try:
        # Scoped: torch's process-wide safe-globals list is restored on exit. A file object, not
        # the path, so torch cannot choose a reader by extension and reads exactly what was scanned.
        with _TORCH_LOAD_LOCK, safe_globals(list(_stand_ins())):
            return torch.load(f, map_location="cpu", weights_only=True, mmap=False)
    except Exception as e:  # torch raises UnpicklingError/RuntimeError/... for malformed files
        raise CheckpointFormatError(f"{path}: could not load it ({_torch_reason(e)})") from e


def _torch_reason(error: Exception) -> str:
    """The informative line of a torch.load error (its first line is generic advice)."""
    text = str(error).strip() or type(error).__name__
    match = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(Check the documentation|$)", text, re.DOTALL)
    detail = " ".join((match[1] if match else text.splitlines()[0]).split())
    if "magic number" in detail.lower():
        return "a pickle, but not one written by torch.save"
    if "Unsupported operand" in detail:
        detail += " (torch's weights-only loader reads pickle protocols 2 and 3 only)"
    return detail[:400]


def load_checkpoint(
    path: PathLike, *, unsafe_allow_pickle: bool = False, limits: PickleLimits | None = None
) -> dict[Any, Any]:
    """Load a checkpoint's top-level dict (for safetensors: its tensors).

    Pickle files (``torch.save`` zip or legacy) are scanned first and must only reference
    tensor types, Lightning's ``ModelCheckpoint`` (loaded as :class:`LightningCallbackState`)
    and numpy scalars, within ``limits`` (nesting depth, stack, memo and byte bounds; default
    :meth:`PickleLimits.from_env`). A file that is a link out of its folder is refused.

    ``unsafe_allow_pickle=True`` skips the scan and loads with plain pickle
    (``weights_only=False``): any code in the file RUNS. Pass it only for files you trust; it
    exists only as this Python keyword.
    """
    path = Path(path)
    with _open(path) as f:
        fmt = _detect(f, path)
        if fmt == "safetensors":
            return _load_safetensors(path)
        if unsafe_allow_pickle:
            logger.warning("loading %s with unrestricted pickle (unsafe_allow_pickle=True)", path)
            f.seek(0)
            try:
                obj = torch.load(f, map_location="cpu", weights_only=False, mmap=False)
            except Exception as e:
                raise CheckpointFormatError(f"{path}: could not load it ({e})") from e
        else:
            _scan_checkpoint(f, path, fmt, limits)
            obj = _torch_load_safe(f, path)
    if not isinstance(obj, dict):
        raise CheckpointFormatError(f"{path}: expected a dict at the top level, found {type(obj).__name__}")
    return obj


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_LIST_LIMIT])
    more = len(names) - _LIST_LIMIT
    return shown + (f" (+{more} more)" if more > 0 else "")


def _state_dict_of(obj: Mapping[Any, Any], source: str) -> dict[str, torch.Tensor]:
    inner = obj.get("state_dict")
    state = inner if isinstance(inner, Mapping) else obj
    bad = [_shown(k) for k, v in state.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
    if bad:
        raise CheckpointError(f"{source}: {len(bad)} state-dict entries are not tensors: {_names(bad)}")
    return dict(state)


def _non_finite(state: Mapping[str, torch.Tensor]) -> list[str]:
    bad = []
    for name, t in state.items():
        if t.is_floating_point() or t.is_complex():
            values = t if t.dtype not in (torch.float8_e4m3fn, torch.float8_e5m2) else t.float()
            if not bool(torch.isfinite(values).all()):
                bad.append(name)
    return bad


def load_state_dict(path: PathLike, *, check_finite: bool = True) -> dict[str, torch.Tensor]:
    """Load the tensors of a checkpoint (its ``state_dict`` entry if it has one) on the CPU.

    With ``check_finite`` (default) a tensor holding NaN or Inf raises :class:`CheckpointError`
    listing the offending names.
    """
    state = _state_dict_of(load_checkpoint(path), str(path))
    if check_finite and (bad := _non_finite(state)):
        raise CheckpointError(f"{path}: {len(bad)} tensors hold NaN or Inf values: {_names(bad)}")
    return state


@dataclass
class LoadResult:
    """What :func:`load_into` did: keys loaded, and (when not strict) what was left out."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)


def load_into(
    module: torch.nn.Module,
    path_or_state: PathLike | Mapping[str, torch.Tensor],
    *,
    what: str = "model",
    strict: bool = True,
    prefix: str = "",
    ignore_prefixes: Iterable[str] = (),
) -> LoadResult:
    """Copy a checkpoint's tensors into ``module``, casting them to the module's dtypes.

    ``path_or_state`` is a checkpoint file or a mapping (a state dict, or a checkpoint dict with a
    ``state_dict`` entry). ``prefix`` selects the keys that start with it (and strips it), ignoring all others, e.g.
    ``"first_stage_model."`` for one part of a CompVis checkpoint. Keys under
    ``ignore_prefixes`` (after stripping) are neither loaded nor reported. Shape mismatches always
    fail; with ``strict`` missing and unexpected keys fail too, listed (first 20 each, with counts)
    in a :class:`CheckpointError` that names ``what``. Tensors holding NaN or Inf are refused.
    """
    if isinstance(path_or_state, Mapping):
        state, source = _state_dict_of(path_or_state, "state dict"), "state dict"
        if bad := _non_finite(state):  # a mapping skips load_state_dict's check; NaN must not load either
            raise CheckpointError(f"{what}: {len(bad)} tensors hold NaN or Inf values: {_names(bad)}")
    else:
        state, source = load_state_dict(path_or_state), str(path_or_state)
    ignore = tuple(ignore_prefixes)
    if prefix:
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise CheckpointError(f"{what}: no keys in {source} start with {prefix!r}")
    state = {k: v for k, v in state.items() if not k.startswith(ignore)} if ignore else state
    target = {k: v for k, v in module.state_dict().items() if not (ignore and k.startswith(ignore))}
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(target[k].shape)}"
        for k, v in state.items()
        if k in target and isinstance(target[k], torch.Tensor) and v.shape != target[k].shape
    ]
    problems = []
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches: {_names(mismatched)}")
    if strict and missing:
        problems.append(f"{len(missing)} missing keys: {_names(missing)}")
    if strict and unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_names(unexpected)}")
    if problems:
        raise CheckpointError(f"{what}: checkpoint {source} does not fit the model; " + "; ".join(problems))
    cast = {
        k: v.to(dtype=target[k].dtype) if isinstance(target[k], torch.Tensor) else v
        for k, v in state.items()
        if k in target
    }
    module.load_state_dict(cast, strict=False)
    if missing or unexpected:
        logger.warning("%s: %d missing and %d unexpected keys ignored", what, len(missing), len(unexpected))
    return LoadResult(loaded=list(cast), missing=missing, unexpected=unexpected)


def check_scale_factor(value: Any, source: str = "checkpoint") -> float:
    """The latent ``scale_factor`` a checkpoint stores, as a float; :class:`CheckpointError` unless finite and > 0.

    Accepts a number or a one-element tensor (CompVis keeps it as a buffer); strings, booleans,
    larger tensors, NaN, Inf, zero and negative values are refused, naming ``source``.
    """
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or not (value.is_floating_point() or value.dtype in _INT_DTYPES):
            raise CheckpointError(
                f"{source}: scale_factor must be a single number, found a {value.dtype} tensor of shape "
                f"{tuple(value.shape)}"
            )
        value = value.reshape(()).item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CheckpointError(f"{source}: scale_factor must be a number, found {type(value).__name__}")
    number = float(value) if not isinstance(value, int) or abs(value) < 2**1023 else math.inf
    if not math.isfinite(number) or number <= 0:
        raise CheckpointError(f"{source}: scale_factor must be a finite number > 0, found {number}")
    return number


_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)

__all__ = [
    "MIN_TORCH_VERSION",
    "LoadResult",
    "check_scale_factor",
    "load_checkpoint",
    "load_into",
    "load_state_dict",
]
