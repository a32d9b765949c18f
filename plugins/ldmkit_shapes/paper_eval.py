"""Scoring for the paper experiment: class accuracy (parser and classifier) and the Shapes Fréchet distance.

Every evaluation draws the same labels (0..17 in turn) and the same noise (one seeded generator per picture),
so checkpoints and factors differ only in their weights.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from torch import Tensor

from ldmkit_shapes import metrics
from ldmkit_shapes.classifier import N_CLASSES, load_classifier, predict
from ldmkit_shapes.dataset import ShapesDataset
from ldmkit_shapes.fid import FeatureStats, degrade, feature_stats, features, frechet_distance
from ldmkit_shapes.paper_plan import EvaluationPlan

log = logging.getLogger(__name__)

REFERENCE_SEED = 1_000_003  # held out: the training specs and the classifier use small seeds
REAL_SEED = 1_000_005  # a second held-out real set, as large as a generated one: the metric's floor
NOISE_SEED = 777


def real_pictures(seed: int, n: int) -> tuple[Tensor, Tensor]:
    """Single-object real pictures (N, 3, 64, 64) in [-1, 1] and their class ids (N,)."""
    batch = ShapesDataset.from_params({"seed": seed, "single_object": True}).batch(range(n))
    return batch["image"], batch["class_label"]


class Judge:
    """The classifier, the real reference statistics and the fixed labels of one evaluation setting."""

    def __init__(self, plan: EvaluationPlan, device: Any = "cpu", classifier: str | None = None) -> None:
        self.plan = plan
        self.model = load_classifier(classifier, device=device)  # None: the shipped weights
        images, _ = real_pictures(REFERENCE_SEED, plan.reference)
        self.reference: FeatureStats = feature_stats(features(images, self.model))
        self.labels = torch.arange(plan.samples) % N_CLASSES  # (N,)

    def score(self, pictures: Tensor, labels: Tensor | None = None) -> dict[str, float]:
        """Parser accuracy, classifier accuracy and Fréchet distance of pictures (N, 3, 64, 64) in [-1, 1]."""
        labels = self.labels if labels is None else labels
        pictures = pictures.float().clamp(-1, 1).cpu()
        return {
            "accuracy": metrics.class_accuracy(pictures, labels),
            "classifier_accuracy": float((predict(self.model, pictures) == labels).float().mean()),
            "fd": frechet_distance(feature_stats(features(pictures, self.model)), self.reference),
        }

    def real_floor(self) -> dict[str, float]:
        """The scores of held-out real pictures, as many as an evaluation generates (the best reachable)."""
        images, labels = real_pictures(REAL_SEED, self.plan.samples)
        return self.score(images, labels)


@torch.no_grad()
def sample_pictures(pipe: Any, labels: Tensor, *, sampler: str, steps: int, batch: int) -> Tensor:
    """Class-conditional pictures (N, 3, 64, 64) in [-1, 1] on the CPU; picture i starts from seed NOISE_SEED + i."""
    out = []
    for start in range(0, len(labels), batch):
        chunk = labels[start : start + batch]
        gens = [torch.Generator().manual_seed(NOISE_SEED + start + i) for i in range(len(chunk))]
        cond = pipe.conditioner(chunk.to(pipe.device))
        latents = pipe.sample(cond, sampler=sampler, steps=steps, generator=gens, batch_size=len(chunk))
        out.append(pipe.decode(latents).clamp(-1, 1).float().cpu())
    return torch.cat(out)


def evaluate_pipeline(pipe: Any, judge: Judge, *, steps: int | None = None) -> dict[str, float]:
    """Sample the judge's labels with the plan's sampler and score them; adds ``eval_s`` (seconds taken)."""
    plan = judge.plan
    t0 = time.perf_counter()
    pics = sample_pictures(pipe, judge.labels, sampler=plan.sampler, steps=steps or plan.steps, batch=plan.batch)
    row = judge.score(pics)
    row["eval_s"] = time.perf_counter() - t0
    return row


@torch.no_grad()
def evaluate_autoencoder(first_stage: Any, judge: Judge, device: Any) -> dict[str, float]:
    """How well the first stage alone reproduces held-out real pictures: PSNR, and the scores of its reconstructions.

    This is the ceiling of the LDMs in its latent space.
    """
    images, labels = real_pictures(REAL_SEED, judge.plan.samples)
    recon = []
    for start in range(0, len(images), judge.plan.batch):
        x = images[start : start + judge.plan.batch].to(device)
        recon.append(first_stage.decode(first_stage.encode(x)).clamp(-1, 1).float().cpu())
    rec = torch.cat(recon)  # (N, 3, 64, 64)
    row = {f"reconstruction_{k}": v for k, v in judge.score(rec, labels).items()}
    row["reconstruction_psnr"] = metrics.psnr(rec, images)
    return row


DEGRADATIONS: list[tuple[str, str, float | None]] = [
    ("blurred, sigma 0.5 px", "blur", 0.5),
    ("blurred, sigma 1 px", "blur", 1.0),
    ("blurred, sigma 2 px", "blur", 2.0),
    ("noise, sigma 0.1", "noise", 0.1),
    ("wrong colours (RGB rotated)", "colours", None),
]


def metric_sanity(
    plan: EvaluationPlan, device: Any = "cpu", classifier: str | None = None
) -> list[tuple[str, dict[str, float]]]:
    """The scores of held-out real pictures, as they are and deliberately degraded, in the experiment's setting."""
    judge = Judge(plan, device, classifier)
    images, labels = real_pictures(REAL_SEED, plan.samples)
    rows = [("real held-out pictures", judge.score(images, labels))]
    rows += [(name, judge.score(degrade(images, kind, amount), labels)) for name, kind, amount in DEGRADATIONS]
    return rows


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def sampling_throughput(pipe: Any, *, sampler: str, steps: int, batch: int) -> float:
    """Pictures per second of class-conditional sampling with ``steps`` steps, decoding included (after a warm-up)."""
    labels = torch.arange(batch) % N_CLASSES
    sample_pictures(pipe, labels, sampler=sampler, steps=2, batch=batch)  # warm-up: kernels, allocator
    synchronize(pipe.device)
    t0 = time.perf_counter()
    sample_pictures(pipe, labels, sampler=sampler, steps=steps, batch=batch)
    synchronize(pipe.device)
    return batch / (time.perf_counter() - t0)


__all__ = [
    "Judge",
    "evaluate_autoencoder",
    "evaluate_pipeline",
    "metric_sanity",
    "real_pictures",
    "sample_pictures",
    "sampling_throughput",
]
