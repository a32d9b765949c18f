"""The GEGLU projection at the SD v1 UNet's shapes: compiled linear + gate against one Triton kernel.

One run on one GPU, bf16, 16 rows of latents (8 guided pictures). For each transformer level it
times, as CUDA graphs (host overhead does not count): the UNet's GEGLU module compiled by inductor
(cuBLAS for the projection, a fused kernel for ``value * gelu(gate)``), the plain Triton kernel of
``geglu_kernel.py`` (next to this script) under each tile in ``TILES``, and its persistent TMA kernel
for Hopper (one product of the interleaved weight per tile) under each tile in ``TMA_TILES``. The
weight is interleaved once per layout, outside the timed calls. A tile that fails (shared memory,
registers, a GPU without TMA) is logged and skipped. Errors are relative (Frobenius) to the float32
module.

    python benchmarks/gpu_geglu.py --out geglu.md
"""

from __future__ import annotations

import argparse
import functools
import logging
from pathlib import Path

import torch
from _common import ensure_importable, graphed_us, markdown_table, rel_err

log = logging.getLogger("gpu_geglu")

# (label, rows of tokens, width in, width out): SD v1 at 64x64 latents, 16 UNet rows
SHAPES = [("64x64", 16 * 4096, 320, 1280), ("32x32", 16 * 1024, 640, 2560), ("16x16", 16 * 256, 1280, 5120)]
# (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, stages, warps)
TILES = [
    (128, 128, 64, 8, 3, 8),
    (128, 64, 64, 8, 4, 4),
    (64, 128, 64, 8, 4, 4),
    (128, 128, 32, 8, 4, 4),
    (128, 256, 64, 8, 3, 8),
    (256, 128, 64, 8, 3, 8),
    (64, 64, 64, 8, 4, 4),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--calls", type=int, default=10)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    ensure_importable()
    from geglu_kernel import TMA_TILES, interleave_geglu_weight, launch_geglu, launch_geglu_tma

    from ldmkit_unet.transformer import GEGLU

    device = torch.device("cuda")
    header = f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, bf16"
    rows = []
    for label, m, k, n in SHAPES:
        torch.manual_seed(0)
        module = GEGLU(k, n).to(device)
        x32 = torch.randn(16, m // 16, k, device=device)
        with torch.no_grad():
            expected = module(x32)
        module16 = GEGLU(k, n).to(device, torch.bfloat16)
        module16.load_state_dict(module.state_dict())
        x = x32.to(torch.bfloat16)
        flops = 2 * m * k * 2 * n
        compiled = torch.compile(module16, dynamic=False)
        candidates = {"compiled GEGLU module (cuBLAS + fused gate)": functools.partial(compiled, x)}
        proj = module16.proj
        for tile in TILES:
            candidates[f"Triton {tile}"] = functools.partial(launch_geglu, x, proj.weight, proj.bias, tile)
        interleaved = {}  # interleave block -> (weight (2N, K), bias (2N,)), made once, ahead of the timed calls
        for tile in TMA_TILES:
            try:
                if tile.interleave not in interleaved:
                    with torch.no_grad():
                        interleaved[tile.interleave] = interleave_geglu_weight(proj.weight, proj.bias, tile.interleave)
            except ValueError as exc:  # N is no multiple of a blocked tile's half width
                log.warning("%s TMA %s: %s", label, tile.label, exc)
                continue
            weight_i, bias_i = interleaved[tile.interleave]
            candidates[f"Triton TMA {tile.label}"] = functools.partial(launch_geglu_tma, x, weight_i, bias_i, tile)
        for name, fn in candidates.items():
            try:
                with torch.no_grad():
                    err = rel_err(fn(), expected)
                    us = graphed_us(fn, args.calls)
            except Exception as exc:  # a tile that does not fit the GPU's shared memory, or a GPU without TMA
                log.warning("%s %s: %s", label, name, exc)
                continue
            rows.append([label, name, f"{us:.1f}", f"{flops / (us * 1e-6) / 1e12:.0f}", f"{err:.2e}"])
            log.info("%s | %s: %.1f us, rel. error %.2e", label, name, us, err)
            text = markdown_table(["level", "kernel", "us per call", "TFLOP/s", "rel. error vs fp32"], rows)
            args.out.write_text(f"# GEGLU projection, M x K -> N: {header}\n\n{text}\n")
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
