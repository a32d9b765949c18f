"""Reading and writing the files of a diffusers folder: JSON configs with a size limit, safetensors weights."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from ldmkit import strict_json
from ldmkit.errors import CheckpointError, SpecError

log = logging.getLogger(__name__)

MAX_JSON_BYTES = 1 << 20  # configs are small text files; a shard index of a huge model stays far below this
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
TRANSFORMERS_WEIGHTS = "model.safetensors"
PICKLE_WEIGHTS = ("diffusion_pytorch_model.bin", "pytorch_model.bin")


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; SpecError naming the file when it is missing, too large or not an object."""
    if not path.is_file():
        raise SpecError(f"{path}: missing (a diffusers folder needs this file)")
    size = path.stat().st_size
    if size > MAX_JSON_BYTES:
        raise SpecError(f"{path}: {size} bytes is larger than the {MAX_JSON_BYTES}-byte limit for a config file")
    try:
        data = strict_json.loads(path.read_text(encoding="utf-8"))
    except strict_json.DuplicateKeyError as exc:
        raise SpecError(f"{path}: {exc}") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise SpecError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` as indented, key-sorted JSON (the layout diffusers writes), atomically."""
    from ldmkit.checkpoints import atomic_write_text

    atomic_write_text(path, json.dumps(dict(data), indent=2, sort_keys=True) + "\n")


def _load_safetensors(path: Path) -> dict[str, Tensor]:
    from ldmkit.checkpoints import detect_format, load_state_dict

    # decided by magic bytes before anything is parsed, so a pickle is never opened
    if detect_format(path) != "safetensors":
        raise CheckpointError(f"{path}: not a safetensors file; only safetensors weights are read")
    return load_state_dict(path)


def read_weights(folder: Path, filename: str) -> dict[str, Tensor]:
    """The tensors of ``folder/filename`` or of its shards (``filename.index.json``); safetensors only."""
    path = folder / filename
    if path.is_file():
        return _load_safetensors(path)
    index_path = folder / f"{filename}.index.json"
    if index_path.is_file():
        weight_map = read_json(index_path).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise SpecError(f"{index_path}: 'weight_map' must map tensor names to shard file names")
        state: dict[str, Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            shard_path = folder / shard
            if Path(shard).name != shard or not shard_path.is_file():
                raise SpecError(f"{index_path}: shard {shard!r} is not a file in {folder}")
            state.update(_load_safetensors(shard_path))
        return state
    pickled = [name for name in PICKLE_WEIGHTS if (folder / name).exists()]
    hint = f" ({', '.join(pickled)} is a pickle and is not read; re-save it as safetensors)" if pickled else ""
    raise SpecError(f"{path}: missing{hint}")


def write_weights(folder: Path, filename: str, state: Mapping[str, Tensor]) -> None:
    """Save ``state`` as ``folder/filename`` (safetensors, with the metadata diffusers and transformers write)."""
    from ldmkit.checkpoints import save_state_dict

    save_state_dict(state, folder / filename, metadata={"format": "pt"})
