"""Safe checkpoint I/O: format detection, pickle scanning, safetensors validation, atomic writes.

Every load path in ldmkit goes through this module. The rules:

* The format is decided by magic bytes, never by the file extension (:func:`detect_format`).
* safetensors headers are validated here before the safetensors library maps the file, so a tiny
  file declaring a huge tensor fails fast instead of allocating.
* Pickle checkpoints (``torch.save`` zip and legacy formats) are scanned opcode by opcode first;
  any global outside a narrow allowlist raises :class:`~ldmkit.errors.UnsafeCheckpointError` and
  nothing runs. Then ``torch.load(..., weights_only=True)`` loads them, with inert stand-ins for
  the few non-tensor classes original CompVis/Lightning checkpoints hold.
* Writes go to a temporary file in the target directory and are renamed into place, so a crash
  never leaves a half-written file.

Loading arbitrary pickles is possible only through the explicit keyword
``load_checkpoint(path, unsafe_allow_pickle=True)`` in Python; no spec, file or environment
variable can turn it on.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import pickletools
import re
import secrets
import struct
import tarfile
import threading
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import torch

from ldmkit.errors import CheckpointError, CheckpointFormatError, UnsafeCheckpointError

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
Format = Literal["safetensors", "torch-zip", "torch-legacy-pickle"]

MIN_TORCH_VERSION = (2, 10)
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024
_LIST_LIMIT = 20  # names shown per category in error messages
# safe_globals edits a process-wide set on enter/exit; serialize so one load's exit cannot
# remove the stand-ins while another thread's load still needs them.
_TORCH_LOAD_LOCK = threading.Lock()

__all__ = [
    "LightningCallbackState",
    "LoadResult",
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_text",
    "detect_format",
    "load_checkpoint",
    "load_into",
    "load_state_dict",
    "safetensors_metadata",
    "save_state_dict",
    "scan_pickle_globals",
]


# ---------------------------------------------------------------------------------------------
# Format detection
# ---------------------------------------------------------------------------------------------
def _file_size(path: Path) -> int:
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
    return f"leading bytes {head[:16]!r}"


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
            f"{path}: a torch.save zip holds exactly one data.pkl; found {len(pickles)} pickles: {pickles[:5]}"
        )
    # torch reads the record under the first entry's top folder; every entry must share it.
    prefix = names[0].split("/", 1)[0]
    if pickles[0] != f"{prefix}/data.pkl":
        raise CheckpointFormatError(f"{path}: expected {prefix}/data.pkl in the zip, found {pickles[0]}")
    for info in infos:
        top, _, rest = info.filename.partition("/")
        if top != prefix or not _ZIP_RECORDS.fullmatch(rest):
            raise CheckpointFormatError(f"{path}: unexpected entry {info.filename!r} in a torch.save zip")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) or info.flag_bits & 0x1:
            raise CheckpointFormatError(f"{path}: entry {info.filename!r} is encrypted or oddly compressed")
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
        raise CheckpointFormatError(f"{path}: zip entry {bad!r} fails its CRC check (file corrupted)")


# ---------------------------------------------------------------------------------------------
# safetensors header validation
# ---------------------------------------------------------------------------------------------
# dtype tag -> bytes per element (the tags torch can hold)
_ST_ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}  # fmt: skip


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _read_safetensors_header(path: Path) -> dict[str, Any]:
    """Parse and validate a safetensors header without touching the data area."""
    size = _file_size(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise CheckpointFormatError(f"{path}: too short for a safetensors file ({size} bytes)")
        n = struct.unpack("<Q", raw)[0]
        if n > size - 8 or n > MAX_SAFETENSORS_HEADER:
            raise CheckpointFormatError(f"{path}: safetensors header length {n} is larger than the file allows")
        blob = f.read(n)
    try:
        header = json.loads(blob.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CheckpointFormatError(f"{path}: safetensors header is not valid JSON ({e})") from e
    if not isinstance(header, dict):
        raise CheckpointFormatError(f"{path}: safetensors header is not a JSON object")
    data_len = size - 8 - n
    spans: list[tuple[int, int, str]] = []
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                raise CheckpointFormatError(f"{path}: __metadata__ must map strings to strings")
            continue
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise CheckpointFormatError(f"{path}: tensor {name!r} needs exactly dtype, shape and data_offsets")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in _ST_ITEMSIZE:
            raise CheckpointFormatError(f"{path}: tensor {name!r} has unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise CheckpointFormatError(f"{path}: tensor {name!r} has invalid shape {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
            raise CheckpointFormatError(f"{path}: tensor {name!r} has invalid data_offsets {offsets!r}")
        begin, end = offsets
        if not 0 <= begin <= end <= data_len:
            raise CheckpointFormatError(
                f"{path}: tensor {name!r} data_offsets [{begin}, {end}] fall outside the {data_len}-byte data area"
            )
        nbytes = math.prod(shape) * _ST_ITEMSIZE[dtype]
        if end - begin != nbytes:
            raise CheckpointFormatError(
                f"{path}: tensor {name!r} of shape {shape} {dtype} needs {nbytes} bytes but its offsets span "
                f"{end - begin}"
            )
        spans.append((begin, end, name))
    spans.sort()
    for (_, prev_end, prev), (begin, _, cur) in zip(spans, spans[1:], strict=False):
        if begin < prev_end:
            raise CheckpointFormatError(f"{path}: tensors {prev!r} and {cur!r} have overlapping data_offsets")
    return header


def safetensors_metadata(path: PathLike) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file (validated header; tensors are not read)."""
    path = Path(path)
    if detect_format(path) != "safetensors":
        raise CheckpointFormatError(f"{path}: not a safetensors file")
    return dict(_read_safetensors_header(path).get("__metadata__", {}))


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    _read_safetensors_header(path)
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return dict(load_file(str(path), device="cpu"))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointFormatError(f"{path}: safetensors could not read it ({e})") from e


