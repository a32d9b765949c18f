"""``ldmkit generate --lora PATH[:SCALE] --embedding PATH[:TOKEN]``: adapters from the command line.

The pictures record every adapter applied (its type, params and the sha256 of its file) in the
``model`` entry of their metadata. A replay applies only the adapters the user names again (a picture
alone never makes ldmkit read a file) and refuses to run when they differ from the recorded ones.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ldmkit.errors import InputError

if TYPE_CHECKING:
    import argparse

    from ldmkit.pipeline import Pipeline

__all__ = ["add_arguments", "apply_adapter_flags", "check_recorded_adapters", "parse_flags", "with_adapters"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``--lora`` and ``--embedding`` flags."""
    p.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="PATH[:SCALE]",
        help="apply a LoRA file (kohya or diffusers/PEFT layout) to the denoiser and text encoder, scaled by "
        "SCALE (default 1); repeatable",
    )
    p.add_argument(
        "--embedding",
        action="append",
        default=[],
        metavar="PATH[:TOKEN]",
        help="bind a textual-inversion embedding to TOKEN (default: the token the file names); repeatable",
    )


def _lora(value: str) -> dict[str, Any]:
    path, sep, tail = value.rpartition(":")
    scale = 1.0
    if sep and path:
        try:
            scale = float(tail)
        except ValueError:
            path = value  # a colon that is part of the path
        else:
            if not math.isfinite(scale):
                raise InputError(f"--lora {value}: the scale must be a finite number")
    else:
        path = value
    if not Path(path).is_file():
        raise InputError(f"--lora {value}: no such file {path!r}")
    return {"type": "lora", "params": {"path": str(Path(path).resolve()), "scale": scale}}


def _embedding(value: str) -> dict[str, Any]:
    path, token = value, None
    if not Path(value).is_file():
        head, sep, tail = value.rpartition(":")
        if not sep or not head:
            raise InputError(f"--embedding {value}: no such file")
        path, token = head, tail
        if not token or any(c.isspace() for c in token):
            raise InputError(f"--embedding {value}: the token after ':' must be non-empty and without spaces")
        if not Path(path).is_file():
            raise InputError(f"--embedding {value}: no such file {path!r}")
    params: dict[str, Any] = {"path": str(Path(path).resolve())}
    if token is not None:
        params["token"] = token
    return {"type": "textual-inversion", "params": params}


def parse_flags(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The adapters the flags name, as ``{type, params}``, LoRAs first; files checked to exist (before loading)."""
    return [_lora(v) for v in args.lora] + [_embedding(v) for v in args.embedding]


def apply_adapter_flags(pipe: Pipeline, adapters: list[dict[str, Any]]) -> None:
    """Apply the adapters :func:`parse_flags` gave, in order."""
    for adapter in adapters:
        pipe.add_adapter(adapter)


def with_adapters(model: dict[str, Any], pipe: Pipeline) -> dict[str, Any]:
    """The ``model`` metadata entry with the pipeline's adapters (none: unchanged, as before adapters existed)."""
    if not pipe.adapters:
        return model
    return {**model, "adapters": [adapter.record() for adapter in pipe.adapters]}


def _essence(record: Any) -> tuple[Any, ...]:
    """What makes two adapter records the same adapter: type, file contents and settings (not the path)."""
    if not isinstance(record, dict) or not isinstance(record.get("params"), dict):
        raise InputError(f"metadata model.adapters: an entry must be {{type, params, sha256}}, got {record!r}")
    params = {k: v for k, v in record["params"].items() if k != "path"}
    return record.get("type"), record.get("sha256"), tuple(sorted(params.items()))


def _as_flag(record: dict[str, Any]) -> str:
    params = record.get("params", {})
    if record.get("type") == "lora":
        return f"--lora {params.get('path')}:{params.get('scale', 1.0)}"
    if record.get("type") == "textual-inversion":
        token = params.get("token")
        return f"--embedding {params.get('path')}" + (f":{token}" if token else "")
    return f"{record.get('type')} {params}"


def check_recorded_adapters(picture: str | Path, meta: dict[str, Any], pipe: Pipeline) -> None:
    """Refuse a replay whose adapters (from the spec and the flags) are not the ones the picture records."""
    recorded = meta["model"].get("adapters", [])
    if not isinstance(recorded, list):
        raise InputError(f"{picture}: metadata model.adapters must be a list")
    applied = [adapter.record() for adapter in pipe.adapters]
    if [_essence(r) for r in recorded] == [_essence(r) for r in applied]:
        return
    wanted = " ".join(_as_flag(r) for r in recorded) or "no adapters"
    given = " ".join(_as_flag(r) for r in applied) or "none"
    raise InputError(
        f"{picture}: made with {wanted} (files checked by sha256); this replay has {given}. "
        "Replay reads adapter files only when named: pass the same --lora/--embedding flags"
    )
