"""The fast path's fp8 linear layers (ldmkit.fast.fp8): quantization, the swap, the setting, the pipeline.

Everything but the ``torch._scaled_mm`` call runs on the CPU, through the reference path that
dequantizes the same float8 values and multiplies in float32, so these tests check the
quantization itself. The GPU tests check that the kernel computes what the reference computes.

Error bounds. float8_e4m3fn has 3 mantissa bits: above its smallest normal, 2^-6, neighbouring
values lie 2^-3 of a power of two apart, so rounding to nearest moves a value by at most 2^-4 of
itself; below it (subnormals, 2^-9 apart) by at most 2^-10. Rows are scaled so their largest
magnitude is 448, so in the original units an element moves by at most
max(2^-4 |v|, 2^-10 scale). For a product of two such operands with random entries the rounding
errors are independent: each operand's elements move by about 2.6e-2 (relative RMS) and the
two add in quadrature, so an fp8 linear layer's output lies about 3.7e-2 (relative Frobenius)
from float32's. The tests allow 5e-2: a wrong scale (per column instead of per row, transposed,
not applied) gives errors of order 1.
"""

from __future__ import annotations

import copy
import dataclasses
import logging

import pytest
import torch
from test_fast_path import tiny_pipeline
from torch import nn

from ldmkit import Conditioning, InputError, Pipeline
from ldmkit.fast import FastConfig
from ldmkit.fast.fp8 import (
    FP8_DTYPE,
    FP8_MAX,
    Fp8Linear,
    dequantize_rows,
    fp8_linear_supported,
    quantize_rows,
    scaled_mm_rows,
    with_fp8_linears,
)
from ldmkit.fast.geglu import KernelGEGLU, with_kernel_geglu
from ldmkit_unet.transformer import BasicTransformerBlock