# ---------------------------------------------------------------------------------------------
# Pickle scanning
# ---------------------------------------------------------------------------------------------
_TORCH_STORAGES = [
    "Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool",
    "ComplexFloat", "ComplexDouble",
]  # fmt: skip
_TORCH_DTYPES = [
    "float16", "float32", "float64", "bfloat16", "complex64", "complex128", "uint8", "int8", "int16",
    "int32", "int64", "bool", "float8_e4m3fn", "float8_e5m2",
]  # fmt: skip
_NUMPY_DTYPE_CLASSES = [
    f"{k}DType"
    for k in ("Bool", "Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64")
    + ("Float16", "Float32", "Float64", "Complex64", "Complex128")
]
LIGHTNING_MODEL_CHECKPOINT = "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"

# What torch's weights_only unpickler accepts for plain tensors and parameters.
_TORCH_ALLOWED = frozenset(
    [
        "collections.OrderedDict",
        "torch._utils._rebuild_tensor",
        "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_tensor_v3",
        "torch._utils._rebuild_parameter",
        "torch._utils._rebuild_parameter_with_state",
        "torch._tensor._rebuild_from_type_v2",
        "torch.nn.parameter.Parameter",
        "torch.Size",
        "torch.device",
        "_codecs.encode",  # protocol 2 spells bytes this way
    ]
    + [f"torch.{s}Storage" for s in _TORCH_STORAGES]
    + [f"torch.{d}" for d in _TORCH_DTYPES]
)


class LightningCallbackState:
    """Inert stand-in for a pickled Lightning ``ModelCheckpoint``: it only holds the pickled state.

    Attributes of the original object are readable (``cb.best_model_path``); ``cb.state`` is the
    whole pickled state. When a checkpoint uses the class itself as a dict key (as Lightning 1.x
    does for ``callbacks``), the key is this class.
    """

    state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.__dict__["state"] = state

    def __getattr__(self, name: str) -> Any:
        state = self.__dict__.get("state")
        if isinstance(state, dict) and name in state:
            return state[name]
        raise AttributeError(name)

    def __repr__(self) -> str:
        return f"LightningCallbackState({self.__dict__.get('state')!r})"


