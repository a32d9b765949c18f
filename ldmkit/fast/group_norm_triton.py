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
    scale_ptr,
    center_ptr,
    HW,
    C,
    G,
    n_hw,
    eps,
    HAS_WEIGHT: tl.constexpr,
    BLOCK_HW: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_CPG: tl.constexpr,
):
    # grid (B * G,): one program combines the (n_hw, C/G) partials of one group of one row into each channel's
    # centre (the group mean) and scale (1/std times the norm's weight)
    pid = tl.program_id(0)
    b = pid // G
    g = pid % G
    cpg = C // G
    j = tl.arange(0, BLOCK_CPG)  # (BLOCK_CPG,) channel within the group
    cmask = j < cpg
    cols = g * cpg + j
    total = (HW * cpg).to(tl.float32)
    base = b.to(tl.int64) * n_hw * C
    zeros = tl.zeros((BLOCK_CPG,), dtype=tl.float32)
    colsum = column_sums(mean_ptr, m2_ptr, base, HW, C, n_hw, cols, cmask, zeros, False, BLOCK_HW, BLOCK_N,
                         BLOCK_CPG)  # fmt: skip
    mean = zeros + tl.sum(colsum, axis=0) / total
    colm2 = column_sums(mean_ptr, m2_ptr, base, HW, C, n_hw, cols, cmask, mean, True, BLOCK_HW, BLOCK_N, BLOCK_CPG)
    rstd = zeros + 1.0 / tl.sqrt(tl.sum(colm2, axis=0) / total + eps)
    scale = channel_scale(rstd, cols, cmask, weight_ptr, HAS_WEIGHT)
    tl.store(scale_ptr + b * C + cols, scale, mask=cmask)
    tl.store(center_ptr + b * C + cols, mean, mask=cmask)


