"""Compile FlashAttention-4's Hopper forward kernel for the SD v1 UNet's attention shapes on the CPU.

No GPU is needed: under ``FakeTensorMode`` FlashAttention-4 compiles its CuTe DSL kernel for sm_90a
and skips the launch, which shows the kernel accepts each shape (head widths 40, 80, 160; 77 keys)
and how long its first call spends compiling. Needs the site that ``fa4_bundle.sh`` unpacks (for
this Python's version) on PYTHONPATH, with its ``nvidia_cutlass_dsl/dsl_packages`` folder:

    FLASH_ATTENTION_ARCH=sm_90 CUTE_DSL_ARCH=sm_90a FLASH_ATTENTION_NUM_SMS=132 \\
      python benchmarks/fa4_cross_compile.py
"""

from __future__ import annotations

import logging
import time

import torch
from gpu_attention_kernels import CONTEXT_TOKENS, HEADS, LEVELS  # this folder is on sys.path when the script runs

log = logging.getLogger("fa4_cross_compile")


def main() -> int:
    from torch._subclasses.fake_tensor import FakeTensorMode

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from flash_attn.cute import flash_attn_func

    failures = 0
    shapes = [(side * side, keys, width) for side, width, _ in LEVELS for keys in (side * side, CONTEXT_TOKENS)]
    for queries, keys, width in shapes:
        with FakeTensorMode():
            q = torch.empty(16, queries, HEADS, width, dtype=torch.bfloat16, device="cuda")  # (B, N, heads, d)
            k = torch.empty(16, keys, HEADS, width, dtype=torch.bfloat16, device="cuda")  # (B, L, heads, d)
            start = time.perf_counter()
            try:
                out, _ = flash_attn_func(q, k, k, softmax_scale=width**-0.5, causal=False)
            except Exception as exc:  # noqa: BLE001  (report every shape)
                failures += 1
                log.error("%d queries, %d keys, head %d: %s: %s", queries, keys, width, type(exc).__name__, exc)
                continue
            log.info("%d queries, %d keys, head %d: compiled in %.2f s, out %s", queries, keys, width,
                     time.perf_counter() - start, tuple(out.shape))  # fmt: skip
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
