"""Self-attention for Hopper GPUs at small head widths: one Triton flash-attention kernel on padded heads.

The SD v1 UNet has 8 heads at every level, so 40 channels per head at its largest level. There
the attention is bound by the softmax's exponentials, not by the matrix products: cuDNN takes as
long at head width 40 as at 64 (benchmarks/RESULTS.md). This kernel changes what the softmax
costs per score:

- the exponentials are computed two at a time in float16 (Hopper's paired ``ex2``), which halves
  the work of the special-function units; p is float16, which holds it more precisely than the
  bfloat16 a bf16 attention multiplies with;
- the row sums come from the matrix product itself: each head of v carries a column of ones, so
  ``p @ v`` accumulates them in float32 with no per-score additions.

That needs a layout of its own, which the projections produce at no extra pass: q, k and v in
float16, each head padded to ``D1 + D2`` columns (powers of two, so the kernel's tiles need no
masks), zeros past the head width in q and k, the ones column in v. :func:`pack_self_attention`
builds the projection weights that produce it and the output weights that read the padded
result. Only :mod:`ldmkit.fast.attention` uses them.

The kernel is registered as ``ldmkit::padded_self_attention``, a custom op that ``torch.compile``
calls as one opaque operation and that CUDA graphs capture.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor


class AttentionTile(NamedTuple):
    """One configuration of the kernel: query rows per program, keys per step, warps, pipeline depth.

    ``ahead`` computes the next key block's scores before this one's softmax; ``ws`` asks Triton
    to specialise warps (producer and consumers) on the key loop.
    """

    block_m: int
    block_n: int
    warps: int
    stages: int
    ahead: bool = False
    ws: bool = False


TILE = AttentionTile(64, 128, 4, 2)


def head_split(head_dim: int) -> tuple[int, int]:
    """(D1, D2): the padded head's two column blocks, powers of two of at least 16.

    D1 is the largest that fits in the head, D2 the smallest that holds the rest and the ones
    column: 40 -> (32, 16), 64 -> (64, 16), 80 -> (64, 32), 160 -> (128, 64).
    """
    if head_dim < 1:
        raise ValueError(f"head width must be positive, got {head_dim}")
    d1 = 16
    while d1 * 2 <= head_dim:
        d1 *= 2
    d2 = 16
    while d1 + d2 < head_dim + 1:
        d2 *= 2
    return d1, d2


def _pad_head_rows(weight: Tensor, heads: int, width: int) -> Tensor:
    """(H*D, C) -> (H*DP, C): each head's rows followed by zero rows up to ``width``."""
    split = weight.unflatten(0, (heads, -1))  # (H, D, C)
    return torch.nn.functional.pad(split, (0, 0, 0, width - split.shape[1])).flatten(0, 1)


def _pad_head_columns(weight: Tensor, heads: int, width: int) -> Tensor:
    """(C', H*D) -> (C', H*DP): each head's columns followed by zero columns up to ``width``."""
    split = weight.unflatten(1, (heads, -1))  # (C', H, D)
    return torch.nn.functional.pad(split, (0, width - split.shape[2])).flatten(1, 2)


