"""The Shapes fidelity benchmark: ``run_bench`` rows, ``format_table`` and ``ldmkit bench shapes``."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import ldmkit
from ldmkit.cli import main
from ldmkit.errors import InputError
from ldmkit.generation import default_model_dir
from ldmkit.specs import ComponentSpec
from ldmkit_shapes import metrics
from ldmkit_shapes.bench import BENCH_SEED, TARGETS, BenchRow, _generate, format_table, run_bench, time_generation
from ldmkit_shapes.dataset import ShapesDataset
from ldmkit_shapes.metrics import class_accuracy, psnr

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def shipped() -> ldmkit.Pipeline:
    return ldmkit.Pipeline.load(default_model_dir())


@pytest.fixture(scope="module")
def rows(shipped) -> list[BenchRow]:
    return run_bench(shipped, n=2, steps=2, tasks=["class2img", "inpaint"])


def test_rows_have_finite_metrics_and_real_pictures_score_well(rows):
    assert [r.task for r in rows] == ["class2img", "inpaint"]
    for row in rows:
        assert row.n == 2 and row.seconds > 0
        assert (row.metric, row.target) == TARGETS[row.task]
        assert math.isfinite(row.generated) and math.isfinite(row.real)
        assert row.passed == (row.generated >= row.target)
    class_row, inpaint_row = rows
    assert class_row.real == 1.0  # the parser classifies real Shapes pictures exactly
    assert 0.0 <= class_row.generated <= 1.0
    assert inpaint_row.real == 1.0 and 0.0 <= inpaint_row.generated <= 1.0  # valid fills of real / inpainted


def test_format_table_has_a_row_per_task(rows):
    table = format_table(rows).splitlines()
    assert table[0].startswith("| task | metric | generated | real pictures | target | n |")
    assert len(table) == 2 + len(rows)
    for row, line in zip(rows, table[2:], strict=True):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == row.task and cells[1] == row.metric
        assert cells[2].startswith(f"{row.generated:.3f}")
        assert ("below target" in cells[2]) == (not row.passed)
        assert cells[3] == f"{row.real:.3f}" and cells[5] == "2"


def test_inpainting_is_sampled_as_the_task_samples_it(shipped):
    # masked sampling keeps the known latents, so outside the mask the picture is close to the
    # autoencoder's reconstruction even after two steps (about 23 dB here); sampling that ignored the
    # task's known latents would draw an unrelated picture (about 10 dB)
    spec = shipped.spec
    masked = ComponentSpec(type="inpaint", params={"mode": "masked-sampling"})
    scenes = ShapesDataset.from_params({"seed": BENCH_SEED + 1}).batch(range(2))
    image, masks = scenes["image"], scenes["mask"]
    shipped.spec = spec.model_copy(update={"tasks": {**spec.tasks, "inpaint": masked}})
    try:
        reqs = [shipped.task("inpaint").Request(image=x, mask=m) for x, m in zip(image, masks, strict=True)]
        pics = _generate(shipped, "inpaint", reqs, steps=2, sampler="ddim", guidance=2.0, seed=0, batch=2)
    finally:
        shipped.spec = spec
    recon = shipped.decode(shipped.encode(image)).clamp(-1, 1)
    assert 18.0 < psnr(pics, image, mask=1 - masks) < psnr(recon, image, mask=1 - masks)


def test_the_inpaint_row_scores_what_the_task_delivers(shipped, monkeypatch):
    scored = []
    monkeypatch.setattr(metrics, "valid_fill_rate", lambda pictures: scored.append(pictures) or 1.0)
    run_bench(shipped, n=2, steps=1, tasks=["inpaint"])
    delivered, real = scored
    masks = ShapesDataset.from_params({"seed": BENCH_SEED + 1}).batch(range(2))["mask"]
    outside = (1 - masks).bool().expand_as(real)  # (2, 3, H, W)
    assert torch.equal(delivered[outside], real[outside])  # the known pixels, pasted back as the task does
    assert not torch.equal(delivered, real)


def test_unknown_task_is_refused_not_dropped(shipped):
    with pytest.raises(InputError, match="'img2video'.*class2img"):
        run_bench(shipped, n=1, steps=1, tasks=["class2img", "img2video"])


def test_time_generation_is_a_positive_duration(shipped):
    seconds = time_generation(shipped, n=1, steps=1, repeats=1)
    assert 0 < seconds < 60


def test_cli_prints_the_table(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", "shapes", "-n", "2", "--steps", "2", "--tasks", "class2img", "--no-timing", "--json", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| class2img | class accuracy (exactly one object, of the class) |" in printed
    assert "| inpaint |" not in printed
    saved = json.loads(out.read_text())
    assert [r["task"] for r in saved["rows"]] == ["class2img"] and saved["rows"][0]["real"] == 1.0
    assert saved["model"]["source"] == "default"


@pytest.mark.parametrize(
    ("args", "message"),
    [(["-n", "0"], "-n must be at least 1"), (["--steps", "0"], "--steps 0"), (["--tasks", "nonesuch"], "nonesuch")],
)
def test_cli_bad_arguments_exit_2(args, message, capsys):
    assert main(["bench", "shapes", *args, "--no-timing"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ldmkit: error:") and message in err


def _drawn(*squares: tuple[int, int]) -> np.ndarray:
    """A 64x64 grey picture with a red 20 px square at each (x, y), drawn by PIL (not the Shapes renderer)."""
    picture = Image.new("RGB", (64, 64), (233, 233, 233))
    draw = ImageDraw.Draw(picture)
    for x, y in squares:
        draw.rectangle([x, y, x + 19, y + 19], fill=(215, 40, 40))
    return np.array(picture)


def test_class_accuracy_counts_exactly_one_object_of_the_class():
    red_square = 6  # class ids run colour by colour through circles, squares, triangles
    one, two, none = _drawn((8, 8)), _drawn((4, 4), (38, 38)), _drawn()
    assert class_accuracy([one], [red_square]) == 1.0
    assert class_accuracy([one], [red_square + 1]) == 0.0  # one object, of another class
    assert class_accuracy([two], [red_square]) == 0.0  # the class is there, but twice
    assert class_accuracy([none], [red_square]) == 0.0
    assert class_accuracy([one, two, none, one], [red_square] * 4) == 0.5


@pytest.mark.slow
def test_a_class_label_gives_exactly_one_object_of_its_class(shipped):
    # the bench's first 16 class2img scenes with the task's own sampler, steps and guidance; the shipped
    # model scores 1.000 on all 64 (docs/shapes.md). One miss is allowed for float paths of other CPUs;
    # the stage-6 model (0.641 on the 64) scores 0.562 on these 16.
    (row,) = run_bench(shipped, n=16, tasks=["class2img"])
    assert row.metric == "class accuracy (exactly one object, of the class)"
    assert row.generated >= 15 / 16, row
