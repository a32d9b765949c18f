"""img2img on the shipped Shapes model: how far each strength moves a picture, and a gallery grid.

Measures the mean absolute pixel difference (pictures in [-1, 1]) between Shapes pictures and their img2img
redraws without a prompt, for strengths 0, 0.25, 0.5, 0.75 and 1, and prints it as a Markdown table (the
numbers in ``docs/img2img.md``). Then renders ``docs/gallery/img2img-strengths.png``: one picture redrawn
with a prompt that changes a colour, a row per sampler, the input in the first column and strengths 0.25 to 1 after it.
Everything runs on the CPU from fixed seeds, so a rerun writes the same file and prints the same numbers.

    python scripts/make_img2img_figure.py
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

import ldmkit
from ldmkit.generation import default_model_dir

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_gallery import SAMPLERS, _unsigned, other_colour, save_png  # noqa: E402  (the gallery's helpers)

log = logging.getLogger("make_img2img_figure")

ROOT = Path(__file__).resolve().parent.parent
COMMAND = "python scripts/make_img2img_figure.py"
MEASURED = (0.0, 0.25, 0.5, 0.75, 1.0)
SHOWN = (0.25, 0.5, 0.75, 1.0)
GAP = 2  # white pixels between the tiles of the grid


def grid(rows: list[list[torch.Tensor]], fill: int = 255) -> torch.Tensor:
    """Tiles (3, s, s) uint8 in rows -> one (3, H, W) uint8 picture with GAP pixels of grey ``fill`` between them."""
    size = rows[0][0].shape[-1]
    cols = max(len(r) for r in rows)
    out = torch.full((3, len(rows) * (size + GAP) - GAP, cols * (size + GAP) - GAP), fill, dtype=torch.uint8)
    for i, row in enumerate(rows):
        for j, tile in enumerate(row):
            y, x = i * (size + GAP), j * (size + GAP)
            out[:, y : y + size, x : x + size] = tile
    return out


def distances(pipe: ldmkit.Pipeline, images: torch.Tensor, steps: int, seed: int) -> list[float]:
    """Mean |redraw - picture| over ``images`` (N, 3, H, W) for each strength of MEASURED, no prompt, DDIM."""
    init = pipe.encode(images)  # (N, C, h, w)
    cond = pipe.conditioner.unconditional(images.shape[0]) if pipe.conditioner is not None else None
    out = []
    for strength in MEASURED:
        generators = [torch.Generator().manual_seed(seed + i) for i in range(images.shape[0])]
        latents = pipe.sample(cond, sampler="ddim", steps=steps, generator=generators, init=init, strength=strength)
        redrawn = pipe.decode(latents).clamp(-1, 1)  # (N, 3, H, W)
        out.append(float((redrawn - images).abs().mean()))
        log.info("strength %.2f: %.4f", strength, out[-1])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=ROOT / "docs" / "gallery" / "img2img-strengths.png", help="the grid"
    )
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps of the measurement")
    parser.add_argument("--grid-steps", type=int, default=25, help="steps of every sampler in the grid")
    parser.add_argument("--pictures", type=int, default=8, help="Shapes pictures measured")
    parser.add_argument("--guidance", type=float, default=3.0, help="guidance scale of the grid's prompt")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--dataset-seed", type=int, default=7, help="ShapesDataset seed of the pictures")
    parser.add_argument("--index", type=int, default=8, help="dataset sample shown in the grid")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from ldmkit_shapes import ShapesDataset

    torch.set_num_threads(args.threads)
    pipe = ldmkit.Pipeline.load(default_model_dir())
    data = ShapesDataset.from_params({"seed": args.dataset_seed})
    with torch.no_grad():
        measured = distances(pipe, data.batch(range(args.pictures))["image"], args.steps, args.seed)
    print(f"mean |img2img - picture| over {args.pictures} Shapes pictures, DDIM {args.steps} steps, no prompt:")
    print("| strength | " + " | ".join(f"{s:g}" for s in MEASURED) + " |")
    print("| --- |" + " --- |" * len(MEASURED))
    print("| mean abs. difference | " + " | ".join(f"{d:.3f}" for d in measured) + " |")

    sample = data[args.index]
    prompt = other_colour(sample["caption"])
    task = pipe.task("img2img")
    rows = []
    for sampler in SAMPLERS:
        row = [_unsigned(sample["image"])]
        for strength in SHOWN:
            request = task.parse_request({"image": sample["image"], "strength": strength, "prompt": prompt})
            options = ldmkit.SampleOptions(
                n=1, seed=args.seed, sampler=sampler, steps=args.grid_steps, guidance_scale=args.guidance
            )
            row.append(_unsigned(task.run(pipe, request, options)[0]))
        rows.append(row)
        log.info("grid row %s done", sampler)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_png(args.out, grid(rows))
    print(f'grid: "{sample["caption"]}" redrawn as "{prompt}" ({GAP}px gaps), written to {args.out}')
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
