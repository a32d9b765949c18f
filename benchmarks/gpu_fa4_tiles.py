"""FlashAttention-4's Hopper forward at the SD v1 UNet's self-attention shapes, one tile shape at a time.

FlashAttention-4 picks its SM90 tile from the head width alone: for heads up to 64 columns 192x128
with P kept in registers for the second product (tuned on H100 at width 64). SD v1's 64x64 latents
have 40-wide heads, where each tile's two products are smaller and the softmax's share of the tile
larger, and those five self-attentions took 5.6 of a batch-16 step's 29.7 ms (benchmarks/RESULTS.md,
run V). This times each candidate (tile_m, tile_n, P in registers, intra-warpgroup overlap) at
those shapes: us per call as CUDA graphs of 10 calls, the gain over FlashAttention-4's own choice,
and the relative error against float32 attention. ``--winners`` writes the tile that beat the
package's own by 2% or more at the first batch, no slower at the others and no less precise (its
error at most 10% over), per head width, as JSON for ``gpu_sampling.py --fa4-tiles`` (the candidate
entries of ``ldmkit.fast.attention.FA4_HOPPER_TILES``). ``--compile-only`` needs no GPU: it compiles
every candidate for sm_90a under ``FakeTensorMode`` and reports which the kernel accepts.

    python benchmarks/gpu_fa4_tiles.py --out fa4_tiles.md [--batches 16,2] [--winners fa4_tiles.json]
    FLASH_ATTENTION_ARCH=sm_90 CUTE_DSL_ARCH=sm_90a FLASH_ATTENTION_NUM_SMS=132 \\
      python benchmarks/gpu_fa4_tiles.py --compile-only --out fa4_tiles_compile.md

The candidates go through ``flash_attn.cute.interface._flash_attn_fwd`` (its tile arguments are
not in the public ``flash_attn_func``), so this script follows that function's signature in
``flash-attn-4`` 4.0.0b40.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch
from _common import graphed_us, markdown_table, rel_err
from gpu_attention_kernels import HEADS, sdpa

log = logging.getLogger("gpu_fa4_tiles")

# (tile_m, tile_n, P in registers for the second product, intra-warpgroup overlap); None: FA4's own choice
Tile = tuple[int, int, bool, bool] | None
CANDIDATES: dict[int, list[Tile]] = {
    40: [None, (192, 96, True, True), (192, 112, True, True), (192, 160, True, True), (192, 176, True, True),
         (192, 192, True, True), (192, 128, False, True), (192, 192, False, True), (128, 128, True, True),
         (128, 192, True, True), (128, 256, True, True)],
    80: [None, (192, 128, False, True), (192, 176, False, True), (192, 192, False, True), (128, 128, True, True),
         (128, 176, True, True)],
}  # fmt: skip
# (latent side, head width) of the self-attentions tried: SD v1's 64x64 and 32x32 levels
SHAPES = [(64, 40), (32, 80)]


def describe(tile: Tile) -> str:
    if tile is None:
        return "FlashAttention-4's choice"
    m, n, rs, overlap = tile
    return f"{m}x{n}, P in {'registers' if rs else 'shared memory'}{', overlap' if overlap else ''}"


def attention_with(tile: Tile) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """(B, N, heads, d) x3 -> (B, N, heads, d) by FlashAttention-4 with this tile (its own where None)."""
    from flash_attn.cute.interface import _flash_attn_fwd

    extra = {} if tile is None else dict(tile_mn=tile[:2], mma_pv_is_rs=tile[2], intra_wg_overlap=tile[3])

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = _flash_attn_fwd(q, k, v, softmax_scale=q.shape[-1] ** -0.5, causal=False, **extra)
        return out[0] if isinstance(out, tuple) else out

    return run


def compile_only(batch: int) -> list[list[str]]:
    """Every candidate compiled for the GPU under FakeTensorMode (nothing launched)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    rows = []
    for side, width in SHAPES:
        for tile in CANDIDATES[width]:
            with FakeTensorMode():
                q = torch.empty(batch, side * side, HEADS, width, dtype=torch.bfloat16, device="cuda")
                start = time.perf_counter()
                try:
                    attention_with(tile)(q, q, q)
                    outcome = f"compiles ({time.perf_counter() - start:.1f} s)"
                except Exception as exc:  # noqa: BLE001  (the DSL raises its own error types; report each)
                    outcome = f"refused: {type(exc).__name__}: {str(exc)[:120]}".replace("|", "/").replace("\n", " ")
            rows.append([f"self {side}x{side}", str(width), str(batch), describe(tile), outcome])
            log.info("%s", rows[-1])
    return rows


# (head width, batch) -> [(tile, us per call, relative error)], FA4's own choice first
Measured = dict[tuple[int, int], list[tuple[Tile, float, float]]]


