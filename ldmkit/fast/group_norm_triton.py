"""The Triton kernels behind :mod:`ldmkit.fast.group_norm_kernels` (imported only where Triton is).

Triton resolves the helpers a kernel calls among the module's globals, so they live at module
level here, in a module that only the op imports.
"""

import triton
import triton.language as tl


@triton.jit
def tile(HW, C, n_hw, BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr):
    # this program's (BLOCK_HW, BLOCK_C) tile of the (B, HW, C) tensor, for grid (B * n_hw, n_c)
    pid = tl.program_id(0)
    b = pid // n_hw
    blk = pid % n_hw
    rows = blk * BLOCK_HW + tl.arange(0, BLOCK_HW)  # (BLOCK_HW,)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)  # (BLOCK_C,)
    mask = (rows < HW)[:, None] & (cols < C)[None, :]
    offsets = b.to(tl.int64) * HW * C + rows[:, None] * C + cols[None, :]
    return pid, b, blk, cols, mask, offsets


@triton.jit
def row_blocks(start, HW, n_hw, cmask, BLOCK_HW: tl.constexpr, BLOCK_N: tl.constexpr):
    # BLOCK_N row blocks from ``start``: their indices, mask and element counts
    i = start + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    mask = (i < n_hw)[:, None] & cmask[None, :]
    count = tl.where(i < n_hw, tl.minimum(HW - i * BLOCK_HW, BLOCK_HW), 0).to(tl.float32)
    return i, mask, count


@triton.jit
def partial_moments(
    x_ptr,
    add_ptr,
    mean_ptr,
    m2_ptr,
    HW,
    C,
    n_hw,
    add_stride,
    HAS_ADD: tl.constexpr,
    BLOCK_HW: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    # grid (B * n_hw, n_c); partials are laid out (B, n_hw, C); ``add`` (B, C), rows ``add_stride`` apart, is
    # added to x first
    pid, b, blk, cols, mask, offsets = tile(HW, C, n_hw, BLOCK_HW, BLOCK_C)
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)  # (BLOCK_HW, BLOCK_C)
    if HAS_ADD:
        add = tl.load(add_ptr + b * add_stride + cols, mask=cols < C, other=0.0).to(tl.float32)  # (BLOCK_C,)
        x = tl.where(mask, x + add[None, :], 0.0)  # masked positions must stay out of the sums
    count = tl.minimum(HW - blk * BLOCK_HW, BLOCK_HW).to(tl.float32)
    mean = tl.sum(x, axis=0) / count  # (BLOCK_C,)
    dev = tl.where(mask, x - mean[None, :], 0.0)
    m2 = tl.sum(dev * dev, axis=0)  # (BLOCK_C,)
    out = pid.to(tl.int64) * C + cols
    tl.store(mean_ptr + out, mean, mask=cols < C)
    tl.store(m2_ptr + out, m2, mask=cols < C)


@triton.jit
def group_scale_shift(
    mean_ptr,
    m2_ptr,
    weight_ptr,
    bias_ptr,
    scale_ptr,
    shift_ptr,
    HW,
    C,
    G,
    n_hw,
    eps,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_HW: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_CPG: tl.constexpr,
):
    # grid (B * G,): one program combines the (n_hw, C/G) partials of one group of one row
    pid = tl.program_id(0)
    b = pid // G
    g = pid % G
    cpg = C // G
    j = tl.arange(0, BLOCK_CPG)  # (BLOCK_CPG,) channel within the group
    cmask = j < cpg
    total = (HW * cpg).to(tl.float32)
    base = b.to(tl.int64) * n_hw * C + g * cpg
    weighted = tl.zeros((BLOCK_N, BLOCK_CPG), dtype=tl.float32)
    for start in range(0, n_hw, BLOCK_N):
        i, mask, count = row_blocks(start, HW, n_hw, cmask, BLOCK_HW, BLOCK_N)
        mean_i = tl.load(mean_ptr + base + i[:, None] * C + j[None, :], mask=mask, other=0.0)
        weighted += mean_i * count[:, None]
    mean = tl.sum(tl.sum(weighted, axis=1), axis=0) / total
    m2 = tl.zeros((BLOCK_N, BLOCK_CPG), dtype=tl.float32)
    for start in range(0, n_hw, BLOCK_N):
        i, mask, count = row_blocks(start, HW, n_hw, cmask, BLOCK_HW, BLOCK_N)
        offsets = base + i[:, None] * C + j[None, :]
        mean_i = tl.load(mean_ptr + offsets, mask=mask, other=0.0)
        m2_i = tl.load(m2_ptr + offsets, mask=mask, other=0.0)
        dev = tl.where(mask, mean_i - mean, 0.0)
        m2 += m2_i + count[:, None] * dev * dev
    rstd = 1.0 / tl.sqrt(tl.sum(tl.sum(m2, axis=1), axis=0) / total + eps)
    channel = g * cpg + j
    scale = tl.zeros((BLOCK_CPG,), dtype=tl.float32) + rstd
    if HAS_WEIGHT:
        scale = scale * tl.load(weight_ptr + channel, mask=cmask, other=0.0).to(tl.float32)
    shift = -mean * scale
    if HAS_BIAS:
        shift = shift + tl.load(bias_ptr + channel, mask=cmask, other=0.0).to(tl.float32)
    tl.store(scale_ptr + b * C + channel, scale, mask=cmask)
    tl.store(shift_ptr + b * C + channel, shift, mask=cmask)


@triton.jit
def scale_shift_apply(
    x_ptr,
    add_ptr,
    scale_ptr,
    shift_ptr,
    y_ptr,
    HW,
    C,
    n_hw,
    add_stride,
    HAS_ADD: tl.constexpr,
    SILU: tl.constexpr,
    BLOCK_HW: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    # grid (B * n_hw, n_c)
    _, b, _, cols, mask, offsets = tile(HW, C, n_hw, BLOCK_HW, BLOCK_C)
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)  # (BLOCK_HW, BLOCK_C)
    scale = tl.load(scale_ptr + b * C + cols, mask=cols < C, other=0.0)  # (BLOCK_C,)
    shift = tl.load(shift_ptr + b * C + cols, mask=cols < C, other=0.0)
    if HAS_ADD:  # (x + add) * scale + shift
        shift += scale * tl.load(add_ptr + b * add_stride + cols, mask=cols < C, other=0.0).to(tl.float32)
    y = x * scale[None, :] + shift[None, :]
    if SILU:
        y = y * tl.sigmoid(y)
    tl.store(y_ptr + offsets, y.to(y_ptr.dtype.element_ty), mask=mask)
