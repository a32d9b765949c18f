"""Where a Triton flash-attention kernel's time goes at SD v1's 64x64 level (4096 tokens, 16 x 8 heads).

The heads are padded to 64 float16 columns. Modes: the whole kernel; without the softmax (the scores
go straight into p @ v); without p @ v (scores and softmax only); the scores alone. A record of an
experiment (benchmarks/RESULTS.md, "A self-attention kernel"), run on a Hopper GPU:

    python benchmarks/gpu_attention_ablation.py
"""

from __future__ import annotations

import functools
import logging

import torch
import triton
import triton.language as tl
from _common import graphed_us

log = logging.getLogger("gpu_attention_ablation")
MODES = ["whole kernel", "without the softmax", "without p @ v", "scores alone"]


@triton.jit
def ablated_attention(
    q_desc,
    k_desc,
    v_desc,
    o_desc,
    qk_scale,
    N,
    H,
    DP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    MODE: tl.constexpr,
):
    # qkv (B*N, 3*H*DP): q, k, v of head h at columns h*DP, (H + h)*DP, (2H + h)*DP; o (B*N, H*DP)
    pid_m = tl.program_id(0)
    b = tl.program_id(1) // H
    h = tl.program_id(1) % H
    row0 = b * N + pid_m * BLOCK_M
    q = q_desc.load([row0, h * DP])  # (BLOCK_M, DP)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, DP], dtype=tl.float32)
    for start in range(0, N, BLOCK_N):
        key0 = b * N + start
        s = tl.dot(q, k_desc.load([key0, (H + h) * DP]).T)  # (BLOCK_M, BLOCK_N)
        if MODE == 3:
            l_i += tl.max(s, 1)
        elif MODE == 1:
            acc = tl.dot(s.to(tl.float16), v_desc.load([key0, (2 * H + h) * DP]), acc)
        else:
            m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
            p = tl.math.exp2(s * qk_scale - m_new[:, None])
            alpha = tl.math.exp2(m_i - m_new)
            if MODE == 2:
                l_i = l_i * alpha + tl.sum(p, 1)
            else:
                acc = tl.dot(p.to(tl.float16), v_desc.load([key0, (2 * H + h) * DP]), acc * alpha[:, None])
            m_i = m_new
    if MODE >= 2:
        acc += l_i[:, None]  # keeps the work from being optimised away
    o_desc.store([row0, h * DP], acc.to(o_desc.dtype))


def main() -> int:
    from triton.tools.tensor_descriptor import TensorDescriptor

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows, n, heads, dp = 16, 4096, 8, 64
    qkv = torch.randn(rows * n, 3 * heads * dp, device="cuda", dtype=torch.float16) * 0.3
    out = torch.empty(rows * n, heads * dp, device="cuda", dtype=torch.bfloat16)
    for bm, bn, warps, stages in [(64, 128, 4, 2), (128, 128, 8, 2), (128, 64, 4, 3)]:
        boxes = ((qkv, bm), (qkv, bn), (qkv, bn), (out, bm))  # q, k, v, o
        descs = [TensorDescriptor.from_tensor(t, [block, dp]) for t, block in boxes]
        for mode, name in enumerate(MODES):
            launch = functools.partial(
                ablated_attention[(n // bm, rows * heads)], *descs, 0.2, n, heads,
                DP=dp, BLOCK_M=bm, BLOCK_N=bn, MODE=mode, num_warps=warps, num_stages=stages,
            )  # fmt: skip
            log.info("tile %dx%d w%d s%d, %s: %.1f us", bm, bn, warps, stages, name, graphed_us(launch, 10))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