def _holds(timings: dict[Tile, tuple[float, float]], tile: Tile, gain: float) -> bool:
    """Whether ``tile`` is ``gain`` times as fast as the package's own and its error at most 10% over
    (1e-4 at least); False for a tile that failed (NaN) or was not timed."""
    own_us, own_err = timings[None]
    us, err = timings.get(tile, (float("nan"), float("nan")))
    return us * gain <= own_us and err <= 1.1 * own_err + 1e-4


def pick_winners(measured: Measured, batches: list[int], min_gain: float = 1.02) -> dict[int, Tile]:
    """Per head width, the fastest tile at ``batches[0]`` that beats the package's own by ``min_gain``,
    is no slower (1% noise) at the other batches and no less precise."""
    chosen: dict[int, Tile] = {}
    for width in sorted({w for w, _ in measured}):
        runs = {b: {t: (us, err) for t, us, err in measured[(width, b)]} for b in batches if (width, b) in measured}
        first = runs.get(batches[0], {})
        if None not in first or any(None not in timings for timings in runs.values()):
            continue
        fits = [
            t for t in first
            if t is not None and _holds(first, t, min_gain)
            and all(_holds(timings, t, 1 / 1.01) for b, timings in runs.items() if b != batches[0])
        ]  # fmt: skip
        if fits:
            chosen[width] = min(fits, key=lambda t: first[t][0])
    return chosen


def time_tiles(batch: int, measured: Measured) -> list[list[str]]:
    """us per call of every candidate at every shape, its gain over FA4's own tile, its error vs float32
    (each also into ``measured``)."""
    rows = []
    for side, width in SHAPES:
        g = torch.Generator(device="cuda").manual_seed(side + width)
        q, k, v = (torch.randn(batch, side * side, HEADS, width, device="cuda", generator=g) for _ in range(3))
        with torch.no_grad():
            ref = sdpa(q, k, v)  # float32
            q16, k16, v16 = q.bfloat16(), k.bfloat16(), v.bfloat16()
            timed: list[tuple[Tile, float, float, str]] = []
            for tile in CANDIDATES[width]:
                fn = attention_with(tile)
                try:
                    start = time.perf_counter()
                    first = fn(q16, k16, v16)  # compiles this tile's kernel
                    torch.cuda.synchronize()
                    note = f"first call {time.perf_counter() - start:.2f} s"
                    timed.append((tile, graphed_us(functools.partial(fn, q16, k16, v16), calls=10),
                                  rel_err(first.float(), ref), note))  # fmt: skip
                except Exception as exc:  # noqa: BLE001  (a tile the kernel refuses is reported, not fatal)
                    timed.append((tile, float("nan"), float("nan"), f"failed: {type(exc).__name__}: {str(exc)[:80]}"))
                log.info("%dx%d d=%d batch %d %s: %s", side, side, width, batch, describe(tile), timed[-1][1:])
        measured[(width, batch)] = [(tile, us, err) for tile, us, err, _ in timed]
        own = timed[0][1]
        best = min((t for t in timed if t[1] == t[1]), key=lambda t: t[1], default=None)
        for tile, us, err, note in timed:
            name = describe(tile) + (" (fastest)" if best is not None and tile == best[0] else "")
            gain = f"{own / us:.3f}x" if us == us and own == own else ""
            rows.append([f"self {side}x{side}", str(width), str(batch), name, f"{us:.1f}", gain, f"{err:.2e}",
                         note.replace("|", "/")])  # fmt: skip
    return rows


def batch_list(text: str) -> list[int]:
    return [int(b) for b in text.split(",") if b.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batches", type=batch_list, default=[16, 2], help="UNet batches (a guided step: 2 a picture)")
    parser.add_argument("--compile-only", action="store_true", help="no GPU: compile every tile for sm_90a, time none")
    parser.add_argument("--winners", type=Path, help="JSON of the tiles that beat the package's own (see above)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.compile_only:
        header = ["shape", "head width", "batch", "tile", "sm_90a compile"]
        rows = [row for batch in args.batches for row in compile_only(batch)]
        title = "# FlashAttention-4's tiles at SD v1 shapes: compiled for sm_90a on the CPU, not timed"
    else:
        if not torch.cuda.is_available():
            parser.error("timing needs a CUDA GPU (--compile-only does not)")
        torch.backends.cuda.matmul.allow_tf32 = False  # the float32 reference in full float32
        header = ["shape", "head width", "batch", "tile", "us per call (graphed)", "vs FA4's choice",
                  "rel. error vs fp32", "note"]  # fmt: skip
        measured: Measured = {}
        rows = [row for batch in args.batches for row in time_tiles(batch, measured)]
        if args.winners is not None:
            winners = pick_winners(measured, args.batches)
            args.winners.write_text(json.dumps({str(w): list(t) for w, t in winners.items() if t}))
            log.info("tiles that beat FlashAttention-4's own: %s", winners or "none")
        title = (
            f"# FlashAttention-4's tiles at SD v1 shapes ({torch.cuda.get_device_name()}, torch {torch.__version__})"
        )
    text = "\n".join([title, "", markdown_table(header, rows), ""])
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
