"""Files of a model folder: links that leave the folder are refused, hashing reads a known size.

A downloaded model folder is data, and a link inside it is data too: ``unet.safetensors`` linked
to ``/proc/self/environ`` or ``/dev/zero`` must not be read. These helpers check where a path
really leads before anything is opened.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from ldmkit.errors import CheckpointError

PathLike = str | os.PathLike[str]

# Set to 1 to follow links that leave their folder (e.g. a Hugging Face cache snapshot, whose
# files link into a shared blobs folder). Only for folders you trust.
ENV_FOLLOW_LINKS = "LDMKIT_FOLLOW_LINKS"
_CHUNK = 1 << 20


def _follow_links_allowed() -> bool:
    return os.environ.get(ENV_FOLLOW_LINKS, "").strip() == "1"


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_inside(path: PathLike, folder: PathLike | None = None) -> Path:
    """``path`` if it stays inside ``folder`` once links are followed; else :class:`CheckpointError`.

    ``folder`` defaults to the folder holding ``path``, so a file that is a link to somewhere
    outside its own folder is refused. ``LDMKIT_FOLLOW_LINKS=1`` turns the check off.
    """
    path = Path(path)
    folder = Path(folder) if folder is not None else path.parent
    if _follow_links_allowed():
        return path
    try:
        real, real_folder = Path(os.path.realpath(path)), Path(os.path.realpath(folder))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot resolve {path}: {e}") from e
    if not _is_within(real, real_folder):
        raise CheckpointError(
            f"{path} links outside its folder {folder} (to {real}); refusing to read it. Pass the file's own "
            f"path, copy it into the folder, or set {ENV_FOLLOW_LINKS}=1 for a folder you trust"
        )
    return path


def _open_regular(path: Path) -> tuple[int, int]:
    """An open descriptor of a regular file and its size; FIFOs and devices are refused unopened."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise CheckpointError(f"{path}: not a regular file; refusing to read it")
        # O_NONBLOCK: should the path turn into a FIFO after the check, opening it still returns
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from e
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise CheckpointError(f"{path}: not a regular file; refusing to read it")
    return fd, info.st_size


def sha256_of_files(folder: PathLike, paths: Iterable[PathLike]) -> str:
    """sha256 over each file's name and contents, in the given order, with bounded reads.

    Every path must be a regular file inside ``folder`` (links leaving it are refused, see
    :func:`check_inside`); exactly the size ``stat`` reports is read, and a file whose size changes
    while it is read raises :class:`CheckpointError`.
    """
    folder = Path(folder)
    digest = hashlib.sha256()
    for item in paths:
        path = check_inside(item, folder)
        fd, size = _open_regular(path)
        try:
            digest.update(path.name.encode())
            left = size
            while left > 0:
                chunk = os.read(fd, min(_CHUNK, left))
                if not chunk:
                    break
                digest.update(chunk)
                left -= len(chunk)
            if left or os.read(fd, 1):
                raise CheckpointError(f"{path}: its size changed while it was read ({size} bytes expected)")
        except OSError as e:
            raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from e
        finally:
            os.close(fd)
    return digest.hexdigest()


__all__ = ["ENV_FOLLOW_LINKS", "check_inside", "sha256_of_files"]
