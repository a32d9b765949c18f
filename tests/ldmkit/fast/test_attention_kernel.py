"""The fast path's attention kernel choice (ldmkit.fast.attention): the swap, its SDPA fallback, the settings."""

from __future__ import annotations

import pytest
import torch

from ldmkit import InputError
from ldmkit.fast import FastConfig
from ldmkit.fast.attention import (
    FA3_MIN_KEYS,
    FlashAttention,
    fa3_available,
    fa3_unusable_reason,
    kernel_applies,
    kernel_suits_shape,
    with_flash_attention,
)
from ldmkit_unet.transformer import CrossAttention
from tests.tiny import tiny_unet_params

FA3_HERE = torch.cuda.is_available() and fa3_unusable_reason(torch.device("cuda"), torch.bfloat16) is None


def _attention(context_dim: int | None = None) -> CrossAttention:
    torch.manual_seed(0)
    return CrossAttention(32, context_dim=context_dim, heads=4, dim_head=8).eval()


@pytest.mark.parametrize("context_dim", [None, 12])  # self- and cross-attention
def test_swapped_module_computes_what_the_original_does(context_dim):
    source = _attention(context_dim)
    swapped = FlashAttention(source)
    x = torch.randn(2, 10, 32)  # (B, N, query_dim)
    context = None if context_dim is None else torch.randn(2, 7, context_dim)  # (B, L, context_dim)
    with torch.no_grad():
        ref, out = source(x, context), swapped(x, context)
    assert out.shape == (2, 10, 32)
    # off a Hopper GPU the swap runs SDPA on (B, N, heads, d) views: same arithmetic, other strides
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_swap_shares_the_projections_and_leaves_the_original_alone():
    from ldmkit.registry import get_registry

    params = tiny_unet_params(channels=4, attention_resolutions=[2], num_heads=2, context_dim=16, legacy=False)
    unet = get_registry().create("denoiser", "unet", params)
    copy = with_flash_attention(unet)
    originals = [m for m in unet.modules() if isinstance(m, CrossAttention)]
    swapped = [m for m in copy.modules() if isinstance(m, FlashAttention)]
    assert len(originals) == len(swapped) > 0  # a self- and a cross-attention in each transformer block
    assert not any(isinstance(m, FlashAttention) for m in unet.modules())
    assert all(s.to_q.weight is o.to_q.weight for s, o in zip(swapped, originals, strict=True))
    assert not any(isinstance(m, CrossAttention) for m in copy.modules())


def test_a_module_that_declares_attention_without_projections_is_named():
    class Broken(torch.nn.Module):
        computes_attention = True

    with pytest.raises(ValueError, match="no to_q"):
        FlashAttention(Broken())


@pytest.mark.parametrize(
    ("head_dim", "keys", "suits"),
    [
        (40, 4096, True),  # SD v1 self-attention at 64x64
        (160, 256, True),  # and at 16x16
        (40, 77, False),  # cross-attention over CLIP's 77 tokens: SDPA measured faster
        (40, FA3_MIN_KEYS, True),
        (36, 4096, False),  # head width not a multiple of 8
        (320, 4096, False),  # wider than the kernel's 256
    ],
)
def test_the_kernel_is_chosen_by_head_width_and_key_count(head_dim, keys, suits):
    assert kernel_suits_shape(head_dim, head_dim, keys) is suits


def test_the_kernel_never_applies_off_cuda():
    q = torch.randn(1, 4096, 8, 40)  # (B, N, heads, d): a shape it suits
    assert kernel_suits_shape(40, 40, 4096)
    assert not kernel_applies(q, q) and not kernel_applies(q.bfloat16(), q.bfloat16())


def test_settings_refuse_unknown_kernels():
    with pytest.raises(InputError, match="attention_kernel must be one of"):
        FastConfig(attention_kernel="flash9")


@pytest.mark.skipif(FA3_HERE, reason="the kernel runs here")
def test_fa3_where_it_cannot_run_is_an_input_error_naming_why():
    with pytest.raises(InputError, match="attention_kernel='fa3' cannot run here: "):
        FastConfig(attention_kernel="fa3", precision="bf16").resolve(torch.device("cpu"))
    reason = fa3_unusable_reason(torch.device("cpu"), torch.bfloat16)
    assert reason is not None and ("fa3-fwd" in reason or "CUDA" in reason)
    if not fa3_available():
        assert "pip install 'ldmkit[hopper]'" in reason


def test_sdpa_is_the_default_everywhere():
    assert FastConfig().resolve(torch.device("cpu")).attention_kernel == "sdpa"


# -- GPU ------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not FA3_HERE, reason="needs the fa3-fwd package and a Hopper GPU")
@pytest.mark.parametrize(("tokens", "keys", "head_dim"), [(4096, None, 40), (1024, None, 80), (4096, 77, 40)])
def test_gpu_fa3_matches_float32_attention_as_closely_as_sdpa(tokens, keys, head_dim):
    torch.manual_seed(0)
    heads = 8
    source = CrossAttention(heads * head_dim, context_dim=None if keys is None else 768, heads=heads, dim_head=head_dim)
    source = source.cuda().eval()
    x = torch.randn(4, tokens, heads * head_dim, device="cuda")
    context = None if keys is None else torch.randn(4, keys, 768, device="cuda")
    with torch.no_grad():
        ref = source(x, context)  # float32
        low = source.to(torch.bfloat16)
        x16, c16 = x.bfloat16(), None if context is None else context.bfloat16()
        sdpa = low(x16, c16).float()
        fa3 = FlashAttention(low)(x16, c16).float()

    def err(a: torch.Tensor) -> float:
        return ((a - ref).norm() / ref.norm()).item()

    # both round q, k, v and the output to bf16; the kernels differ in the softmax's arithmetic only
    assert err(fa3) <= 1.1 * err(sdpa) + 1e-4
