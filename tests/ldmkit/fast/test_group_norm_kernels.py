"""The Triton GroupNorm kernels of the fast path and the module swap that uses them.

Structural checks run everywhere (off CUDA the swapped norms compute with torch operations). The
kernels themselves run on a GPU, and on the CPU through Triton's interpreter when Triton is
installed (it does not come with CPU builds of torch, so CI skips those).
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from ldmkit import InputError
from ldmkit.fast import FastConfig
from ldmkit.fast.group_norm_kernels import group_norm_nhwc_reference
from ldmkit.fast.norms import KernelGroupNorm, with_kernel_group_norms
from ldmkit.fast.support import triton_available
from ldmkit_unet.resblocks import ResBlock
from tests.ldmkit.fast.triton_interpreter import interpreter_unusable_reason

CUDA = torch.cuda.is_available()
INTERPRETER_REASON = interpreter_unusable_reason()


def _float64_group_norm(x: torch.Tensor, norm: nn.GroupNorm, silu: bool) -> torch.Tensor:
    w = None if norm.weight is None else norm.weight.double()
    b = None if norm.bias is None else norm.bias.double()
    y = nn.functional.group_norm(x.double(), norm.num_groups, w, b, norm.eps)
    return nn.functional.silu(y) if silu else y


def _res_block(scale_shift: bool) -> ResBlock:
    torch.manual_seed(0)
    block = ResBlock(64, 32, 0.0, out_channels=96, use_scale_shift_norm=scale_shift).eval()
    for m in block.modules():  # the last convolution starts at zero; give it weights so it matters
        if isinstance(m, nn.Conv2d) and not m.weight.any():
            m.reset_parameters()
    return block


@pytest.mark.parametrize("scale_shift", [False, True])
def test_swapped_res_block_computes_the_same(scale_shift: bool) -> None:
    block = _res_block(scale_shift)
    swapped = with_kernel_group_norms(block)
    x = torch.randn(2, 64, 8, 8).contiguous(memory_format=torch.channels_last)
    emb = torch.randn(2, 32)
    with torch.no_grad():
        torch.testing.assert_close(swapped(x, emb), block(x, emb), rtol=1e-5, atol=1e-5)


def test_res_block_hands_its_embedding_to_a_norm_that_takes_it() -> None:
    block = _res_block(scale_shift=False)
    swapped = with_kernel_group_norms(block)
    seen = []
    swapped.out_layers[0].register_forward_hook(lambda mod, args, kwargs, out: seen.append(kwargs), with_kwargs=True)
    x, emb = torch.randn(2, 64, 8, 8), torch.randn(2, 32)
    with torch.no_grad():
        swapped(x, emb)
    assert seen[0]["add"].shape == (2, 96, 1, 1)  # the embedding, not added to h beforehand


def test_norm_and_silu_fuse_only_where_the_owner_allows_it() -> None:
    plain = with_kernel_group_norms(_res_block(scale_shift=False))
    assert isinstance(plain.in_layers[0], KernelGroupNorm) and plain.in_layers[0].silu
    assert isinstance(plain.in_layers[1], nn.Identity)
    assert plain.out_layers[0].silu and isinstance(plain.out_layers[1], nn.Identity)
    # use_scale_shift_norm applies the embedding between a norm and its SiLU: the block opts out
    film = with_kernel_group_norms(_res_block(scale_shift=True))
    assert isinstance(film.out_layers[0], KernelGroupNorm) and not film.out_layers[0].silu
    assert isinstance(film.out_layers[1], nn.SiLU) and isinstance(film.in_layers[1], nn.SiLU)


def test_swap_shares_weights_and_leaves_the_original_alone() -> None:
    model = nn.Sequential(nn.Conv2d(3, 32, 1), nn.GroupNorm(8, 32), nn.SiLU(), nn.GroupNorm(4, 32))
    swapped = with_kernel_group_norms(model)
    assert isinstance(model[1], nn.GroupNorm) and isinstance(model[2], nn.SiLU)
    assert swapped[1].weight is model[1].weight and swapped[0].weight is model[0].weight
    assert swapped[1].silu and isinstance(swapped[2], nn.Identity)
    assert type(swapped[3]) is nn.GroupNorm  # a norm not followed by SiLU keeps the compiler's


def test_norms_without_a_silu_after_them_are_left_alone() -> None:
    from ldmkit_unet.transformer import SpatialTransformer

    block = with_kernel_group_norms(SpatialTransformer(64, 2, 32, context_dim=16))
    assert not any(isinstance(m, KernelGroupNorm) for m in block.modules())
    assert type(block.norm) is nn.GroupNorm


def test_off_cuda_the_module_computes_float32_group_norm_in_the_input_dtype() -> None:
    norm = nn.GroupNorm(4, 16)
    nn.init.normal_(norm.weight)
    x = (torch.randn(2, 16, 5, 5) * 4 + 30).to(torch.bfloat16)
    y = KernelGroupNorm(norm, silu=True)(x)
    assert y.dtype == torch.bfloat16
    expected = _float64_group_norm(x, norm, silu=True)
    assert (y.double() - expected).abs().max() < 0.04  # bf16 rounding of outputs up to about 4


@pytest.mark.skipif(triton_available(), reason="Triton is installed here")
def test_asking_for_the_kernels_without_triton_is_an_input_error() -> None:
    with pytest.raises(InputError, match="Triton"):
        FastConfig(norm_kernels=True).resolve(torch.device("cpu"))
    assert not FastConfig().resolve(torch.device("cpu")).norm_kernels


def test_norm_kernels_default_to_where_they_were_measured() -> None:
    from ldmkit.fast.support import hopper_with_triton

    cuda = torch.device("cuda")
    assert FastConfig().resolve(cuda).norm_kernels == hopper_with_triton(cuda)  # bf16 on a Hopper GPU
    assert not FastConfig(precision="fp32").resolve(cuda).norm_kernels
    assert not FastConfig().resolve(torch.device("cpu")).norm_kernels
    assert not FastConfig(norm_kernels=False).resolve(cuda).norm_kernels
    with pytest.raises(InputError, match="norm_kernels"):
        FastConfig(norm_kernels="yes")  # type: ignore[arg-type]


# (batch, channels, height, width, groups): odd sizes exercise the tile masks; groups of 2 to 30 channels
# (the two-kernel form's blocks of 16, 3 and 1 groups), 4 of 3 groups in a block of 8, and one of 160
# channels (wider than its block: three kernels whatever is asked)
SHAPES = [(2, 64, 8, 8, 32), (3, 320, 9, 7, 32), (1, 960, 16, 16, 32), (2, 96, 40, 40, 32), (1, 12, 3, 130, 3),
          (2, 640, 5, 6, 32), (1, 320, 4, 3, 2)]  # fmt: skip


def _check_kernels(device: str) -> None:
    """Every shape and case by the op (the form chosen for the shape), then by each form asked for."""
    import functools

    from ldmkit.fast.group_norm_kernels import group_norm_nhwc, launch_group_norm

    torch.manual_seed(0)
    forms = [group_norm_nhwc, functools.partial(launch_group_norm, fused=True),
             functools.partial(launch_group_norm, fused=False)]  # fmt: skip
    for (batch, channels, height, width, groups), form in itertools.product(SHAPES, forms):
        cases = [
            (torch.float32, True, True, False),
            (torch.bfloat16, False, True, True),
            (torch.float32, False, False, True),
        ]
        for dtype, silu, affine, with_add in cases:
            norm = nn.GroupNorm(groups, channels, affine=affine)
            if affine:
                nn.init.normal_(norm.weight)
                nn.init.normal_(norm.bias)
            # a mean far from zero against the spread: the moments must not lose the variance
            x = (torch.randn(batch, channels, height, width) * 3 + 50).to(device, dtype)
            x = x.contiguous(memory_format=torch.channels_last)
            norm = norm.to(device)
            # a per-(B, C) term (a residual block's embedding) that the kernels add in float32
            add = torch.randn(batch, channels, device=device) * 20 if with_add else None
            if add is not None and dtype == torch.bfloat16:  # a slice of the blocks' shared time projection
                wider = torch.randn(batch, channels + 24, device=device)
                add = wider[:, 8 : 8 + channels].copy_(add)
                assert add.stride(0) == channels + 24  # rows further apart than the channels
            y = form(x, norm.weight, norm.bias, groups, norm.eps, silu, add)
            assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
            total = x.double() if add is None else x.double() + add.double()[:, :, None, None]
            expected = _float64_group_norm(total, norm, silu)
            torch_ref = group_norm_nhwc_reference(x, norm.weight, norm.bias, groups, norm.eps, silu, add)
            err = (y.double() - expected).abs().max().item()
            ref_err = (torch_ref.double() - expected).abs().max().item()
            # as close to float64 as torch's own float32 GroupNorm, give or take one rounding of the output
            rounding = torch.finfo(dtype).eps * expected.abs().max().item()
            assert err <= 2 * ref_err + rounding, (batch, channels, height, width, dtype, err, ref_err)


@pytest.mark.skipif(INTERPRETER_REASON is not None, reason=INTERPRETER_REASON or "")
def test_kernels_in_the_triton_interpreter_match_float64() -> None:
    code = textwrap.dedent(
        """
        import test_group_norm_kernels as t
        t._check_kernels("cpu")
        """
    )
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), *sys.path])}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_gpu_kernels_match_float64() -> None:
    _check_kernels("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_gpu_compiled_and_graphed_block_with_kernels_matches_the_original() -> None:
    from ldmkit.fast.graphs import GraphCache

    block = _res_block(scale_shift=False).cuda().to(memory_format=torch.channels_last)
    swapped = with_kernel_group_norms(block)
    compiled = torch.compile(swapped, dynamic=False)
    x = torch.randn(4, 64, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last)
    emb = torch.randn(4, 32, device="cuda")
    graphs = GraphCache()
    with torch.no_grad():
        expected = block(x, emb)
        out = graphs("block", compiled, x, emb)
        again = graphs("block", compiled, x * 2, emb)
        assert graphs.captures == 1 and graphs.failures == 0
        # convolutions may use TF32 on the GPU, in both modules alike but not in the same order
        torch.testing.assert_close(out, expected, rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(again, block(x * 2, emb), rtol=1e-3, atol=1e-3)


@pytest.mark.skipif(not triton_available(), reason="needs Triton (it compiles for a GPU it need not have)")
def test_kernels_compile_for_hopper_without_a_gpu() -> None:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from ldmkit.fast import group_norm_triton as kernels

    def signature(fn, types: dict[str, str]) -> dict[str, str]:  # noqa: ANN001
        return {name: types.get(name, "i32") for name in fn.arg_names}

    bf16, f32 = "*bf16", "*fp32"
    tile = {"BLOCK_HW": 128, "BLOCK_C": 32}
    jobs = [
        (
            kernels.partial_moments,
            {"x_ptr": bf16, "add_ptr": bf16, "mean_ptr": f32, "m2_ptr": f32},
            {"HAS_ADD": True, **tile},
        ),
        (
            kernels.scale_shift_apply,
            {"x_ptr": bf16, "add_ptr": bf16, "scale_ptr": f32, "center_ptr": f32, "bias_ptr": bf16, "y_ptr": bf16},
            {"HAS_ADD": True, "HAS_BIAS": True, "SILU": True, **tile},
        ),
        (
            kernels.group_scale_shift,
            {
                "mean_ptr": f32,
                "m2_ptr": f32,
                "weight_ptr": bf16,
                "scale_ptr": f32,
                "center_ptr": f32,
                "eps": "fp32",
            },
            {"HAS_WEIGHT": True, "BLOCK_HW": 128, "BLOCK_N": 32, "BLOCK_CPG": 16},
        ),
        (
            kernels.group_apply,
            {
                "x_ptr": bf16,
                "add_ptr": bf16,
                "mean_ptr": f32,
                "m2_ptr": f32,
                "weight_ptr": bf16,
                "bias_ptr": bf16,
                "y_ptr": bf16,
                "eps": "fp32",
            },  # fmt: skip
            {
                "HAS_ADD": True,
                "HAS_WEIGHT": True,
                "HAS_BIAS": True,
                "SILU": True,
                "GROUPS_PER_BLOCK": 3,
                "MOMENTS_HW": 128,
                "BLOCK_N": 8,
                "BLOCK_HW": 128,
                "BLOCK_C": 32,
            },  # fmt: skip
        ),
    ]
    for fn, pointers, constants in jobs:
        types = {**pointers, **{name: "constexpr" for name in constants}}
        source = ASTSource(fn=fn, signature=signature(fn, types), constexprs=constants)
        compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32))
        assert compiled.asm["cubin"], fn.__name__


@pytest.mark.parametrize(
    ("channels_per_group", "block"),
    [(10, (3, 32)), (20, (3, 64)), (40, (3, 128)), (30, (1, 32)), (16, (2, 32)), (2, (16, 32)), (160, None)],
)
def test_two_kernel_form_covers_whole_groups_with_fewest_idle_lanes(channels_per_group: int, block) -> None:  # noqa: ANN001
    from ldmkit.fast.group_norm_kernels import group_block

    assert group_block(channels_per_group) == block


def test_two_kernel_form_is_chosen_where_partials_are_few(monkeypatch: pytest.MonkeyPatch) -> None:
    from ldmkit.fast import group_norm_kernels
    from ldmkit.fast.group_norm_kernels import two_kernels

    # by default at the 8x8 latents only (one partial row), where an H100 timed it faster
    assert two_kernels(8 * 8, 1280, 32) and two_kernels(8 * 8, 2560, 32)
    assert not two_kernels(16 * 16, 1280, 32) and not two_kernels(32 * 32, 640, 32)
    monkeypatch.setattr(group_norm_kernels, "TWO_KERNEL_MAX_PARTIALS", 8)
    assert not two_kernels(64 * 64, 320, 32)  # 32 partial rows: three kernels
    assert two_kernels(32 * 32, 640, 32) and two_kernels(8 * 8, 2560, 32)
    assert not two_kernels(8 * 8, 32 * 160, 32)  # groups wider than any block
