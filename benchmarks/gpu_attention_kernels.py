"""Attention kernels at the SD v1 UNet's shapes: PyTorch's SDPA (cuDNN) against FlashAttention-3 and -4.

For every attention shape of a guided SD v1 step (self-attention at 64x64, 32x32, 16x16 and the 8x8
middle block; cross-attention over 77 text tokens at each), microseconds per call as CUDA graphs of
10 calls, the relative error against float32 attention, and the per-step sum weighted by how many
times the UNet calls each shape (transformer blocks: 5 at each of 64x64, 32x32 and 16x16, 1 at 8x8).
Variants: SDPA bf16 (the default backend choice, cuDNN on Hopper), FlashAttention-3 bf16 and
with q, k, v in fp8 (e4m3, per-tensor scales) where ``fa3-fwd`` is installed, and FlashAttention-4
bf16 (CuTe DSL; its Hopper kernel pads 40-wide heads to 48 columns) where ``flash_attn.cute`` is
importable (``benchmarks/fa4_bundle.sh``, ``fa4_run.sh``). Each variant is also timed eagerly (CUDA
events around single calls): a graphed time far under the eager one would mean a kernel launched
outside the captured stream. FlashAttention-4 compiles each kernel at its first call; that time is
reported too.

    python benchmarks/gpu_attention_kernels.py --out attention.md [--batch 16]
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import graphed_us, markdown_table, rel_err, time_ms

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


def flash_attention_4() -> Callable[..., tuple[torch.Tensor, torch.Tensor | None]] | None:
    """FlashAttention-4's ``flash_attn_func`` where its package imports, else None."""
    try:
        from flash_attn.cute import flash_attn_func
    except Exception as exc:  # noqa: BLE001  (ImportError, or a library that does not load here)
        log.info("FlashAttention-4 not importable: %s", exc)
        return None
    return flash_attn_func


def bench_shape(batch: int, tokens: int, keys: int, d: int) -> dict[str, tuple[float, float, float, str]]:
    """variant -> (us per call graphed, us per call eager, rel. error vs float32, note)."""
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
        except (ImportError, OSError) as exc:  # OSError: its compiled kernel is missing or does not load
            log.warning("fa3_fwd not importable: %s", exc)
        fa4 = flash_attention_4()
        if fa4 is not None:
            found["FlashAttention-4 bf16"] = lambda: fa4(q16, k16, v16, softmax_scale=d**-0.5, causal=False)[0]
        out = {}
        for name, fn in found.items():
            try:
                start = time.perf_counter()
                first = fn()  # FlashAttention-4 compiles its kernel here
                torch.cuda.synchronize()
                note = f"first call {time.perf_counter() - start:.2f} s" if name.startswith("FlashAttention-4") else ""
                err = rel_err(first.float(), ref)
                eager = 1e3 * time_ms(fn, q.device, warmup=3, repeats=10)
                try:
                    graphed = graphed_us(fn, calls=10)
                except Exception as exc:  # noqa: BLE001  (a launch that cannot be captured: the eager time stands)
                    graphed, note = float("nan"), f"{note}; not capturable: {type(exc).__name__}".strip("; ")
                out[name] = (graphed, eager, err, note)
            except Exception as exc:  # a variant that fails is reported, not fatal
                log.exception("%s failed", name)
                out[name] = (float("nan"), float("nan"), float("nan"), f"failed: {type(exc).__name__}")
                log.info("%s at %d tokens, %d keys, d %d: %s", name, tokens, keys, d, exc)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batch", type=int, default=16, help="UNet batch (a guided step of batch/2 pictures)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.backends.cuda.matmul.allow_tf32 = False  # the float32 reference in full float32
    rows: list[list[str]] = []
    per_step: dict[str, list[float]] = {}  # kernel -> [graphed, eager] us of one UNet call
    for side, d, blocks in LEVELS:
        for kind, keys in (("self", side * side), ("cross", CONTEXT_TOKENS)):
            res = bench_shape(args.batch, side * side, keys, d)
            base = res["SDPA bf16"][0]
            for name, (us, eager, err, note) in res.items():
                speed = f"{base / us:.2f}x" if us == us else ""
                row = [f"{kind} {side}x{side}", str(d), name, f"{us:.1f}", f"{eager:.1f}", speed, f"{err:.2e}", note]
                rows.append(row)
                total = per_step.setdefault(name, [0.0, 0.0])
                total[0] += blocks * us
                total[1] += blocks * eager
            log.info("%s %dx%d d=%d: %s", kind, side, side, d, res)
    header = ["shape", "head width", "kernel", "us per call (graphed)", "us eager", "vs SDPA", "rel. error vs fp32",
              "note"]  # fmt: skip
    name = torch.cuda.get_device_name()
    title = f"# Attention kernels at SD v1 shapes, batch {args.batch}, {HEADS} heads"
    title += f" ({name}, torch {torch.__version__})"
    sums = [[k, f"{graphed / 1e3:.3f}", f"{eager / 1e3:.3f}"] for k, (graphed, eager) in per_step.items()]
    text = [title, "", markdown_table(header, rows), "",
            "Attention time of one UNet call (every shape times its calls):", "",
            markdown_table(["kernel", "ms per UNet call (graphed)", "eager"], sums)]  # fmt: skip
    args.out.write_text("\n".join(text) + "\n")
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
