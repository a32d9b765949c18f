"""Self-attention at the SD v1 UNet's shapes: cuDNN SDPA against the fast path's padded Hopper kernel.

One run on one Hopper GPU, 16 rows of latents (8 guided pictures), 8 heads. For each level it times,
as CUDA graphs (host overhead does not count):

- the attention alone: SDPA (cuDNN, the default) on bf16 q, k, v laid out as the UNet's
  projections give them, against the kernel of :mod:`ldmkit.fast.attention_kernels` on the padded
  float16 layout, for each tile in ``tiles()``, with every exponential on the special-function
  units and with one or two of every four by a cubic on the FMA units;
- the whole self-attention module (projections, attention, output projection): the UNet's
  ``CrossAttention`` in bf16 compiled by inductor, against :class:`ldmkit.fast.attention.KernelSelfAttention`
  compiled the same way.

Errors are relative (Frobenius) to float32: the attention alone against float32 SDPA on the same
rounded inputs, the modules against the float32 module.

    python benchmarks/gpu_attention.py --out attention.md
"""

from __future__ import annotations

import argparse
import functools
import logging
from pathlib import Path

import torch
from _common import ensure_importable, graphed_us, markdown_table, rel_err

log = logging.getLogger("gpu_attention")

# (label, tokens, head width): SD v1 at 64x64 latents, 16 UNet rows, 8 heads
SHAPES = [("64x64", 4096, 40), ("32x32", 1024, 80), ("16x16", 256, 160)]
ROWS, HEADS = 16, 8


def tiles() -> list:
    """Candidates: 128 or 64 query rows per program, 64 or 128 keys per step, 4 or 8 warps."""
    from ldmkit.fast.attention_kernels import TILE, AttentionTile

    return [
        TILE,
        AttentionTile(64, 128, 4, 3),
        AttentionTile(128, 64, 4, 3),
        AttentionTile(64, 64, 4, 2),
    ]


def attention_alone(level: str, n: int, d: int, calls: int) -> list[list[str]]:
    """Rows for the attention alone at one level."""
    from ldmkit.fast.attention_kernels import head_split, launch_padded_attention

    torch.manual_seed(0)
    scale = d**-0.5
    q, k, v = (torch.randn(ROWS, n, HEADS * d, device="cuda") for _ in range(3))  # (B, N, H*D) float32

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.unflatten(-1, (HEADS, d)).transpose(1, 2)  # (B, H, N, D), a view as in the UNet

    q16, k16, v16 = (heads(t.half()) for t in (q, k, v))  # the kernel's rounding of the inputs
    with torch.no_grad():
        expected = torch.nn.functional.scaled_dot_product_attention(q16.float(), k16.float(), v16.float(), scale=scale)
    expected = expected.transpose(1, 2).flatten(2)  # (B, N, H*D)
    dp = sum(head_split(d))
    padded = torch.zeros(ROWS, n, 3, HEADS, dp, device="cuda", dtype=torch.float16)
    for i, t in enumerate((q, k, v)):
        padded[:, :, i, :, :d] = t.half().unflatten(-1, (HEADS, d))
    padded[:, :, 2, :, d] = 1.0
    qkv = padded.flatten(2)  # (B, N, 3*H*DP)

    def unpad(out: torch.Tensor) -> torch.Tensor:
        return out.unflatten(-1, (HEADS, dp))[..., :d].flatten(2)  # (B, N, H*D)

    qb, kb, vb = (heads(t.bfloat16()) for t in (q, k, v))
    sdpa = functools.partial(torch.nn.functional.scaled_dot_product_attention, qb, kb, vb, scale=scale)
    candidates = {"SDPA bf16 (cuDNN)": (sdpa, lambda out: out.transpose(1, 2).flatten(2))}
    for tile in tiles():
        for poly in (-1, 1, 2):
            exp = "ex2.f32" if poly < 0 else f"{poly} of 4 by cubic"
            name = f"kernel {tile.block_m}x{tile.block_n} w{tile.warps} s{tile.stages}, {exp}"
            run = functools.partial(launch_padded_attention, qkv, HEADS, d, scale, torch.bfloat16, tile, poly)
            candidates[name] = (run, unpad)
    flops = 4 * ROWS * HEADS * n * n * d
    rows = []
    for name, (fn, layout) in candidates.items():
        try:
            with torch.no_grad():
                err = rel_err(layout(fn()), expected)
                us = graphed_us(fn, calls)
        except Exception as exc:  # a tile that does not fit the GPU's shared memory or registers
            log.warning("%s %s: %s", level, name, exc)
            continue
        rows.append([level, f"{d}", name, f"{us:.1f}", f"{flops / (us * 1e-6) / 1e12:.0f}", f"{err:.2e}"])
        log.info("%s | %s: %.1f us, rel. error %.2e", level, name, us, err)
    return rows


def whole_module(level: str, n: int, d: int, calls: int) -> list[list[str]]:
    """Rows for the compiled self-attention module at one level."""
    import copy

    from ldmkit.fast.attention import KernelSelfAttention
    from ldmkit_unet.transformer import CrossAttention

    torch.manual_seed(0)
    module = CrossAttention(HEADS * d, heads=HEADS, dim_head=d).cuda().eval()
    x = torch.randn(ROWS, n, HEADS * d, device="cuda")
    with torch.no_grad():
        expected = module(x)
    module16 = copy.deepcopy(module).bfloat16()
    x16 = x.bfloat16()
    candidates = {
        "CrossAttention bf16, compiled (SDPA)": torch.compile(module16, dynamic=False),
        "KernelSelfAttention, compiled": torch.compile(KernelSelfAttention(module16), dynamic=False),
    }
    rows = []
    for name, fn in candidates.items():
        with torch.no_grad():
            err = rel_err(fn(x16), expected)
            us = graphed_us(functools.partial(fn, x16), calls)
        rows.append([level, f"{d}", name, f"{us:.1f}", "", f"{err:.2e}"])
        log.info("%s | %s: %.1f us, rel. error %.2e", level, name, us, err)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--levels", default=",".join(s[0] for s in SHAPES))
    parser.add_argument("--no-module", action="store_true", help="time the attention alone only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    ensure_importable()
    header = f"{torch.cuda.get_device_name()}, torch {torch.__version__}, {ROWS} rows, {HEADS} heads"
    rows: list[list[str]] = []
    for level, n, d in SHAPES:
        if level not in args.levels.split(","):
            continue
        for part in (attention_alone,) if args.no_module else (attention_alone, whole_module):
            rows += part(level, n, d, args.calls)
            text = markdown_table(["level", "head width", "what", "us per call", "TFLOP/s", "rel. error vs fp32"], rows)
            args.out.write_text(f"# Self-attention: {header}\n\n{text}\n")
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
