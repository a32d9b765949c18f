"""Reading and writing the files of a diffusers folder: JSON configs with a size limit, safetensors weights."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
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
# what a folder written here claims to be written by (diffusers reads the version only to warn)
DIFFUSERS_VERSION = "0.27.0"


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


class ConfigReader:
    """Reads a diffusers model config against that class's constructor defaults.

    ``get`` falls back to the default (older folders omit keys); ``expect`` fails with a SpecError
    when a value is one ldmkit does not implement; ``finish`` rejects keys the class does not know
    unless their value is null/false (a newer diffusers option left off).
    """

    def __init__(self, config: Mapping[str, Any], defaults: Mapping[str, Any], what: str) -> None:
        self.config = dict(config)
        self.defaults = dict(defaults)
        self.what = what

    def get(self, key: str) -> Any:
        return self.config.get(key, self.defaults.get(key))

    def expect(self, key: str, allowed: Iterable[Any], why: str = "") -> Any:
        value = self.get(key)
        allowed = list(allowed)
        if value not in allowed:
            shown = " or ".join(repr(a) for a in allowed)
            reason = f" ({why})" if why else ""
            raise SpecError(f"{self.what}: {key}={value!r} is not supported; ldmkit needs {shown}{reason}")
        return value

    def integer(self, key: str, minimum: int = 1) -> int:
        value = self.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise SpecError(f"{self.what}: {key} must be an integer >= {minimum}, got {value!r}")
        return value

    def int_list(self, key: str, length: int | None = None) -> list[int]:
        value = self.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and length is not None:
            value = [value] * length
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value
        ):
            raise SpecError(f"{self.what}: {key} must be a list of positive integers, got {value!r}")
        if length is not None and len(value) != length:
            raise SpecError(f"{self.what}: {key} has {len(value)} entries, expected {length} (one per block)")
        return list(value)

    def str_list(self, key: str) -> list[str]:
        value = self.get(key)
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise SpecError(f"{self.what}: {key} must be a list of block type names, got {value!r}")
        return list(value)

    def finish(self) -> None:
        unknown = sorted(
            k
            for k, v in self.config.items()
            if not k.startswith("_") and k not in self.defaults and v not in (None, False)
        )
        if unknown:
            raise SpecError(f"{self.what}: options ldmkit does not know: {', '.join(unknown)}")