FP8_GPU = torch.cuda.is_available() and fp8_linear_supported(torch.device("cuda"))
LAYER_TOLERANCE = 5e-2  # relative Frobenius error of one fp8 layer against float32 (see the module docstring)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def test_quantized_rows_round_trip_within_e4m3_rounding() -> None:
    torch.manual_seed(0)
    # rows of very different magnitudes, and a heavy-tailed row: each row gets its own scale
    t = torch.randn(6, 256) * torch.tensor([1e-4, 1e-2, 1.0, 1e2, 1e4, 1.0])[:, None]
    t[5] = torch.randn(256) ** 3
    q, scale = quantize_rows(t)
    assert q.dtype == FP8_DTYPE and q.shape == t.shape and scale.shape == (6, 1) and scale.dtype == torch.float32
    assert q.float().abs().max().item() <= FP8_MAX
    back = dequantize_rows(q, scale)
    bound = torch.maximum(2.0**-4 * t.abs(), 2.0**-10 * scale) * (1 + 1e-5)  # the float32 division rounds too
    assert ((back - t).abs() <= bound).all()
    # each row's largest magnitude lands on 448 exactly, so it comes back (up to float32 rounding)
    peak = t.abs().argmax(dim=1, keepdim=True)
    torch.testing.assert_close(back.gather(1, peak), t.gather(1, peak), rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp8_linear_within_fp8_rounding_of_the_float32_layer(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    layer = nn.Linear(320, 640)
    x = torch.randn(2, 77, 320)
    with torch.no_grad():
        expected = layer(x)  # float32
        fp8 = Fp8Linear(copy.deepcopy(layer).to(dtype))
        out = fp8(x.to(dtype))
    assert out.dtype == dtype and out.shape == (2, 77, 640)
    assert fp8.weight_fp8.dtype == FP8_DTYPE and fp8.weight_fp8.shape == (640, 320)
    assert fp8.weight_scale.shape == (1, 640) and fp8.weight_scale.dtype == torch.float32
    assert fp8.bias is not None and fp8.bias.dtype == dtype
    assert not list(fp8.parameters())  # inference only: everything is a buffer
    err = _rel(out, expected)
    assert 1e-2 < err < LAYER_TOLERANCE, err  # above 1e-2: the inputs really were rounded to fp8
    # exactly the reference computation: the rounded operands multiplied in float32
    x_fp8, scale_x = quantize_rows(x.to(dtype).reshape(-1, 320))
    manual = dequantize_rows(x_fp8, scale_x) @ fp8.dequantized_weight().t() + fp8.bias.float()
    torch.testing.assert_close(out.float().reshape(-1, 640), manual.to(dtype).float(), rtol=0, atol=0)


def test_zero_rows_and_zero_weights_give_exact_zeros() -> None:
    layer = nn.Linear(64, 32, bias=False)
    with torch.no_grad():
        layer.weight[3:7] = 0  # zero output channels
    fp8 = Fp8Linear(layer)
    assert torch.isfinite(fp8.weight_scale).all() and (fp8.weight_scale > 0).all()
    x = torch.randn(4, 64)
    x[1] = 0  # a zero input row
    out = fp8(x)
    assert torch.isfinite(out).all()
    assert torch.equal(out[1], torch.zeros(32)) and torch.equal(out[:, 3:7], torch.zeros(4, 4))
    zero = nn.Linear(64, 32)
    nn.init.zeros_(zero.weight)  # like the UNet's zero-initialised output layers
    out = Fp8Linear(zero)(torch.zeros(5, 64))
    assert torch.equal(out, zero.bias.detach().expand(5, 32))


@pytest.mark.parametrize("lead", [(), (3,), (2, 3, 5), (0,)])
def test_fp8_linear_keeps_the_leading_shape(lead: tuple[int, ...]) -> None:
    fp8 = Fp8Linear(nn.Linear(64, 48))
    out = fp8(torch.randn(*lead, 64))
    assert out.shape == (*lead, 48)


def test_strided_inputs_give_the_same_result() -> None:
    torch.manual_seed(0)
    fp8 = Fp8Linear(nn.Linear(64, 32))
    x = torch.randn(64, 10, 3).permute(2, 1, 0)  # (3, 10, 64), not contiguous
    torch.testing.assert_close(fp8(x), fp8(x.contiguous()), rtol=0, atol=0)


def test_swap_takes_aligned_plain_linears_and_leaves_the_original() -> None:
    class Subclass(nn.Linear):  # may compute something else: left alone
        pass

    hooked = nn.Linear(64, 64)
    hooked.register_forward_hook(lambda module, args, out: out * 2)  # as unmerged LoRA updates run
    model = nn.Sequential(
        nn.Linear(64, 128),  # swapped
        nn.Linear(128, 24),  # 24 outputs: not a multiple of 16
        nn.Linear(24, 64),  # 24 inputs
        nn.Sequential(nn.Linear(64, 64, bias=False), nn.GELU()),  # swapped, nested, no bias
        nn.Linear(64, 32),  # swapped
        Subclass(32, 64),  # a subclass, and only 32 inputs
        hooked,
    )
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    swapped = with_fp8_linears(model)
    kinds = [type(m).__name__ for m in (swapped[0], swapped[1], swapped[2], swapped[3][0], swapped[4])]
    assert kinds == ["Fp8Linear", "Linear", "Linear", "Fp8Linear", "Fp8Linear"]
    assert type(swapped[5]) is Subclass and type(swapped[6]) is nn.Linear
    assert swapped[1].weight is model[1].weight  # what is not swapped is shared, not copied
    # the original keeps its layers and its weights, bit for bit
    assert all(type(model[i]) is nn.Linear for i in (0, 1, 2, 4)) and type(model[3][0]) is nn.Linear
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())
    x = torch.randn(2, 64)
    with torch.no_grad():
        assert _rel(swapped(x), model(x)) < 2 * LAYER_TOLERANCE  # three fp8 layers in a row


def test_swap_rules_and_predicate() -> None:
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 32), nn.Linear(32, 64))
    swapped = with_fp8_linears(model)
    # 64 -> 32 is aligned and 64 wide at the input: swapped; 32 -> 64 is narrower than MIN_FEATURES
    assert [type(m) for m in swapped] == [Fp8Linear, Fp8Linear, nn.Linear]
    only_wide = with_fp8_linears(model, predicate=lambda m: m.out_features >= 64)
    assert [type(m) for m in only_wide] == [Fp8Linear, nn.Linear, nn.Linear]
    assert isinstance(with_fp8_linears(nn.Linear(64, 64)), Fp8Linear)  # a linear on its own


