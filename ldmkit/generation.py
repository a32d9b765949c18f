"""Generation as a reproducible record: pictures as PNGs carrying the metadata that replays them."""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import struct
import zlib
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ldmkit import strict_json
from ldmkit.errors import InputError, SpecError
from ldmkit.fast.config import DTYPES
from ldmkit.folders import ensure_output_folder
from ldmkit.interfaces import SampleOptions
from ldmkit.pipeline import SPEC_FILE, Pipeline, check_device
from ldmkit.registry import ModelInfo, Registry, get_registry
from ldmkit.tasks import default_guidance, default_sampling  # noqa: F401 (the CLI's defaults, public in ldmkit.tasks)

log = logging.getLogger(__name__)

METADATA_KEY = "ldmkit"
METADATA_FORMAT = 2
"""2: ``eta`` is the scale of every sampler's fresh noise (None: the sampler's default) and the sampler may be
``{type, params}``. Format 1 is read too: there ``ddpm`` and ``euler-a`` recorded ``eta`` 0 for their full noise."""
READABLE_FORMATS = (1, 2)
# samplers whose format-1 eta of 0 meant full ancestral noise (eta 1 in format 2)
_FORMAT1_FULL_NOISE = ("ddpm", "euler-a")
MAX_METADATA_BYTES = 1 << 20
DEFAULT_MODEL = "default"  # the source recorded for (and replayed from) the default model
# what a picture without a ``runtime`` entry (written before it existed) was made with
DEFAULT_RUNTIME: dict[str, Any] = {"device": "cpu", "fast": False}
PRECISION_NAMES: dict[torch.dtype, str] = {dtype: name for name, dtype in DTYPES.items()}
DEVICE_CHOICES = "cpu, cuda, cuda:N or auto"
_TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]*")
_CUDA_DEVICE = re.compile(r"cuda(?::(0|[1-9][0-9]*))?")


def _no_default_model(registry: Registry) -> SpecError:
    names = ", ".join(sorted(registry.models)) or "none"
    return SpecError(
        "no default model is installed (no plugin registers a model with default=True); "
        f"pass --spec FOLDER or --model NAME (registered models: {names})"
    )


def _model_info(name: str | None, registry: Registry | None) -> tuple[ModelInfo, Registry]:
    registry = registry if registry is not None else get_registry()
    if name is None or name == DEFAULT_MODEL:
        info = registry.default_model()
        if info is None:
            raise _no_default_model(registry)
        return info, registry
    return registry.model(name), registry


def model_dir(name: str | None = None, *, registry: Registry | None = None) -> Path:
    """The pipeline folder of the model a plugin registered as ``name`` (None or ``"default"``: the default model).

    Raises :class:`SpecError` when no plugin provides a default model, when the folder holds no
    ``spec.yaml``, or (as :class:`ldmkit.UnknownComponentError`, with a suggestion) for an unknown name.
    """
    info, _ = _model_info(name, registry)
    root = info.folder()
    if not (root / SPEC_FILE).is_file():
        raise SpecError(
            f"model {info.name!r} of plugin {info.plugin.name!r} ({info.plugin.distribution}): "
            f"its folder {root} holds no {SPEC_FILE}"
        )
    return root


def default_model_dir(registry: Registry | None = None) -> Path:
    """The default model's pipeline folder (the model a plugin registered with ``default=True``)."""
    return model_dir(None, registry=registry)


def weights_hash(directory: Path) -> str:
    """sha256 over the pipeline folder's spec and weight files, in name order."""
    from ldmkit.checkpoints import sha256_of_files

    # bounded reads of regular files inside the folder (a link to /dev/zero is refused)
    return sha256_of_files(directory, sorted(directory.glob("*.safetensors")) + [directory / SPEC_FILE])


def open_model(name: str | None = None, *, registry: Registry | None = None) -> tuple[Pipeline, dict[str, Any]]:
    """A registered model (None: the default one) and the ``model`` metadata entry that finds it again.

    The default model is recorded as source ``"default"``; a model picked by name as its ``name``
    (and source), so that a replay opens the same model whichever model is the default then.
    """
    info, registry = _model_info(name, registry)
    directory = model_dir(info.name, registry=registry)
    record = {"source": DEFAULT_MODEL} if name in (None, DEFAULT_MODEL) else {"source": info.name, "name": info.name}
    return Pipeline.load(directory, registry), {**record, "weights_sha256": weights_hash(directory)}


