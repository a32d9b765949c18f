"""``ldmkit generate --size/--width/--height/--tile-size``: larger pictures from the shipped 64x64 Shapes model."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_runner import run_cli
from PIL import Image

from ldmkit.generation import read_metadata

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

FAST = ["--task", "class2img", "--label", "red circle", "-n", "1", "--steps", "2", "--no-progress"]


def _size(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        return img.height, img.width


def test_size_is_made_recorded_and_replayed(tmp_path: Path) -> None:
    code, stdout, stderr = run_cli(["generate", *FAST, "--size", "128", "--tile-size", "16", "--out", str(tmp_path)])
    assert code == 0, stderr
    picture = tmp_path / "000000.png"
    assert _size(picture) == (128, 128)
    options = read_metadata(picture)["options"]
    assert options["size"] == [128, 128] and options["tile_size"] == 16
    code, stdout, stderr = run_cli(["generate", "--replay", str(picture), "--out", str(tmp_path / "again")])
    assert code == 0 and "identical" in stdout, (stdout, stderr)
    assert _size(tmp_path / "again" / "000000.png") == (128, 128)
    code, _, stderr = run_cli(["generate", "--replay", str(picture), "--size", "64", "--out", str(tmp_path / "x")])
    assert code == 2 and "--size: with --replay, the size and tiling come from the picture" in stderr, stderr


def test_width_alone_keeps_the_default_height(tmp_path: Path) -> None:
    code, _, stderr = run_cli(["generate", *FAST, "--width", "96", "--out", str(tmp_path)])
    assert code == 0, stderr
    assert _size(tmp_path / "000000.png") == (64, 96)
    assert read_metadata(tmp_path / "000000.png")["options"]["size"] == [64, 96]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--size", "100"], "--size 100: a picture of 100x100 pixels; each side must be a positive multiple of 16"),
        (["--width", "72"], "--width 72: a picture of 64x72 pixels; each side must be a positive multiple of 16"),
        (["--height", "0"], "--height 0: a side must be a positive number of pixels"),
        (["--size", "64", "--width", "64"], "--size gives both sides; give it or --width/--height, not both"),
        (["--tile-size", "2"], "--tile-size 2 (tile_size): Input should be greater than or equal to 4"),
    ],
)
def test_bad_sizes_exit_2_with_one_message(tmp_path: Path, flags: list[str], message: str) -> None:
    code, stdout, stderr = run_cli(["generate", *FAST, *flags, "--out", str(tmp_path)])
    assert code == 2, (stdout, stderr)
    assert message in stderr and "Traceback" not in stderr, stderr
    assert not any(tmp_path.glob("*.png"))
