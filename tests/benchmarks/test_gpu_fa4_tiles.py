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


def test_winners_beat_the_packages_tile_at_the_first_batch_and_lose_nowhere() -> None:
    own, a, b, c = None, (192, 96, True, True), (128, 128, True, True), (192, 160, True, True)
    measured = {
        (40, 16): [(own, 1000.0, 1e-3), (a, 900.0, 1e-3), (b, 850.0, 1e-3), (c, 950.0, 1e-3)],
        (40, 2): [(own, 150.0, 1e-3), (a, 140.0, 1e-3), (b, 160.0, 1e-3), (c, 150.0, 1e-3)],  # b: 7% slower here
        (80, 16): [(own, 500.0, 1e-3), (a, 495.0, 1e-3), (c, float("nan"), float("nan"))],  # 1%: not enough
        (80, 2): [(own, 100.0, 1e-3), (a, 90.0, 1e-3)],
    }
    assert gpu_fa4_tiles.pick_winners(measured, [16, 2]) == {40: a}
    # a faster tile that is less precise (error 30% over) does not count either
    measured[(40, 16)][1] = (a, 900.0, 1.3e-3)
    assert gpu_fa4_tiles.pick_winners(measured, [16, 2]) == {40: c}
    assert gpu_fa4_tiles.pick_winners(measured, [16]) == {40: b}  # one batch: the fastest at it
