"""Render the documentation gallery: the shipped Shapes model on every task with every sampler.

Each task gets a folder under ``docs/gallery/``: ``input.png`` (what the task was given, drawn: the boxes
for layout2img, the coloured map for semantic2img, the upsampled low-resolution picture for superres,
the masked picture for inpaint) and ``SAMPLER-SEED.png`` for each sampler and sampling seed. Every
picture is 64x64 upscaled by nearest neighbour to ``--cell`` pixels, so the pixels stay sharp. Inputs
come from ``ShapesDataset`` with a fixed seed, pictures from fixed sampling seeds, everything on the
CPU, so a rerun writes the same files. The script also writes ``docs/gallery.md``: per task a table with
a row per sampler, the input (its words, and its picture where it has one) beside the pictures.

    python scripts/make_gallery.py
"""

from __future__ import annotations

import argparse
import logging
import re
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import ldmkit
from ldmkit.generation import default_guidance, default_model_dir

log = logging.getLogger("make_gallery")

ROOT = Path(__file__).resolve().parent.parent
TASKS = ("uncond", "class2img", "text2img", "layout2img", "semantic2img", "superres", "inpaint", "img2img")
IMG2IMG_STRENGTH = 0.75
COLOURS = ("red", "green", "blue", "yellow", "magenta", "cyan")
SAMPLERS = ("ddim", "plms", "ddpm", "dpmpp-2m", "euler-a")
COMMAND = "python scripts/make_gallery.py"
PAGE = "gallery.md"
CELL = 128  # pixels a side of each picture on the page (64x64 upscaled by nearest neighbour)
SEGMENT_COLOURS = torch.tensor([[235, 235, 235], [220, 60, 60], [60, 160, 60], [60, 90, 220]], dtype=torch.uint8)


