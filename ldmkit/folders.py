"""Output folders: refused early when they cannot be made, made only when something is written."""

from __future__ import annotations

import os
from pathlib import Path

from ldmkit.errors import InputError


def check_output_folder(out_dir: str | Path) -> Path:
    """``out_dir`` if it is a folder or could be made one; :class:`InputError` if not. Creates nothing.

    Lets a command refuse an unusable ``--out`` before it spends time loading and sampling, while a
    run that fails later still leaves no empty folder behind.
    """
    out = Path(out_dir)
    if out.exists():
        if not out.is_dir():
            raise InputError(f"{out}: exists and is not a folder; cannot create the output folder there")
        return out
    ancestor = out.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise InputError(f"{out}: cannot create the output folder ({ancestor} is not a writable folder)")
    return out


def ensure_output_folder(out_dir: str | Path) -> Path:
    """``out_dir``, created with its parents if missing; :class:`InputError` if it cannot be."""
    out = check_output_folder(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{out}: cannot create the output folder ({exc.strerror})") from None
    return out
