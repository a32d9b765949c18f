"""Image-level quality of the fast path's fp8 linear layers: the same pictures in bf16 and in bf16 + fp8.

Each model samples the same pictures (same conditioning, same seeds, guided DDIM) with:

- fp32: the pipeline without the fast path (TF32 off), the reference;
- bf16: the fast path's precision, eager (compile and CUDA graphs off, so that only the
  precision differs; channels_last and the GEGLU kernel as the device defaults them);
- bf16 + fp8_linear: the denoiser's linear layers in fp8 (GEGLUs on the GEGLU kernel keep it);
- bf16 + fp8_linear, geglu_kernel=False: the GEGLU projections in fp8 too (only where the GEGLU
  kernel would otherwise run);

then decodes them, and reports the mean absolute difference of the 8-bit pictures (0..255)
against bf16 and against fp32; bf16 against fp32 is the scale to judge fp8 by. Also the relative
error of one UNet call (t = 500) against fp32. Models: the shipped Shapes model (text2img and
class2img with the tasks' own guidance, captions and classes of held-out scenes) and the Stable
Diffusion v1 architecture with random weights (as in gpu_sampling.py). Random weights draw no
pictures worth looking at, so their pixel differences are only a proxy for how far rounding
carries through 50 steps.

    python benchmarks/fp8_quality.py --out fp8_quality.md
    python benchmarks/fp8_quality.py --tiny --device cpu --out /tmp/fp8.md   # a smoke run (seconds)
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from _common import ensure_builtin_plugins, ensure_importable, markdown_table, no_tf32, randomize_zeroed, rel_err

log = logging.getLogger("fp8_quality")

EAGER: dict[str, Any] = {"precision": "bf16", "compile": False, "cuda_graphs": False}
# name -> fast-path settings on top of EAGER; None: the plain float32 pipeline
VARIANTS: dict[str, dict[str, Any] | None] = {
    "fp32": None,
    "bf16": {},
    "bf16 + fp8_linear": {"fp8_linear": True},
    "bf16 + fp8_linear, geglu_kernel=False": {"fp8_linear": True, "geglu_kernel": False},
}
SD_GUIDANCE = 7.5
SHAPES_TASKS = ("text2img", "class2img")


@dataclass
class Case:
    """One model and task: ``pictures()`` (N, 3, H, W) in [-1, 1] and ``call()`` one UNet output."""

    model: str
    task: str
    pictures: Callable[[], torch.Tensor]
    call: Callable[[], torch.Tensor]


@dataclass
class Result:
    pixels: torch.Tensor  # (N, 3, H, W) float32 in 0..255, rounded as an 8-bit picture is
    eps: torch.Tensor


class Report:
    """The table, rewritten as rows come in (a run cut short keeps its rows)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.rows: list[list[str]] = []
        self.notes: list[str] = []

    def add(self, row: list[str]) -> None:
        self.rows.append(row)
        self.write()

    def write(self) -> str:
        header = ["model", "task", "variant", "mean abs diff vs bf16 (0..255)", "worst picture vs bf16",
                  "p99 vs bf16", "mean abs diff vs fp32 (0..255)", "worst picture vs fp32",
                  "UNet rel. error vs fp32 (one call)"]  # fmt: skip
        parts = ["# fp8 linear layers: picture quality (eager fast path, same seeds)", "",
                 markdown_table(header, self.rows), ""]  # fmt: skip
        text = "\n".join(parts + [f"- {note}" for note in self.notes])
        self.out.write_text(text + "\n")
        return text


