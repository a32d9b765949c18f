"""Output folders: refused early when they cannot be made, made only when something is written."""

from __future__ import annotations

import os
import re
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


_NUMBERED = re.compile(r"([0-9]+)\.png")


def next_picture_number(out: Path) -> int:
    """One past the highest ``NNNNNN.png`` in ``out`` (0 for a folder without numbered pictures)."""
    numbers = [int(m.group(1)) for entry in os.scandir(out) if (m := _NUMBERED.fullmatch(entry.name))]
    return max(numbers, default=-1) + 1


def reserve_picture_name(out: Path, start: int) -> tuple[Path, int]:
    """Claim the first free ``NNNNNN.png`` from number ``start`` on, as an empty file; (its path, its number).

    ``O_CREAT | O_EXCL`` makes the claim atomic: two runs writing into one folder at once never get
    the same name, and an existing picture is never replaced. The caller fills the file afterwards
    (temp file + rename onto the claimed name).
    """
    number = start
    while True:
        path = out / f"{number:06d}.png"
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            number += 1
            continue
        except OSError as exc:
            raise InputError(f"{path}: cannot create the picture ({exc.strerror})") from None
        return path, number


__all__ = ["check_output_folder", "ensure_output_folder", "next_picture_number", "reserve_picture_name"]
