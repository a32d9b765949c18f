"""benchmarks/unet_roofline.py: the SD v1 UNet's linear and convolution calls, their FLOPs and roofline bounds."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import unet_roofline  # noqa: E402
from unet_roofline import Op  # noqa: E402


def test_inventory_counts_the_flops_torchs_counter_counts() -> None:
    """The hooks see every product: their FLOPs add up to FlopCounterMode's mm/addmm and convolution totals."""
    from collections import defaultdict

    from gpu_sampling import SD_UNET
    from torch.utils.flop_counter import FlopCounterMode

    from ldmkit import Conditioning
    from ldmkit_unet.unet import UNet

    ops = unet_roofline.inventory(batch=2)
    with torch.device("meta"):
        unet = UNet.from_params(SD_UNET).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        unet(torch.empty(2, 4, 64, 64, device="meta"), torch.zeros(2, dtype=torch.long, device="meta"),
             Conditioning(crossattn=torch.empty(2, 77, 768, device="meta")))  # fmt: skip
    by_op: dict[str, int] = defaultdict(int)
    for op, flops in counter.get_flop_counts()["Global"].items():
        by_op[str(op).split(".")[1]] += flops
    linear = sum(n * op.flops for op, n in ops.items() if op.kind == "linear")
    conv = sum(n * op.flops for op, n in ops.items() if op.kind == "conv")
    assert linear == by_op["mm"] + by_op["addmm"]
    assert conv == by_op["convolution"]
    # SD v1: 16 transformer blocks, each with a GEGLU projection of width -> 8 x width
    geglu = [(op, n) for op, n in ops.items() if op.kind == "linear" and op.out_features == 8 * op.in_features]
    assert sum(n for _, n in geglu) == 16


def test_bounds_of_one_product_and_one_convolution() -> None:
    linear = Op("linear", rows=1000, in_features=320, out_features=640, bias=True)
    assert linear.flops == 2 * 1000 * 320 * 640
    assert linear.min_bytes == 2 * (1000 * 320 + 1000 * 640 + 320 * 640)
    conv = Op("conv", rows=2, in_features=4, out_features=8, bias=True, side=(16, 16), kernel=3, stride=2)
    assert conv.out_side == (8, 8)
    assert conv.flops == 2 * 2 * 8 * 8 * 8 * 4 * 9
    assert conv.min_bytes == 2 * (2 * 4 * 256 + 2 * 8 * 64 + 8 * 4 * 9)
    assert conv.describe() == "conv 3x3 4 -> 8 + bias at 16x16, stride 2 (batch 2)"
    text = unet_roofline.report({linear: 3}, peak=1e12, bandwidth=1e9, timed={linear: 3000.0})
    # memory bound: 2.33 MB at 1 GB/s is 2,330 us a call, three calls; measured 3000 us a call
    assert "| linear 1000x320 -> 640 + bias | 3 |" in text
    assert "roofline 6.99 ms; each shape alone 9.00 ms (78%)" in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_timing_without_a_gpu_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        unet_roofline.main(["--out", str(tmp_path / "r.md"), "--time"])
    assert exit_info.value.code == 2
    assert "--time needs a CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "r.md").exists()