def open_pipeline(source: str | None, *, registry: Registry | None = None) -> tuple[Pipeline, dict[str, Any]]:
    """A pipeline: None = the default model, a folder = a saved pipeline, a file = a spec (random weights)."""
    if source in (None, DEFAULT_MODEL):
        return open_model(None, registry=registry)
    path = Path(source)
    where = str(path.resolve())  # absolute, so a replay from another working folder finds it
    if path.is_dir():
        return Pipeline.load(path, registry), {"source": where, "weights_sha256": weights_hash(path)}
    if path.is_file():
        log.warning("%s is a spec without weights: components start from random weights", path)
        torch.manual_seed(0)  # random weights, but the same ones each time
        return Pipeline.from_spec(path, registry), {"source": where, "weights_sha256": None}
    raise SpecError(f"{source}: no such spec file or pipeline folder")


def resolve_device(value: str, *, what: str = "--device", hint: str = "use --device cpu") -> torch.device:
    """The device ``value`` names (cpu, cuda, cuda:N, auto), refused with :class:`InputError` if unusable.

    Checked before any model is loaded, so a typo costs no loading time. ``what`` and ``hint`` word
    the message for where the value came from (the command line, or a picture's metadata).
    """
    if value == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if value == "cpu":
        return torch.device("cpu")
    if _CUDA_DEVICE.fullmatch(value) is None:  # stricter than torch.device: no other device types, no spaces
        raise InputError(f"{what} {value!r}: not a device; expected {DEVICE_CHOICES}")
    return check_device(value, what=what, hint=hint)


def runtime_of(pipe: Pipeline) -> dict[str, Any]:
    """The ``runtime`` metadata entry of pictures made by ``pipe``.

    Its device, whether the fast path is on and, when it is, the precision it computes in.
    """
    runtime: dict[str, Any] = {"device": str(pipe.device), "fast": pipe.fast is not None}
    if pipe.fast is not None:
        runtime["precision"] = PRECISION_NAMES[pipe.fast.settings.dtype]
    return runtime


def recorded_runtime(meta: dict[str, Any]) -> dict[str, Any]:
    """The runtime a picture was made with; pictures from before the entry existed were made on the CPU, not fast."""
    return {**DEFAULT_RUNTIME, **meta.get("runtime", {})}


MAX_EMBEDDED_INPUT = 256 * 1024
"""Input files up to this many bytes travel inside each picture; larger ones are recorded by sha256 only."""
_INPUT_ENTRY_KEYS = {"base64": str, "sha256": str, "size": int}


def encode_inputs(inputs: dict[str, Any]) -> dict[str, Any]:
    """JSON-safe copy of CLI inputs as given: text as it is, a file as its sha256 and size, and its bytes if small."""
    import hashlib

    out: dict[str, Any] = {}
    for key, value in inputs.items():
        if value is None:
            continue
        if isinstance(value, bytes):
            entry: dict[str, Any] = {"sha256": hashlib.sha256(value).hexdigest(), "size": len(value)}
            if len(value) <= MAX_EMBEDDED_INPUT:
                entry["base64"] = base64.b64encode(value).decode()
            value = entry
        out[key] = value
    return out


def decode_inputs(inputs: dict[str, Any], supplied: dict[str, bytes] | None = None) -> dict[str, Any]:
    """The inputs :func:`encode_inputs` recorded; a file recorded by hash only comes from ``supplied``.

    A file's bytes must match its recorded sha256, whether they came from the picture or from
    ``supplied`` (``--input KEY=@PATH`` given with ``--replay``).
    """
    import hashlib

    supplied = supplied or {}
    out = {}
    for key, value in inputs.items():
        if not isinstance(value, dict):
            out[key] = value
            continue
        if "base64" in value:
            try:
                data = base64.b64decode(value["base64"], validate=True)
            except (ValueError, TypeError):
                raise InputError(f"metadata input {key!r} is not valid base64") from None
        elif key in supplied:
            data = supplied[key]
        else:
            raise InputError(
                f"metadata input {key!r} is a file of {value.get('size', '?')} bytes recorded by its sha256 only; "
                f"give the file again: --input {key}=@PATH"
            )
        if "sha256" in value and hashlib.sha256(data).hexdigest() != value["sha256"]:
            source = "the file given" if "base64" not in value else "the picture"
            raise InputError(f"metadata input {key!r}: its bytes (from {source}) do not match the recorded sha256")
        out[key] = data
    return out