@triton.jit
def channel_scale(rstd, cols, cmask, weight_ptr, HAS_WEIGHT: tl.constexpr):
    # 1/std times the norm's weight, per channel
    scale = rstd
    if HAS_WEIGHT:
        scale = scale * tl.load(weight_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    return scale


@triton.jit
def normalise(x, center, scale, cols, cmask, bias_ptr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr):
    # (x - centre) * scale + bias (then SiLU) of a (rows, channels) tile: the centre is subtracted before the
    # scale, not folded into a shift (x * scale - centre * scale), which would cost a float32 input with a large
    # mean two roundings of |centre * scale| more than torch's GroupNorm
    y = (x - center[None, :]) * scale[None, :]
    if HAS_BIAS:
        y += tl.load(bias_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    if SILU:
        y = y * tl.sigmoid(y)
    return y


@triton.jit
def scale_shift_apply(
    x_ptr,
    add_ptr,
    scale_ptr,
    center_ptr,
    bias_ptr,
    y_ptr,
    HW,
    C,
    n_hw,
    add_stride,
    HAS_ADD: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SILU: tl.constexpr,
    BLOCK_HW: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    # grid (B * n_hw, n_c)
    _, b, _, cols, mask, offsets = tile(HW, C, n_hw, BLOCK_HW, BLOCK_C)
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)  # (BLOCK_HW, BLOCK_C)
    scale = tl.load(scale_ptr + b * C + cols, mask=cols < C, other=0.0)  # (BLOCK_C,)
    center = tl.load(center_ptr + b * C + cols, mask=cols < C, other=0.0)
    if HAS_ADD:  # x + add rounded once, as in the moments
        x += tl.load(add_ptr + b * add_stride + cols, mask=cols < C, other=0.0).to(tl.float32)[None, :]
    y = normalise(x, center, scale, cols, cols < C, bias_ptr, HAS_BIAS, SILU)
    tl.store(y_ptr + offsets, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def column_sums(mean_ptr, m2_ptr, base, HW, C, n_hw, cols, cmask, gmean, SECOND: tl.constexpr,
                BLOCK_HW: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):  # fmt: skip
    # over the n_hw partial rows of channels ``cols``: the count-weighted sums of the partial means, or
    # (SECOND) the partial m2s plus each partial's squared offset from its group's mean ``gmean``
    acc = tl.zeros((BLOCK_N, BLOCK_C), dtype=tl.float32)
    for start in range(0, n_hw, BLOCK_N):
        i, mask, count = row_blocks(start, HW, n_hw, cmask, BLOCK_HW, BLOCK_N)
        offsets = base + i[:, None] * C + cols[None, :]
        mean_i = tl.load(mean_ptr + offsets, mask=mask, other=0.0)
        if SECOND:
            dev = tl.where(mask, mean_i - gmean[None, :], 0.0)
            acc += tl.load(m2_ptr + offsets, mask=mask, other=0.0) + count[:, None] * dev * dev
        else:
            acc += mean_i * count[:, None]
    return tl.sum(acc, axis=0)  # (BLOCK_C,)


@triton.jit
def per_group(values, group, GROUPS_PER_BLOCK: tl.constexpr):
    # each channel's entry replaced by the sum over the channels of its group (groups 0..GROUPS_PER_BLOCK-1)
    out = tl.zeros_like(values)
    for q in tl.static_range(GROUPS_PER_BLOCK):
        out = tl.where(group == q, tl.sum(tl.where(group == q, values, 0.0), axis=0), out)
    return out


@triton.jit
def group_apply(
    x_ptr,
    add_ptr,
    mean_ptr,
    m2_ptr,
    weight_ptr,
    bias_ptr,
    y_ptr,
    HW,
    C,
    cpg,
    n_hw,
    n_rows,
    add_stride,
    eps,
    HAS_ADD: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SILU: tl.constexpr,
    GROUPS_PER_BLOCK: tl.constexpr,
    MOMENTS_HW: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_HW: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    # grid (B * n_rows, n_blocks): one program combines the partial moments of GROUPS_PER_BLOCK whole groups
    # (Chan's formula, as group_scale_shift does) and applies them to its (BLOCK_HW, BLOCK_C) tile, so the
    # per-group scale and shift need no launch of their own; partials laid out (B, n_hw, C) by MOMENTS_HW rows
    pid = tl.program_id(0)
    b = pid // n_rows
    rows = (pid % n_rows) * BLOCK_HW + tl.arange(0, BLOCK_HW)  # (BLOCK_HW,)
    j = tl.arange(0, BLOCK_C)
    width = GROUPS_PER_BLOCK * cpg
    cols = tl.program_id(1) * width + j  # (BLOCK_C,)
    cmask = (j < width) & (cols < C)
    group = tl.where(cmask, j // cpg, GROUPS_PER_BLOCK)  # masked lanes belong to no group
    total = (HW * cpg).to(tl.float32)
    base = b.to(tl.int64) * n_hw * C
    no_means = tl.zeros((BLOCK_C,), dtype=tl.float32)  # the first pass reads no group means
    colsum = column_sums(mean_ptr, m2_ptr, base, HW, C, n_hw, cols, cmask, no_means, False, MOMENTS_HW, BLOCK_N,
                         BLOCK_C)  # fmt: skip
    gmean = per_group(colsum, group, GROUPS_PER_BLOCK) / total  # (BLOCK_C,) each channel's group mean
    colm2 = column_sums(mean_ptr, m2_ptr, base, HW, C, n_hw, cols, cmask, gmean, True, MOMENTS_HW, BLOCK_N,
                        BLOCK_C)  # fmt: skip
    rstd = 1.0 / tl.sqrt(per_group(colm2, group, GROUPS_PER_BLOCK) / total + eps)
    scale = channel_scale(rstd, cols, cmask, weight_ptr, HAS_WEIGHT)
    mask = (rows < HW)[:, None] & cmask[None, :]
    offsets = b.to(tl.int64) * HW * C + rows[:, None] * C + cols[None, :]
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)  # (BLOCK_HW, BLOCK_C)
    if HAS_ADD:
        x += tl.load(add_ptr + b * add_stride + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    y = normalise(x, gmean, scale, cols, cmask, bias_ptr, HAS_BIAS, SILU)
    tl.store(y_ptr + offsets, y.to(y_ptr.dtype.element_ty), mask=mask)
