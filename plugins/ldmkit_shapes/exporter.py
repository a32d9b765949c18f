"""Write Shapes samples to disk: PNG pictures, PNG segmentation maps and one JSON of annotations."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ldmkit.errors import InputError
from ldmkit_shapes.dataset import ShapesDataset
from ldmkit_shapes.world import render, segmentation

log = logging.getLogger(__name__)

ANNOTATIONS = "annotations.json"


def export(
    directory: str | Path,
    n: int,
    seed: int = 0,
    *,
    min_objects: int = 1,
    max_objects: int = 3,
    single_object: bool = False,
) -> Path:
    """Write samples ``0 .. n-1`` of ``ShapesDataset(seed=seed, ...)`` under ``directory``.

    Files: ``images/000000.png`` (RGB), ``segmentation/000000.png`` (grey, values 0-3) and
    ``annotations.json``, a list with, per sample, its file names, caption, class label, layout (boxes as
    fractions), objects (shape, colour, x, y, side, label), background level and inpainting mask box
    ``[x0, y0, x1, y1]`` (pixels, end-exclusive). Returns the path of the JSON file.
    """
    from PIL import Image

    if n < 0:
        raise InputError(f"number of samples must be non-negative, got {n}")
    dataset = ShapesDataset.from_params(
        {
            "seed": seed,
            "size": max(n, 1),
            "min_objects": min_objects,
            "max_objects": max_objects,
            "single_object": single_object,
        }
    )
    root = Path(directory)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "segmentation").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        scene, mask_box = dataset.draw(i)
        stem = f"{i:06d}.png"
        Image.fromarray(render(scene)).save(root / "images" / stem)
        Image.fromarray(segmentation(scene)).save(root / "segmentation" / stem)
        records.append(
            {
                "index": i,
                "image": f"images/{stem}",
                "segmentation": f"segmentation/{stem}",
                "caption": scene.caption,
                "class_label": scene.main_object.label,
                "layout": scene.layout,
                "objects": [
                    {"shape": o.shape, "colour": o.colour, "x": o.x, "y": o.y, "side": o.side, "label": o.label}
                    for o in scene.objects
                ],
                "background": scene.background,
                "mask": list(mask_box),
            }
        )
    path = root / ANNOTATIONS
    path.write_text(json.dumps({"seed": seed, "samples": records}, indent=1))
    log.info("wrote %d Shapes samples to %s", n, root)
    return path