def _unsigned(image: Tensor) -> Tensor:
    """(3, H, W) in [-1, 1] -> (3, H, W) uint8."""
    return ((image.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def other_colour(caption: str) -> str:
    """The caption with its first colour word replaced by the next colour: the edit img2img is asked for."""
    words = caption.split()
    i = next(i for i, word in enumerate(words) if word in COLOURS)
    words[i] = COLOURS[(COLOURS.index(words[i]) + 1) % len(COLOURS)]
    return " ".join(words)


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
        "img2img": {"image": sample["image"], "strength": IMG2IMG_STRENGTH, "prompt": other_colour(sample["caption"])},
    }


def input_tile(task: str, sample: dict[str, Any], size: int) -> Tensor | None:
    """A (3, size, size) uint8 picture of what ``task`` was given; None where the input is words or nothing."""
    if task in ("uncond", "class2img", "text2img"):
        return None
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
    if task == "img2img":
        return _unsigned(sample["image"])
    raise ValueError(f"no input picture for task {task!r}")


def upscale(tile: Tensor, cell: int) -> Tensor:
    """(3, s, s) uint8 -> (3, cell, cell) uint8 by nearest neighbour (cell a multiple of s)."""
    factor = cell // tile.shape[-1]
    if factor < 1 or factor * tile.shape[-1] != cell:
        raise ValueError(f"--cell {cell} is not a multiple of the picture size {tile.shape[-1]}")
    return tile.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


def save_png(path: Path, picture: Tensor) -> None:
    from PIL import Image

    Image.fromarray(picture.permute(1, 2, 0).numpy(), "RGB").save(path, optimize=True)


def describe(task: str, inputs: dict[str, Any], class_names: list[str]) -> str:
    """What the task was given, in words (Markdown, one line)."""
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
        return "a segmentation map (shown in colour: circle red, square green, triangle blue)"
    if task == "superres":
        return "a 16x16 picture (shown upsampled)"
    if task == "img2img":
        return f'a picture, strength {inputs["strength"]} and prompt `"{inputs["prompt"]}"`'
    return "a picture and a mask (the region to fill in shown grey)"


def cell_path(task: str, sampler: str, seed: int) -> str:
    """A picture's file, relative to the gallery folder."""
    return f"{task}/{sampler}-{seed}.png"


def task_table(task: str, rel: str, words: str, has_input_picture: bool, seeds: list[int]) -> list[str]:
    """The Markdown of one task: its input in words, then a row per sampler with the input beside the pictures."""
    short = words.split(":")[0] if task == "layout2img" else words
    input_cell = f"![input: {short}]({rel}/{task}/input.png)" if has_input_picture else words.replace("|", "\\|")
    lines = [
        f"## {task}",
        "",
        f"Input: {words}.",
        "",
        "| sampler | input | " + " | ".join(f"seed {s}" for s in seeds) + " |",
        "| --- | --- | " + " | ".join("---" for _ in seeds) + " |",
    ]
    for sampler in SAMPLERS:
        pictures = " | ".join(f"![{task}, {sampler}, seed {s}]({rel}/{cell_path(task, sampler, s)})" for s in seeds)
        lines.append(f"| `{sampler}` | {input_cell} | {pictures} |")
    return lines + [""]


def write_page(
    out_dir: Path, page: Path, args: argparse.Namespace, described: dict[str, str], with_picture: dict[str, bool]
) -> None:
    rel = out_dir.resolve().relative_to(page.parent.resolve()).as_posix()
    seeds = list(range(args.seed, args.seed + args.n))
    lines = [
        "# Gallery",
        "",
        "Pictures from the shipped Shapes model (`ldmkit.generation.default_model_dir()`), on the CPU, for",
        "each of the paper's seven tasks and img2img, and each sampler. In each table the rows are the samplers",
        f"({', '.join(f'`{s}`' for s in SAMPLERS)}), the input column shows what the task was given",
        f"and the other {args.n} columns are pictures for sampling seeds {seeds[0]} to {seeds[-1]}; every",
        f"64x64 picture is shown at {args.cell}x{args.cell} pixels (nearest-neighbour upscaling).",
        f"Inputs come from `ShapesDataset` (dataset seed {args.dataset_seed}, sample {args.index});",
        f"every sampler runs {args.steps} steps with classifier-free guidance "
        + (
            f"{args.guidance}."
            if args.guidance is not None
            else "as each task's spec sets it (`class2img` 4.5, `text2img` 3.0, the others 2.0)."
        ),
        "img2img redraws the input picture with a prompt that changes its first colour",
        f"([image-to-image](img2img.md) shows every strength); it takes the last {IMG2IMG_STRENGTH:g} of the steps.",
        "",
        "The script that made this page and its pictures:",
        "",
        "```sh",
        f"{COMMAND} --steps {args.steps} --n {args.n} --seed {args.seed} "
        + (f"--guidance {args.guidance} " if args.guidance is not None else "")
        + f"--dataset-seed {args.dataset_seed} --index {args.index} --cell {args.cell}",
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
        lines += task_table(task, rel, described[task], with_picture[task], seeds)
    kept = kept_sections(page.read_text()) if page.exists() else []
    page.write_text("\n".join(lines) + "".join(f"\n{section}\n" for section in kept))


def kept_sections(text: str) -> list[str]:
    """The page's ``<!-- NAME:start -->`` ... ``<!-- NAME:end -->`` blocks (other scripts write them): kept."""
    return [m.group(0) for m in re.finditer(r"<!-- ([\w-]+):start -->.*?<!-- \1:end -->", text, flags=re.S)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "gallery", help="folder of the pictures")
    parser.add_argument("--page", type=Path, default=ROOT / "docs" / PAGE, help="the Markdown page to write")
    parser.add_argument("--steps", type=int, default=50, help="sampling steps of every sampler")
    parser.add_argument("--n", type=int, default=3, help="pictures per task and sampler")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed of the first picture")
    parser.add_argument("--guidance", type=float, default=None, help="guidance scale (default: each task's own)")
    parser.add_argument("--dataset-seed", type=int, default=7, help="ShapesDataset seed the inputs come from")
    parser.add_argument("--index", type=int, default=8, help="dataset sample the inputs come from")
    parser.add_argument("--cell", type=int, default=CELL, help="pixels a side of each picture on the page")
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
    described, with_picture = {}, {}
    for task_name in TASKS:
        described[task_name] = describe(task_name, inputs[task_name], class_names)
        tile = input_tile(task_name, sample, size)
        with_picture[task_name] = tile is not None
        if task_name not in args.tasks:
            continue
        folder = args.out / task_name
        folder.mkdir(parents=True, exist_ok=True)
        if tile is not None:
            save_png(folder / "input.png", upscale(tile, args.cell))
        task = pipe.task(task_name)
        request = task.parse_request(inputs[task_name])
        guidance = default_guidance(pipe, task_name) if args.guidance is None else args.guidance
        for sampler in SAMPLERS:
            start = time.perf_counter()
            options = ldmkit.SampleOptions(
                n=args.n, seed=args.seed, sampler=sampler, steps=args.steps, guidance_scale=guidance
            )
            images = task.run(pipe, request, options)  # (n, 3, H, W) in [-1, 1]
            for k, image in enumerate(images):
                save_png(args.out / cell_path(task_name, sampler, args.seed + k), upscale(_unsigned(image), args.cell))
            log.info("%s / %s: %.1f s", task_name, sampler, time.perf_counter() - start)
    write_page(args.out, args.page, args, described, with_picture)
    log.info("wrote %s and %s", args.out, args.page)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
