"""safetensors: header validation before the library maps the file, reading and atomic saving."""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ldmkit import strict_json
from ldmkit.checkpoints.atomic import _atomic_target
from ldmkit.checkpoints.detect import MAX_SAFETENSORS_HEADER, PathLike, _file_size, _shown, detect_format
from ldmkit.errors import CheckpointError, CheckpointFormatError

# dtype tag -> bytes per element (the tags torch can hold)
_ST_ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}  # fmt: skip


# torch refuses more dimensions than this; a stride (product of later dims) must fit in int64
MAX_TENSOR_DIMS = 64
_MAX_ELEMENTS = 2**63 - 1


def _check_shape(path: Path, name: str, shape: Any, itemsize: int) -> None:
    """A shape torch can hold: whole dims >= 0, at most 64, strides and byte size within int64."""
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise CheckpointFormatError(
            f"{path}: tensor {_shown(name)} has an invalid shape (not a list of whole numbers >= 0)"
        )
    if len(shape) > MAX_TENSOR_DIMS:
        raise CheckpointFormatError(f"{path}: tensor {_shown(name)} has {len(shape)} dims, more than {MAX_TENSOR_DIMS}")
    # zeros make the size 0, but torch still computes each stride from the nonzero dims
    if math.prod(max(d, 1) for d in shape) * itemsize > _MAX_ELEMENTS:
        raise CheckpointFormatError(
            f"{path}: tensor {_shown(name)} of shape {_shown(shape)} is larger than torch can address"
        )


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


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
        header = strict_json.loads(blob.decode("utf-8"))
    except UnicodeDecodeError:
        raise CheckpointFormatError(f"{path}: safetensors header is not UTF-8 text") from None
    except (ValueError, RecursionError) as e:
        # JSON errors name a position, not the text; duplicate-key errors name the key
        reason = str(e) if isinstance(e, ValueError) else "nested too deeply"
        raise CheckpointFormatError(f"{path}: safetensors header is not valid JSON ({reason[:200]})") from None
    if not isinstance(header, dict):
        raise CheckpointFormatError(f"{path}: safetensors header is not a JSON object")
    data_len = size - 8 - n
    spans: list[tuple[int, int, str]] = []
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                raise CheckpointFormatError(f"{path}: __metadata__ must map strings to strings")
            continue
        shown = _shown(name)
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise CheckpointFormatError(f"{path}: tensor {shown} needs exactly dtype, shape and data_offsets")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(dtype, str) or dtype not in _ST_ITEMSIZE:
            raise CheckpointFormatError(f"{path}: tensor {shown} has unknown dtype {_shown(dtype)}")
        _check_shape(path, name, shape, _ST_ITEMSIZE[dtype])
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
            raise CheckpointFormatError(f"{path}: tensor {shown} has invalid data_offsets {_shown(offsets)}")
        begin, end = offsets
        if not 0 <= begin <= end <= data_len:
            raise CheckpointFormatError(
                f"{path}: tensor {shown} data_offsets [{begin}, {end}] fall outside the {data_len}-byte data area"
            )
        nbytes = math.prod(shape) * _ST_ITEMSIZE[dtype]
        if end - begin != nbytes:
            raise CheckpointFormatError(
                f"{path}: tensor {shown} of shape {shape} {dtype} needs {nbytes} bytes but its offsets span "
                f"{end - begin}"
            )
        spans.append((begin, end, name))
    spans.sort()
    for (_, prev_end, prev), (begin, _, cur) in zip(spans, spans[1:], strict=False):
        if begin < prev_end:
            raise CheckpointFormatError(
                f"{path}: tensors {_shown(prev)} and {_shown(cur)} have overlapping data_offsets"
            )
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


__all__ = ["MAX_TENSOR_DIMS", "safetensors_metadata", "save_state_dict"]