def pack_self_attention(
    w_q: Tensor, w_k: Tensor, w_v: Tensor, w_out: Tensor, heads: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Weights for the padded layout, from an attention's (H*D, C) projections and (C', H*D) output.

    Returns ``w_qkv`` (3*H*DP, C) and ``b_qkv`` (3*H*DP,) whose product gives [q | k | v] with each
    head padded to DP = D1 + D2 columns (zeros; v's column D is one, from the bias), and
    ``w_out_padded`` (C', H*DP), which reads the kernel's padded output and ignores the padding.
    """
    inner = w_q.shape[0]
    if inner % heads or w_k.shape != w_q.shape or w_v.shape != w_q.shape or w_out.shape[1] != inner:
        raise ValueError(
            f"q {tuple(w_q.shape)}, k {tuple(w_k.shape)}, v {tuple(w_v.shape)}, out {tuple(w_out.shape)} "
            f"are no self-attention of {heads} heads"
        )
    head_dim = inner // heads
    padded = sum(head_split(head_dim))
    w_qkv = torch.cat([_pad_head_rows(w, heads, padded) for w in (w_q, w_k, w_v)])  # (3*H*DP, C)
    b_qkv = w_qkv.new_zeros(3, heads, padded)
    b_qkv[2, :, head_dim] = 1.0  # v's ones column: the row sums of p @ v
    return w_qkv, b_qkv.flatten(), _pad_head_columns(w_out, heads, padded)


def padded_attention_reference(qkv: Tensor, heads: int, head_dim: int, scale: float, out_dtype: torch.dtype) -> Tensor:
    """What the kernel computes, in torch operations: qkv (B, N, 3*H*DP) -> (B, N, H*DP) in ``out_dtype``.

    The zero columns of q and k leave the scores as they are; the ones column of v comes out as
    ones, which the padded output weights ignore.
    """
    b, n, width = qkv.shape
    q, k, v = qkv.view(b, n, 3, heads, width // (3 * heads)).permute(2, 0, 3, 1, 4)  # (B, H, N, DP) each
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale)  # (B, H, N, DP)
    return out.transpose(1, 2).reshape(b, n, -1).to(out_dtype)


def _kernel():  # noqa: ANN202 - the jitted function has no useful static type
    from ldmkit.fast.attention_triton import padded_attention_fwd

    return padded_attention_fwd


def launch_padded_attention(
    qkv: Tensor,
    heads: int,
    head_dim: int,
    scale: float,
    out_dtype: torch.dtype,
    tile: AttentionTile = TILE,
    poly: int | None = None,
) -> Tensor:
    """Self-attention of ``qkv`` (B, N, 3*H*DP) float16 in the layout of :func:`pack_self_attention`.

    Returns (B, N, H*DP) in ``out_dtype``. N must be a multiple of the tile's rows and keys.
    ``poly`` of every four exponentials are computed by a cubic on the FMA units (default: one on
    a GPU); ``-1`` leaves them all to Triton's ``exp2``, which is what Triton's interpreter runs.
    """
    from triton.tools.tensor_descriptor import TensorDescriptor

    d1, d2 = head_split(head_dim)
    b, n, width = qkv.shape
    if width != 3 * heads * (d1 + d2) or qkv.dtype != torch.float16:
        raise ValueError(f"qkv {tuple(qkv.shape)} {qkv.dtype} is not the padded float16 layout of {heads} heads")
    if n % tile.block_m or n % tile.block_n:
        raise ValueError(f"{n} tokens are no multiple of the tile's {tile.block_m} rows and {tile.block_n} keys")
    rows = qkv.reshape(b * n, width).contiguous()  # (B*N, 3*H*DP)
    out = torch.empty((b * n, heads * (d1 + d2)), device=qkv.device, dtype=out_dtype)  # (B*N, H*DP)
    descs = [
        TensorDescriptor.from_tensor(tensor, [block, cols])
        for tensor, block in ((rows, tile.block_m), (rows, tile.block_n), (rows, tile.block_n), (out, tile.block_m))
        for cols in (d1, d2)
    ]
    _kernel()[(n // tile.block_m, b * heads)](
        *descs,
        scale * math.log2(math.e),
        n,
        heads,
        ONES=head_dim,
        D1=d1,
        D2=d2,
        BLOCK_M=tile.block_m,
        BLOCK_N=tile.block_n,
        POLY=(1 if qkv.is_cuda else -1) if poly is None else poly,
        AHEAD=tile.ahead,
        WS=tile.ws,
        num_warps=tile.warps,
        num_stages=tile.stages,
    )
    return out.view(b, n, -1)


@torch.library.custom_op("ldmkit::padded_self_attention", mutates_args=())
def padded_self_attention(qkv: Tensor, heads: int, head_dim: int, scale: float, out_dtype: torch.dtype) -> Tensor:
    """Self-attention of the padded float16 ``qkv`` (B, N, 3*H*DP) by the kernel -> (B, N, H*DP)."""
    return launch_padded_attention(qkv, heads, head_dim, scale, out_dtype)


@padded_self_attention.register_fake
def _(qkv: Tensor, heads: int, head_dim: int, scale: float, out_dtype: torch.dtype) -> Tensor:
    return qkv.new_empty((*qkv.shape[:-1], qkv.shape[-1] // 3), dtype=out_dtype)


def kernel_applies(qkv: Tensor, tile: AttentionTile = TILE) -> bool:
    """Whether :func:`padded_self_attention` takes ``qkv``: float16 on CUDA, tokens a multiple of the tile.

    Only tensor properties, so compiled code can ask; whether the device is a Hopper is for
    :func:`ldmkit.fast.support.hopper_with_triton`, asked once, outside compiled code.
    """
    n = qkv.shape[-2]
    return qkv.is_cuda and qkv.dtype == torch.float16 and n > 0 and n % tile.block_m == 0 and n % tile.block_n == 0