def pixels(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> the values of their 8-bit pictures, as float32 on the CPU."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().cpu()


def mean_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().mean().item()


def worst_picture(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest mean absolute difference of one picture (N, 3, H, W): one picture that changed shows here."""
    return (a - b).abs().flatten(1).mean(dim=1).max().item()


def p99_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    diff = (a - b).abs().flatten()
    k = max(1, int(0.99 * diff.numel()))
    return diff.kthvalue(k).values.item()


def shapes_cases(args: argparse.Namespace, device: torch.device) -> tuple[Any, list[Case]]:
    """The shipped Shapes model on text2img and class2img: one held-out scene's caption or class per picture."""
    from ldmkit import Pipeline
    from ldmkit.generation import default_model_dir
    from ldmkit.interfaces import SampleOptions
    from ldmkit.tasks import default_guidance, on_device
    from ldmkit_shapes.bench import BENCH_SEED
    from ldmkit_shapes.dataset import ShapesDataset

    pipe = Pipeline.load(default_model_dir(), device=device)
    scenes = ShapesDataset.from_params({"seed": BENCH_SEED + 1}).batch(range(args.pictures))
    singles = ShapesDataset.from_params({"seed": BENCH_SEED, "single_object": True}).batch(range(args.pictures))
    inputs = {
        "text2img": [{"prompt": caption} for caption in scenes["caption"]],
        "class2img": [{"label": int(label)} for label in singles["class_label"]],
    }
    cases = []
    for name in SHAPES_TASKS:
        task, requests = pipe.task(name), [pipe.task(name).Request(**i) for i in inputs[name]]
        guidance = default_guidance(pipe, name)

        def run(task: Any = task, requests: list = requests, guidance: float = guidance) -> torch.Tensor:
            out = []
            for i, request in enumerate(requests):  # picture i from seed args.seed + i, whatever the variant
                options = SampleOptions(n=1, seed=args.seed + i, sampler="ddim", steps=args.steps,
                                        guidance_scale=guidance)  # fmt: skip
                out.append(task.run(pipe, request, options))
            return torch.cat(out)  # (N, 3, 64, 64)

        raw = on_device(task.raw_input(pipe, requests[0], 1), device)  # the first picture's conditioning
        cond = pipe.condition(task.wrap(raw, pipe.conditioner))
        cases.append(Case("Shapes (shipped)", f"{name}, guidance {guidance:g}", run, one_call(pipe, cond, device)))
    return pipe, cases


def one_call(pipe: Any, cond: Any, device: torch.device) -> Callable[[], torch.Tensor]:
    """The (unguided) denoiser output at t = 500 for one fixed noisy latent, through the current path."""
    g = torch.Generator(device=device).manual_seed(123)
    x = torch.randn(1, *pipe.latent_shape(1)[1:], device=device, generator=g)
    t = torch.tensor([500], device=device)
    return lambda: pipe.model_fn(cond)(x, t)


def sd_cases(args: argparse.Namespace, device: torch.device) -> tuple[Any, list[Case]]:
    """The SD v1 UNet and KL-f8 autoencoder with random weights; random text embeddings against zeros."""
    from gpu_sampling import SD_UNET, SD_VAE, TINY_UNET, TINY_VAE

    from ldmkit import Conditioning, NoiseSchedule, Pipeline, ScheduleSpec
    from ldmkit_autoencoders.kl import KLAutoencoder
    from ldmkit_samplers.ddim import DDIMSampler
    from ldmkit_unet.unet import UNet

    torch.manual_seed(0)
    with device:  # initialised where they run: SD's 1.1e9 random parameters take long on a CPU
        unet = UNet.from_params(TINY_UNET if args.tiny else SD_UNET)
        vae = KLAutoencoder.from_params(TINY_VAE if args.tiny else SD_VAE)
        randomize_zeroed(unet)
    side, ctx_dim = (8, TINY_UNET["context_dim"]) if args.tiny else (64, SD_UNET["context_dim"])
    schedule = NoiseSchedule.from_spec(ScheduleSpec(linear_start=0.00085, linear_end=0.012))
    pipe = Pipeline(vae.eval(), unet.eval(), schedule=schedule, scale_factor=0.18215, latent_size=(side, side))
    pipe.to(device)  # the schedule's tensors too
    g = torch.Generator(device=device).manual_seed(1)
    n = args.pictures
    cond = Conditioning(crossattn=torch.randn(n, 77, ctx_dim, device=device, generator=g))
    uncond = Conditioning(crossattn=torch.zeros(n, 77, ctx_dim, device=device))
    sampler = DDIMSampler.from_params({})

    def run() -> torch.Tensor:
        generator = torch.Generator().manual_seed(args.seed)
        latents = pipe.sample(cond, sampler=sampler, uncond=uncond, guidance_scale=SD_GUIDANCE, steps=args.steps,
                              generator=generator)  # fmt: skip
        return pipe.decode(latents)  # (N, 3, 8 * side, 8 * side)

    first = Conditioning(crossattn=cond.crossattn[:1])
    name = "SD v1 architecture, random weights" + (" (tiny)" if args.tiny else "")
    return pipe, [Case(name, f"random text embeddings, guidance {SD_GUIDANCE:g}", run, one_call(pipe, first, device))]


def save_grid(path: Path, rows: list[torch.Tensor]) -> None:
    """One PNG: a row of pictures per variant, each row (N, 3, H, W) in 0..255."""
    from PIL import Image

    grid = torch.cat([torch.cat(list(row), dim=2) for row in rows], dim=1)  # (3, V * H, N * W)
    Image.fromarray(grid.to(torch.uint8).permute(1, 2, 0).numpy(), "RGB").save(path)
    log.info("pictures: %s", path)


def run_model(pipe: Any, cases: list[Case], report: Report, device: torch.device, pictures_dir: Path | None) -> None:
    """Every variant on every case of one model; a row per (case, variant) once fp32 and bf16 are there."""
    from ldmkit.fast import FastConfig
    from ldmkit.fast.fp8 import Fp8Linear

    geglu_by_default = FastConfig(**EAGER).resolve(device).geglu_kernel
    results: dict[tuple[str, str], Result] = {}
    for variant, extra in VARIANTS.items():
        if extra is not None and extra.get("geglu_kernel") is False and not geglu_by_default:
            report.notes.append(f"{cases[0].model}: '{variant}' skipped: no GEGLU kernel on {device} (the row above)")
            continue
        t0 = time.perf_counter()
        if extra is None:
            pipe.fast = None
        else:
            pipe.optimize(**EAGER, **extra)
        reference = no_tf32() if extra is None else contextlib.nullcontext()
        with torch.no_grad(), reference:
            for case in cases:
                results[case.task, variant] = Result(pixels(case.pictures()), case.call().float().cpu())
        if pipe.fast is not None and pipe.fast.settings.fp8_linear:
            module = pipe.fast.denoiser.module
            fp8 = sum(isinstance(m, Fp8Linear) for m in module.modules())
            linears = fp8 + sum(isinstance(m, torch.nn.Linear) for m in module.modules())
            report.notes.append(f"{cases[0].model}, {variant}: {fp8} of {linears} linear layers in fp8")
        log.info("%s, %s: %.1f s", cases[0].model, variant, time.perf_counter() - t0)
        for case in cases:
            if variant == "fp32":
                continue
            mine, bf16, fp32 = (results.get((case.task, v)) for v in (variant, "bf16", "fp32"))
            assert mine is not None and bf16 is not None and fp32 is not None  # fp32 and bf16 run first
            vs_bf16 = [f"{mean_abs(mine.pixels, bf16.pixels):.3f}", f"{worst_picture(mine.pixels, bf16.pixels):.3f}",
                       f"{p99_abs(mine.pixels, bf16.pixels):.0f}"]  # fmt: skip
            if variant == "bf16":
                vs_bf16 = ["-", "-", "-"]
            row = [case.model, case.task, variant, *vs_bf16, f"{mean_abs(mine.pixels, fp32.pixels):.3f}",
                   f"{worst_picture(mine.pixels, fp32.pixels):.3f}", f"{rel_err(mine.eps, fp32.eps):.2e}"]  # fmt: skip
            report.add(row)
    pipe.fast = None
    if pictures_dir is not None:
        pictures_dir.mkdir(parents=True, exist_ok=True)
        for i, case in enumerate(cases):
            rows = [r.pixels for (task, _), r in results.items() if task == case.task]  # in VARIANTS' order
            save_grid(pictures_dir / f"{case.model.split()[0].lower()}-{i}.png", rows)
        report.notes.append(f"{cases[0].model}: pictures in {pictures_dir}; rows fp32, bf16, then the fp8 variants run")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="markdown file for the table")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--pictures", type=int, default=None, help="pictures per model and task (default 4; 1 --tiny)")
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (default 50; 2 with --tiny)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", default="shapes,sd", help="which of shapes, sd to run")
    parser.add_argument("--pictures-dir", type=Path, default=None, help="also save the pictures (a PNG per case)")
    parser.add_argument("--tiny", action="store_true", help="a small random SD-like model, 1 picture of 2 steps: "
                        "a smoke run (the Shapes model is small already)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.steps is None:
        args.steps = 2 if args.tiny else 50
    if args.pictures is None:
        args.pictures = 1 if args.tiny else 4
    if args.pictures < 1 or args.steps < 1:
        parser.error("--pictures and --steps must be at least 1")
    unknown = set(args.models.split(",")) - {"shapes", "sd"}
    if unknown:
        parser.error(f"--models: unknown {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    ensure_importable()
    ensure_builtin_plugins()
    device = torch.device(args.device)
    report = Report(args.out)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        report.notes.append(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    else:
        report.notes.append(f"device: {device}, torch {torch.__version__} (fp8 by the dequantizing reference path)")
    report.notes.append(f"{args.pictures} pictures per row, {args.steps} DDIM steps, seed {args.seed}")
    t0 = time.perf_counter()
    builders = {"shapes": shapes_cases, "sd": sd_cases}
    for name in args.models.split(","):
        pipe, cases = builders[name](args, device)
        run_model(pipe, cases, report, device, args.pictures_dir)
        del pipe
        if device.type == "cuda":
            torch.cuda.empty_cache()
    report.notes.append(f"total run time {time.perf_counter() - t0:.0f} s")
    print(report.write())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
