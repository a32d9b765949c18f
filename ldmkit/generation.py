"""Generation as a reproducible record: pictures as PNGs carrying the metadata that replays them."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import zlib
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ldmkit.errors import InputError, SpecError
from ldmkit.interfaces import SampleOptions
from ldmkit.pipeline import SPEC_FILE, Pipeline

log = logging.getLogger(__name__)

METADATA_KEY = "ldmkit"
METADATA_FORMAT = 1
MAX_METADATA_BYTES = 1 << 20
DEFAULT_MODEL = "default"


def default_model_dir() -> Path:
    """The shipped Shapes model folder (inside the ``ldmkit_shapes`` plugin)."""
    from importlib import resources

    try:
        root = Path(str(resources.files("ldmkit_shapes") / "model"))
    except ModuleNotFoundError:
        raise SpecError("the shipped model is not installed (plugin ldmkit_shapes missing); pass --spec") from None
    if not (root / SPEC_FILE).is_file():
        raise SpecError(f"the shipped model folder {root} holds no {SPEC_FILE}; pass --spec")
    return root


def weights_hash(directory: Path) -> str:
    """sha256 over the pipeline folder's spec and weight files, in name order."""
    digest = hashlib.sha256()
    for path in sorted(directory.glob("*.safetensors")) + [directory / SPEC_FILE]:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def open_pipeline(source: str | None) -> tuple[Pipeline, dict[str, Any]]:
    """A pipeline: None = the shipped default, a folder = a saved pipeline, a file = a spec (random weights)."""
    if source in (None, DEFAULT_MODEL):
        directory = default_model_dir()
        return Pipeline.load(directory), {"source": DEFAULT_MODEL, "weights_sha256": weights_hash(directory)}
    path = Path(source)
    if path.is_dir():
        return Pipeline.load(path), {"source": str(path), "weights_sha256": weights_hash(path)}
    if path.is_file():
        log.warning("%s is a spec without weights: components start from random weights", path)
        torch.manual_seed(0)  # random weights, but the same ones each time
        return Pipeline.from_spec(path), {"source": str(path), "weights_sha256": None}
    raise SpecError(f"{source}: no such spec file or pipeline folder")


def encode_inputs(inputs: dict[str, Any]) -> dict[str, Any]:
    """JSON-safe copy of CLI inputs (file contents as base64)."""
    return {
        k: {"base64": base64.b64encode(v).decode()} if isinstance(v, bytes) else v
        for k, v in inputs.items()
        if v is not None
    }


def decode_inputs(inputs: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in inputs.items():
        if isinstance(v, dict) and set(v) == {"base64"}:
            try:
                out[k] = base64.b64decode(v["base64"], validate=True)
            except (ValueError, TypeError):
                raise InputError(f"metadata input {k!r} is not valid base64") from None
        else:
            out[k] = v
    return out


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


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ldmkit metadata of a PNG, validated; oversized or malformed chunks are refused."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        Image.MAX_IMAGE_PIXELS = 64 * 1024 * 1024
        with Image.open(path) as img:
            if img.format != "PNG":
                raise InputError(f"{path}: not a PNG")
            text = img.text.get(METADATA_KEY) if hasattr(img, "text") else None
    except (UnidentifiedImageError, OSError, ValueError, zlib.error) as exc:
        raise InputError(f"{path}: unreadable PNG ({exc})") from None
    if text is None:
        raise InputError(f"{path}: carries no ldmkit metadata")
    if len(text) > MAX_METADATA_BYTES:
        raise InputError(f"{path}: ldmkit metadata larger than {MAX_METADATA_BYTES} bytes")
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: ldmkit metadata is not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != METADATA_FORMAT:
        raise InputError(f"{path}: ldmkit metadata of an unknown format")
    for key in ("task", "inputs", "options", "model"):
        if key not in meta:
            raise InputError(f"{path}: ldmkit metadata lacks {key!r}")
    return meta


def generate(pipeline: Pipeline, task_name: str, inputs: dict[str, Any], options: SampleOptions) -> tuple[Tensor, Any]:
    """Images (N, 3, H, W) in [-1, 1] for a task and its CLI-style inputs."""
    task = pipeline.task(task_name)
    request = task.parse_request(inputs)
    with pipeline.lock:
        images = task.run(pipeline, request, options)
    return images, request


def save_pictures(
    out_dir: str | Path, images: Tensor, *, task: str, inputs: dict[str, Any], options: SampleOptions, model: dict
) -> list[Path]:
    """Write ``DIR/000000.png`` ...; each records the whole batch's options and its index in it.

    Replaying regenerates the same batch (batched and single-picture float arithmetic may differ in
    the last bit, so the batch is what reproduces a picture exactly).
    """
    import ldmkit

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{out}: cannot create the output folder ({exc.strerror})") from None
    pixels = to_uint8(images)
    paths = []
    for i in range(pixels.shape[0]):
        meta = {
            "format": METADATA_FORMAT,
            "ldmkit": ldmkit.__version__,
            "torch": torch.__version__,
            "task": task,
            "inputs": encode_inputs(inputs),
            "options": {**asdict(options), "progress": False},
            "index": i,
            "model": model,
        }
        path = out / f"{i:06d}.png"
        write_png(path, pixels[i], meta)
        paths.append(path)
    return paths
