"""GroupNorm (+ SiLU) kernels at the SD v1 UNet's and decoder's shapes: compiler against Triton kernels.

One run on one GPU, bf16, channels_last. For each shape it times, as CUDA graphs of ``--calls``
calls (so host overhead does not count): the compiled float32 GroupNorm of the UNet (what the fast
path compiled before), the compiled channels_last GroupNorm of the decoder
(:class:`ldmkit.fast.norms.ChannelsLastGroupNorm`), and the Triton kernels of
:mod:`ldmkit.fast.group_norm_kernels` under each tile in ``TILES``. Bandwidth counts the bytes the
operation must move: the input read twice (statistics, then apply) and the output written once.
Errors are the largest absolute differences from float64. ``--forms`` compares only the kernels'
three-launch form with their two-launch one (moments combined inside the apply), marking the one
the kernels choose for each shape.

    python benchmarks/gpu_group_norm.py --out group_norm.md
    python benchmarks/gpu_group_norm.py --forms --out group_norm_forms.md
"""

from __future__ import annotations

import argparse
import functools
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from _common import ensure_importable, graphed_us, markdown_table

log = logging.getLogger("gpu_group_norm")

# (label, batch, channels, height, width, SiLU after the norm)
SHAPES = [
    ("UNet 64x64, 320 ch", 16, 320, 64, 64, True),
    ("UNet 64x64, 960 ch (skip concat)", 16, 960, 64, 64, True),
    ("UNet 32x32, 640 ch", 16, 640, 32, 32, True),
    ("UNet 16x16, 1280 ch", 16, 1280, 16, 16, True),
    ("UNet 64x64, 320 ch, transformer norm", 16, 320, 64, 64, False),
    ("decoder 256x256, 256 ch", 1, 256, 256, 256, True),
    ("decoder 512x512, 128 ch", 1, 128, 512, 512, True),
]
# the two forms of the kernels (three launches, or two where the apply combines the moments) at SD v1 UNet
# shapes followed by a SiLU, batches 16 and 2: (label, batch, channels, height, width)
FORM_SHAPES = [(f"UNet {s}x{s}, {c} ch", b, c, s, s) for b in (16, 2)
               for s, c in ((64, 320), (32, 640), (32, 960), (16, 1280), (16, 2560), (8, 1280), (8, 2560))]  # fmt: skip
# (BLOCK_HW, BLOCK_C, warps)
TILES = [(64, 64, 4), (32, 64, 4), (128, 64, 8), (64, 128, 8), (128, 32, 4), (256, 32, 8)]


def candidates(x: torch.Tensor, norm: torch.nn.GroupNorm, silu: bool) -> dict[str, Callable[[], torch.Tensor]]:
    """Each way of computing ``silu(norm(x))`` (or ``norm(x)``) that the table compares."""
    from ldmkit.fast.group_norm_kernels import launch_group_norm
    from ldmkit.fast.norms import ChannelsLastGroupNorm

    def act(y: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.silu(y) if silu else y

    channels_last_norm = ChannelsLastGroupNorm(norm)
    found: dict[str, Callable[[], torch.Tensor]] = {
        "compiled GroupNorm32": torch.compile(lambda: act(norm(x)), dynamic=False),
        "compiled channels_last GroupNorm": torch.compile(lambda: act(channels_last_norm(x)), dynamic=False),
    }
    for block_hw, block_c, warps in TILES:
        found[f"Triton {block_hw}x{block_c}, {warps} warps"] = functools.partial(
            launch_group_norm, x, norm.weight, norm.bias, 32, norm.eps, silu, None, block_hw, block_c, warps
        )
    return found


def form_candidates(x: torch.Tensor, norm: torch.nn.GroupNorm, silu: bool) -> dict[str, Callable[[], torch.Tensor]]:
    """The kernels' three-launch form and their two-launch form (``launch_group_norm(fused=...)``)."""
    from ldmkit.fast.group_norm_kernels import launch_group_norm, two_kernels

    chosen = "two" if two_kernels(x.shape[2] * x.shape[3], x.shape[1], 32) else "three"
    forms = {}
    for label, fused in (("three kernels", False), ("two kernels", True)):
        mark = " (chosen)" if label.startswith(chosen) else ""
        forms[label + mark] = functools.partial(launch_group_norm, x, norm.weight, norm.bias, 32, norm.eps, silu,
                                                fused=fused)  # fmt: skip
    return forms


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--forms", action="store_true",
                        help="only the kernels' three- and two-launch forms, at UNet shapes")  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    ensure_importable()
    from ldmkit_unet.layers import GroupNorm32

    device = torch.device("cuda")
    header = f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, bf16, channels_last"
    rows = []
    shapes = [(*shape, True) for shape in FORM_SHAPES] if args.forms else SHAPES
    for label, batch, channels, height, width, silu in shapes:
        torch.manual_seed(0)
        norm = GroupNorm32(32, channels).to(device, torch.bfloat16)
        torch.nn.init.normal_(norm.weight)
        torch.nn.init.normal_(norm.bias)
        x = torch.randn(batch, channels, height, width, device=device) * 2 + 3
        x = x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        expected = torch.nn.functional.group_norm(x.double(), 32, norm.weight.double(), norm.bias.double(), norm.eps)
        expected = torch.nn.functional.silu(expected) if silu else expected
        gbytes = 3 * x.numel() * x.element_size() / 1e9
        for name, fn in (form_candidates if args.forms else candidates)(x, norm, silu).items():
            with torch.no_grad():
                err = (fn().double() - expected).abs().max().item()
                us = graphed_us(fn, args.calls)
            rows.append([label, name, f"{us:.1f}", f"{gbytes / (us * 1e-6) / 1e3:.2f}", f"{err:.2e}"])
            log.info("%s | %s: %.1f us, max error %.2e", label, name, us, err)
            text = markdown_table(["shape", "kernel", "us per call", "TB/s", "max abs error vs float64"], rows)
            args.out.write_text(f"# GroupNorm (+ SiLU) kernels: {header}\n\n{text}\n")
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
