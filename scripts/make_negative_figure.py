"""Negative prompts on the shipped Shapes model: a measurement and a gallery picture.

For a prompt that leaves the colours open (``"a circle and a square"``), draws the same seeds twice with
text2img, once with the usual unconditional branch and once with a negative prompt in its place
(``"a square"``), parses every picture with the Shapes parser and counts the pictures that hold an object
the negative describes (any colour where it names none). Prints a Markdown table (the numbers in
``docs/img2img.md``) and writes ``docs/gallery/negative-prompt.png``: the first row without, the second
with the negative prompt, the same seed in each column. Everything runs on the CPU from fixed seeds, so a
rerun writes the same file and prints the same numbers.

    python scripts/make_negative_figure.py
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
from make_gallery import _unsigned, save_png  # noqa: E402  (the gallery's helpers)
from make_img2img_figure import grid  # noqa: E402

log = logging.getLogger("make_negative_figure")

ROOT = Path(__file__).resolve().parent.parent


def draw(
    pipe: ldmkit.Pipeline, prompt: str, negative: str | None, n: int, seed: int, steps: int, guidance: float
) -> torch.Tensor:
    """``n`` text2img pictures (n, 3, H, W) in [-1, 1], seeds ``seed`` .. ``seed + n - 1``, DDIM."""
    task = pipe.task("text2img")
    inputs = {"prompt": prompt} if negative is None else {"prompt": prompt, "negative_prompt": negative}
    options = ldmkit.SampleOptions(n=n, seed=seed, sampler="ddim", steps=steps, guidance_scale=guidance)
    return task.run(pipe, task.parse_request(inputs), options)


def count_class(pictures: torch.Tensor, name: str) -> int:
    """Pictures holding at least one parsed object that ``name`` describes (``"red circle"``, or ``"square"``: any)."""
    from ldmkit_shapes import parse_picture

    found = 0
    for picture in pictures:
        pixels = _unsigned(picture).permute(1, 2, 0).numpy()  # (H, W, 3) uint8
        found += any(set(name.split()) <= set(obj.name.split()) for obj in parse_picture(pixels))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "gallery" / "negative-prompt.png")
    parser.add_argument("--prompt", default="a circle and a square")
    parser.add_argument("--negative", default="a square")
    parser.add_argument("-n", type=int, default=16, help="pictures per row measured")
    parser.add_argument("--shown", type=int, default=8, help="pictures per row in the figure")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--guidance", type=float, default=3.0, help="guidance scale (text2img's own: 3.0)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)

    pipe = ldmkit.Pipeline.load(default_model_dir())
    negative_class = args.negative.removeprefix("a ").removeprefix("an ")
    with torch.no_grad():
        plain = draw(pipe, args.prompt, None, args.n, args.seed, args.steps, args.guidance)
        steered = draw(pipe, args.prompt, args.negative, args.n, args.seed, args.steps, args.guidance)
    counts = [count_class(p, negative_class) for p in (plain, steered)]
    print(f'text2img "{args.prompt}", {args.n} seeds from {args.seed}, DDIM {args.steps}, guidance {args.guidance:g}:')
    print(f"| unconditional branch | pictures with a {negative_class} |")
    print("| --- | --- |")
    print(f"| empty (the default) | {counts[0]} of {args.n} |")
    print(f'| negative prompt "{args.negative}" | {counts[1]} of {args.n} |')
    rows = [[_unsigned(p) for p in pictures[: args.shown]] for pictures in (plain, steered)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_png(args.out, grid(rows))
    log.info("written to %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
