"""The GEGLU projection at the SD v1 UNet's shapes: compiled linear + gate against the fast path's fused kernel.

One run on one Hopper GPU, bf16, 16 rows of latents (8 guided pictures; ``--batches`` for others). For each level
it times, as CUDA graphs (host overhead does not count): the UNet's GEGLU module compiled by
inductor (cuBLAS for the projection, a fused kernel for ``value * gelu(gate)``), and the persistent
TMA kernel of :mod:`ldmkit.fast.geglu_kernels` (one product of the row-interleaved weight per tile)
under each tile in ``TILES`` (``--library-tile``: TILE and SMALL_TILE), and the tile the library
chooses for the shape with the tanh form of GELU. The weight is
interleaved once, outside the timed calls. A tile that fails (shared memory, registers) is logged
and skipped. Errors are relative (Frobenius) to the float32 module (exact GELU).

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

# (label, tokens per UNet row, width in, width out): SD v1's transformer levels at 64x64 latents
LEVELS = [("64x64", 4096, 320, 1280), ("32x32", 1024, 640, 2560), ("16x16", 256, 1280, 5120), ("8x8", 64, 1280, 5120)]


def shapes(batches: list[int]) -> list[tuple[str, int, int, int, int]]:
    """(label, UNet rows, M, K, N) of every level at each batch (8x8, the middle block's, only below 16 rows)."""
    return [(f"{level} b{b}", b, b * tokens, k, n) for b in batches for level, tokens, k, n in LEVELS
            if level != "8x8" or b < 16]  # fmt: skip


def tiles() -> list:
    """Candidates for H100 and H200 (227 KiB of shared memory per program, 64K registers per SM).

    Shared memory is stages * (BM + BN) * BK * 2 bytes of operands plus BM * BN bytes for the output
    tile of the TMA store; two programs per SM let one's epilogue overlap the other's products.
    """
    from ldmkit.fast.geglu_kernels import TILE, GegluTile

    return [
        TILE,  # 177 KiB: two warpgroups of m64n256 products (the library's choice)
        GegluTile(128, 256, 64, 8, 4, 8),  # 225 KiB: one more stage in flight
        GegluTile(256, 128, 64, 8, 3, 8),  # each weight tile serves twice the rows
        GegluTile(128, 128, 64, 8, 3, 4, per_sm=2),  # 2 x 113 KiB
        GegluTile(128, 128, 64, 8, 3, 8, per_sm=2, maxnreg=128),  # the same with 8 warps, registers capped
        GegluTile(64, 256, 64, 8, 2, 4, per_sm=2),  # 2 x 97 KiB: one warpgroup of m64n256 per program
        GegluTile(128, 128, 64, 8, 4, 8),  # one program per SM: the control for the two above
    ]


def label(tile: tuple) -> str:
    """A short name for tables, e.g. ``128x256x64 g8 s3 w8 x2/SM r128``."""
    bm, bn, bk, group, stages, warps, per_sm, maxnreg = tile
    extra = (f" x{per_sm}/SM" if per_sm > 1 else "") + (f" r{maxnreg}" if maxnreg else "")
    return f"{bm}x{bn}x{bk} g{group} s{stages} w{warps}{extra}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--library-tile", action="store_true",
                        help="only the library's tiles (TILE, SMALL_TILE; exact and tanh GELU)")  # fmt: skip
    parser.add_argument("--batches", default="16", help="UNet rows, comma-separated (e.g. 16,2)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    ensure_importable()
    from ldmkit.fast.geglu_kernels import SMALL_TILE, TILE, choose_tile, interleave_geglu_weight, launch_geglu
    from ldmkit_unet.transformer import GEGLU

    device = torch.device("cuda")
    header = f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, bf16"
    rows = []
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    for level, batch, m, k, n in shapes([int(b) for b in args.batches.split(",")]):
        torch.manual_seed(0)
        module = GEGLU(k, n).to(device)
        x32 = torch.randn(batch, m // batch, k, device=device)
        with torch.no_grad():
            expected = module(x32)
        module16 = GEGLU(k, n).to(device, torch.bfloat16)
        module16.load_state_dict(module.state_dict())
        x = x32.to(torch.bfloat16)
        flops = 2 * m * k * 2 * n
        compiled = torch.compile(module16, dynamic=False)
        candidates = {"compiled GEGLU module (cuBLAS + fused gate)": functools.partial(compiled, x)}
        with torch.no_grad():
            weight_i, bias_i = interleave_geglu_weight(module16.proj.weight, module16.proj.bias)
        chosen = choose_tile(m, 2 * n, sms)
        for tile in [TILE, SMALL_TILE] if args.library_tile else tiles():
            mark = " (chosen)" if tile == chosen else ""
            candidates[f"fused kernel {label(tile)}{mark}"] = functools.partial(launch_geglu, x, weight_i, bias_i, tile)
        # the chosen tile gated by the tanh form of GELU (FastConfig.approximate_gelu); the error is
        # still against the exact float32 module, so it includes the approximation's
        tanh_gelu = functools.partial(launch_geglu, x, weight_i, bias_i, chosen, approximate=True)
        candidates[f"fused kernel {label(chosen)} (chosen), tanh GELU"] = tanh_gelu
        for name, fn in candidates.items():
            try:
                with torch.no_grad():
                    err = rel_err(fn(), expected)
                    us = graphed_us(fn, args.calls)
            except Exception as exc:  # a tile that does not fit the GPU's shared memory or registers
                log.warning("%s %s: %s", level, name, exc)
                continue
            rows.append([level, name, f"{us:.1f}", f"{flops / (us * 1e-6) / 1e12:.0f}", f"{err:.2e}"])
            log.info("%s | %s: %.1f us, rel. error %.2e", level, name, us, err)
            text = markdown_table(["level", "kernel", "us per call", "TFLOP/s", "rel. error vs fp32"], rows)
            args.out.write_text(f"# GEGLU projection, M x K -> N: {header}\n\n{text}\n")
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
