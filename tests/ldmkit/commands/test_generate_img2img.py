"""``ldmkit generate --task img2img`` and ``--negative-prompt`` / ``--negative-label``: metadata, replay, bad input."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_runner import run_cli
from PIL import Image

from ldmkit.generation import read_metadata
from ldmkit_shapes import ShapesDataset

FAST = ["-n", "2", "--seed", "3", "--steps", "4", "--no-progress"]

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as picture:
        return np.asarray(picture.convert("RGB"))


@pytest.fixture(scope="module")
def picture(tmp_path_factory) -> Path:
    image = ShapesDataset.from_params({"seed": 5}).batch([0])["image"][0]  # (3, 64, 64) in [-1, 1]
    u8 = ((image + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    path = tmp_path_factory.mktemp("in") / "in.png"
    Image.fromarray(u8, "RGB").save(path)
    return path


@pytest.fixture(scope="module")
def img2img(picture, tmp_path_factory) -> list[Path]:
    out = tmp_path_factory.mktemp("img2img")
    argv = ["generate", "--task", "img2img", "--image", str(picture), "--strength", "0.6", "--prompt", "a red circle"]
    code, stdout, stderr = run_cli([*argv, *FAST, "--out", str(out)])
    assert code == 0, stderr
    return [Path(line) for line in stdout.split()]


def test_img2img_records_strength_and_the_picture_sha256(img2img, picture):
    assert len(img2img) == 2
    meta = read_metadata(img2img[1])
    assert meta["task"] == "img2img" and meta["index"] == 1
    inputs = meta["inputs"]
    assert inputs["strength"] == "0.6" and inputs["prompt"] == "a red circle"
    assert inputs["image"]["sha256"] == hashlib.sha256(picture.read_bytes()).hexdigest()


@pytest.mark.parametrize("index", [0, 1])
def test_img2img_replays_byte_for_byte(img2img, tmp_path, index):
    code, stdout, stderr = run_cli(
        ["generate", "--replay", str(img2img[index]), "--out", str(tmp_path), "--no-progress"]
    )
    assert code == 0, stderr
    assert "identical" in stdout
    (replayed,) = tmp_path.iterdir()
    assert replayed.read_bytes() == img2img[index].read_bytes()


def test_the_default_strength_is_recorded_too(picture, tmp_path):
    argv = ["generate", "--task", "img2img", "--image", str(picture), "-n", "1", "--steps", "2", "--no-progress"]
    code, stdout, stderr = run_cli([*argv, "--out", str(tmp_path)])
    assert code == 0, stderr
    assert read_metadata(Path(stdout.split()[0]))["inputs"]["strength"] == 0.75  # the shipped spec's default


@pytest.fixture(scope="module")
def negative(tmp_path_factory) -> list[Path]:
    out = tmp_path_factory.mktemp("negative")
    argv = ["generate", "--task", "text2img", "--prompt", "a red circle", "--negative-prompt", "a blue circle"]
    code, stdout, stderr = run_cli([*argv, *FAST, "--out", str(out)])
    assert code == 0, stderr
    return [Path(line) for line in stdout.split()]


def test_a_negative_prompt_is_recorded_and_replays_byte_for_byte(negative, tmp_path):
    assert read_metadata(negative[0])["inputs"]["negative_prompt"] == "a blue circle"
    code, stdout, stderr = run_cli(["generate", "--replay", str(negative[1]), "--out", str(tmp_path), "--no-progress"])
    assert code == 0, stderr
    (replayed,) = tmp_path.iterdir()
    assert replayed.read_bytes() == negative[1].read_bytes()


def test_the_negative_prompt_changes_the_pictures(negative, tmp_path):
    code, stdout, stderr = run_cli(
        ["generate", "--task", "text2img", "--prompt", "a red circle", *FAST, "--out", str(tmp_path)]
    )
    assert code == 0, stderr
    plain = [pixels(Path(line)) for line in stdout.split()]
    assert not all(np.array_equal(a, pixels(b)) for a, b in zip(plain, negative, strict=True))


def test_a_negative_label_is_recorded_and_replays(tmp_path):
    argv = ["generate", "--task", "class2img", "--label", "red circle", "--negative-label", "green circle"]
    code, stdout, stderr = run_cli([*argv, "-n", "1", "--steps", "3", "--no-progress", "--out", str(tmp_path / "a")])
    assert code == 0, stderr
    made = Path(stdout.split()[0])
    assert read_metadata(made)["inputs"]["negative_label"] == "green circle"
    code, stdout, stderr = run_cli(["generate", "--replay", str(made), "--out", str(tmp_path / "b"), "--no-progress"])
    assert code == 0 and "identical" in stdout, stderr


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--strength", "1.5"], "strength"),
        (["--strength", "lots"], "strength"),
        (["--negative-label", "purple circle"], "negative_label"),
        (["--negative-label", "1٣"], "--negative-label"),
    ],
)
def test_bad_img2img_input_exits_2_with_one_message(picture, tmp_path, extra, message):
    argv = ["generate", "--task", "img2img", "--image", str(picture), *extra, "-n", "1", "--steps", "2"]
    code, _, stderr = run_cli([*argv, "--no-progress", "--out", str(tmp_path)])
    assert code == 2
    assert message in stderr and "Traceback" not in stderr
    assert not list(tmp_path.iterdir())


def test_a_picture_the_model_cannot_tile_exits_2(tmp_path):
    small = tmp_path / "small.png"
    Image.new("RGB", (40, 40), (200, 30, 30)).save(small)
    argv = ["generate", "--task", "img2img", "--image", str(small), "-n", "1", "--steps", "2", "--no-progress"]
    code, _, stderr = run_cli([*argv, "--out", str(tmp_path / "out")])
    assert code == 2 and "multiple of 16" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_a_negative_for_a_task_that_does_not_read_it_exits_2(tmp_path):
    argv = ["generate", "--task", "uncond", "--negative-prompt", "a red circle", "-n", "1", "--steps", "2"]
    code, _, stderr = run_cli([*argv, "--no-progress", "--out", str(tmp_path)])
    assert code == 2 and "negative_prompt" in stderr and "Traceback" not in stderr
