"""A fused GEGLU projection for Hopper GPUs: one persistent Triton kernel with TMA loads and stores.

GEGLU computes ``value * gelu(gate)`` where ``[value, gate] = x @ W.T + b``. Compiled as it is, a
GPU runs it as a cuBLAS product that writes the (M, 2N) pre-activation and a second pass that
reads it back to apply the gate: at the SD v1 UNet's 64x64 level and 16 rows, 670 MB of memory
traffic per transformer block for nothing. Here the weight's rows are interleaved once, ahead of
time (row 2i is value i, row 2i+1 is gate i), so each output tile of one matrix product holds
matching value and gate columns; the gate is applied in float32 before the tile is stored, and
only the (M, N) result reaches memory. On an H200 this took 267 us against 321 us for cuBLAS plus
the compiler's fused gate at 64x64, and the result is closer to float32 because the pre-activation
is never rounded to bf16 (benchmarks/RESULTS.md).

The kernel is registered as ``ldmkit::geglu_interleaved``, a custom op that ``torch.compile``
calls as one opaque operation and that CUDA graphs capture.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class GegluTile(NamedTuple):
    """One configuration of the kernel: tile sizes, pipeline depth, warps, programs per SM.

    ``block_n`` counts interleaved columns, so a tile stores ``block_n // 2`` outputs. With
    ``per_sm`` two, one program's epilogue (erf and the store) can run while the other's tensor
    cores work; ``maxnreg`` caps registers per thread so that both fit.
    """

    block_m: int
    block_n: int
    block_k: int
    group_m: int
    stages: int
    warps: int
    per_sm: int = 1
    maxnreg: int | None = None


# Within 2% of the fastest of seven tiles at each SD v1 level on an H200 (benchmarks/RESULTS.md);
# 177 KiB of shared memory, which Hopper's 227 KiB per program allows.
TILE = GegluTile(128, 256, 64, 8, 3, 8)
# Half the columns, two programs per SM: within 3% of TILE at batch 16 (run K), and twice the tiles,
# for products too small to give every SM a TILE (SD v1's 8x8 and 16x16 levels at batch 2), where
# it took 13.3 against 18.0 us and 29.7 against 33.8 on an H100; TILE was faster at every other SD
# v1 shape (benchmarks/RESULTS.md, run W).
SMALL_TILE = GegluTile(128, 128, 64, 8, 3, 4, per_sm=2)
# The share of the last wave that TILE's tiles must fill for it to be kept.
MIN_WAVE_FILL = 0.75


def tile_count(m: int, two_n: int, tile: GegluTile) -> int:
    """How many output tiles an (M, 2N) product has under ``tile``."""
    return -(-m // tile.block_m) * -(-two_n // tile.block_n)


def choose_tile(m: int, two_n: int, sms: int) -> GegluTile:
    """TILE, unless its tiles leave much of the GPU idle in their last wave (few of them for ``sms``
    multiprocessors): then SMALL_TILE, whose tiles are twice as many."""
    tiles = tile_count(m, two_n, TILE)
    waves = tiles / sms
    fill = waves / -(-tiles // sms)  # 1.0: every wave full
    return TILE if fill >= MIN_WAVE_FILL else SMALL_TILE


def interleave_geglu_weight(weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    """A GEGLU projection's (2N, K) ``weight`` and (2N,) ``bias`` with value and gate rows alternating.

    The inputs hold the N value rows first and the N gate rows second (what ``chunk(2, -1)`` of
    the product reads); in the result row 2i is value i and row 2i + 1 is gate i.
    """
    two_n, k = weight.shape
    if two_n % 2 or bias.shape != (two_n,):
        raise ValueError(f"weight {tuple(weight.shape)} and bias {tuple(bias.shape)} are no GEGLU projection")
    n = two_n // 2
    weight_i = torch.stack((weight[:n], weight[n:]), dim=1).reshape(two_n, k)  # (N, 2, K) -> (2N, K)
    bias_i = torch.stack((bias[:n], bias[n:]), dim=1).reshape(two_n)  # (N, 2) -> (2N,)
    return weight_i.contiguous(), bias_i.contiguous()


def geglu_interleaved_reference(x: Tensor, weight_i: Tensor, bias_i: Tensor, approximate: bool = False) -> Tensor:
    """What the kernel computes, in torch operations: GEGLU of x (..., K) with interleaved weights
    (the tanh form of GELU with ``approximate``)."""
    pairs = torch.nn.functional.linear(x, weight_i, bias_i).unflatten(-1, (-1, 2))  # (..., N, 2)
    value, gate = pairs.unbind(-1)  # (..., N) each
    return value * torch.nn.functional.gelu(gate, approximate="tanh" if approximate else "none")


def _kernel():  # noqa: ANN202 - the jitted function has no useful static type
    from ldmkit.fast.geglu_triton import geglu_tma_persistent

    return geglu_tma_persistent


def launch_geglu(
    x: Tensor,
    weight_i: Tensor,
    bias_i: Tensor,
    tile: GegluTile | None = None,
    programs: int | None = None,
    approximate: bool = False,
) -> Tensor:
    """GEGLU of ``x`` (..., K) with a weight (2N, K) and bias (2N,) from :func:`interleave_geglu_weight`.

    ``tile`` defaults to :func:`choose_tile`'s for this product and GPU. ``approximate`` gates by
    the tanh form of GELU, computed on the GPU by its tanh instruction.
    ``programs`` overrides the persistent grid (``tile.per_sm`` programs per SM on a GPU; tests in
    Triton's interpreter pass a few so that each program loops over several tiles). TMA needs rows
    of whole 16-byte units: K and N must be multiples of 8; M, N and K need be no multiple of the tile.
    """
    from triton.tools.tensor_descriptor import TensorDescriptor

    rows = x.reshape(-1, x.shape[-1]).contiguous()  # (M, K)
    m, k = rows.shape
    two_n = weight_i.shape[0]
    n = two_n // 2
    if k % 8 or n % 8 or weight_i.shape != (two_n, k) or bias_i.shape != (two_n,):
        raise ValueError(f"x {tuple(x.shape)}, weight {tuple(weight_i.shape)}: K and N must be multiples of 8")
    sms = torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 4
    tile = tile or choose_tile(m, two_n, sms)
    y = torch.empty((m, n), device=x.device, dtype=x.dtype)  # (M, N)
    x_desc = TensorDescriptor.from_tensor(rows, [tile.block_m, tile.block_k])
    w_desc = TensorDescriptor.from_tensor(weight_i, [tile.block_n, tile.block_k])
    y_desc = TensorDescriptor.from_tensor(y, [tile.block_m, tile.block_n // 2])
    if programs is None:
        programs = tile.per_sm * sms
    programs = max(1, min(programs, tile_count(m, two_n, tile)))
    _kernel()[(programs,)](
        x_desc,
        w_desc,
        bias_i,
        y_desc,
        m,
        n,
        k,
        BLOCK_M=tile.block_m,
        BLOCK_N=tile.block_n,
        BLOCK_K=tile.block_k,
        GROUP_M=tile.group_m,
        NUM_PROGRAMS=programs,
        APPROXIMATE=approximate,
        HARDWARE_TANH=x.is_cuda,  # Triton's interpreter (tests on the CPU) runs no PTX
        num_stages=tile.stages,
        num_warps=tile.warps,
        **({"maxnreg": tile.maxnreg} if tile.maxnreg else {}),
    )
    return y.view(*x.shape[:-1], n)


@torch.library.custom_op("ldmkit::geglu_interleaved", mutates_args=())
def geglu_interleaved(x: Tensor, weight_i: Tensor, bias_i: Tensor, approximate: bool = False) -> Tensor:
    """GEGLU of ``x`` (..., K) with interleaved weights by the TMA kernel (float32 accumulation and gate;
    the tanh form of GELU with ``approximate``)."""
    return launch_geglu(x, weight_i, bias_i, approximate=approximate)


@geglu_interleaved.register_fake
def _(x: Tensor, weight_i: Tensor, bias_i: Tensor, approximate: bool = False) -> Tensor:
    return x.new_empty((*x.shape[:-1], weight_i.shape[0] // 2))


def kernel_applies(x: Tensor, weight_i: Tensor) -> bool:
    """Whether :func:`geglu_interleaved` takes ``x``: a bf16/fp16 CUDA tensor of the weight's dtype, K and N in 8s.

    Only tensor properties, so compiled code can ask; whether the device is a Hopper is for
    :func:`ldmkit.fast.support.hopper_with_triton`, asked once, outside compiled code.
    """
    return (
        x.is_cuda
        and x.dtype in (torch.bfloat16, torch.float16)
        and x.dtype == weight_i.dtype
        and x.shape[-1] % 8 == 0
        and weight_i.shape[0] % 16 == 0
        and x.numel() > 0
    )
