"""``ldmkit bench shapes``: fidelity of a pipeline on every task, scored by parsing pictures (no model)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ldmkit.errors import InputError
from ldmkit.options import SamplerRef
from ldmkit.tasks import default_guidance, default_sampling, on_device
from ldmkit_shapes import metrics
from ldmkit_shapes.dataset import ShapesDataset

log = logging.getLogger(__name__)

BENCH_SEED = 1_000_003  # held-out scenes: training specs use small seeds
TARGETS = {
    "class2img": ("class accuracy (exactly one object, of the class)", 0.95),
    "text2img": ("caption exact match", 0.8),
    "layout2img": ("layout box IoU", 0.7),
    "semantic2img": ("semantic foreground IoU", 0.8),
    "superres": ("super-resolution PSNR (dB)", 26.0),
    "inpaint": ("inpainting valid fills (known pixels pasted back)", 0.8),
    "uncond": ("valid unconditional samples", 0.9),
}


@dataclass
class BenchRow:
    task: str
    metric: str
    generated: float
    real: float
    target: float
    n: int
    seconds: float
    guidance: float = 1.0
    sampler: str | SamplerRef = "ddim"
    steps: int = 50

    @property
    def passed(self) -> bool:
        return self.generated >= self.target


def _combine(raws: list[Any]) -> Any:
    """Batch the per-request raw inputs of one task (tensors concatenated, lists joined, dicts per key)."""
    first = raws[0]
    if isinstance(first, Tensor):
        return torch.cat(raws)
    if isinstance(first, list):
        return [item for raw in raws for item in raw]
    if isinstance(first, dict):
        return {key: _combine([raw[key] for raw in raws]) for key in first}
    raise InputError(f"cannot batch inputs of type {type(first).__name__}")


def _generate(
    pipe: Any,
    task_name: str,
    requests: list[Any],
    *,
    steps: int,
    sampler: str | SamplerRef,
    guidance: float,
    seed: int,
    batch: int,
) -> Tensor:
    """Pictures (N, 3, H, W) in [-1, 1], one per request, in batches."""
    task = pipe.task(task_name)
    out = []
    for start in range(0, len(requests), batch):
        chunk = requests[start : start + batch]
        n = len(chunk)
        raws = [task.raw_input(pipe, r, 1) for r in chunk]
        uncond = pipe.conditioner.unconditional(n) if pipe.conditioner is not None else None
        cond = (
            uncond
            if raws[0] is None
            else pipe.conditioner(task.wrap(on_device(_combine(raws), pipe.device), pipe.conditioner))
        )
        # what the task adds to sampling (masked inpainting's known latents), as generate applies it
        extra = _combine([task.sample_kwargs(pipe, r, 1) for r in chunk])
        generators = [torch.Generator().manual_seed(seed + start + i) for i in range(n)]
        latents = pipe.sample(
            cond,
            sampler=sampler,
            steps=steps,
            uncond=uncond if guidance != 1.0 and raws[0] is not None else None,
            guidance_scale=guidance,
            generator=generators,
            batch_size=n,
            **extra,
        )
        out.append(pipe.decode(latents).clamp(-1, 1).float().cpu())
    return torch.cat(out)


def run_bench(
    pipe: Any,
    *,
    n: int = 64,
    steps: int | None = None,
    sampler: str | None = None,
    guidance: float | None = None,
    seed: int = 0,
    batch: int = 64,
    tasks: list[str] | None = None,
) -> list[BenchRow]:
    """Score the pipeline on each task with ``n`` held-out Shapes scenes.

    ``steps``, ``sampler`` and ``guidance`` left as None are each task's defaults (its params, else the spec's).
    """
    served = set(pipe.spec.tasks) if pipe.spec is not None and pipe.spec.tasks else set(TARGETS)
    benchable = [t for t in TARGETS if t in served]
    if tasks:
        unknown = [t for t in tasks if t not in benchable]
        if unknown:  # an explicit request is never dropped silently
            raise InputError(
                f"cannot bench {', '.join(map(repr, unknown))}; this pipeline's tasks: {', '.join(benchable)}"
            )
    else:
        tasks = benchable
    single = ShapesDataset.from_params({"seed": BENCH_SEED, "single_object": True}).batch(range(n))
    multi = ShapesDataset.from_params({"seed": BENCH_SEED + 1}).batch(range(n))
    real_single, real_multi = single["image"], multi["image"]
    rows = []
    for name in tasks:
        task = pipe.task(name)
        # an explicit 0.0 is a guidance scale too, so test for None only
        scale = default_guidance(pipe, name) if guidance is None else guidance
        scale = 1.0 if name == "uncond" else scale  # nothing to guide by
        own_sampler, own_steps = default_sampling(pipe, name)
        task_sampler, task_steps = sampler or own_sampler, steps or own_steps
        kw: dict[str, Any] = dict(steps=task_steps, sampler=task_sampler, guidance=scale, seed=seed, batch=batch)
        t0 = time.perf_counter()
        if name == "class2img":
            labels = single["class_label"].tolist()
            pics = _generate(pipe, name, [task.Request(label=v) for v in labels], **kw)
            gen, real = metrics.class_accuracy(pics, labels), metrics.class_accuracy(real_single, labels)
        elif name == "text2img":
            caps = multi["caption"]
            pics = _generate(pipe, name, [task.Request(prompt=c) for c in caps], **kw)
            gen, real = metrics.caption_exact_match(pics, caps), metrics.caption_exact_match(real_multi, caps)
        elif name == "layout2img":
            lays = multi["layout"]
            pics = _generate(pipe, name, [task.Request(layout=lay) for lay in lays], **kw)
            gen, real = metrics.layout_iou(pics, lays), metrics.layout_iou(real_multi, lays)
        elif name == "semantic2img":
            maps = multi["segmentation"]
            pics = _generate(pipe, name, [task.Request(segmentation=m) for m in maps], **kw)
            gen, real = metrics.semantic_fg_iou(pics, maps), metrics.semantic_fg_iou(real_multi, maps)
        elif name == "superres":
            low = multi["lowres"]
            pics = _generate(pipe, name, [task.Request(image=x) for x in low], **kw)
            bicubic = F.interpolate(low, scale_factor=4, mode="bicubic", align_corners=False).clamp(-1, 1)
            gen, real = metrics.psnr(pics, real_multi), metrics.psnr(bicubic, real_multi)
        elif name == "inpaint":
            masks = multi["mask"]
            reqs = [task.Request(image=x, mask=m) for x, m in zip(real_multi, masks, strict=True)]
            pics = _generate(pipe, name, reqs, **kw)
            if getattr(task.params, "paste_known", False):  # what the task delivers: the known pixels put back
                hole = (masks > 0.5).to(pics)  # (N, 1, H, W)
                pics = pics * hole + real_multi * (1 - hole)
            gen, real = metrics.valid_fill_rate(pics), metrics.valid_fill_rate(real_multi)
        else:  # uncond
            pics = _generate(pipe, name, [None] * n, **kw)
            gen, real = metrics.valid_scene_rate(pics), metrics.valid_scene_rate(real_multi)
        metric, target = TARGETS[name]
        seconds = time.perf_counter() - t0
        rows.append(BenchRow(name, metric, gen, real, target, n, seconds, scale, task_sampler, task_steps))
        log.info("%s: %s %.3f (real %.3f)", name, metric, gen, real)
    return rows


def time_generation(pipe: Any, *, n: int = 4, steps: int = 50, repeats: int = 3) -> float:
    """Best wall time (s) of ``n`` class-conditional pictures with ``steps`` DDIM steps, guided as the spec says."""
    task = pipe.task("class2img") if pipe.spec and "class2img" in pipe.spec.tasks else pipe.task("uncond")
    request = task.Request(label=0) if task.name == "class2img" else task.Request()
    from ldmkit.interfaces import SampleOptions

    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        task.run(pipe, request, SampleOptions(n=n, steps=steps, guidance_scale=default_guidance(pipe, task.name)))
        best = min(best, time.perf_counter() - t0)
    return best


def format_table(rows: list[BenchRow]) -> str:
    lines = [
        "| task | metric | generated | real pictures | target | n | guidance | sampler, steps |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        mark = "" if r.passed else " (below target)"
        cells = f"{r.task} | {r.metric} | {r.generated:.3f}{mark} | {r.real:.3f} | {r.target} | {r.n} | {r.guidance:g}"
        cells += f" | {r.sampler} {r.steps}"
        lines.append(f"| {cells} |")
    return "\n".join(lines)