def _check_input_entry(path: Path, key: str, value: Any) -> None:
    """A recorded input: a value, or a file entry of base64 bytes and/or sha256 (and size)."""
    if not isinstance(value, dict):
        return
    shape = "a value or {'base64': text, 'sha256': text, 'size': int}"
    if not value or set(value) - set(_INPUT_ENTRY_KEYS) or not ({"base64", "sha256"} & set(value)):
        raise InputError(f"{path}: metadata input {key!r} must be {shape}")
    for field, kind in _INPUT_ENTRY_KEYS.items():
        if field in value and (not isinstance(value[field], kind) or isinstance(value[field], bool)):
            raise InputError(f"{path}: metadata input {key!r} must be {shape}")


def to_uint8(images: Tensor) -> Tensor:
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8; NaN never reaches a picture."""
    if not torch.isfinite(images).all():
        raise InputError("the generated pictures contain NaN or Inf; nothing was written")
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()


def write_png(path: Path, pixels: Tensor, metadata: dict[str, Any]) -> None:
    from PIL import Image, PngImagePlugin

    from ldmkit.checkpoints import atomic_write_bytes

    info = PngImagePlugin.PngInfo()
    info.add_itxt(METADATA_KEY, json.dumps(metadata, sort_keys=True), zip=True)
    import io

    buf = io.BytesIO()
    Image.fromarray(pixels.numpy(), "RGB").save(buf, format="PNG", pnginfo=info)
    atomic_write_bytes(path, buf.getvalue())


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")
_MAX_CHUNK = (1 << 31) - 1  # the PNG limit on a chunk's length


def _inflate(path: Path, data: bytes) -> bytes:
    """zlib data inflated to at most MAX_METADATA_BYTES; a bomb stops there instead of filling memory."""
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, MAX_METADATA_BYTES + 1)
    except zlib.error as exc:
        raise InputError(f"{path}: ldmkit metadata chunk is not valid compressed data ({exc})") from None
    if len(out) > MAX_METADATA_BYTES or inflater.unconsumed_tail:
        raise InputError(f"{path}: ldmkit metadata larger than {MAX_METADATA_BYTES} bytes")
    if not inflater.eof:
        raise InputError(f"{path}: ldmkit metadata chunk is truncated compressed data")
    return out


def _text_of_chunk(path: Path, kind: bytes, data: bytes) -> bytes:
    """The text of a tEXt/zTXt/iTXt chunk whose keyword is ``ldmkit`` (keyword already removed)."""
    if kind == b"tEXt":
        return data
    if kind == b"zTXt":
        if data[:1] != b"\x00":
            raise InputError(f"{path}: ldmkit metadata uses an unknown compression method")
        return _inflate(path, data[1:])
    flag, method, rest = data[:1], data[1:2], data[2:]
    parts = rest.split(b"\x00", 2)  # language tag, translated keyword, text
    if len(parts) != 3 or flag not in (b"\x00", b"\x01") or method != b"\x00":
        raise InputError(f"{path}: malformed iTXt chunk for ldmkit metadata")
    return _inflate(path, parts[2]) if flag == b"\x01" else parts[2]


def _metadata_chunk(path: Path) -> bytes:
    """Walk the PNG's chunks (bounded reads, CRCs of the chunks used) and return the ldmkit text.

    Pixel data is never decoded, so an image-size bomb cannot cost memory here.
    """
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if f.read(8) != PNG_SIGNATURE:
                raise InputError(f"{path}: not a PNG")
            found: list[bytes] = []
            first = True
            while True:
                header = f.read(8)
                if len(header) < 8:
                    raise InputError(f"{path}: truncated PNG (no IEND chunk)")
                length, kind = struct.unpack(">I4s", header)
                if length > _MAX_CHUNK or f.tell() + length + 4 > size:
                    raise InputError(f"{path}: truncated or corrupt PNG (chunk {kind!r} runs past the end)")
                if first and kind != b"IHDR":
                    raise InputError(f"{path}: corrupt PNG (it does not start with IHDR)")
                first = False
                if kind == b"IEND":
                    break
                if kind not in _TEXT_CHUNKS:
                    f.seek(length + 4, os.SEEK_CUR)  # skip data and CRC unread
                    continue
                keyword = f.read(min(length, len(METADATA_KEY) + 1))
                if keyword != METADATA_KEY.encode() + b"\x00":
                    f.seek(length + 4 - len(keyword), os.SEEK_CUR)
                    continue
                if length > MAX_METADATA_BYTES:
                    raise InputError(f"{path}: ldmkit metadata larger than {MAX_METADATA_BYTES} bytes")
                data = f.read(length - len(keyword))
                (crc,) = struct.unpack(">I", f.read(4))
                if zlib.crc32(data, zlib.crc32(kind + keyword)) != crc:
                    raise InputError(f"{path}: ldmkit metadata chunk fails its CRC check (file corrupted)")
                found.append(_text_of_chunk(path, kind, data))
    except OSError as exc:
        raise InputError(f"{path}: unreadable ({exc.strerror or exc})") from None
    except struct.error:
        raise InputError(f"{path}: truncated PNG") from None
    if not found:
        raise InputError(f"{path}: carries no ldmkit metadata")
    if len(found) > 1:
        raise InputError(f"{path}: carries {len(found)} ldmkit metadata chunks; expected one")
    return found[0]


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _check_fields(path: Path, meta: dict[str, Any]) -> None:
    """Types of the fields replay relies on; the optional model spec is validated like any spec."""
    from ldmkit.generation_options import check_label, check_options
    from ldmkit.specs import validate_spec

    for key in ("task", "inputs", "options", "model"):
        if key not in meta:
            raise InputError(f"{path}: ldmkit metadata lacks {key!r}")
    if not isinstance(meta["task"], str) or not _TASK_NAME.fullmatch(meta["task"]):
        raise InputError(f"{path}: metadata task must be a task name")
    index = meta.get("index", 0)
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise InputError(f"{path}: metadata index must be an integer >= 0, got {index!r}")
    if not isinstance(meta["inputs"], dict):
        raise InputError(f"{path}: metadata inputs must be a mapping")
    for key, value in meta["inputs"].items():
        _check_input_entry(path, key, value)
    options = meta["options"]
    if not isinstance(options, dict):
        raise InputError(f"{path}: metadata options must be a mapping")
    recorded = check_options(options, prefix=f"{path}: metadata options.")
    if index >= recorded.n:
        raise InputError(f"{path}: metadata index {index} is past the batch of {recorded.n} pictures it names")
    for key in ("label", "negative_label"):
        if key in meta["inputs"]:
            check_label(meta["inputs"][key], where=f"{path}: metadata input {key!r}")
    model = meta["model"]
    if not isinstance(model, dict):
        raise InputError(f"{path}: metadata model must be a mapping")
    for key in ("source", "name", "weights_sha256"):
        if model.get(key) is not None and not isinstance(model[key], str):
            raise InputError(f"{path}: metadata model.{key} must be text")
    runtime = meta.get("runtime", {})  # optional: older pictures lack it
    if not isinstance(runtime, dict):
        raise InputError(f"{path}: metadata runtime must be a mapping")
    if "device" in runtime and not isinstance(runtime["device"], str):
        raise InputError(f"{path}: metadata runtime.device must be text, got {runtime['device']!r}")
    if "fast" in runtime and not isinstance(runtime["fast"], bool):
        raise InputError(f"{path}: metadata runtime.fast must be true or false, got {runtime['fast']!r}")
    if runtime.get("precision") is not None and runtime["precision"] not in DTYPES:
        choices = ", ".join(DTYPES)
        raise InputError(f"{path}: metadata runtime.precision must be one of {choices}, got {runtime['precision']!r}")
    if "spec" in model:
        if not isinstance(model["spec"], dict):
            raise SpecError(f"{path}: metadata model.spec: a spec must be a mapping")
        validate_spec(model["spec"], source=f"{path}: metadata model.spec")


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ldmkit metadata of a PNG, validated.

    Refused with :class:`InputError`: a missing file, a non-PNG, a truncated or corrupt PNG, no or
    several ``ldmkit`` chunks, a chunk (or its decompressed text) over ``MAX_METADATA_BYTES``,
    invalid UTF-8 or JSON, an unknown ``format``, missing or mistyped fields. A pipeline spec under
    ``model.spec`` goes through :func:`ldmkit.specs.validate_spec` (:class:`SpecError`).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    raw = _metadata_chunk(path)
    if len(raw) > MAX_METADATA_BYTES:
        raise InputError(f"{path}: ldmkit metadata larger than {MAX_METADATA_BYTES} bytes")
    try:
        meta = strict_json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InputError(f"{path}: ldmkit metadata is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise InputError(f"{path}: ldmkit metadata is not a JSON object")
    if meta.get("format") not in READABLE_FORMATS or isinstance(meta.get("format"), bool):
        raise InputError(
            f"{path}: ldmkit metadata of an unknown format {meta.get('format')!r} (expected one of "
            f"{', '.join(map(str, READABLE_FORMATS))})"
        )
    if meta["format"] == 1:
        meta = _upgrade_format1(meta)
    _check_fields(path, meta)
    return meta


def _upgrade_format1(meta: dict[str, Any]) -> dict[str, Any]:
    """Format-1 metadata as format 2: the same pictures, in today's meaning of ``eta``."""
    options = meta.get("options")
    if isinstance(options, dict) and options.get("sampler") in _FORMAT1_FULL_NOISE and options.get("eta") == 0:
        options = {**options, "eta": None}  # their default (1.0) is the full noise format 1 gave
    return {**meta, "format": METADATA_FORMAT, "options": options}


