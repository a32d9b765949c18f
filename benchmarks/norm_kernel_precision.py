"""Why the Triton GroupNorm kernels move the bf16 UNet further from float32: a CPU experiment.

The SD v1 UNet (random weights) in bf16 against itself in float32: eager; eager with the norm
kernels' arithmetic (:class:`ldmkit.fast.norms.KernelGroupNorm` off CUDA computes it in torch
operations); compiled with that arithmetic behind an opaque custom op (as the kernels are on a
GPU); compiled as it is (the compiler may fuse the sums feeding each GroupNorm into it); and
compiled with the fused GEGLU kernel's arithmetic (float32 product and gate, one rounding) as an
opaque op, alone and with the norm kernels. Runs on the CPU, no Triton needed; minutes at 32x32
latents on two cores.

    python benchmarks/norm_kernel_precision.py --side 32 --out norm_precision.md [--by-site]

``--by-site`` adds one compiled row per kind of GroupNorm (``SITES``) made opaque alone, the others
left for the compiler to fuse: which fusions the precision depends on.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
from collections.abc import Iterator
from pathlib import Path

import torch
from _common import ensure_importable, markdown_table, randomize_zeroed, rel_err

log = logging.getLogger("norm_kernel_precision")


@functools.cache  # registers a custom op: once per process
def opaque_norm_forward():  # noqa: ANN201 - a replacement for KernelGroupNorm.forward
    """KernelGroupNorm.forward with its torch arithmetic behind a custom op the compiler cannot fuse into."""
    from ldmkit.fast.group_norm_kernels import group_norm_nhwc_reference

    @torch.library.custom_op("ldmkit_bench::group_norm_reference", mutates_args=())
    def reference(
        x: torch.Tensor,
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        groups: int,
        eps: float,
        silu: bool,
        add: torch.Tensor | None = None,
    ) -> torch.Tensor:
        y = group_norm_nhwc_reference(x, weight, bias, groups, eps, silu, add)
        return y.contiguous(memory_format=torch.channels_last)

    @reference.register_fake
    def _(x, weight, bias, groups, eps, silu, add=None):  # noqa: ANN001, ANN202
        return torch.empty_like(x)

    def forward(self, x: torch.Tensor, add: torch.Tensor | None = None) -> torch.Tensor:  # noqa: ANN001
        if add is not None:
            add = add.reshape(x.shape[0], x.shape[1]).contiguous()
        # a norm marked ``opaque = False`` computes the same in operations the compiler may fuse
        op = reference if getattr(self, "opaque", True) else group_norm_nhwc_reference
        return op(x, self.weight, self.bias, self.num_groups, self.eps, self.silu, add)

    return forward


@functools.cache  # registers a custom op: once per process
def opaque_geglu_forward():  # noqa: ANN201 - a replacement for KernelGEGLU.forward
    """KernelGEGLU.forward as the Hopper kernel computes it (float32 product and gate, the output
    rounded once), behind a custom op the compiler cannot fuse into."""
    from ldmkit.fast.geglu_kernels import geglu_interleaved_reference

    @torch.library.custom_op("ldmkit_bench::geglu_reference", mutates_args=())
    def reference(x: torch.Tensor, weight_i: torch.Tensor, bias_i: torch.Tensor) -> torch.Tensor:
        return geglu_interleaved_reference(x.float(), weight_i.float(), bias_i.float()).to(x.dtype)

    @reference.register_fake
    def _(x, weight_i, bias_i):  # noqa: ANN001, ANN202
        return x.new_empty((*x.shape[:-1], weight_i.shape[0] // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        return reference(x, self.weight_i, self.bias_i)

    return forward


# where a GroupNorm sits in the UNet, by the end of its module name
SITES = {
    "residual blocks' first norm (input: the previous block's residual sum)": ".in_layers.0",
    "residual blocks' second norm (input: convolution + embedding)": ".out_layers.0",
    "spatial transformers' norm (input: a residual block's output)": ".norm",
}


@contextlib.contextmanager
def replaced(cls: type, name: str, value: object) -> Iterator[None]:
    """``cls.<name>`` set to ``value`` for the duration of the block."""
    original = getattr(cls, name)
    setattr(cls, name, value)
    try:
        yield
    finally:
        setattr(cls, name, original)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--side", type=int, default=32, help="latent height and width")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--by-site", action="store_true", help="also one row per kind of GroupNorm made opaque alone")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    ensure_importable()
    from gpu_sampling import SD_UNET

    from ldmkit import Conditioning
    from ldmkit.fast import geglu, norms
    from ldmkit_unet.unet import UNet

    torch.manual_seed(0)
    unet = UNet.from_params(SD_UNET)
    randomize_zeroed(unet)
    unet.eval()
    x = torch.randn(args.batch, 4, args.side, args.side)
    t = torch.full((args.batch,), 500)
    ctx = torch.randn(args.batch, 77, 768)
    results: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        reference = unet(x, t, Conditioning(crossattn=ctx))
        unet16 = unet.to(torch.bfloat16, memory_format=torch.channels_last)
        x16 = x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        cond16 = Conditioning(crossattn=ctx.to(torch.bfloat16))
        results["eager"] = unet16(x16, t, cond16)
        swapped = norms.with_kernel_group_norms(unet16)
        results["eager, the norm kernels' arithmetic"] = swapped(x16, t, cond16)

        def compiled(module: torch.nn.Module) -> torch.Tensor:
            torch._dynamo.reset()
            return torch.compile(module, dynamic=False)(x16, t, cond16)

        with replaced(norms.KernelGroupNorm, "forward", opaque_norm_forward()):
            results["compiled, the norm kernels' arithmetic as an opaque op"] = compiled(swapped)
            if args.by_site:
                for site, suffix in SITES.items():
                    for name, module in swapped.named_modules():
                        if isinstance(module, norms.KernelGroupNorm):
                            module.opaque = name.endswith(suffix)
                    results[f"compiled, opaque only at the {site}"] = compiled(swapped)
                for module in swapped.modules():
                    module.__dict__.pop("opaque", None)
        results["compiled (the fast path off Hopper)"] = compiled(unet16)
        with replaced(geglu.KernelGEGLU, "forward", opaque_geglu_forward()):
            with replaced(norms.KernelGroupNorm, "forward", opaque_norm_forward()):
                results["compiled, the GEGLU kernel's arithmetic as an opaque op (the fast path on Hopper)"] = compiled(
                    geglu.with_kernel_geglu(unet16)
                )
                results["compiled, both kernels' arithmetic as opaque ops"] = compiled(geglu.with_kernel_geglu(swapped))
    rows = [[name, f"{rel_err(out, reference):.3e}"] for name, out in results.items()]
    text = markdown_table(["bf16 UNet", "rel. error vs float32"], rows)
    header = f"SD v1 UNet, random weights, {args.batch} x 4 x {args.side} x {args.side}, CPU, torch {torch.__version__}"
    args.out.write_text(f"# {header}\n\n{text}\n")
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
