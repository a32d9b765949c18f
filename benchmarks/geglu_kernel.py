"""Triton kernels for the GEGLU projection, measured by gpu_geglu.py against cuBLAS + a fused gate.

Computed as one matrix product of both halves, the projection writes a (M, 2N) tensor that a
second kernel reads back to apply the gate: at 64x64 latents and 16 rows that is 670 MB of
traffic per transformer block. Here each program computes the value and the gate columns of one
output tile and applies the gate before anything is stored, so only the (M, N) result reaches
memory. Accumulation is float32; GELU is the exact (erf) form.

Two variants:

* ``launch_geglu``: plain pointer loads, two products per K step, one program per output tile
  (measured slower than cuBLAS + gate on an H200).
* ``launch_geglu_tma``: for Hopper. The weight's rows are interleaved once ahead of time
  (``interleave_geglu_weight``) so that ONE product per tile yields value and gate columns side by
  side; operands arrive through TMA tensor descriptors (bulk copies into swizzled shared memory,
  feeding wgmma); the grid is persistent (a few programs per SM, each looping over output tiles in
  grouped order) and the tile loop is flattened so that the loads of the next tile are in flight
  while the epilogue of this one runs; the result leaves through a TMA store.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
from torch import Tensor

# (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, stages, warps): the benchmark sweeps these
TILE = (128, 128, 64, 8, 3, 8)


@functools.cache
def _kernel():  # noqa: ANN202 - the jitted function has no useful static type
    import triton
    import triton.language as tl

    @triton.jit
    def geglu_matmul(
        x_ptr,
        w_ptr,
        b_ptr,
        y_ptr,
        M,
        N,
        K,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        GROUP_M: tl.constexpr,
    ):
        # grid (cdiv(M, BLOCK_M) * cdiv(N, BLOCK_N),); x (M, K), w (2N, K) as nn.Linear stores it, y (M, N)
        pid = tl.program_id(0)
        n_m = tl.cdiv(M, BLOCK_M)
        n_n = tl.cdiv(N, BLOCK_N)
        # groups of GROUP_M row tiles walk the columns together, so their weight tiles stay in L2
        per_group = GROUP_M * n_n
        first_m = (pid // per_group) * GROUP_M
        group_rows = tl.minimum(n_m - first_m, GROUP_M)
        pid_m = first_m + (pid % per_group) % group_rows
        pid_n = (pid % per_group) // group_rows
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
        ks = tl.arange(0, BLOCK_K)
        row_ok = rows < M
        col_ok = cols < N
        value = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        gate = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(0, K, BLOCK_K):
            k_ok = (k + ks) < K
            a = tl.load(x_ptr + rows[:, None] * K + (k + ks)[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            w_mask = k_ok[:, None] & col_ok[None, :]
            w_value = tl.load(w_ptr + cols[None, :] * K + (k + ks)[:, None], mask=w_mask, other=0.0)  # (BK, BN)
            w_gate = tl.load(w_ptr + (cols + N)[None, :] * K + (k + ks)[:, None], mask=w_mask, other=0.0)
            value = tl.dot(a, w_value, value)
            gate = tl.dot(a, w_gate, gate)
        value += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        gate += tl.load(b_ptr + N + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        out = value * (0.5 * gate * (1.0 + tl.math.erf(gate * 0.7071067811865476)))
        mask = row_ok[:, None] & col_ok[None, :]
        tl.store(y_ptr + rows[:, None] * N + cols[None, :], out.to(y_ptr.dtype.element_ty), mask=mask)

    return geglu_matmul


def geglu_reference(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """What the kernel computes, in torch operations."""
    value, gate = torch.nn.functional.linear(x, weight, bias).chunk(2, dim=-1)
    return value * torch.nn.functional.gelu(gate)


def launch_geglu(x: Tensor, weight: Tensor, bias: Tensor, tile: tuple[int, ...] = TILE) -> Tensor:
    """GEGLU of contiguous ``x`` (..., K) with an nn.Linear's ``weight`` (2N, K) and ``bias`` (2N,)."""
    block_m, block_n, block_k, group_m, stages, warps = tile
    rows = x.reshape(-1, x.shape[-1])  # (M, K)
    m, k = rows.shape
    n = weight.shape[0] // 2
    y = torch.empty((m, n), device=x.device, dtype=x.dtype)
    grid = (-(-m // block_m) * -(-n // block_n),)
    _kernel()[grid](
        rows,
        weight,
        bias,
        y,
        m,
        n,
        k,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        GROUP_M=group_m,
        num_stages=stages,
        num_warps=warps,
    )
    return y.view(*x.shape[:-1], n)


class TmaTile(NamedTuple):
    """One configuration of the TMA kernel.

    ``block_n`` counts columns of the interleaved product, so a tile stores ``block_n // 2`` outputs.
    ``per_sm`` programs share each SM: with two, one program's epilogue (erf and the store) can run
    while the other's tensor cores work, where shared memory and registers allow two. ``blocked``
    selects the weight layout of ``interleave_geglu_weight`` (block ``block_n // 2`` instead of 1).
    ``warp_specialize`` asks Triton to split the tile loop into producer and consumer warps.
    ``maxnreg`` caps the registers per thread (so that ``per_sm`` programs fit in the register file).
    """

    block_m: int
    block_n: int
    block_k: int
    group_m: int
    stages: int
    warps: int
    per_sm: int = 1
    blocked: bool = False
    warp_specialize: bool = False
    maxnreg: int | None = None

    @property
    def interleave(self) -> int:
        """The ``block`` argument of ``interleave_geglu_weight`` that this tile's kernel expects."""
        return self.block_n // 2 if self.blocked else 1

    @property
    def label(self) -> str:
        """A short name for tables, e.g. ``128x256x64 g8 s3 w8``."""
        extra = [
            f"x{self.per_sm}/SM" if self.per_sm > 1 else "",
            "blocked" if self.blocked else "",
            "WS" * self.warp_specialize,
            f"r{self.maxnreg}" if self.maxnreg else "",
        ]
        base = f"{self.block_m}x{self.block_n}x{self.block_k} g{self.group_m} s{self.stages} w{self.warps}"
        return " ".join([base, *filter(None, extra)])


# Candidates for H100 and H200, which give a program at most 227 KiB of shared memory and an SM
# 228 KiB and 64K registers (the benchmark sweeps these and skips the ones that fail). Shared memory
# is stages * (BM + BN) * BK * 2 bytes for the operands plus BM * BN bytes for the bf16 output tile
# of the TMA store. Registers per thread as ptxas gave them for sm_90 (Triton 3.6) are noted where
# they decide how many programs fit on an SM. Triton 3.6 ignores warp_specialize on sm_90 (the PTX
# is the same with and without it), so no tile here asks for it.
TMA_TILES = [
    TmaTile(128, 256, 64, 8, 3, 8),  # 177 KiB; the classic Hopper tile: two warpgroups of m64n256 products
    TmaTile(128, 256, 64, 8, 4, 8),  # 225 KiB: one more stage in flight
    TmaTile(128, 256, 64, 8, 3, 8, blocked=True),  # value and gate as the two halves of the tile
    TmaTile(256, 128, 64, 8, 3, 8),  # 176 KiB; each weight tile serves twice the rows
    # 2 x 113 KiB, 195 registers: one program's epilogue can hide behind the other's products
    TmaTile(128, 128, 64, 8, 3, 4, per_sm=2),
    TmaTile(128, 128, 64, 8, 3, 8, per_sm=2, maxnreg=128),  # the same with 8 warps (135 registers unless capped)
    TmaTile(64, 256, 64, 8, 2, 4, per_sm=2),  # 2 x 97 KiB: one warpgroup of m64n256 products per program
    TmaTile(128, 128, 64, 8, 4, 8),  # 145 KiB, one program per SM: the control for the two above
]


def interleave_geglu_weight(weight: Tensor, bias: Tensor, block: int = 1) -> tuple[Tensor, Tensor]:
    """The GEGLU projection's rows reordered so that value and gate rows come in adjacent blocks.

    ``weight`` (2N, K) and ``bias`` (2N,) hold the value rows first and the gate rows second, as the
    module's ``chunk(2, -1)`` reads them. The result holds, for each j, ``block`` value rows
    ``j*block ... j*block + block - 1`` followed by the gate rows of the same indices: with
    ``block=1`` row 2i is value i and row 2i+1 is gate i. A product tile of ``2 * block`` columns
    (or a multiple) then holds matching value and gate columns, so the TMA kernel needs one matrix
    product per tile instead of two. Done once, ahead of time (the weights do not change).
    """
    two_n, k = weight.shape
    n = two_n // 2
    if two_n % 2 or bias.shape != (two_n,) or block < 1 or n % block:
        raise ValueError(f"weight {tuple(weight.shape)}, bias {tuple(bias.shape)}: no GEGLU in blocks of {block}")
    value_w, gate_w = weight[:n].reshape(n // block, block, k), weight[n:].reshape(n // block, block, k)
    weight_i = torch.stack((value_w, gate_w), dim=1).reshape(two_n, k)  # (N/block, 2, block, K) -> (2N, K)
    value_b, gate_b = bias[:n].reshape(n // block, block), bias[n:].reshape(n // block, block)
    bias_i = torch.stack((value_b, gate_b), dim=1).reshape(two_n)  # (N/block, 2, block) -> (2N,)
    return weight_i.contiguous(), bias_i.contiguous()


@functools.cache
def _tma_kernel():  # noqa: ANN202 - the jitted function has no useful static type
    import triton
    import triton.language as tl

    @triton.jit
    def geglu_tma_persistent(
        x_desc,
        w_desc,
        b_ptr,
        y_desc,
        M,
        N,
        K,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        GROUP_M: tl.constexpr,
        NUM_PROGRAMS: tl.constexpr,
        BLOCKED: tl.constexpr,
        WARP_SPECIALIZE: tl.constexpr,
    ):
        # x_desc: (M, K) in (BLOCK_M, BLOCK_K) boxes; w_desc: the interleaved weight (2N, K) in
        # (BLOCK_N, BLOCK_K) boxes; b_ptr: the interleaved bias (2N,); y_desc: (M, N) in
        # (BLOCK_M, BLOCK_N // 2) boxes. Grid (NUM_PROGRAMS,); program p does tiles p, p + NUM_PROGRAMS, ...
        HALF: tl.constexpr = BLOCK_N // 2
        start = tl.program_id(0)
        n_m = tl.cdiv(M, BLOCK_M)
        n_n = tl.cdiv(2 * N, BLOCK_N)
        k_tiles = tl.cdiv(K, BLOCK_K)
        n_tiles = n_m * n_n
        per_group = GROUP_M * n_n
        # the epilogue recomputes its tile from a counter of its own: sharing the loop's index
        # between the prologue of one tile and the epilogue of another hinders the flattened pipeline
        out_tile = start - NUM_PROGRAMS
        for tile in tl.range(start, n_tiles, NUM_PROGRAMS, flatten=True, warp_specialize=WARP_SPECIALIZE):
            # groups of GROUP_M row tiles walk the columns together, so their weight tiles stay in L2
            first_m = (tile // per_group) * GROUP_M
            group_rows = tl.minimum(n_m - first_m, GROUP_M)
            off_m = (first_m + (tile % per_group) % group_rows) * BLOCK_M
            off_w = ((tile % per_group) // group_rows) * BLOCK_N
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for ki in range(k_tiles):
                a = x_desc.load([off_m, ki * BLOCK_K])  # (BLOCK_M, BLOCK_K); rows past M read as zeros
                w = w_desc.load([off_w, ki * BLOCK_K])  # (BLOCK_N, BLOCK_K)
                acc = tl.dot(a, w.T, acc)  # (BLOCK_M, BLOCK_N) float32, value and gate columns interleaved

            out_tile += NUM_PROGRAMS
            first_m = (out_tile // per_group) * GROUP_M
            group_rows = tl.minimum(n_m - first_m, GROUP_M)
            pid_m = first_m + (out_tile % per_group) % group_rows
            pid_n = (out_tile % per_group) // group_rows
            cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,) rows of the interleaved weight
            acc += tl.load(b_ptr + cols, mask=cols < 2 * N, other=0.0).to(tl.float32)[None, :]
            if BLOCKED:  # columns [value 0..HALF-1, gate 0..HALF-1]
                pairs = tl.permute(tl.reshape(acc, (BLOCK_M, 2, HALF)), (0, 2, 1))  # (BLOCK_M, HALF, 2)
            else:  # columns [value 0, gate 0, value 1, gate 1, ...]
                pairs = tl.reshape(acc, (BLOCK_M, HALF, 2))
            value, gate = tl.split(pairs)  # (BLOCK_M, HALF) each
            out = value * (0.5 * gate * (1.0 + tl.math.erf(gate * 0.7071067811865476)))
            y_desc.store([pid_m * BLOCK_M, pid_n * HALF], out.to(y_desc.dtype))  # rows past M are not written

    return geglu_tma_persistent


def launch_geglu_tma(
    x: Tensor, weight_i: Tensor, bias_i: Tensor, tile: tuple = TMA_TILES[0], programs: int | None = None
) -> Tensor:
    """GEGLU of contiguous ``x`` (..., K) with a weight and bias from ``interleave_geglu_weight``.

    ``weight_i`` (2N, K) and ``bias_i`` (2N,) must be interleaved in blocks of ``TmaTile(*tile).interleave``
    rows. ``programs`` overrides the persistent grid (``per_sm`` programs per SM on a GPU; the
    interpreter's tests pass a few, so that each program loops over several tiles). TMA needs rows of
    16 bytes' multiples: K and N must be multiples of 8; other sizes need no multiple of the tile.
    """
    from triton.tools.tensor_descriptor import TensorDescriptor

    cfg = TmaTile(*tile)
    rows = x.reshape(-1, x.shape[-1])  # (M, K)
    m, k = rows.shape
    two_n = weight_i.shape[0]
    n = two_n // 2
    if k % 8 or n % 8 or weight_i.shape != (two_n, k) or bias_i.shape != (two_n,):
        raise ValueError(f"x {tuple(x.shape)}, weight {tuple(weight_i.shape)}: K and N must be multiples of 8")
    if cfg.blocked and n % cfg.interleave:
        raise ValueError(f"N = {n} is no multiple of the tile's half width {cfg.interleave}")
    if not (rows.is_contiguous() and weight_i.is_contiguous() and bias_i.is_contiguous() and x.dtype == weight_i.dtype):
        raise ValueError("x, the weight and the bias must be contiguous, x and the weight of one dtype")
    y = torch.empty((m, n), device=x.device, dtype=x.dtype)  # (M, N)
    x_desc = TensorDescriptor.from_tensor(rows, [cfg.block_m, cfg.block_k])
    w_desc = TensorDescriptor.from_tensor(weight_i, [cfg.block_n, cfg.block_k])
    y_desc = TensorDescriptor.from_tensor(y, [cfg.block_m, cfg.block_n // 2])
    if programs is None:
        sms = torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 4
        programs = cfg.per_sm * sms
    tiles = -(-m // cfg.block_m) * -(-two_n // cfg.block_n)
    programs = max(1, min(programs, tiles))
    _tma_kernel()[(programs,)](
        x_desc,
        w_desc,
        bias_i,
        y_desc,
        m,
        n,
        k,
        BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n,
        BLOCK_K=cfg.block_k,
        GROUP_M=cfg.group_m,
        NUM_PROGRAMS=programs,
        BLOCKED=cfg.blocked,
        WARP_SPECIALIZE=cfg.warp_specialize,
        num_stages=cfg.stages,
        num_warps=cfg.warps,
        **({"maxnreg": cfg.maxnreg} if cfg.maxnreg else {}),
    )
    return y.view(*x.shape[:-1], n)
