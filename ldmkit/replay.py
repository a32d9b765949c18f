"""``ldmkit generate --replay``: one picture made again from its metadata, and checked against the original.

Picture ``i`` of a batch with seed ``s`` is drawn from its own generator seeded ``s + i``, so by
design it is picture 0 of a one-picture run with seed ``s + i``: replay makes that one picture, not
the whole batch. On some CPUs a batch rounds a few values differently from one picture alone; when
the lone picture differs from the recorded one, replay remakes the recorded batch, whose float path
is the original's, so the replayed picture is byte for byte the recorded one either way.

A picture's metadata is input like any other: its options pass the command line's rules
(:mod:`ldmkit.generation_options`), and it may only name a registered model. A pipeline folder or
spec file it names is loaded only when the user names it too (``--spec PATH``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ldmkit.errors import InputError
from ldmkit.pipeline import Pipeline

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplayResult:
    """What a replay wrote and whether it equals the recorded picture (``difference`` says how not)."""

    path: Path
    identical: bool
    pixels: np.ndarray  # (H, W, 3) uint8, the replayed picture
    batch_remade: bool


def open_recorded_model(
    picture: str | Path, meta: dict[str, Any], spec: str | None = None, model: str | None = None
) -> tuple[Pipeline, dict[str, Any]]:
    """The pipeline a picture was made with, its weights checked against the recorded sha256.

    ``spec`` / ``model`` (``--spec`` / ``--model`` given with ``--replay``) load what the user names;
    otherwise the recorded model must be the default or a registered one. A recorded path is refused
    with a message saying to pass it as ``--spec``: a picture alone never makes ldmkit read a file.
    """
    from ldmkit.generation import DEFAULT_MODEL, open_model, open_pipeline

    recorded = meta["model"]
    if spec is not None and model is not None:
        raise InputError("--spec and --model both pick the pipeline; give one of them")
    if spec is not None:
        pipe, record = open_pipeline(spec)
    elif model is not None:
        pipe, record = open_model(model)
    elif recorded.get("name") is not None:  # a model picked by name is opened by name again
        pipe, record = open_model(recorded["name"])
    elif recorded.get("source") in (None, DEFAULT_MODEL):
        pipe, record = open_model(None)
    else:
        source = recorded["source"]
        raise InputError(
            f"{picture}: made with the pipeline at {source!r}, which replay does not load on a picture's word; "
            f"to load it, name it yourself: --spec {source}"
        )
    if record["weights_sha256"] != recorded.get("weights_sha256"):
        raise InputError(f"{picture}: made with other weights than {record['source']} holds now")
    return pipe, record


MAX_PICTURE_PIXELS = 4096 * 4096  # a recorded picture larger than this is not one ldmkit wrote


def recorded_pixels(picture: str | Path) -> np.ndarray:
    """The recorded picture's pixels (H, W, 3) uint8; its size is checked before any pixel is decoded."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(picture) as original:
                width, height = original.size
                if width * height > MAX_PICTURE_PIXELS:
                    raise InputError(f"{picture}: {width}x{height} pixels, more than a picture ldmkit writes")
                return np.asarray(original.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(f"{picture}: not a readable picture ({type(exc).__name__})") from None


def replay_picture(
    pipe: Pipeline,
    picture: str | Path,
    meta: dict[str, Any],
    model: dict[str, Any],
    out_dir: str | Path,
    *,
    whole_batch: bool = False,
    progress: bool = False,
    files: dict[str, bytes] | None = None,
) -> ReplayResult:
    """Make ``picture`` again with ``pipe`` (already on its device) and write it into ``out_dir``.

    ``files`` gives again the input files the picture recorded by sha256 only (too large to carry);
    they must match the recorded hash.

    One picture (seed + index) unless ``whole_batch``; a lone picture that differs from the recorded
    one is followed by the recorded batch. The written picture records the original batch and index.
    """
    from ldmkit.generation import decode_inputs, generate, runtime_of, save_pictures, to_uint8
    from ldmkit.generation_options import check_options

    options = check_options(meta["options"]).sample_options()
    options = replace(options, progress=progress)
    index = int(meta.get("index", 0))
    inputs = decode_inputs(meta["inputs"], files)
    recorded = recorded_pixels(picture)

    def make(batch: bool) -> torch.Tensor:
        ask = options if batch else replace(options, n=1, seed=options.seed + index)
        images, _ = generate(pipe, meta["task"], inputs, ask)
        return images[index : index + 1] if batch else images  # (1, 3, H, W)

    batch = whole_batch or options.n == 1
    image = make(batch)
    pixels = to_uint8(image)[0].numpy()  # (H, W, 3)
    if not batch and not np.array_equal(pixels, recorded):
        log.info("the lone picture differs from the recorded one; remaking its batch of %d", options.n)
        batch = True
        image = make(batch)
        pixels = to_uint8(image)[0].numpy()
    (path,) = save_pictures(
        out_dir,
        image,
        task=meta["task"],
        inputs=inputs,
        options=replace(options, progress=False),
        model=model,
        first_index=index,
        runtime=runtime_of(pipe),
    )
    identical = pixels.shape == recorded.shape and bool(np.array_equal(pixels, recorded))
    return ReplayResult(path=path, identical=identical, pixels=pixels, batch_remade=batch and options.n > 1)


__all__ = ["MAX_PICTURE_PIXELS", "ReplayResult", "open_recorded_model", "recorded_pixels", "replay_picture"]
