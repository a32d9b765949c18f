"""Atomic writes: a temporary file in the target directory, fsync, then rename into place.

A crash or a failed write never leaves a half-written file; any previous file stays intact.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ldmkit.errors import CheckpointError

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]


def _fsync_dir(directory: Path) -> None:
    if os.name == "nt":  # directories cannot be opened for fsync there
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:  # the rename is done; only its durability is in doubt
        logger.debug("fsync of %s failed: %s", directory, e)
    finally:
        os.close(fd)


@contextmanager
def _atomic_target(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically.

    On failure the temporary file is removed and any previous ``path`` is left intact.
    """
    path = Path(path)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        # os.open with 0o666 lets the umask decide the final mode, as a plain open() would.
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        mode = stat.S_IMODE(os.stat(tmp).st_mode)
        yield tmp
        # A writer may replace the file with its own mode (safetensors creates it 0600); restore ours.
        if stat.S_IMODE(os.stat(tmp).st_mode) != mode:
            os.chmod(tmp, mode)
        fd = os.open(tmp, os.O_RDWR)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        reason = e.strerror or str(e)
        raise CheckpointError(f"could not write {path}: {reason}; any previous file there is unchanged") from e
    finally:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        except OSError as e:
            logger.warning("could not remove temporary file %s: %s", tmp, e)


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename)."""
    with _atomic_target(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_torch_save(obj: Any, path: PathLike) -> Path:
    """``torch.save(obj, path)`` atomically (zip format)."""
    with _atomic_target(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
    return Path(path)
