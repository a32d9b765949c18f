"""The fused GEGLU kernel of the fast path (ldmkit.fast.geglu_kernels) and the swap that uses it.

Everything but the kernel runs everywhere (off Hopper the swapped module computes with torch
operations on the interleaved weights). The kernel runs on the CPU through Triton's interpreter
and is compiled for sm_90 without a GPU when Triton is installed (it does not come with CPU builds
of torch, so CI skips those); on a Hopper GPU it runs for real.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from ldmkit import InputError
from ldmkit.fast import FastConfig
from ldmkit.fast.geglu import KernelGEGLU, with_kernel_geglu
from ldmkit.fast.geglu_kernels import (
    TILE,
    GegluTile,
    geglu_interleaved_reference,
    interleave_geglu_weight,
)
from ldmkit.fast.support import hopper_with_triton, triton_available
from ldmkit_unet.transformer import GEGLU, BasicTransformerBlock
from tests.ldmkit.fast.triton_interpreter import interpreter_unusable_reason

HOPPER = torch.cuda.is_available() and hopper_with_triton(torch.device("cuda"))
INTERPRETER_REASON = interpreter_unusable_reason()


def _float64_geglu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, gelu: str = "none") -> torch.Tensor:
    value, gate = nn.functional.linear(x.double(), weight.double(), bias.double()).chunk(2, dim=-1)
    return value * nn.functional.gelu(gate, approximate=gelu)


def _gate_slack(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """What the GPU's tanh instruction may add to the tanh form of GEGLU: its relative error (2^-11 at most,
    PTX ISA) times 0.5 |gate| |value|, with a margin."""
    value, gate = nn.functional.linear(x.double(), weight.double(), bias.double()).chunk(2, dim=-1)
    return 4e-4 * (value * gate).abs()


def test_interleaved_weights_alternate_value_and_gate_rows() -> None:
    torch.manual_seed(0)
    weight, bias = torch.randn(64, 24), torch.randn(64)
    weight_i, bias_i = interleave_geglu_weight(weight, bias)
    assert weight_i.is_contiguous() and weight_i.shape == weight.shape
    assert torch.equal(weight_i[0::2], weight[:32]) and torch.equal(weight_i[1::2], weight[32:])
    assert torch.equal(bias_i[0::2], bias[:32]) and torch.equal(bias_i[1::2], bias[32:])
    x = torch.randn(3, 5, 24, dtype=torch.float64)
    torch.testing.assert_close(
        geglu_interleaved_reference(x, weight_i.double(), bias_i.double()), _float64_geglu(x, weight, bias)
    )
    with pytest.raises(ValueError, match="no GEGLU projection"):
        interleave_geglu_weight(torch.zeros(15, 4), torch.zeros(15))


def test_swapped_transformer_block_computes_the_same_and_shares_the_rest() -> None:
    torch.manual_seed(0)
    block = BasicTransformerBlock(64, 4, 16, context_dim=32).eval()
    swapped = with_kernel_geglu(block)
    geglu = swapped.ff.net[0]
    assert isinstance(geglu, KernelGEGLU) and not geglu.supported  # no Hopper here: torch operations
    assert isinstance(block.ff.net[0], GEGLU)  # the original keeps its module
    assert swapped.attn1.to_q.weight is block.attn1.to_q.weight  # everything else is shared
    x, ctx = torch.randn(2, 10, 64), torch.randn(2, 7, 32)
    with torch.no_grad():
        torch.testing.assert_close(swapped(x, ctx), block(x, ctx), rtol=1e-5, atol=1e-5)


def test_approximate_gelu_swap_gates_by_the_tanh_form() -> None:
    torch.manual_seed(0)
    block = BasicTransformerBlock(64, 4, 16, context_dim=32).eval()
    exact, tanh = with_kernel_geglu(block).ff.net[0], with_kernel_geglu(block, approximate=True).ff.net[0]
    assert tanh.approximate and not exact.approximate and "tanh form" in repr(tanh)
    geglu = block.ff.net[0]
    x = torch.randn(2, 10, 64, dtype=torch.float64)
    geglu64 = copy.deepcopy(geglu).double()
    tanh64 = copy.deepcopy(tanh).double()
    with torch.no_grad():
        expected = _float64_geglu(x, geglu.proj.weight, geglu.proj.bias, "tanh")
        torch.testing.assert_close(tanh64(x), expected)
        # the tanh form differs from the exact one by at most 4.7e-4 of the value it multiplies
        gap = (tanh64(x) - geglu64(x)).abs()
        value = nn.functional.linear(x, geglu64.proj.weight, geglu64.proj.bias).chunk(2, -1)[0].abs()
        assert gap.max() > 0 and bool((gap <= 4.8e-4 * value + 1e-12).all())


def test_approximate_gelu_setting_needs_the_kernel() -> None:
    cpu = torch.device("cpu")
    assert FastConfig().resolve(cpu).approximate_gelu is False
    assert FastConfig(approximate_gelu=False).resolve(cpu).approximate_gelu is False
    # None follows the kernel: on wherever it runs (a Hopper GPU), which the CPU cannot show through resolve()
    assert FastConfig()._approximate_gelu(geglu_kernel=True) is True
    assert FastConfig(approximate_gelu=False)._approximate_gelu(geglu_kernel=True) is False
    with pytest.raises(InputError, match="approximate_gelu=True needs the GEGLU kernel"):
        FastConfig(approximate_gelu=True).resolve(cpu)
    with pytest.raises(InputError, match="approximate_gelu must be True, False or None"):
        FastConfig(approximate_gelu="tanh")  # type: ignore[arg-type]


def test_only_modules_that_declare_geglu_are_swapped() -> None:
    class Gated(nn.Module):  # the same shape as a GEGLU, but not declared one
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(8, 32)

    model = nn.Sequential(Gated(), GEGLU(16, 8))
    swapped = with_kernel_geglu(model)
    assert type(swapped[0]) is Gated and isinstance(swapped[1], KernelGEGLU)
    assert isinstance(with_kernel_geglu(GEGLU(16, 8)), KernelGEGLU)  # a GEGLU on its own
    broken = GEGLU(16, 8)
    broken.proj = nn.Linear(16, 16, bias=False)
    with pytest.raises(ValueError, match="bias"):
        KernelGEGLU(broken)


def test_small_products_take_the_small_tile() -> None:
    from ldmkit.fast.geglu_kernels import SMALL_TILE, choose_tile, tile_count

    sms = 132  # an H100 SXM / H200
    # SD v1 at batch 16: every level fills its waves with the large tile
    for m, two_n in [(65536, 2560), (16384, 5120), (4096, 10240), (1024, 10240)]:
        assert choose_tile(m, two_n, sms) == TILE
    # batch 2: 16x16 (160 tiles, 1.2 waves) and 8x8 (40 tiles) leave SMs idle; 64x64 and 32x32 do not
    assert choose_tile(8192, 2560, sms) == TILE and choose_tile(2048, 5120, sms) == TILE
    assert choose_tile(512, 10240, sms) == SMALL_TILE and choose_tile(128, 10240, sms) == SMALL_TILE
    assert tile_count(128, 10240, SMALL_TILE) == 2 * tile_count(128, 10240, TILE)


def test_geglu_kernel_setting_follows_the_device() -> None:
    cpu = torch.device("cpu")
    assert not FastConfig().resolve(cpu).geglu_kernel
    assert not FastConfig(geglu_kernel=False).resolve(torch.device("cuda")).geglu_kernel
    with pytest.raises(InputError, match="geglu_kernel=True needs a Hopper GPU"):
        FastConfig(geglu_kernel=True).resolve(cpu)
    with pytest.raises(InputError, match="geglu_kernel"):
        FastConfig(geglu_kernel="yes")  # type: ignore[arg-type]


@pytest.mark.gpu
@pytest.mark.skipif(not HOPPER, reason="needs a Hopper GPU with Triton")
def test_geglu_kernel_is_on_by_default_on_hopper_in_bf16_only() -> None:
    cuda = torch.device("cuda")
    assert FastConfig().resolve(cuda).geglu_kernel and FastConfig().resolve(cuda).approximate_gelu
    assert not FastConfig(approximate_gelu=False).resolve(cuda).approximate_gelu
    assert not FastConfig(precision="fp32").resolve(cuda).geglu_kernel
    with pytest.raises(InputError, match="bf16 or fp16"):
        FastConfig(precision="fp32", geglu_kernel=True).resolve(cuda)


# (tile, programs): small tiles so that the interpreter runs quickly; a grid of fewer programs than
# tiles makes each program loop over several
INTERPRETER_CASES = [(GegluTile(32, 32, 32, 2, 2, 4), 3), (GegluTile(64, 64, 32, 8, 3, 4), 2)]
# (M, K, N): sizes that are no multiples of the tiles exercise the TMA boxes' edges
INTERPRETER_SHAPES = [(100, 80, 48), (62, 40, 96)]


def _check_kernel(device: str, dtype: torch.dtype, cases: list, shapes: list, approximate: bool = False) -> None:
    from ldmkit.fast.geglu_kernels import launch_geglu

    torch.manual_seed(0)
    for m, k, n in shapes:
        x = torch.randn(2, m // 2, k).to(device, dtype)
        weight = (torch.randn(2 * n, k) / k**0.5).to(device, dtype)
        bias = torch.randn(2 * n).to(device, dtype)
        expected = _float64_geglu(x, weight, bias, "tanh" if approximate else "none")
        slack = _gate_slack(x, weight, bias) if approximate and device == "cuda" else 0.0
        weight_i, bias_i = interleave_geglu_weight(weight, bias)
        for tile, programs in cases:
            y = launch_geglu(x, weight_i, bias_i, tile, programs=programs, approximate=approximate)
            assert y.shape == (2, m // 2, n) and y.dtype == dtype
            # the same rounded inputs and a float32 accumulator: the output's rounding dominates
            err = (y.double() - expected).abs() - torch.finfo(dtype).eps * expected.abs() - slack
            assert err.max().item() <= 1e-3, (m, k, n, tile, approximate, err.max().item())


@pytest.mark.skipif(INTERPRETER_REASON is not None, reason=INTERPRETER_REASON or "")
def test_kernel_in_the_triton_interpreter_matches_float64() -> None:
    # float16, not bfloat16: Triton 3.6's interpreter multiplies bfloat16 dot operands as their raw
    # bits (the kernel code is the same for both; the GPU test below runs bfloat16)
    code = textwrap.dedent(
        """
        import torch
        import test_geglu_kernel as t
        t._check_kernel("cpu", torch.float16, t.INTERPRETER_CASES, t.INTERPRETER_SHAPES)
        t._check_kernel("cpu", torch.float16, t.INTERPRETER_CASES[:1], t.INTERPRETER_SHAPES, approximate=True)
        """
    )
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), *sys.path])}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.skipif(not triton_available(), reason="needs Triton (it compiles for a GPU it need not have)")
@pytest.mark.parametrize(("approximate", "small"), [(False, False), (True, False), (False, True)])
def test_kernel_compiles_for_hopper_without_a_gpu(approximate: bool, small: bool) -> None:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from ldmkit.fast.geglu_kernels import SMALL_TILE, _kernel

    t = SMALL_TILE if small else TILE
    constants = {"BLOCK_M": t.block_m, "BLOCK_N": t.block_n, "BLOCK_K": t.block_k, "GROUP_M": t.group_m}
    constants["NUM_PROGRAMS"] = 132 * t.per_sm  # an H100 SXM
    constants["APPROXIMATE"] = approximate
    constants["HARDWARE_TANH"] = True
    signature = {
        "x_desc": f"tensordesc<bf16[{t.block_m}, {t.block_k}]>",
        "w_desc": f"tensordesc<bf16[{t.block_n}, {t.block_k}]>",
        "b_ptr": "*bf16",
        "y_desc": f"tensordesc<bf16[{t.block_m}, {t.block_n // 2}]>",
        **{name: "i32" for name in ("M", "N", "K")},
        **{name: "constexpr" for name in constants},
    }
    source = ASTSource(fn=_kernel(), signature=signature, constexprs=constants)
    options = {"num_warps": t.warps, "num_stages": t.stages}
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)
    ptx = compiled.asm["ptx"]
    # the Hopper paths, not a fallback: TMA bulk copies in and out, and warpgroup MMA
    assert compiled.asm["cubin"] and "cp.async.bulk.tensor" in ptx and "wgmma.mma_async" in ptx
    # what Hopper allows one program; two of the small tile's programs must fit one SM together
    assert compiled.metadata.shared * t.per_sm <= 227 * 1024
    # the tanh form runs on the tanh instruction, the exact form keeps erf (no tanh at all)
    assert ("tanh.approx.f32" in ptx) is approximate


@pytest.mark.gpu
@pytest.mark.skipif(not HOPPER, reason="needs a Hopper GPU with Triton")
def test_gpu_kernel_matches_float64() -> None:
    cases = [(TILE, None), (GegluTile(128, 128, 64, 8, 3, 4, per_sm=2), None), (TILE, 7)]
    _check_kernel("cuda", torch.bfloat16, cases, [(1000, 320, 1280), (256, 72, 200)])
    # the tanh form on the GPU's tanh instruction, against the same form in float64
    _check_kernel("cuda", torch.bfloat16, cases[:1], [(1000, 320, 1280), (256, 72, 200)], approximate=True)


@pytest.mark.gpu
@pytest.mark.skipif(not HOPPER, reason="needs a Hopper GPU with Triton")
def test_gpu_compiled_and_graphed_block_with_the_kernel_matches_float32() -> None:
    from ldmkit.fast.graphs import GraphCache

    torch.manual_seed(0)
    block = BasicTransformerBlock(320, 8, 40, context_dim=768).cuda().eval()
    block16 = copy.deepcopy(block).to(torch.bfloat16)
    swapped = with_kernel_geglu(block16)
    assert swapped.ff.net[0].supported
    plain = torch.compile(block16, dynamic=False)
    compiled = torch.compile(swapped, dynamic=False)
    x, ctx = torch.randn(4, 1024, 320, device="cuda"), torch.randn(4, 77, 768, device="cuda")
    x16, ctx16 = x.bfloat16(), ctx.bfloat16()
    graphs = GraphCache()

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return ((a.double() - b.double()).norm() / b.double().norm()).item()

    with torch.no_grad():
        expected = block(x, ctx)
        out = graphs("block", compiled, x16, ctx16)
        assert graphs.captures == 1 and graphs.failures == 0
        # no further from float32 than the compiled module without the kernel (a bf16 margin)
        err, plain_err = rel(out, expected), rel(plain(x16, ctx16), expected)
        assert err <= plain_err * 1.05 + 1e-4, (err, plain_err)
        again = graphs("block", compiled, x16 * 2, ctx16)  # a replay with new inputs
        assert rel(again, block(x * 2, ctx)) <= plain_err * 2 + 1e-3


def test_fast_denoiser_swaps_the_geglus_when_the_settings_ask() -> None:
    import dataclasses

    from test_fast_path import _conds, tiny_pipeline

    from ldmkit.fast.modules import FastDenoiser

    pipe = tiny_pipeline()
    settings = FastConfig().resolve(torch.device("cpu"))  # float32, nothing compiled
    with_kernel = FastDenoiser(pipe.denoiser, dataclasses.replace(settings, geglu_kernel=True))
    plain = FastDenoiser(pipe.denoiser, settings)
    assert any(isinstance(m, KernelGEGLU) for m in with_kernel.module.modules())
    assert not any(isinstance(m, KernelGEGLU) for m in plain.module.modules())
    assert not any(isinstance(m, KernelGEGLU) for m in pipe.denoiser.modules())  # the pipeline's own is kept
    cond, _ = _conds()
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 500])
    with torch.no_grad():
        torch.testing.assert_close(with_kernel.module(x, t, cond), plain.module(x, t, cond), rtol=1e-5, atol=1e-5)