def test_transformer_block_with_fp8_and_the_geglu_kernel() -> None:
    """GEGLUs on the fused kernel are no linears: with both swaps they keep the kernel."""
    torch.manual_seed(0)
    block = BasicTransformerBlock(64, 2, 32, context_dim=64).eval()
    fp8 = with_fp8_linears(block)
    both = with_fp8_linears(with_kernel_geglu(block))
    assert isinstance(fp8.ff.net[0].proj, Fp8Linear) and isinstance(fp8.attn2.to_k, Fp8Linear)
    assert isinstance(both.ff.net[0], KernelGEGLU) and isinstance(both.ff.net[2], Fp8Linear)
    assert isinstance(both.attn1.to_q, Fp8Linear) and isinstance(both.attn1.to_out[0], Fp8Linear)
    assert isinstance(block.attn1.to_q, nn.Linear) and type(block.ff.net[0].proj) is nn.Linear
    x, ctx = torch.randn(2, 16, 64), torch.randn(2, 7, 64)
    with torch.no_grad():
        expected = block(x, ctx)
        assert _rel(fp8(x, ctx), expected) < LAYER_TOLERANCE  # the residuals carry x through unrounded
        assert _rel(both(x, ctx), expected) < LAYER_TOLERANCE


@pytest.mark.skipif(not hasattr(torch, "_scaled_mm"), reason="no torch._scaled_mm")
def test_scaled_mm_call_matches_the_reference_where_it_runs_on_the_cpu() -> None:
    """The kernel call's conventions (operand layouts, scale shapes, bias) on the CPU, where torch offers it."""
    torch.manual_seed(0)
    fp8 = Fp8Linear(nn.Linear(64, 48).to(torch.bfloat16))
    x_fp8, scale_x = quantize_rows(torch.randn(10, 64).bfloat16())
    try:
        out = scaled_mm_rows(x_fp8, scale_x, fp8.weight_fp8, fp8.weight_scale, fp8.bias, torch.bfloat16)
    except (RuntimeError, NotImplementedError) as exc:  # older torch: CUDA only
        pytest.skip(f"torch._scaled_mm does not run on the CPU here: {exc}")
    assert out.dtype == torch.bfloat16 and out.shape == (10, 48)
    assert _rel(out, fp8.reference(x_fp8, scale_x)) < 1e-2  # bf16 output rounding only


# -- the setting ---------------------------------------------------------------------------------


def test_fp8_setting_is_checked() -> None:
    cpu = torch.device("cpu")
    assert not FastConfig().resolve(cpu).fp8_linear  # off unless asked
    assert not FastConfig(precision="bf16").resolve(torch.device("cuda")).fp8_linear
    with pytest.raises(InputError, match="fp8_linear=True needs precision bf16 or fp16"):
        FastConfig(precision="fp32", fp8_linear=True)
    with pytest.raises(InputError, match="fp8_linear=True needs precision bf16 or fp16"):
        FastConfig(fp8_linear=True).resolve(cpu)  # the CPU's default precision is fp32
    for value in (None, 1, "yes"):
        with pytest.raises(InputError, match="fp8_linear must be True or False"):
            FastConfig(fp8_linear=value)  # type: ignore[arg-type]


def test_fp8_on_the_cpu_warns_of_the_reference_path(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="ldmkit.fast.config"):
        assert FastConfig(precision="fp16", fp8_linear=True).resolve(torch.device("cpu")).fp8_linear
    assert "reference path" in caplog.text


@pytest.mark.skipif(FP8_GPU, reason="this CUDA device has fp8 matmuls")
def test_fp8_on_cuda_without_fp8_matmuls_is_refused() -> None:
    with pytest.raises(InputError, match="compute capability 8.9"):
        FastConfig(precision="bf16", fp8_linear=True).resolve(torch.device("cuda"))


# -- the pipeline --------------------------------------------------------------------------------


def _pipeline() -> Pipeline:
    """A tiny pipeline whose linears are wide enough to swap, the time embedding's first one included."""
    return tiny_pipeline(seed=0, model_channels=64, context_dim=64)


