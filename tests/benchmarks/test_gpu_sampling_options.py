"""benchmarks/gpu_sampling.py's --fa4-tiles: the tile table it reads, and a usage error for anything else."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import gpu_sampling  # noqa: E402


def test_fa4_tiles_file_reads_what_gpu_fa4_tiles_writes(tmp_path: Path) -> None:
    path = tmp_path / "tiles.json"
    path.write_text(json.dumps({"40": [192, 96, True, True], "80": [128, 128, False, True]}))
    assert gpu_sampling.fa4_tiles_file(str(path)) == {40: (192, 96, True, True), 80: (128, 128, False, True)}


@pytest.mark.parametrize("text", ["[1, 2]", '{"40": [192, 96]}', "not json", None])
def test_a_bad_fa4_tiles_file_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str], text) -> None:
    path = tmp_path / "tiles.json"
    if text is not None:  # None: no such file
        path.write_text(text)
    with pytest.raises(SystemExit) as exit_info:
        gpu_sampling.parse_args(["--out", str(tmp_path / "o.md"), "--fa4-tiles", str(path)])
    assert exit_info.value.code == 2
    assert "argument --fa4-tiles" in capsys.readouterr().err