_NUMPY_CODES = frozenset(["b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "c8", "c16"])


class _NumpyDType:
    """Inert stand-in for ``numpy.dtype`` in pickles: only plain numeric codes are accepted."""

    def __init__(self, code: Any = None, align: Any = False, copy: Any = True) -> None:
        if code not in _NUMPY_CODES:
            raise ValueError(f"numpy dtype {code!r} is not a plain numeric dtype")
        self.code = code
        self.byteorder = "="

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "="):
            self.byteorder = state[1]

    def numpy_dtype(self) -> Any:
        import numpy as np

        order = self.byteorder if self.byteorder in ("<", ">") else "="
        return np.dtype(order + self.code)


def _numpy_scalar(dtype: Any, data: Any = None) -> Any:
    """Rebuild a numpy scalar from its dtype and raw bytes (replaces ``numpy...multiarray.scalar``)."""
    if not isinstance(dtype, _NumpyDType) or not hasattr(dtype, "code") or not isinstance(data, bytes):
        raise ValueError("numpy scalar with an unsupported dtype or payload")
    import numpy as np

    np_dtype = dtype.numpy_dtype()
    if len(data) != np_dtype.itemsize:
        raise ValueError(f"numpy scalar payload of {len(data)} bytes for dtype {np_dtype}")
    return np.frombuffer(data, dtype=np_dtype)[0]


def _stand_ins() -> list[tuple[Any, str]]:
    """``(object, "module.qualname")`` pairs given to ``torch.serialization.safe_globals``."""
    pairs: list[tuple[Any, str]] = [
        (LightningCallbackState, LIGHTNING_MODEL_CHECKPOINT),
        (_numpy_scalar, "numpy.core.multiarray.scalar"),
        (_numpy_scalar, "numpy._core.multiarray.scalar"),
        (_NumpyDType, "numpy.dtype"),
    ]
    pairs += [(_NumpyDType, f"numpy.dtypes.{name}") for name in _NUMPY_DTYPE_CLASSES]
    return pairs


ALLOWED_GLOBALS = _TORCH_ALLOWED | {name for _, name in _stand_ins()}


@dataclass(frozen=True)
class _Global:
    name: str


_STRING_OPS = frozenset(
    "STRING BINSTRING SHORT_BINSTRING UNICODE BINUNICODE SHORT_BINUNICODE BINUNICODE8 "
    "BINBYTES SHORT_BINBYTES BINBYTES8".split()
)


def _global_name(module: str, name: str) -> str:
    from _compat_pickle import IMPORT_MAPPING, NAME_MAPPING

    # The same Python 2 name fix-ups torch's unpickler applies, so we judge what it would resolve.
    if (module, name) in NAME_MAPPING:
        module, name = NAME_MAPPING[(module, name)]
    elif module in IMPORT_MAPPING:
        module = IMPORT_MAPPING[module]
    return f"{module}.{name}"


def scan_pickle_globals(stream: IO[bytes], source: str = "pickle") -> set[str]:
    """Walk one pickle's opcodes without running it; return the globals it names.

    Simulates the unpickler's stack just enough to resolve ``STACK_GLOBAL`` operands (string
    pushes and memo lookups). Raises :class:`UnsafeCheckpointError` for any global outside the
    allowlist, for calls whose target is not a named global, and for extension-registry codes;
    :class:`CheckpointFormatError` for a malformed pickle. The stream is left just after STOP.
    """
    stack: list[Any] = []
    metastack: list[list[Any]] = []
    memo: dict[int, Any] = {}
    found: set[str] = set()

    def pop() -> Any:
        if not stack:
            raise CheckpointFormatError(f"{source}: malformed pickle (stack underflow)")
        return stack.pop()

    def pop_mark() -> list[Any]:
        nonlocal stack
        if not metastack:
            raise CheckpointFormatError(f"{source}: malformed pickle (no MARK)")
        items, stack = stack, metastack.pop()
        return items

    def record(name: str) -> _Global:
        if name not in ALLOWED_GLOBALS:
            raise UnsafeCheckpointError(
                f"{source}: refusing to load, the pickle references {name!r}, which is not on the allowlist of "
                "tensor and checkpoint-metadata types; nothing was executed. If you trust the file, use "
                "ldmkit.checkpoints.load_checkpoint(path, unsafe_allow_pickle=True)"
            )
        found.add(name)
        return _Global(name)

    def callee(what: str, obj: Any) -> None:
        if not isinstance(obj, _Global):
            raise UnsafeCheckpointError(
                f"{source}: refusing to load, {what} targets something other than a named global"
            )

    try:
        for op, arg, _pos in pickletools.genops(stream):
            name = op.name
            if name == "PROTO" and arg < 2:
                raise CheckpointFormatError(f"{source}: pickle protocol {arg} is not supported")
            if name in ("GLOBAL", "INST"):
                module, sep, qual = str(arg).partition(" ")
                if not sep or " " in qual:
                    raise UnsafeCheckpointError(f"{source}: refusing to load, malformed global {arg!r}")
                g = record(_global_name(module, qual))
                if name == "INST":
                    pop_mark()
                    stack.append(None)
                else:
                    stack.append(g)
            elif name == "STACK_GLOBAL":
                qual, module = pop(), pop()
                if not (isinstance(module, str) and isinstance(qual, str)):
                    raise UnsafeCheckpointError(f"{source}: refusing to load, STACK_GLOBAL with non-constant names")
                stack.append(record(_global_name(module, qual)))
            elif name in ("EXT1", "EXT2", "EXT4"):
                raise UnsafeCheckpointError(f"{source}: refusing to load, pickle uses extension-registry code {arg}")
            elif name == "REDUCE":
                pop()
                callee("REDUCE", stack[-1] if stack else None)
                stack[-1] = None
            elif name in ("NEWOBJ", "NEWOBJ_EX"):
                if name == "NEWOBJ_EX":
                    pop()
                pop()
                callee(name, stack[-1] if stack else None)
                stack[-1] = None
            elif name == "OBJ":
                items = pop_mark()
                callee("OBJ", items[0] if items else None)
                stack.append(None)
            elif name in _STRING_OPS:
                stack.append(arg)
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = stack[-1] if stack else pop()
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1] if stack else pop()
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                if arg not in memo:
                    raise CheckpointFormatError(f"{source}: malformed pickle (memo key {arg} unset)")
                stack.append(memo[arg])
            elif name == "MARK":
                metastack.append(stack)
                stack = []
            elif name == "POP":
                if stack:
                    stack.pop()
                else:
                    pop_mark()
            elif name == "DUP":
                stack.append(stack[-1] if stack else pop())
            elif name == "STOP":
                break
            else:  # generic: pop what the opcode consumes, push opaque results
                before = op.stack_before
                if pickletools.markobject in before:
                    pop_mark()
                    before = before[: before.index(pickletools.markobject)]
                for _ in before:
                    pop()
                stack.extend([None] * len(op.stack_after))
    except (ValueError, EOFError, KeyError, IndexError, struct.error) as e:
        raise CheckpointFormatError(f"{source}: malformed pickle ({e})") from e
    return found