def test_bf16_fast_path_with_fp8_linears_on_cpu() -> None:
    pipe = _pipeline()
    g = torch.Generator().manual_seed(1)
    cond, uncond = (
        Conditioning(crossattn=torch.randn(2, 5, 64, generator=g)),
        Conditioning(crossattn=torch.zeros(2, 5, 64)),
    )
    x, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([700, 300])
    with torch.no_grad():
        reference = pipe.model_fn(cond)(x, t)  # float32, the UNet itself (unguided)
        pipe.optimize(precision="bf16", compile=False)
        bf16 = pipe.model_fn(cond)(x, t)
        pipe.optimize(precision="bf16", compile=False, fp8_linear=True)
        fp8 = pipe.model_fn(cond)(x, t)
        guided = pipe.model_fn(cond, uncond, guidance_scale=3.0)(x, t)
    assert pipe.fast is not None and pipe.fast.describe()["fp8_linear"] is True
    module = pipe.fast.denoiser.module
    assert isinstance(module.time_embed[0], Fp8Linear)  # the UNet no longer reads that layer's weight
    linears = sum(type(m) is nn.Linear for m in pipe.denoiser.modules())
    assert sum(isinstance(m, Fp8Linear) for m in module.modules()) == linears  # every one of this UNet
    assert not any(isinstance(m, Fp8Linear) for m in pipe.modules())  # the pipeline's own are kept
    assert fp8.dtype == torch.float32 and torch.isfinite(fp8).all() and torch.isfinite(guided).all()
    # Measured on four seeds: bf16 1.1-1.2e-2 from float32, bf16 + fp8 1.9-2.0e-2 (from bf16 too);
    # 4e-2 leaves twice that, and a broken scale would be off by order 1.
    err, bf16_err = _rel(fp8, reference), _rel(bf16, reference)
    assert bf16_err < err < 4e-2, (err, bf16_err)
    assert _rel(fp8, bf16) < 4e-2
    images = pipe.decode(pipe.sample(cond, uncond=uncond, guidance_scale=3.0, steps=4))
    assert torch.isfinite(images).all()


def test_fast_denoiser_applies_fp8_after_the_geglu_swap() -> None:
    from ldmkit.fast.modules import FastDenoiser

    pipe = _pipeline()
    settings = FastConfig(precision="bf16", compile=False).resolve(torch.device("cpu"))
    both = FastDenoiser(pipe.denoiser, dataclasses.replace(settings, geglu_kernel=True, fp8_linear=True))
    geglus = [m for m in both.module.modules() if isinstance(m, KernelGEGLU)]
    assert geglus and not any(isinstance(m, Fp8Linear) for g in geglus for m in g.modules())
    linears = sum(type(m) is nn.Linear for m in pipe.denoiser.modules())
    assert sum(isinstance(m, Fp8Linear) for m in both.module.modules()) == linears - len(geglus)


# -- GPU -----------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not FP8_GPU, reason="needs a CUDA GPU with fp8 matmuls (compute capability 8.9+)")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bias", [True, False])
def test_gpu_scaled_mm_matches_the_reference(dtype: torch.dtype, bias: bool) -> None:
    torch.manual_seed(0)
    for k, n, rows in ((320, 1280, 2 * 4096), (768, 320, 2 * 77), (1280, 10240, 2 * 256), (640, 640, 33)):
        fp8 = Fp8Linear(nn.Linear(k, n, bias=bias).to("cuda", dtype))
        assert fp8.supported
        x = torch.randn(rows, k, device="cuda", dtype=dtype)
        with torch.no_grad():
            out = fp8(x)
            x_fp8, scale_x = quantize_rows(x)
            reference = fp8.reference(x_fp8, scale_x)
        assert out.dtype == dtype and out.shape == (rows, n)
        assert _rel(out, reference) < 1e-2, (k, n, rows)


@pytest.mark.gpu
@pytest.mark.skipif(not FP8_GPU, reason="needs a CUDA GPU with fp8 matmuls (compute capability 8.9+)")
def test_gpu_fp8_fast_path_compiles_and_graphs() -> None:
    """The shipped model with fp8 linears, compiled and CUDA-graphed as the fast path runs on GPUs."""
    from ldmkit.generation import default_model_dir

    pipe = Pipeline.load(default_model_dir(), device="cuda")
    cond = pipe.condition(pipe.task("text2img").wrap("a red circle and a blue square"))
    x = torch.randn(1, *pipe.latent_shape(1)[1:], device="cuda")
    t = torch.tensor([500], device="cuda")
    with torch.no_grad():
        reference = pipe.model_fn(cond)(x, t)
        pipe.optimize(fp8_linear=True)  # the CUDA defaults: bf16, channels_last, compile, CUDA graphs
        for _ in range(3):  # capture, then replays
            out = pipe.model_fn(cond)(x, t)
    assert pipe.fast is not None and pipe.fast.describe()["graph_failures"] == 0
    assert all(m.supported for m in pipe.fast.denoiser.module.modules() if isinstance(m, Fp8Linear))
    assert torch.isfinite(out).all()
    assert _rel(out, reference) < 0.1  # loose: a wrong scale is off by O(1); pictures: benchmarks/fp8_quality.py
