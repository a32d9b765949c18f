"""The fused GEGLU kernels of benchmarks/geglu_kernel.py (a benchmark, not used by the library).

The weight interleaving is checked everywhere with torch operations. The TMA kernel runs on the CPU
through Triton's interpreter and is compiled for sm_90 (Hopper) without a GPU when Triton is
installed (it does not come with CPU builds of torch, so CI skips those); on a Hopper GPU it runs
for real.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
CUDA = torch.cuda.is_available()
HOPPER = CUDA and torch.cuda.get_device_capability()[0] >= 9
TRITON = importlib.util.find_spec("triton") is not None


def _geglu_kernel() -> ModuleType:
    """benchmarks/geglu_kernel.py, loaded from its path (benchmarks/ is no package)."""
    if "geglu_kernel" not in sys.modules:
        spec = importlib.util.spec_from_file_location("geglu_kernel", BENCHMARKS / "geglu_kernel.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["geglu_kernel"] = module
        spec.loader.exec_module(module)
    return sys.modules["geglu_kernel"]


def _float64_geglu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return _geglu_kernel().geglu_reference(x.double(), weight.double(), bias.double())


@pytest.mark.parametrize("block", [1, 4, 16])
def test_interleaved_weight_gives_the_same_geglu(block: int) -> None:
    gk = _geglu_kernel()
    torch.manual_seed(0)
    m, k, n = 10, 24, 32
    x, weight, bias = torch.randn(m, k), torch.randn(2 * n, k), torch.randn(2 * n)
    weight_i, bias_i = gk.interleave_geglu_weight(weight, bias, block)
    assert weight_i.shape == weight.shape and weight_i.is_contiguous() and bias_i.shape == bias.shape
    # rows 2*block*j ... hold value rows block*j ..., then as many gate rows
    assert torch.equal(weight_i[block : 2 * block], weight[n : n + block])
    assert torch.equal(bias_i[2 * block : 3 * block], bias[block : 2 * block])
    y = torch.nn.functional.linear(x.double(), weight_i.double(), bias_i.double())  # (M, 2N) interleaved
    pairs = y.view(m, n // block, 2, block)  # (M, N/block, value|gate, block)
    value, gate = pairs[:, :, 0].reshape(m, n), pairs[:, :, 1].reshape(m, n)
    torch.testing.assert_close(value * torch.nn.functional.gelu(gate), _float64_geglu(x, weight, bias))


def test_interleaving_refuses_what_is_no_geglu_weight() -> None:
    gk = _geglu_kernel()
    with pytest.raises(ValueError, match="blocks of 3"):
        gk.interleave_geglu_weight(torch.zeros(16, 4), torch.zeros(16), 3)
    with pytest.raises(ValueError):
        gk.interleave_geglu_weight(torch.zeros(16, 4), torch.zeros(8))


def test_tile_labels_and_interleave_blocks() -> None:
    gk = _geglu_kernel()
    assert len(gk.TMA_TILES) <= 8  # the GPU benchmark compiles each one
    tile = gk.TmaTile(128, 256, 64, 8, 3, 8, per_sm=2, blocked=True, maxnreg=128)
    assert tile.interleave == 128 and gk.TmaTile(*tile[:6]).interleave == 1
    assert tile.label == "128x256x64 g8 s3 w8 x2/SM blocked r128"


# (tile, programs): small tiles so that the interpreter runs each shape's several tiles quickly; a
# grid of fewer programs than tiles makes each program loop over several
INTERPRETER_CASES = [((32, 32, 32, 2, 2, 4), 3), ((64, 64, 32, 8, 3, 4), 2), ((32, 64, 32, 2, 2, 4, 1, True), 3)]
# (M, K, N): sizes that are no multiples of the tiles exercise the TMA boxes' edges
INTERPRETER_SHAPES = [(100, 80, 48), (62, 40, 96)]


def _check_tma_kernel(device: str, dtype: torch.dtype, cases: list, shapes: list) -> None:
    gk = _geglu_kernel()
    torch.manual_seed(0)
    for m, k, n in shapes:
        x = torch.randn(2, m // 2, k).to(device, dtype)
        weight = (torch.randn(2 * n, k) / k**0.5).to(device, dtype)
        bias = torch.randn(2 * n).to(device, dtype)
        expected = _float64_geglu(x, weight, bias)
        for tile, programs in cases:
            block = gk.TmaTile(*tile).interleave
            if n % block:  # a blocked tile needs N in whole half tiles
                continue
            weight_i, bias_i = gk.interleave_geglu_weight(weight, bias, block)
            y = gk.launch_geglu_tma(x, weight_i, bias_i, tile, programs=programs)
            assert y.shape == (2, m // 2, n) and y.dtype == dtype
            # the same rounded inputs and a float32 accumulator: the output's rounding dominates
            err = (y.double() - expected).abs() - torch.finfo(dtype).eps * expected.abs()
            assert err.max().item() <= 1e-3, (m, k, n, tile, err.max().item())


def _interpreter_runs_tensor_descriptors() -> bool:
    from triton.runtime.interpreter import InterpreterBuilder

    return hasattr(InterpreterBuilder, "create_descriptor_load")


@pytest.mark.skipif(not TRITON, reason="needs Triton (its interpreter runs the kernel on the CPU)")
def test_tma_kernel_in_the_triton_interpreter_matches_float64() -> None:
    if not _interpreter_runs_tensor_descriptors():
        pytest.skip("this Triton's interpreter does not run tensor descriptors (TMA loads and stores)")
    # float16, not bfloat16: Triton 3.6's interpreter multiplies bfloat16 dot operands as their raw
    # uint16 bits (the kernel code is the same for both; the GPU test below runs bfloat16)
    code = textwrap.dedent(
        """
        import torch
        import test_geglu_kernel as t
        t._check_tma_kernel("cpu", torch.float16, t.INTERPRETER_CASES, t.INTERPRETER_SHAPES)
        """
    )
    path = os.pathsep.join([os.path.dirname(__file__), *sys.path])
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": path}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def _compile_for_hopper(tile: tuple) -> object:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    gk = _geglu_kernel()
    cfg = gk.TmaTile(*tile)
    constants = {
        "BLOCK_M": cfg.block_m,
        "BLOCK_N": cfg.block_n,
        "BLOCK_K": cfg.block_k,
        "GROUP_M": cfg.group_m,
        "NUM_PROGRAMS": 132 * cfg.per_sm,  # an H100 SXM
        "BLOCKED": cfg.blocked,
        "WARP_SPECIALIZE": cfg.warp_specialize,
    }
    signature = {
        "x_desc": f"tensordesc<bf16[{cfg.block_m}, {cfg.block_k}]>",
        "w_desc": f"tensordesc<bf16[{cfg.block_n}, {cfg.block_k}]>",
        "b_ptr": "*bf16",
        "y_desc": f"tensordesc<bf16[{cfg.block_m}, {cfg.block_n // 2}]>",
        "M": "i32",
        "N": "i32",
        "K": "i32",
        **{name: "constexpr" for name in constants},
    }
    options = {"num_warps": cfg.warps, "num_stages": cfg.stages}
    if cfg.maxnreg:
        options["maxnreg"] = cfg.maxnreg
    source = ASTSource(fn=gk._tma_kernel(), signature=signature, constexprs=constants)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)


@pytest.mark.skipif(not TRITON, reason="needs Triton (it compiles for a GPU it need not have)")
@pytest.mark.parametrize("index", [0, 2, 5])  # interleaved rows; blocked halves; two programs per SM, capped registers
def test_tma_kernel_compiles_for_hopper_without_a_gpu(index: int) -> None:
    tile = _geglu_kernel().TMA_TILES[index]
    compiled = _compile_for_hopper(tile)
    assert compiled.asm["cubin"], tile
    ptx = compiled.asm["ptx"]
    # the Hopper paths, not a fallback: TMA bulk copies in and out, and warpgroup MMA
    assert "cp.async.bulk.tensor" in ptx and "wgmma.mma_async" in ptx, tile
    # a program may have 227 KiB; an SM has 228 KiB, of which each resident program reserves 1 KiB
    shared = compiled.metadata.shared
    assert shared <= 227 * 1024 and (shared + 1024) * tile.per_sm <= 228 * 1024, (tile, shared)


@pytest.mark.gpu
@pytest.mark.skipif(not HOPPER, reason="needs a CUDA device with TMA (sm_90 or newer)")
def test_gpu_tma_kernel_matches_float64() -> None:
    gk = _geglu_kernel()
    cases = [(tile, None) for tile in gk.TMA_TILES[:3]] + [(gk.TMA_TILES[0], 7)]
    _check_tma_kernel("cuda", torch.bfloat16, cases, [(1000, 320, 1280), (256, 72, 200)])
