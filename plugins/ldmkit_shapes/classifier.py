"""A small Shapes classifier: the feature network behind the Shapes Fréchet distance (:mod:`ldmkit_shapes.fid`).

It reads a 64x64 picture and predicts the class of its (main) object and that object's box. The box head is
there so that the penultimate features also encode where an object is and how large, not only what it is:
the Fréchet distance in those features then sees wrong positions and sizes as well as wrong classes.

The shipped weights (``classifier.safetensors`` in this package) were trained with
``scripts/train_shapes_classifier.py`` (on one GPU, as the first step of the paper experiment's GPU job; the same
recipe on the CPU reaches the same held-out accuracy); see docs/paper.md for its accuracy and its sanity checks.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ldmkit.errors import InputError

log = logging.getLogger(__name__)

WEIGHTS_FILE = "classifier.safetensors"
N_CLASSES = 18
FEATURES = 128
"""Width of the penultimate features (what the Fréchet distance compares)."""


class ShapesClassifier(nn.Module):
    """Four stride-2 convolutions (64 -> 4 pixels) with group norms, a 128-wide feature layer, class and box heads."""

    def __init__(self) -> None:
        super().__init__()
        widths = [3, 16, 32, 64, 128]
        layers: list[nn.Module] = []
        for cin, cout in zip(widths[:-1], widths[1:], strict=True):
            # normalised activations let plain AdamW converge in a few hundred CPU steps
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.GroupNorm(8, cout), nn.SiLU()]
        self.body = nn.Sequential(*layers)
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(128 * 4 * 4, FEATURES), nn.SiLU())
        self.classes = nn.Linear(FEATURES, N_CLASSES)
        self.box = nn.Linear(FEATURES, 4)

    def embed(self, images: Tensor) -> Tensor:
        """Penultimate features (B, 128) of pictures (B, 3, 64, 64) in [-1, 1]."""
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, 64, 64):
            raise InputError(f"the Shapes classifier reads (B, 3, 64, 64) pictures, got {tuple(images.shape)}")
        return self.features(self.body(images))  # (B, 128)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Class logits (B, 18) and box (B, 4) as fractions ``[x0, y0, x1, y1]``."""
        h = self.embed(images)
        return self.classes(h), self.box(h)


def weights_path() -> Path:
    """The shipped weights inside this package."""
    return Path(str(resources.files("ldmkit_shapes") / WEIGHTS_FILE))


def load_classifier(path: str | Path | None = None, device: Any = "cpu") -> ShapesClassifier:
    """The classifier with weights from ``path`` (default: the shipped ones), in eval mode, on ``device``."""
    from ldmkit.checkpoints import load_into

    model = ShapesClassifier()
    load_into(model, Path(path) if path is not None else weights_path(), what="Shapes classifier")
    return model.eval().requires_grad_(False).to(device)


@torch.no_grad()
def predict(model: ShapesClassifier, images: Tensor, batch: int = 512) -> Tensor:
    """Predicted class ids (N,) of pictures (N, 3, 64, 64) in [-1, 1]."""
    device = next(model.parameters()).device
    out = [model(images[i : i + batch].to(device).float())[0].argmax(1).cpu() for i in range(0, len(images), batch)]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


__all__ = ["FEATURES", "N_CLASSES", "ShapesClassifier", "load_classifier", "predict", "weights_path"]
