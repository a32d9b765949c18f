"""Inpainting on scenes drawn by PIL (not the training renderer): are the known pixels kept, and is the
hole filled with something the Shapes parser reads as a valid scene?

    python benchmarks/inpaint_fill.py --scenes 48

Each scene: a grey background, 1-3 shapes of the world's palette with sides 12-28 px drawn by PIL's own
rasteriser, at least 4 px apart; the mask covers one object's box and 1 px around it. Reports the share of
scenes that parse as valid after inpainting (an emptied scene with no stray pixel counts: the hole
was filled with background) and the PSNR outside the mask.
"""

from __future__ import annotations

import argparse
import logging
import random

import numpy as np
import torch
from PIL import Image, ImageDraw

from ldmkit_shapes.world import COLOURS

log = logging.getLogger("inpaint_fill")


def draw_scene(rng: random.Random) -> tuple[np.ndarray, np.ndarray]:
    """A (64, 64, 3) uint8 scene and a (64, 64) uint8 mask (255 = fill in) over one of its objects."""
    grey = rng.randint(215, 250)
    picture = Image.new("RGB", (64, 64), (grey, grey, grey))
    draw = ImageDraw.Draw(picture)
    boxes: list[tuple[int, int, int, int]] = []
    for _ in range(rng.randint(1, 3)):
        for _attempt in range(50):
            side = rng.randint(12, 28)
            x, y = rng.randint(0, 64 - side), rng.randint(0, 64 - side)
            box = (x, y, x + side, y + side)
            if all(box[2] + 4 <= b[0] or b[2] + 4 <= box[0] or box[3] + 4 <= b[1] or b[3] + 4 <= box[1] for b in boxes):
                boxes.append(box)
                break
    for x0, y0, x1, y1 in boxes:
        colour = COLOURS[rng.choice(list(COLOURS))]  # the world's palette
        shape = rng.choice(["circle", "square", "triangle"])
        if shape == "circle":
            draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=colour)
        elif shape == "square":
            draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=colour)
        else:
            draw.polygon([(x0, y1 - 1), (x1 - 1, y1 - 1), ((x0 + x1 - 1) / 2, y0)], fill=colour)
    x0, y0, x1, y1 = rng.choice(boxes)
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[max(y0 - 1, 0) : y1 + 1, max(x0 - 1, 0) : x1 + 1] = 255
    return np.array(picture), mask


def main() -> None:
    import ldmkit
    from ldmkit.generation import default_model_dir
    from ldmkit.tasks import SampleOptions
    from ldmkit_shapes.metrics import psnr
    from ldmkit_shapes.parse import analyse_picture

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    pipe = ldmkit.Pipeline.load(default_model_dir())
    task = pipe.task("inpaint")
    rng = random.Random(args.seed)
    valid, psnrs = 0, []
    for i in range(args.scenes):
        picture, mask = draw_scene(rng)
        request = task.parse_request({"image": picture, "mask": mask})
        out = task.run(pipe, request, SampleOptions(n=1, seed=args.seed + i, steps=50, guidance_scale=2.0))
        result = ((out[0].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
        parse = analyse_picture(result)
        # the hole holds a valid object or background: a valid scene, or one emptied cleanly of its only object
        valid += parse.valid or (not parse.objects and parse.stray_pixels == 0)
        psnrs.append(psnr(result, picture, mask=(mask == 0)))
    finite = [p for p in psnrs if np.isfinite(p)]
    log.info("scenes: %d", args.scenes)
    log.info("valid fills (valid scene, or cleanly emptied): %d / %d = %.3f", valid, args.scenes, valid / args.scenes)
    log.info(
        "PSNR outside the mask: %d of %d pictures identical (inf)%s",
        len(psnrs) - len(finite),
        len(psnrs),
        f", the others {min(finite):.1f} dB at least" if finite else "",
    )


if __name__ == "__main__":
    main()
