"""The Triton kernel behind :mod:`ldmkit.fast.attention_kernels` (imported only where Triton is).

Triton resolves the helpers a kernel calls among the module's globals, so they live at module
level here, in a module that only the op imports.
"""

import triton
import triton.language as tl


def _poly_exp2(x: str, out: str) -> str:
    # 2**x on the FMA units: x = j + f with j an integer (rounded by adding 1.5 * 2**23) and
    # |f| <= 1/2; 2**f by a cubic (relative error 7.5e-5, below float16's rounding of 4.9e-4);
    # j added to the exponent bits. x is clamped at -125, whose 2**x float16 rounds to zero anyway.
    return f"""
    max.f32 cx, {x}, 0fC2FA0000;
    add.rn.f32 t, cx, 0f4B400000;
    sub.rn.f32 j, t, 0f4B400000;
    sub.rn.f32 fr, cx, j;
    fma.rn.f32 q, fr, 0f3D61FBB0, 0f3E786F0F;
    fma.rn.f32 q, q, fr, 0f3F31798D;
    fma.rn.f32 q, q, fr, 0f3F7FFB49;
    mov.b32 bt, t;
    shl.b32 bt, bt, 23;
    mov.b32 bq, q;
    add.s32 bq, bq, bt;
    mov.b32 {out}, bq;"""


def _mixed_exp2_asm(poly: int) -> str:
    # four float32 inputs ($2..$5) -> four float16 outputs packed in $0, $1; the last ``poly`` of
    # the four by the cubic, the others by the special-function unit's ex2
    lines = ["{", ".reg .f32 e0, e1, e2, e3, cx, t, j, fr, q;", ".reg .b32 bt, bq;"]
    for i in range(4):
        lines.append(_poly_exp2(f"${i + 2}", f"e{i}") if i >= 4 - poly else f"ex2.approx.ftz.f32 e{i}, ${i + 2};")
    lines += ["cvt.rn.f16x2.f32 $0, e1, e0;", "cvt.rn.f16x2.f32 $1, e3, e2;", "}"]
    return "\n".join(lines)


MIXED_EXP2_1 = tl.constexpr(_mixed_exp2_asm(1))
MIXED_EXP2_2 = tl.constexpr(_mixed_exp2_asm(2))


@triton.jit
def exp2_f16(x, POLY: tl.constexpr):
    # 2**x for x <= 0 (float32) as float16. The softmax of a small head width is bound by the
    # special-function units' exponentials; POLY of every four go to the FMA units instead
    # (POLY < 0: Triton's own exp2, which the interpreter can run)
    if POLY == 1:
        return tl.inline_asm_elementwise(MIXED_EXP2_1, "=r,=r,r,r,r,r", [x], dtype=tl.float16, is_pure=True, pack=4)
    elif POLY == 2:
        return tl.inline_asm_elementwise(MIXED_EXP2_2, "=r,=r,r,r,r,r", [x], dtype=tl.float16, is_pure=True, pack=4)
    else:
        return tl.math.exp2(x).to(tl.float16)


@triton.jit
def padded_attention_fwd(
    q1_desc,
    q2_desc,
    k1_desc,
    k2_desc,
    v1_desc,
    v2_desc,
    o1_desc,
    o2_desc,
    qk_scale,
    N,
    H,
    ONES: tl.constexpr,
    D1: tl.constexpr,
    D2: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    POLY: tl.constexpr,
    AHEAD: tl.constexpr = False,
    WS: tl.constexpr = False,
):
    # qkv (B*N, 3*H*DP) float16 with DP = D1 + D2 columns per head: q of head h at columns h*DP,
    # k at (H + h)*DP, v at (2H + h)*DP. Every descriptor reads the same tensor; "1" boxes are the
    # first D1 columns of a head, "2" boxes the D2 after them. Columns past the head width are zero
    # in q and k, and v holds ones in column ONES, so the product p @ v carries the softmax's row
    # sum in that column (exact float32 accumulation, no per-element adds). o (B*N, H*DP).
    # Grid (N // BLOCK_M, B*H); N is a multiple of BLOCK_M and BLOCK_N.
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    DP: tl.constexpr = D1 + D2
    row0 = b * N + pid_m * BLOCK_M
    q_col = h * DP
    k_col = (H + h) * DP
    v_col = (2 * H + h) * DP
    q1 = q1_desc.load([row0, q_col])  # (BLOCK_M, D1)
    q2 = q2_desc.load([row0, q_col + D1])  # (BLOCK_M, D2)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # running row maximum, log2 units
    acc1 = tl.zeros([BLOCK_M, D1], dtype=tl.float32)
    acc2 = tl.zeros([BLOCK_M, D2], dtype=tl.float32)
    if AHEAD:
        # the scores of the next key block are asked of the tensor cores before this block's
        # softmax, so that the exponentials run while they work
        s = tl.dot(q2, k2_desc.load([b * N, k_col + D1]).T, tl.dot(q1, k1_desc.load([b * N, k_col]).T))
    for start in tl.range(0, N, BLOCK_N, warp_specialize=WS):
        key0 = b * N + start
        if AHEAD:
            ahead = b * N + (start + BLOCK_N) % N  # the last step reads block 0 again, unused
            s_next = tl.dot(q1, k1_desc.load([ahead, k_col]).T)
            s_next = tl.dot(q2, k2_desc.load([ahead, k_col + D1]).T, s_next)
        else:
            s = tl.dot(q1, k1_desc.load([key0, k_col]).T)  # (BLOCK_M, BLOCK_N) float32
            s = tl.dot(q2, k2_desc.load([key0, k_col + D1]).T, s)
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
        p = exp2_f16(s * qk_scale - m_new[:, None], POLY)  # (BLOCK_M, BLOCK_N) float16, <= 1
        alpha = tl.math.exp2(m_i - m_new)  # (BLOCK_M,) rescales what was summed so far
        v1 = v1_desc.load([key0, v_col])  # (BLOCK_N, D1)
        v2 = v2_desc.load([key0, v_col + D1])  # (BLOCK_N, D2)
        acc1 = tl.dot(p, v1, acc1 * alpha[:, None])
        acc2 = tl.dot(p, v2, acc2 * alpha[:, None])
        m_i = m_new
        if AHEAD:
            s = s_next

    # the row sum is the ones column of the accumulator
    if ONES < D1:
        total = tl.sum(tl.where(tl.arange(0, D1)[None, :] == ONES, acc1, 0.0), 1)
    else:
        total = tl.sum(tl.where(tl.arange(0, D2)[None, :] == ONES - D1, acc2, 0.0), 1)
    inv = 1.0 / total  # (BLOCK_M,)
    out_row = b * N + pid_m * BLOCK_M
    o1_desc.store([out_row, h * DP], (acc1 * inv[:, None]).to(o1_desc.dtype))
    o2_desc.store([out_row, h * DP + D1], (acc2 * inv[:, None]).to(o2_desc.dtype))
