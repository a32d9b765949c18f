"""Training-state files: written atomically (temp file, fsync, rename), read back with ``weights_only=True``."""

from __future__ import annotations

import errno
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from ldmkit.checkpoints import atomic_torch_save, load_checkpoint
from ldmkit.errors import CheckpointError, TrainingError

log = logging.getLogger(__name__)

LAST = "last.ckpt"
FORMAT = "ldmkit-train"
FORMAT_VERSION = 1


def _os_problem(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "the disk is full"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "it is not writable"
    return exc.strerror or str(exc)


def check_writable(directory: Path) -> None:
    """Create ``directory`` and prove a file can be written there, or raise TrainingError saying why."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise TrainingError(f"out_dir {directory}: cannot write there ({_os_problem(exc)})") from None


def save_state(state: dict[str, Any], path: Path) -> None:
    """Write a training state atomically (the core's temp file, fsync, rename).

    Until the rename the previous ``path`` stays intact; any failure raises TrainingError saying why, and
    the previous checkpoint is kept.
    """
    try:
        atomic_torch_save(state, path)
    except CheckpointError as exc:
        cause = exc.__cause__
        reason = _os_problem(cause) if isinstance(cause, OSError) else str(exc)
        raise TrainingError(f"cannot save {path} ({reason}); the previous checkpoint is kept") from None
    except (OSError, RuntimeError) as exc:  # torch's stream writer reports a full disk as RuntimeError
        reason = _os_problem(exc) if isinstance(exc, OSError) else " ".join(str(exc).split())[:200]
        raise TrainingError(f"cannot save {path} ({reason}); the previous checkpoint is kept") from None


def load_state(path: Path) -> dict[str, Any]:
    """A training state written by :func:`atomic_torch_save` (tensors and plain data only)."""
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"resume: {path}: no such checkpoint")
    try:  # the core's loader scans the pickle (bounded depth and sizes) before torch reads it
        state = load_checkpoint(path)
    except CheckpointError as exc:
        raise TrainingError(f"resume: {path} is not a readable training checkpoint ({exc})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise TrainingError(f"resume: {path} is not an ldmkit training checkpoint")
    if state.get("format_version") != FORMAT_VERSION:
        found = state.get("format_version")
        raise TrainingError(f"resume: {path} has format version {found}, expected {FORMAT_VERSION}")
    return state
