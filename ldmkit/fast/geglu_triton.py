"""The Triton kernel behind :mod:`ldmkit.fast.geglu_kernels` (imported only where Triton is).

Triton resolves the helpers a kernel calls among the module's globals, so they live at module
level here, in a module that only the op imports.
"""

import triton
import triton.language as tl


@triton.jit
def tile_origin(tile, n_m, n_n, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    # the first row of x and of the interleaved weight of output tile ``tile``: groups of GROUP_M
    # row tiles walk the columns together, so their weight tiles stay in L2
    per_group = GROUP_M * n_n
    first_m = (tile // per_group) * GROUP_M
    group_rows = tl.minimum(n_m - first_m, GROUP_M)
    pid_m = first_m + (tile % per_group) % group_rows
    pid_n = (tile % per_group) // group_rows
    return pid_m * BLOCK_M, pid_n * BLOCK_N


@triton.jit
def tanh_approx(x, HARDWARE: tl.constexpr):
    # tanh on the special-function unit (one instruction, ~2^-11 relative error); Triton's interpreter
    # runs no PTX, so there the same function comes from exp
    if HARDWARE:
        return tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True, pack=1)
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def gelu(gate, APPROXIMATE: tl.constexpr, HARDWARE_TANH: tl.constexpr):
    # the exact GELU by erf, or its tanh form (PyTorch's approximate="tanh"): a few FMAs and one tanh
    # instead of erf's longer polynomial, in the epilogue that the tensor cores wait for
    if APPROXIMATE:
        inner = gate * (0.7978845608028654 + 0.035677408136300125 * gate * gate)  # sqrt(2/pi) (g + 0.044715 g^3)
        return 0.5 * gate * (1.0 + tanh_approx(inner, HARDWARE_TANH))
    return 0.5 * gate * (1.0 + tl.math.erf(gate * 0.7071067811865476))


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
    APPROXIMATE: tl.constexpr,
    HARDWARE_TANH: tl.constexpr,
):
    # x_desc: (M, K) in (BLOCK_M, BLOCK_K) boxes; w_desc: the interleaved weight (2N, K) in
    # (BLOCK_N, BLOCK_K) boxes; b_ptr: the interleaved bias (2N,); y_desc: (M, N) in
    # (BLOCK_M, BLOCK_N // 2) boxes. Grid (NUM_PROGRAMS,); program p does tiles p, p + NUM_PROGRAMS, ...
    HALF: tl.constexpr = BLOCK_N // 2
    start = tl.program_id(0)
    n_m = tl.cdiv(M, BLOCK_M)
    n_n = tl.cdiv(2 * N, BLOCK_N)
    k_tiles = tl.cdiv(K, BLOCK_K)
    # the epilogue keeps a tile counter of its own: sharing the loop's index between the
    # prologue of one tile and the epilogue of another hinders the flattened pipeline
    out_tile = start - NUM_PROGRAMS
    for tile in tl.range(start, n_m * n_n, NUM_PROGRAMS, flatten=True):
        off_m, off_w = tile_origin(tile, n_m, n_n, BLOCK_M, BLOCK_N, GROUP_M)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for ki in range(k_tiles):
            a = x_desc.load([off_m, ki * BLOCK_K])  # (BLOCK_M, BLOCK_K); rows past M read as zeros
            w = w_desc.load([off_w, ki * BLOCK_K])  # (BLOCK_N, BLOCK_K)
            acc = tl.dot(a, w.T, acc)  # (BLOCK_M, BLOCK_N) float32, value and gate columns alternating

        out_tile += NUM_PROGRAMS
        out_m, out_w = tile_origin(out_tile, n_m, n_n, BLOCK_M, BLOCK_N, GROUP_M)
        cols = out_w + tl.arange(0, BLOCK_N)  # (BLOCK_N,) rows of the interleaved weight
        acc += tl.load(b_ptr + cols, mask=cols < 2 * N, other=0.0).to(tl.float32)[None, :]
        value, gate = tl.split(tl.reshape(acc, (BLOCK_M, HALF, 2)))  # (BLOCK_M, HALF) each
        out = value * gelu(gate, APPROXIMATE, HARDWARE_TANH)
        y_desc.store([out_m, out_w // 2], out.to(y_desc.dtype))  # rows past M are not written