def generate(pipeline: Pipeline, task_name: str, inputs: dict[str, Any], options: SampleOptions) -> tuple[Tensor, Any]:
    """Images (N, 3, H, W) in [-1, 1] for a task and its CLI-style inputs."""
    task = pipeline.task(task_name)
    request = task.parse_request(inputs)
    with pipeline.lock:
        images = task.run(pipeline, request, options)
    return images, request


def _options_record(options: SampleOptions) -> dict[str, Any]:
    """``options`` as JSON-ready values (a ``{type, params}`` sampler as a mapping)."""
    from pydantic import TypeAdapter

    return TypeAdapter(SampleOptions).dump_python(options, mode="json")


def save_pictures(
    out_dir: str | Path,
    images: Tensor,
    *,
    task: str,
    inputs: dict[str, Any],
    options: SampleOptions,
    model: dict,
    first_index: int = 0,
    runtime: dict[str, Any] | None = None,
) -> list[Path]:
    """Write the pictures as ``DIR/NNNNNN.png``; each records the whole batch's options and its index in it.

    Numbering continues after the highest number already in ``DIR`` and each name is claimed
    atomically (:func:`ldmkit.folders.reserve_picture_name`), so no picture is ever replaced, even by
    another run writing into the same folder at the same time. ``first_index`` is the batch index of
    ``images[0]`` (a replayed picture keeps its place in the batch it came from, so it replays again).
    ``runtime`` (see :func:`runtime_of`) records the device and fast path, which replay reuses; left
    out, the pictures replay as made on the CPU without the fast path.
    """
    import ldmkit
    from ldmkit.folders import next_picture_number, reserve_picture_name

    pixels = to_uint8(images)  # refused (NaN) before any name is claimed
    out = ensure_output_folder(out_dir)
    number = next_picture_number(out)
    paths = []
    for i in range(pixels.shape[0]):
        meta = {
            "format": METADATA_FORMAT,
            "ldmkit": ldmkit.__version__,
            "torch": torch.__version__,
            "task": task,
            "inputs": encode_inputs(inputs),
            "options": {**_options_record(options), "progress": False},
            "index": first_index + i,
            "model": model,
        }
        if runtime is not None:
            meta["runtime"] = runtime
        path, number = reserve_picture_name(out, number)
        try:
            write_png(path, pixels[i], meta)
        except BaseException:
            path.unlink(missing_ok=True)  # give the claimed name back
            raise
        number += 1
        paths.append(path)
    return paths


__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_RUNTIME",
    "DEVICE_CHOICES",
    "MAX_EMBEDDED_INPUT",
    "MAX_METADATA_BYTES",
    "METADATA_FORMAT",
    "READABLE_FORMATS",
    "METADATA_KEY",
    "PNG_SIGNATURE",
    "PRECISION_NAMES",
    "decode_inputs",
    "default_guidance",
    "default_model_dir",
    "default_sampling",
    "encode_inputs",
    "generate",
    "model_dir",
    "open_model",
    "open_pipeline",
    "read_metadata",
    "recorded_runtime",
    "resolve_device",
    "runtime_of",
    "save_pictures",
    "to_uint8",
    "weights_hash",
    "write_png",
]
