"""The Shapes Fréchet distance: FID's formula in the penultimate features of the Shapes classifier.

``d = |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a^(1/2) S_b S_a^(1/2))^(1/2))`` between Gaussians fitted to
the features of two picture sets. The matrix square roots come from symmetric eigendecompositions in float64
(``S_a^(1/2) S_b S_a^(1/2)`` is symmetric positive semi-definite, so its root's trace is the sum of the roots of
its eigenvalues). Like FID, the value is biased upwards for small sets: compare values from equal set sizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ldmkit.errors import InputError
from ldmkit_shapes.classifier import ShapesClassifier, load_classifier


@dataclass(frozen=True)
class FeatureStats:
    """Mean (D,) and covariance (D, D) of a set's features, in float64."""

    mean: Tensor
    cov: Tensor
    count: int


def feature_stats(features: Tensor) -> FeatureStats:
    """Gaussian statistics of features (N, D); needs N >= 2."""
    if features.ndim != 2 or features.shape[0] < 2:
        raise InputError(f"feature statistics need (N >= 2, D) features, got {tuple(features.shape)}")
    x = features.detach().cpu().double()  # (N, D)
    mean = x.mean(0)  # (D,)
    centred = x - mean
    cov = centred.T @ centred / (x.shape[0] - 1)  # (D, D), unbiased like numpy.cov
    return FeatureStats(mean, cov, int(x.shape[0]))


def _sym_sqrt(matrix: Tensor) -> Tensor:
    """Square root of a symmetric positive semi-definite matrix (tiny negative eigenvalues clipped to 0)."""
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(a: FeatureStats, b: FeatureStats) -> float:
    """Fréchet distance between the Gaussians of ``a`` and ``b`` (0 for equal statistics)."""
    if a.mean.shape != b.mean.shape:
        raise InputError(f"feature widths differ: {a.mean.shape[0]} and {b.mean.shape[0]}")
    root_a = _sym_sqrt(a.cov)
    inner = root_a @ b.cov @ root_a  # (D, D), symmetric PSD
    eig = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp(min=0)
    trace_cross = float(eig.sqrt().sum())
    diff = float(((a.mean - b.mean) ** 2).sum())
    value = diff + float(a.cov.trace()) + float(b.cov.trace()) - 2.0 * trace_cross
    return max(value, 0.0)  # rounding can leave -1e-12 for identical sets


@torch.no_grad()
def features(pictures: Tensor, model: ShapesClassifier | None = None, batch: int = 512) -> Tensor:
    """Penultimate classifier features (N, 128) of pictures (N, 3, 64, 64) in [-1, 1] (clamped first).

    Pictures are rounded to 8-bit levels first, so generated and saved pictures score alike.
    """
    model = model if model is not None else load_classifier()
    device = next(model.parameters()).device
    if pictures.ndim != 4 or pictures.shape[1] != 3:
        raise InputError(f"pictures must be (N, 3, 64, 64) in [-1, 1], got shape {tuple(pictures.shape)}")
    out = []
    for start in range(0, len(pictures), batch):
        x = pictures[start : start + batch].to(device).float().clamp(-1, 1)
        x = ((x + 1) * 127.5).round() / 127.5 - 1  # (b, 3, 64, 64) on the 8-bit grid
        out.append(model.embed(x).cpu())
    return torch.cat(out).double() if out else torch.empty(0, 128, dtype=torch.float64)


def shapes_fd(generated: Tensor, reference: Tensor | FeatureStats, model: ShapesClassifier | None = None) -> float:
    """Fréchet distance between generated pictures and real ones (pictures, or their precomputed stats)."""
    model = model if model is not None else load_classifier()
    ref = reference if isinstance(reference, FeatureStats) else feature_stats(features(reference, model))
    return frechet_distance(feature_stats(features(generated, model)), ref)


def degrade(pictures: Tensor, kind: str, amount: Any = None) -> Tensor:
    """Deliberately damaged copies of pictures (N, 3, H, W) in [-1, 1], for the metric's sanity checks.

    ``blur``: a Gaussian blur of standard deviation ``amount`` pixels (default 1.0); ``colours``: the RGB
    channels rotated (red becomes green ...), every colour wrong; ``noise``: Gaussian noise of standard deviation
    ``amount`` (default 0.1, on the [-1, 1] scale) from a fixed seed.
    """
    if kind == "blur":
        sigma = float(1.0 if amount is None else amount)
        radius = max(1, int(3 * sigma + 0.5))
        grid = torch.arange(-radius, radius + 1, dtype=torch.float32)
        kernel = torch.exp(-(grid**2) / (2 * sigma * sigma))
        kernel = (kernel / kernel.sum()).to(pictures)  # (K,)
        c = pictures.shape[1]
        x = torch.nn.functional.pad(pictures, (radius,) * 4, mode="replicate")
        x = torch.nn.functional.conv2d(x, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)  # along W
        return torch.nn.functional.conv2d(x, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)  # along H
    if kind == "colours":
        return pictures[:, [1, 2, 0]]
    if kind == "noise":
        std = float(0.1 if amount is None else amount)
        gen = torch.Generator().manual_seed(0)
        noise = torch.randn(pictures.shape, generator=gen).to(pictures)
        return (pictures + std * noise).clamp(-1, 1)
    raise InputError(f"unknown degradation {kind!r}; expected blur, colours or noise")


__all__ = ["FeatureStats", "degrade", "feature_stats", "features", "frechet_distance", "shapes_fd"]
