"""Render the gallery's "Larger pictures" section: the shipped 64x64 Shapes model sampled at 128x128.

One PNG grid, ``docs/gallery/larger.png``: the first row holds text2img pictures at 128x128 for sampling
seeds 0 to N-1; the second row a semantic map of 128x128 (four dataset maps side by side, shown in
colour) and semantic2img pictures drawn over it. The section of ``docs/gallery.md`` between its markers
is rewritten (appended if missing), with this command::

    python scripts/make_gallery_sizes.py
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch
from torch import Tensor

import ldmkit
from ldmkit.generation import default_model_dir, generate
from ldmkit.interfaces import SampleOptions
from ldmkit.options import resolve_options

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_img2img_figure import grid  # noqa: E402  (the img2img figure's grid of tiles)

log = logging.getLogger("make_gallery_sizes")

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- larger-pictures:start -->", "<!-- larger-pictures:end -->"
SIZE = 128
SEGMENT_COLOURS = torch.tensor([[235, 235, 235], [220, 60, 60], [60, 160, 60], [60, 90, 220]], dtype=torch.uint8)


def _unsigned(image: Tensor) -> Tensor:
    """(3, H, W) in [-1, 1] -> (3, H, W) uint8."""
    return ((image.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def mosaic_map(dataset_seed: int) -> Tensor:
    """(128, 128) class ids: four 64x64 maps of the Shapes dataset, two by two."""
    from ldmkit_shapes import ShapesDataset

    maps = ShapesDataset.from_params({"seed": dataset_seed}).batch([0, 1, 2, 3])["segmentation"]  # (4, 64, 64)
    top, bottom = torch.cat([maps[0], maps[1]], 1), torch.cat([maps[2], maps[3]], 1)  # (64, 128) each
    return torch.cat([top, bottom], 0)  # (128, 128)


def write_section(page: Path, text: str) -> None:
    """Put ``text`` between the markers of ``page`` (appended at the end when the markers are missing)."""
    body = page.read_text() if page.exists() else "# Gallery\n"
    block = f"{START}\n{text.rstrip()}\n{END}\n"
    if START in body and END in body:
        head, rest = body.split(START, 1)
        body = head + block + rest.split(END, 1)[1].lstrip("\n")
    else:
        body = body.rstrip("\n") + "\n\n" + block
    page.write_text(body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--n", type=int, default=3, help="pictures per row")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dataset-seed", type=int, default=7)
    parser.add_argument("--prompt", default="a red circle and a blue square")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "gallery" / "larger.png")
    parser.add_argument("--page", type=Path, default=ROOT / "docs" / "gallery.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    pipe = ldmkit.Pipeline.load(default_model_dir())
    rows: list[list[Tensor]] = []
    for task, inputs, options in (
        ("text2img", {"prompt": args.prompt}, {"size": (SIZE, SIZE)}),
        ("semantic2img", {"segmentation": mosaic_map(args.dataset_seed)}, {}),  # the map's size: 128x128
    ):
        layered = resolve_options(pipe, task, {"n": args.n, "seed": args.seed, "steps": args.steps, **options})
        log.info("%s at %dx%d, %d steps", task, SIZE, SIZE, args.steps)
        images, _ = generate(pipe, task, inputs, SampleOptions(**{**vars_of(layered), "progress": True}))
        tiles = [_unsigned(image) for image in images]
        if task == "semantic2img":
            tiles.insert(0, SEGMENT_COLOURS[inputs["segmentation"]].permute(2, 0, 1))  # (3, 128, 128)
        rows.append(tiles)
    picture = grid(rows, fill=128)  # grey gaps
    from PIL import Image

    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(picture.permute(1, 2, 0).numpy(), "RGB").save(args.out, optimize=True)
    relative = args.out.relative_to(args.page.parent).as_posix()
    command = "python scripts/make_gallery_sizes.py" + (
        f" --steps {args.steps} --n {args.n} --seed {args.seed} --dataset-seed {args.dataset_seed}"
    )
    write_section(
        args.page,
        f"""## Larger pictures (128x128 from the 64x64 model)

The Shapes model was trained on 64x64 pictures; its UNet is convolutional, so it samples larger latents
too ([pictures of any size](sizes.md)). Top row: `text2img`, prompt `"{args.prompt}"`, at 128x128
(`--size 128`), sampling seeds {args.seed} to {args.seed + args.n - 1}. Bottom row: a 128x128 semantic map
(four maps of `ShapesDataset` seed {args.dataset_seed}, side by side; circle red, square green, triangle
blue) and `semantic2img` pictures drawn over it: the task takes the map's size. DDIM, {args.steps} steps,
guidance as the spec sets it.

![larger pictures]({relative})

Made by `{command}`; one of them from the command line:

```sh
ldmkit generate --task text2img --prompt "{args.prompt}" --size 128 --steps {args.steps} -n {args.n} --out out/
```
""",
    )
    log.info("wrote %s and %s", args.out, args.page)
    return 0


def vars_of(options: SampleOptions) -> dict:
    """The fields of ``options`` as keywords."""
    from dataclasses import fields

    return {f.name: getattr(options, f.name) for f in fields(options)}


if __name__ == "__main__":
    sys.exit(main())
