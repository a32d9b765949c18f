"""How close the SD v1 UNet's linear layers and convolutions can come to the GPU's limits, shape by shape.

Every ``nn.Linear`` and ``nn.Conv2d`` call of one UNet call is recorded by forward hooks on the meta
device (no weights, no GPU): its shape, how many times a call makes it, its FLOPs and the bytes it
must move at least (input, weight and output once each, bf16). A product cannot take less time than
its FLOPs at the matmul peak nor less than its bytes at the memory bandwidth: the larger of the two
is its roofline time. The table lists each distinct shape with both bounds; ``--time`` (a CUDA GPU)
also times each shape alone (``F.linear`` with cuBLAS, ``F.conv2d`` with cuDNN's autotuner,
channels_last; bf16; CUDA graphs of 20 calls) and reports its share of the roofline, so the
milliseconds a faster kernel could still take off stand next to the ones it cannot.

    python benchmarks/unet_roofline.py --batch 16 --out roofline.md                 # bounds only (CPU)
    python benchmarks/unet_roofline.py --batch 16 --time --out roofline_gpu.md      # and each shape timed

Without ``--time`` the peak and the bandwidth are ``--peak-tflops`` and ``--bandwidth-tbs`` (an H100's
measured bf16 matmul peak, 777 TFLOP/s in run X, and 3.0 TB/s of HBM3); with it the peak is measured.
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import ensure_importable, graphed_us, markdown_table, matmul_peak_tflops
from torch import nn

log = logging.getLogger("unet_roofline")
BYTES = 2  # bf16


@dataclass(frozen=True)
class Op:
    """One linear layer or convolution call: (rows, in, out) of a product, or a convolution's shape."""

    kind: str  # "linear" or "conv"
    rows: int  # linear: rows of the product; conv: batch
    in_features: int
    out_features: int
    bias: bool
    side: tuple[int, int] = (1, 1)  # conv: input height, width
    kernel: int = 1
    stride: int = 1

    @property
    def out_side(self) -> tuple[int, int]:
        pad = self.kernel // 2
        return tuple((s + 2 * pad - self.kernel) // self.stride + 1 for s in self.side)  # type: ignore[return-value]

    @property
    def flops(self) -> int:
        if self.kind == "linear":
            return 2 * self.rows * self.in_features * self.out_features
        h, w = self.out_side
        return 2 * self.rows * h * w * self.out_features * self.in_features * self.kernel**2

    @property
    def min_bytes(self) -> int:
        if self.kind == "linear":
            elements = self.rows * (self.in_features + self.out_features) + self.in_features * self.out_features
        else:
            h, w = self.out_side
            inputs = self.rows * self.in_features * self.side[0] * self.side[1]
            outputs = self.rows * self.out_features * h * w
            elements = inputs + outputs + self.out_features * self.in_features * self.kernel**2
        return BYTES * elements

    def describe(self) -> str:
        bias = " + bias" if self.bias else ""
        if self.kind == "linear":
            return f"linear {self.rows}x{self.in_features} -> {self.out_features}{bias}"
        (h, w), k = self.side, self.kernel
        stride = f", stride {self.stride}" if self.stride != 1 else ""
        return f"conv {k}x{k} {self.in_features} -> {self.out_features}{bias} at {h}x{w}{stride} (batch {self.rows})"


def inventory(batch: int, context_tokens: int = 77) -> Counter[Op]:
    """Every linear and convolution call of one SD v1 UNet call at ``batch`` (64x64 latents), counted."""
    from gpu_sampling import SD_UNET

    from ldmkit import Conditioning
    from ldmkit_unet.unet import UNet

    with torch.device("meta"):
        unet = UNet.from_params(SD_UNET).eval()
    ops: Counter[Op] = Counter()

    def record(module: nn.Module, args: tuple, _output: object) -> None:
        x = args[0]
        if isinstance(module, nn.Linear):
            rows = x.numel() // x.shape[-1]
            ops[Op("linear", rows, module.in_features, module.out_features, module.bias is not None)] += 1
        elif isinstance(module, nn.Conv2d):
            kernel, stride = module.kernel_size[0], module.stride[0]
            op = Op("conv", x.shape[0], module.in_channels, module.out_channels, module.bias is not None,
                    (x.shape[-2], x.shape[-1]), kernel, stride)  # fmt: skip
            ops[op] += 1

    hooks = [m.register_forward_hook(record) for m in unet.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    x = torch.empty(batch, SD_UNET["in_channels"], 64, 64, device="meta")  # (B, 4, 64, 64)
    t = torch.zeros(batch, dtype=torch.long, device="meta")
    ctx = torch.empty(batch, context_tokens, SD_UNET["context_dim"], device="meta")  # (B, 77, 768)
    with torch.no_grad():
        unet(x, t, Conditioning(crossattn=ctx))
    for hook in hooks:
        hook.remove()
    return ops


def time_op(op: Op, device: torch.device) -> float:
    """us per call of ``op`` alone on ``device`` (bf16; cuBLAS or cuDNN as the fast path calls them)."""
    g = torch.Generator(device=device).manual_seed(0)
    kw = dict(device=device, dtype=torch.bfloat16)
    if op.kind == "linear":
        x = torch.randn(op.rows, op.in_features, generator=g, **kw)  # (M, K)
        w = torch.randn(op.out_features, op.in_features, generator=g, **kw)  # (N, K)
        b = torch.randn(op.out_features, generator=g, **kw) if op.bias else None
        return graphed_us(lambda: F.linear(x, w, b), calls=20)
    x = torch.randn(op.rows, op.in_features, *op.side, generator=g, **kw).to(memory_format=torch.channels_last)
    w = torch.randn(op.out_features, op.in_features, op.kernel, op.kernel, generator=g, **kw)
    w = w.to(memory_format=torch.channels_last)
    b = torch.randn(op.out_features, generator=g, **kw) if op.bias else None
    return graphed_us(lambda: F.conv2d(x, w, b, stride=op.stride, padding=op.kernel // 2), calls=20)


def report(ops: Counter[Op], peak: float, bandwidth: float, timed: dict[Op, float] | None) -> str:
    """The shapes' table (longest roofline time first) and the totals by kind."""
    header = ["shape", "calls", "GFLOP a call", "MB a call", "compute bound us", "memory bound us"]
    if timed is not None:
        header += ["measured us", "TFLOP/s", "of roofline"]
    rows, totals = [], Counter[str]()
    for op, calls in sorted(ops.items(), key=lambda kv: -kv[1] * max(kv[0].flops / peak, kv[0].min_bytes / bandwidth)):
        compute_us, memory_us = op.flops / peak * 1e6, op.min_bytes / bandwidth * 1e6
        row = [op.describe(), str(calls), f"{op.flops / 1e9:.1f}", f"{op.min_bytes / 1e6:.1f}",
               f"{compute_us:.1f}", f"{memory_us:.1f}"]  # fmt: skip
        totals[f"{op.kind} flops"] += calls * op.flops
        totals[f"{op.kind} roofline us"] += calls * max(compute_us, memory_us)
        if timed is not None:
            us = timed[op]
            row += [f"{us:.1f}", f"{op.flops / us / 1e6:.0f}", f"{max(compute_us, memory_us) / us:.0%}"]
            totals[f"{op.kind} measured us"] += calls * us
        rows.append(row)
    lines = [markdown_table(header, rows), ""]
    for kind in sorted({op.kind for op in ops}, reverse=True):  # linear, then conv
        line = (f"- {kind}: {totals[f'{kind} flops'] / 1e12:.2f} TFLOP a call; roofline "
                f"{totals[f'{kind} roofline us'] / 1e3:.2f} ms")  # fmt: skip
        if timed is not None:
            measured = totals[f"{kind} measured us"]
            line += f"; each shape alone {measured / 1e3:.2f} ms ({totals[f'{kind} roofline us'] / measured:.0%})"
        lines.append(line)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batch", type=int, default=16, help="UNet batch (a guided step: 2 x pictures)")
    parser.add_argument("--time", action="store_true", help="time every shape on the GPU")
    parser.add_argument("--peak-tflops", type=float, default=777.0, help="bf16 matmul peak without --time")
    parser.add_argument("--bandwidth-tbs", type=float, default=3.0, help="memory bandwidth, TB/s")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    ensure_importable()
    if args.batch < 1:
        parser.error(f"--batch must be at least 1, got {args.batch}")
    if args.time and not torch.cuda.is_available():
        parser.error("--time needs a CUDA GPU (the bounds alone do not)")
    ops = inventory(args.batch)
    peak, timed, where = args.peak_tflops * 1e12, None, "assumed"
    if args.time:
        device = torch.device("cuda")
        torch.backends.cudnn.benchmark = True  # as the fast path runs its convolutions
        peak, where = matmul_peak_tflops(device, torch.bfloat16, 8192) * 1e12, torch.cuda.get_device_name()
        timed = {}
        for op in ops:
            timed[op] = time_op(op, device)
            log.info("%s: %.1f us", op.describe(), timed[op])
    title = (f"# SD v1 UNet, batch {args.batch}: linear layers and convolutions against the roofline "
             f"({where}: peak {peak / 1e12:.0f} TFLOP/s, {args.bandwidth_tbs:.1f} TB/s)")  # fmt: skip
    text = "\n".join([title, "", report(ops, peak, args.bandwidth_tbs * 1e12, timed)])
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
