"""Built-in Shapes world plugin: a synthetic dataset of coloured shapes, with a picture parser and metrics.

It also provides the shipped Shapes model (the model ``shapes``, and the default model that
``ldmkit generate`` opens without ``--spec`` or ``--model``), the ``ldmkit bench`` command and the
``ldmkit paper`` command (the paper's central experiment, docs/paper.md).

The public names of :mod:`ldmkit_shapes.world` (and ``ShapesDataset``, ``export``) are available from the
package itself; they are imported on first access so that plugin discovery stays cheap.
"""

from __future__ import annotations

import importlib
from importlib import resources
from pathlib import Path
from typing import Any

from ldmkit import hookimpl
from ldmkit.hookspecs import Register

LDMKIT_API_VERSION = "1.0"

_EXPORTS = {
    "CLASS_NAMES": "world",
    "COLOURS": "world",
    "COLOUR_NAMES": "world",
    "SHAPES": "world",
    "ShapeObject": "world",
    "Scene": "world",
    "render": "world",
    "segmentation": "world",
    "sample_scene": "world",
    "ShapesDataset": "dataset",
    "export": "exporter",
    "ParsedObject": "parse",
    "parse_picture": "parse",
}

__all__ = [
    "LDMKIT_API_VERSION",
    "model_folder",
    "register_commands",
    "register_datasets",
    "register_models",
    *_EXPORTS,
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(f"ldmkit_shapes.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'ldmkit_shapes' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


@hookimpl
def register_datasets(register: Register) -> None:
    from ldmkit_shapes.dataset import ShapesDataset

    register(ShapesDataset)


def model_folder() -> Path:
    """The shipped Shapes model's pipeline folder (``spec.yaml`` and weights, inside this package)."""
    return Path(str(resources.files(__name__) / "model"))


@hookimpl
def register_models(register: Register) -> None:
    register(
        "shapes",
        model_folder,
        description="the shipped Shapes model: 64x64 pictures of coloured shapes, every task",
        default=True,
    )


@hookimpl
def register_commands(register: Register) -> None:
    from ldmkit_shapes.command import BenchCommand
    from ldmkit_shapes.paper_command import PaperCommand

    register(BenchCommand)
    register(PaperCommand)
