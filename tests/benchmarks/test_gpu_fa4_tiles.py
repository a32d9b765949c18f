"""benchmarks/gpu_fa4_tiles.py: its candidates, its refusal to time without a GPU, its CPU compile check."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import gpu_fa4_tiles  # noqa: E402


def test_candidates_start_with_the_kernels_own_choice_and_are_valid_hopper_tiles() -> None:
    for width, tiles in gpu_fa4_tiles.CANDIDATES.items():
        assert tiles[0] is None and len(set(tiles)) == len(tiles), width
        for m, n, _, _ in tiles[1:]:
            assert m in (64, 128, 192) and n % 16 == 0  # what FlashAttention-4's SM90 forward accepts
    assert gpu_fa4_tiles.describe((192, 160, True, True)) == "192x160, P in registers, overlap"
    assert gpu_fa4_tiles.describe(None) == "FlashAttention-4's choice"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_timing_without_a_gpu_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        gpu_fa4_tiles.main(["--out", str(tmp_path / "t.md")])
    assert exit_info.value.code == 2
    assert "needs a CUDA GPU (--compile-only does not)" in capsys.readouterr().err
    assert not (tmp_path / "t.md").exists()
