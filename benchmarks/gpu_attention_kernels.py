"""Attention kernels at the SD v1 UNet's shapes: PyTorch's SDPA (cuDNN) against FlashAttention-3 (``fa3-fwd``).

For every attention shape of a guided SD v1 step (self-attention at 64x64, 32x32, 16x16 and the 8x8
middle block; cross-attention over 77 text tokens at each), microseconds per call as CUDA graphs of
10 calls, the relative error against float32 attention, and the per-step sum weighted by how many
times the UNet calls each shape (transformer blocks: 5 at each of 64x64, 32x32 and 16x16, 1 at 8x8).
Variants: SDPA bf16 (the default backend choice, cuDNN on Hopper), FlashAttention-3 bf16, and
FlashAttention-3 with q, k, v in fp8 (e4m3, per-tensor scales), the fp8 row reported apart.

    python benchmarks/gpu_attention_kernels.py --out attention.md [--batch 16]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import ensure_importable, graphed_us, markdown_table, rel_err

log = logging.getLogger("gpu_attention_kernels")

HEADS = 8
CONTEXT_TOKENS = 77
# (latent side, head width, transformer blocks at that level in one UNet call)
LEVELS = [(64, 40, 5), (32, 80, 5), (16, 160, 5), (8, 160, 1)]
E4M3_MAX = 448.0


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(B, N, H, d) inputs -> (B, N, H, d), by PyTorch's SDPA on heads-first views."""
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


def fa3(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kw) -> torch.Tensor:
    return torch.ops.fa3_fwd._flash_attn_forward(q, k, v, **kw)[0]


def to_e4m3(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x in float8 e4m3 with one float32 scale for the whole tensor, and the descale (shape (B, H_kv))."""
    scale = x.float().abs().amax().clamp(min=1e-12) / E4M3_MAX
    descale = scale.reshape(1, 1).expand(x.shape[0], x.shape[2]).contiguous()  # (B, H): the kernel's layout
    return (x.float() / scale).to(torch.float8_e4m3fn), descale


def bench_shape(batch: int, tokens: int, keys: int, d: int) -> dict[str, tuple[float, float]]:
    """variant -> (us per call, rel. error vs float32)."""
    g = torch.Generator(device="cuda").manual_seed(tokens + keys + d)
    q = torch.randn(batch, tokens, HEADS, d, device="cuda", generator=g)
    k = torch.randn(batch, keys, HEADS, d, device="cuda", generator=g)
    v = torch.randn(batch, keys, HEADS, d, device="cuda", generator=g)
    with torch.no_grad():
        ref = sdpa(q, k, v)  # float32
        q16, k16, v16 = q.bfloat16(), k.bfloat16(), v.bfloat16()
        found = {"SDPA bf16": lambda: sdpa(q16, k16, v16)}
        try:
            import fa3_fwd_interface  # noqa: F401  (defines torch.ops.fa3_fwd._flash_attn_forward)

            found["FlashAttention-3 bf16"] = lambda: fa3(q16, k16, v16)
            (q8, qd), (k8, kd), (v8, vd) = to_e4m3(q), to_e4m3(k), to_e4m3(v)
            found["FlashAttention-3 fp8 (e4m3)"] = lambda: fa3(q8, k8, v8, q_descale=qd, k_descale=kd, v_descale=vd)
        except ImportError as exc:
            log.warning("fa3_fwd not importable: %s", exc)
        out = {}
        for name, fn in found.items():
            try:
                err = rel_err(fn().float(), ref)
                out[name] = (graphed_us(fn, calls=10), err)
            except Exception as exc:  # a variant that fails is reported, not fatal
                log.exception("%s failed", name)
                out[name] = (float("nan"), float("nan"))
                log.info("%s at %d tokens, %d keys, d %d: %s", name, tokens, keys, d, exc)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batch", type=int, default=16, help="UNet batch (a guided step of batch/2 pictures)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    ensure_importable()
    torch.backends.cuda.matmul.allow_tf32 = False  # the float32 reference in full float32
    rows, per_step = [], {}
    for side, d, blocks in LEVELS:
        for kind, keys in (("self", side * side), ("cross", CONTEXT_TOKENS)):
            res = bench_shape(args.batch, side * side, keys, d)
            base = res["SDPA bf16"][0]
            for name, (us, err) in res.items():
                speed = f"{base / us:.2f}x" if us == us else "failed"
                rows.append([f"{kind} {side}x{side}", str(d), name, f"{us:.1f}", speed, f"{err:.2e}"])
                per_step[name] = per_step.get(name, 0.0) + blocks * us
            log.info("%s %dx%d d=%d: %s", kind, side, side, d, res)
    header = ["shape", "head width", "kernel", "us per call", "vs SDPA", "rel. error vs fp32"]
    name = torch.cuda.get_device_name()
    title = f"# Attention kernels at SD v1 shapes, batch {args.batch}, {HEADS} heads"
    title += f" ({name}, torch {torch.__version__})"
    sums = [[k, f"{v / 1e3:.3f}"] for k, v in per_step.items()]
    text = [title, "", markdown_table(header, rows), "",
            "Attention time of one UNet call (every shape times its calls):", "",
            markdown_table(["kernel", "ms per UNet call"], sums)]  # fmt: skip
    args.out.write_text("\n".join(text) + "\n")
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
