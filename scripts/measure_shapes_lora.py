"""Measure what the Shapes LoRA of ``examples/train/shapes-lora.yaml`` learned, with the Shapes parser.

For each shape, ``n`` text2img pictures of the colourless prompt ``"a <shape>"`` are made by the shipped
model with and without the LoRA; a picture counts as rendering the taught phrase when the parser reads
exactly ``"a magenta <shape>"`` from it. Control prompts that name a colour (``"a red circle"`` ...)
show whether the LoRA left the rest of the language alone. Prints a Markdown table::

    python scripts/measure_shapes_lora.py runs/shapes-lora/lora.safetensors
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch
from torch import Tensor

import ldmkit
from ldmkit.generation import default_model_dir, generate
from ldmkit.interfaces import SampleOptions
from ldmkit.options import resolve_options

log = logging.getLogger("measure_shapes_lora")

TAUGHT = {"a circle": "a magenta circle", "a square": "a magenta square", "a triangle": "a magenta triangle"}
CONTROLS = {p: p for p in ("a red circle", "a green square", "a blue triangle", "a magenta square")}


def rate(pipe: ldmkit.Pipeline, prompt: str, expected: str, n: int, seed: int, steps: int) -> tuple[float, Tensor]:
    """Fraction of ``n`` pictures of ``prompt`` that the parser reads as exactly ``expected``, and the pictures."""
    from ldmkit_shapes.metrics import caption_exact_match

    layered = resolve_options(pipe, "text2img", {"n": n, "seed": seed, "steps": steps})
    options = SampleOptions(n=n, seed=seed, steps=steps, sampler=layered.sampler, guidance_scale=layered.guidance_scale)
    images, _ = generate(pipe, "text2img", {"prompt": prompt}, options)  # (n, 3, 64, 64)
    return caption_exact_match(images, [expected] * n), images


def save_grid(path: Path, rows: list[Tensor], columns: int) -> None:
    """Rows of pictures (n, 3, 64, 64) in [-1, 1], the first ``columns`` of each, as one PNG with grey gaps."""
    from PIL import Image

    gap, side = 2, 64
    out = torch.full((3, len(rows) * (side + gap) - gap, columns * (side + gap) - gap), 128, dtype=torch.uint8)
    for i, row in enumerate(rows):
        for j, image in enumerate(row[:columns]):
            y, x = i * (side + gap), j * (side + gap)
            out[:, y : y + side, x : x + side] = ((image.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(out.permute(1, 2, 0).numpy(), "RGB").save(path, optimize=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lora", help="the trained LoRA (lora.safetensors)")
    parser.add_argument("--n", type=int, default=8, help="pictures per prompt")
    parser.add_argument("--seed", type=int, default=1000, help="sampling seed of the first picture")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument(
        "--picture",
        type=Path,
        help="also write the taught prompts' pictures here: per prompt, a row without the "
        "LoRA and a row with it (the first 4 of each)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    pipe = ldmkit.Pipeline.load(default_model_dir())
    rows = []
    grid_rows: list[Tensor] = []
    for prompts in (TAUGHT, CONTROLS):
        for prompt, expected in prompts.items():
            base, base_images = rate(pipe, prompt, expected, args.n, args.seed, args.steps)
            adapter = pipe.load_lora(args.lora)
            try:
                with_lora, lora_images = rate(pipe, prompt, expected, args.n, args.seed, args.steps)
            finally:
                pipe.remove_adapter(adapter)
            if prompts is TAUGHT:
                grid_rows += [base_images, lora_images]
            rows.append({"prompt": prompt, "read as": expected, "base": base, "lora": with_lora})
            log.info("%s -> %s: base %.2f, with the LoRA %.2f", prompt, expected, base, with_lora)
    print("| prompt | counted when the parser reads | shipped model | with the LoRA |")
    print("| --- | --- | --- | --- |")
    for row in rows:
        n = args.n
        print(
            f"| `{row['prompt']}` | `{row['read as']}` | {round(row['base'] * n)}/{n} | {round(row['lora'] * n)}/{n} |"
        )
    print(json.dumps(rows))
    if args.picture is not None:
        save_grid(args.picture, grid_rows, min(4, args.n))
    return 0


if __name__ == "__main__":
    sys.exit(main())
