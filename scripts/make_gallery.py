"""Render the documentation gallery: the shipped Shapes model on every task with every sampler.

Each task gets one PNG grid under ``docs/gallery/``: a row per sampler, the task's input in the first
column (its source picture for class2img and text2img, the drawn boxes for layout2img, the coloured
map for semantic2img, the upsampled low-resolution picture for superres, the masked picture for
inpaint) and ``--n`` generated pictures after it. Inputs come from ``ShapesDataset`` with a fixed
seed, pictures from fixed sampling seeds, everything on the CPU, so a rerun writes the same files.
The script also writes ``docs/gallery.md``, which shows the grids, the inputs and this command.

    python scripts/make_gallery.py
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import ldmkit
from ldmkit.generation import default_guidance, default_model_dir

log = logging.getLogger("make_gallery")

ROOT = Path(__file__).resolve().parent.parent
TASKS = ("uncond", "class2img", "text2img", "layout2img", "semantic2img", "superres", "inpaint")
SAMPLERS = ("ddim", "plms", "ddpm", "dpmpp-2m", "euler-a")
COMMAND = "python scripts/make_gallery.py"
PAGE = "gallery.md"
GAP = 2  # grey pixels between the tiles of a grid
SEGMENT_COLOURS = torch.tensor([[235, 235, 235], [220, 60, 60], [60, 160, 60], [60, 90, 220]], dtype=torch.uint8)


def _unsigned(image: Tensor) -> Tensor:
    """(3, H, W) in [-1, 1] -> (3, H, W) uint8."""
    return ((image.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def task_inputs(sample: dict[str, Any], class_names: list[str]) -> dict[str, dict[str, Any]]:
    """The inputs each task is given, all drawn from one dataset sample."""
    return {
        "uncond": {},
        "class2img": {"label": class_names[int(sample["class_label"])]},
        "text2img": {"prompt": sample["caption"]},
        "layout2img": {"layout": sample["layout"]},
        "semantic2img": {"segmentation": sample["segmentation"]},
        "superres": {"image": sample["lowres"]},
        "inpaint": {"image": sample["image"], "mask": sample["mask"]},
    }


def input_tile(task: str, sample: dict[str, Any], size: int) -> Tensor:
    """A (3, size, size) uint8 picture of what ``task`` was given."""
    if task == "uncond":
        return torch.full((3, size, size), 128, dtype=torch.uint8)
    if task in ("class2img", "text2img"):
        return _unsigned(sample["image"])
    if task == "layout2img":
        tile = torch.full((3, size, size), 240, dtype=torch.uint8)
        for obj in sample["layout"]:
            x0, y0, x1, y1 = (round(v * size) for v in obj["box"])
            tile[:, y0:y1, x0:x1] = 200  # filled box, outlined below
            tile[:, y0:y1, [x0, max(x1 - 1, x0)]] = 40
            tile[:, [y0, max(y1 - 1, y0)], x0:x1] = 40
        return tile
    if task == "semantic2img":
        return SEGMENT_COLOURS[sample["segmentation"]].permute(2, 0, 1).contiguous()  # (3, H, W)
    if task == "superres":
        low = sample["lowres"].unsqueeze(0)  # (1, 3, h, w)
        return _unsigned(torch.nn.functional.interpolate(low, size=(size, size), mode="nearest")[0])
    if task == "inpaint":
        masked = sample["image"] * (1 - sample["mask"])  # the region to fill shows as mid grey
        return _unsigned(masked)
    raise ValueError(f"no input picture for task {task!r}")


def grid(rows: list[list[Tensor]]) -> Tensor:
    """Tiles (3, s, s) uint8 in rows -> one (3, H, W) uint8 picture with GAP pixels between them."""
    size = rows[0][0].shape[-1]
    cols = max(len(r) for r in rows)
    out = torch.full((3, len(rows) * (size + GAP) - GAP, cols * (size + GAP) - GAP), 255, dtype=torch.uint8)
    for i, row in enumerate(rows):
        for j, tile in enumerate(row):
            y, x = i * (size + GAP), j * (size + GAP)
            out[:, y : y + size, x : x + size] = tile
    return out


def save_png(path: Path, picture: Tensor) -> None:
    from PIL import Image

    Image.fromarray(picture.permute(1, 2, 0).numpy(), "RGB").save(path, optimize=True)


def describe(task: str, inputs: dict[str, Any], class_names: list[str]) -> str:
    """One line saying what the task was given, for the page."""
    if task == "uncond":
        return "nothing (unconditional)"
    if task == "class2img":
        return f'label `"{inputs["label"]}"`'
    if task == "text2img":
        return f'prompt `"{inputs["prompt"]}"`'
    if task == "layout2img":
        boxes = "; ".join(f"{class_names[o['label']]} at {[round(v, 3) for v in o['box']]}" for o in inputs["layout"])
        return f"boxes: {boxes}"
    if task == "semantic2img":
        return "the segmentation map of the source picture (shown in colour: circle red, square green, triangle blue)"
    if task == "superres":
        return "the 16x16 picture (shown upsampled)"
    return "the source picture and a mask; the region to fill in is shown grey"


def write_page(out_dir: Path, page: Path, args: argparse.Namespace, described: dict[str, str]) -> None:
    rel = out_dir.resolve().relative_to(page.parent.resolve())
    lines = [
        "# Gallery",
        "",
        "Pictures from the shipped Shapes model (`ldmkit.generation.default_model_dir()`), on the CPU, for",
        "each of the seven tasks and each sampler. In each grid the rows are the samplers",
        f"({', '.join(f'`{s}`' for s in SAMPLERS)}, top to bottom), the first column is the task's input",
        f"and the other {args.n} columns are pictures for sampling seeds {args.seed} to {args.seed + args.n - 1}.",
        f"Inputs come from `ShapesDataset` (dataset seed {args.dataset_seed}, sample {args.index});",
        f"every sampler runs {args.steps} steps with classifier-free guidance "
        + (
            f"{args.guidance}."
            if args.guidance is not None
            else "as each task's spec sets it (`class2img` 4.5, `text2img` 3.0, the others 2.0)."
        ),
        "",
        "The script that made this page and its pictures:",
        "",
        "```sh",
        f"{COMMAND} --steps {args.steps} --n {args.n} --seed {args.seed} "
        + (f"--guidance {args.guidance} " if args.guidance is not None else "")
        + f"--dataset-seed {args.dataset_seed} --index {args.index}",
        "```",
        "",
        "One task from the command line, for comparison:",
        "",
        "```sh",
        f'ldmkit generate --task text2img --prompt "a red circle and a blue square" --sampler ddim --steps {args.steps}'
        f" -n {args.n} --out out/",
        "```",
        "",
    ]
    for task in TASKS:
        lines += [f"## {task}", "", f"Input: {described[task]}.", "", f"![{task}]({rel.as_posix()}/{task}.png)", ""]
    lines += [
        "## img2img",
        "",
        "Made by `python scripts/make_img2img_figure.py` (see [image-to-image](img2img.md)): the input picture in",
        "the first column, redrawn with a prompt that changes its first colour, at strengths 0.25, 0.5, 0.75 and 1",
        "(left to right), a row per sampler as above, 25 steps, guidance 3.",
        "",
        f"![img2img]({rel.as_posix()}/img2img.png)",
        "",
    ]
    page.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "gallery", help="folder of the PNG grids")
    parser.add_argument("--page", type=Path, default=ROOT / "docs" / PAGE, help="the Markdown page to write")
    parser.add_argument("--steps", type=int, default=50, help="sampling steps of every sampler")
    parser.add_argument("--n", type=int, default=3, help="pictures per task and sampler")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed of the first picture")
    parser.add_argument("--guidance", type=float, default=None, help="guidance scale (default: each task's own)")
    parser.add_argument("--dataset-seed", type=int, default=7, help="ShapesDataset seed the inputs come from")
    parser.add_argument("--index", type=int, default=8, help="dataset sample the inputs come from")
    parser.add_argument("--tasks", nargs="*", default=list(TASKS), help="only these tasks (none: only the page)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (one is fastest on a busy machine)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from ldmkit_shapes import ShapesDataset

    torch.set_num_threads(args.threads)  # tiny convolutions: more threads only wait on each other
    torch.manual_seed(0)
    pipe = ldmkit.Pipeline.load(default_model_dir())
    sample = ShapesDataset.from_params({"seed": args.dataset_seed}).__getitem__(args.index)
    class_names = list(pipe.task("class2img").params.class_names or [])
    inputs = task_inputs(sample, class_names)
    args.out.mkdir(parents=True, exist_ok=True)
    size = int(sample["image"].shape[-1])
    described = {}
    for task_name in TASKS:
        described[task_name] = describe(task_name, inputs[task_name], class_names)
        if task_name not in args.tasks:
            continue
        task = pipe.task(task_name)
        request = task.parse_request(inputs[task_name])
        guidance = default_guidance(pipe, task_name) if args.guidance is None else args.guidance
        rows = []
        for sampler in SAMPLERS:
            start = time.perf_counter()
            options = ldmkit.SampleOptions(
                n=args.n, seed=args.seed, sampler=sampler, steps=args.steps, guidance_scale=guidance
            )
            images = task.run(pipe, request, options)  # (n, 3, H, W) in [-1, 1]
            rows.append([input_tile(task_name, sample, size)] + [_unsigned(im) for im in images])
            log.info("%s / %s: %.1f s", task_name, sampler, time.perf_counter() - start)
        save_png(args.out / f"{task_name}.png", grid(rows))
    write_page(args.out, args.page, args, described)
    log.info("wrote %s and %s", args.out, args.page)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