# Pickles in a legacy torch.save file: magic number, protocol, sys info, the object, storage keys.
_LEGACY_PICKLES = 5


def _scan_checkpoint(f: IO[bytes], path: Path, fmt: Format) -> set[str]:
    f.seek(0)
    if fmt == "torch-zip":
        with _open_zip(f, path) as zf:
            record = _zip_pickle_record(path, zf)
            return scan_pickle_globals(io.BytesIO(zf.read(record)), f"{path}:{record}")
    found: set[str] = set()
    size = os.fstat(f.fileno()).st_size
    for _ in range(_LEGACY_PICKLES):
        if f.tell() >= size:
            break
        found |= scan_pickle_globals(f, str(path))
    return found


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------
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
        with _TORCH_LOAD_LOCK, safe_globals(_stand_ins()):
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


def load_checkpoint(path: PathLike, *, unsafe_allow_pickle: bool = False) -> dict[Any, Any]:
    """Load a checkpoint's top-level dict (for safetensors: its tensors).

    Pickle files (``torch.save`` zip or legacy) are scanned first and must only reference
    tensor types, Lightning's ``ModelCheckpoint`` (loaded as :class:`LightningCallbackState`)
    and numpy scalars.

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
            _scan_checkpoint(f, path, fmt)
            obj = _torch_load_safe(f, path)
    if not isinstance(obj, dict):
        raise CheckpointFormatError(f"{path}: expected a dict at the top level, found {type(obj).__name__}")
    return obj


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_LIST_LIMIT])
    more = len(names) - _LIST_LIMIT
    return shown + (f" (+{more} more)" if more > 0 else "")


def _state_dict_of(obj: Mapping[Any, Any], source: str) -> dict[str, torch.Tensor]:
    state = obj.get("state_dict") if isinstance(obj.get("state_dict"), Mapping) else obj
    bad = [repr(k) for k, v in state.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
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
    in a :class:`CheckpointError` that names ``what``.
    """
    if isinstance(path_or_state, Mapping):
        state, source = _state_dict_of(path_or_state, "state dict"), "state dict"
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


# ---------------------------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------------------------
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
        yield tmp
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


def _safetensors_ready(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors, none sharing storage with another (safetensors refuses that)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, value in state.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(f"cannot save entry {name!r}: a state dict maps names to tensors")
        t = value.detach()
        if t.device.type != "cpu":
            t = t.to("cpu")  # a fresh copy, so it shares nothing
        else:
            ptr = t.untyped_storage().data_ptr()
            if not t.is_contiguous() or (ptr in seen and t.numel() > 0):
                t = t.contiguous() if ptr not in seen else t.clone(memory_format=torch.contiguous_format)
            seen.add(ptr)
        out[name] = t
    return out


def save_state_dict(
    state: Mapping[str, torch.Tensor], path: PathLike, metadata: Mapping[str, str] | None = None
) -> Path:
    """Save tensors as safetensors, atomically; raise :class:`CheckpointError` if writing fails."""
    if metadata is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise CheckpointError("safetensors metadata must map strings to strings")
    tensors = _safetensors_ready(state)
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    with _atomic_target(path) as tmp:
        try:
            save_file(tensors, str(tmp), metadata=dict(metadata) if metadata else None)
        except SafetensorError as e:
            raise CheckpointError(f"could not write {path}: {e}") from e
    return Path(path)
