"""Checkpoint format detection by magic bytes, and torch.save zip layout checks."""

from __future__ import annotations

import os
import re
import struct
import tarfile
import zipfile
from pathlib import Path
from typing import IO, Literal

from ldmkit.checkpoints.files import check_inside
from ldmkit.errors import CheckpointError, CheckpointFormatError

PathLike = str | os.PathLike[str]
Format = Literal["safetensors", "torch-zip", "torch-legacy-pickle"]

MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


def _shown(value: object, limit: int = 80) -> str:
    """A name or value from a file, quoted for a message: ASCII only, cut at ``limit`` characters."""
    text = ascii(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _file_size(path: Path) -> int:
    check_inside(path)  # a weights file linked out of its folder is not read
    try:
        if not path.is_file():
            raise CheckpointError(f"checkpoint {path} does not exist or is not a regular file")
        return path.stat().st_size
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or e}") from e


def _open(path: Path) -> IO[bytes]:
    _file_size(path)
    try:
        return open(path, "rb")
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or e}") from e


def _looks_like_tar(head: bytes) -> bool:
    if len(head) < 512:
        return False
    if head[257:262] == b"ustar":
        return True
    try:  # old V7 tars have no magic; tarfile accepts any block whose checksum fits
        tarfile.TarInfo.frombuf(head[:512], "utf-8", "surrogateescape")
    except tarfile.TarError:
        return False
    return True


def _describe(head: bytes) -> str:
    if not head:
        return "an empty file"
    if head.startswith(b"\x1f\x8b"):
        return "gzip-compressed data (decompress it first)"
    if _looks_like_tar(head):
        return "a tar archive (the oldest torch.save tar format is not supported)"
    if head.startswith(b"PK"):
        return "a zip archive that is not a torch.save checkpoint"
    if head[:1] == b"\x80":
        return f"a pickle of unsupported protocol {head[1] if len(head) > 1 else '?'}"
    if head[:1] in (b"(", b"}", b"]", b"c"):
        return "what looks like a protocol 0/1 pickle (unsupported)"
    # never the bytes themselves: the file may be anything a link or a typo points at
    return "content that is not safetensors, a torch.save zip or a protocol 2-5 pickle"


def _safetensors_header_length(head: bytes) -> int | None:
    """The declared header length if ``head`` has the shape of a safetensors file, else None."""
    if len(head) < 9 or head[8:9] != b"{":
        return None
    return struct.unpack("<Q", head[:8])[0]


def detect_format(path: PathLike) -> Format:
    """Return the checkpoint format of ``path`` from its magic bytes (never its extension).

    Raises :class:`CheckpointFormatError` naming the file and what was found for gzip, tar,
    malformed zips (several pickles, a bad CRC, unexpected entries) and anything else.
    """
    path = Path(path)
    with _open(path) as f:
        return _detect(f, path)


def _detect(f: IO[bytes], path: Path) -> Format:
    """:func:`detect_format` on an open file, so later reads see the very file that was checked."""
    size = os.fstat(f.fileno()).st_size
    f.seek(0)
    head = f.read(512)
    if head.startswith(b"PK\x03\x04"):
        _check_torch_zip(f, path)
        return "torch-zip"
    n = _safetensors_header_length(head)
    if n is not None and not head.startswith(b"\x1f\x8b"):
        # A safetensors candidate is never unpickled, so checking it before pickles is the safe order.
        if n > size - 8:
            raise CheckpointFormatError(
                f"{path}: safetensors header declares {n} bytes but only {size - 8} follow the length field"
            )
        if n > MAX_SAFETENSORS_HEADER:
            raise CheckpointFormatError(f"{path}: safetensors header of {n} bytes exceeds the 100 MB limit")
        return "safetensors"
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5 and not _looks_like_tar(head):
        return "torch-legacy-pickle"
    raise CheckpointFormatError(f"{path}: not a checkpoint ldmkit reads; found {_describe(head)}")


_ZIP_RECORDS = re.compile(r"(data\.pkl|version|byteorder|\.format_version|\.storage_alignment|(\.data|data)/[^/]+)")


def _zip_pickle_record(path: Path, zf: zipfile.ZipFile) -> str:
    """The single ``<archive>/data.pkl`` record of a torch.save zip; anything unexpected raises."""
    infos = zf.infolist()
    names = [i.filename for i in infos]
    pickles = [n for n in names if n.endswith(".pkl")]
    if len(pickles) != 1:
        raise CheckpointFormatError(
            f"{path}: a torch.save zip holds exactly one data.pkl; "
            f"found {len(pickles)} pickles: {_shown(pickles[:5], 200)}"
        )
    # torch reads the record under the first entry's top folder; every entry must share it.
    prefix = names[0].split("/", 1)[0]
    if pickles[0] != f"{prefix}/data.pkl":
        raise CheckpointFormatError(
            f"{path}: expected {_shown(prefix)}/data.pkl in the zip, found {_shown(pickles[0])}"
        )
    for info in infos:
        top, _, rest = info.filename.partition("/")
        if top != prefix or not _ZIP_RECORDS.fullmatch(rest):
            raise CheckpointFormatError(f"{path}: unexpected entry {_shown(info.filename)} in a torch.save zip")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) or info.flag_bits & 0x1:
            raise CheckpointFormatError(f"{path}: entry {_shown(info.filename)} is encrypted or oddly compressed")
    return pickles[0]


def _open_zip(f: IO[bytes], path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(f)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointFormatError(f"{path}: corrupt zip archive ({e})") from e


def _check_torch_zip(f: IO[bytes], path: Path) -> None:
    """Validate a torch.save zip's layout and every entry's CRC."""
    with _open_zip(f, path) as zf:
        _zip_pickle_record(path, zf)
        try:
            bad = zf.testzip()
        except (zipfile.BadZipFile, OSError, RuntimeError, ValueError, EOFError) as e:
            raise CheckpointFormatError(f"{path}: corrupt zip archive ({e})") from e
    if bad is not None:
        raise CheckpointFormatError(f"{path}: zip entry {_shown(bad)} fails its CRC check (file corrupted)")
