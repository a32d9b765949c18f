"""The cross-attentions' k/v products of the conditioning as one (ldmkit.fast.context_projections)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ldmkit import InputError
from ldmkit.fast import FastConfig
from ldmkit.fast.attention import FlashAttention, with_flash_attention
from ldmkit.fast.context_projections import with_shared_context_projections
from ldmkit.fast.shared_products import ColumnSlice, StackedLinear
from tests.ldmkit.fast.test_time_projections import C_COMPILER, _inputs, _unet, compiled_matmul_merges


def _flash_unet() -> tuple[nn.Module, nn.Module]:
    """The tiny UNet and its copy with flash attention modules and fused q/k/v (SDPA computes on the CPU)."""
    unet = _unet()
    return unet, with_flash_attention(unet, "fa4", fuse_qkv=True)


def test_cross_attentions_get_slices_of_one_product_and_compute_the_same():
    unet, flash = _flash_unet()
    shared = with_shared_context_projections(flash)
    modules = [m for m in shared.modules() if isinstance(m, FlashAttention)]
    cross = [m for m in modules if isinstance(m.to_kv, ColumnSlice)]
    self_attn = [m for m in modules if not isinstance(m.to_kv, ColumnSlice)]
    assert len(cross) > 1 and len(self_attn) == len(cross)  # one of each per transformer block
    assert all(type(m.to_kv) is nn.Linear and m.to_kv.in_features == m.to_q.in_features for m in self_attn)
    stacks = {id(m.to_kv.shared) for m in cross}
    assert len(stacks) == 1 and isinstance(cross[0].to_kv.shared, StackedLinear)  # one context width
    assert cross[-1].to_kv.stop == sum(m.to_kv.stop - m.to_kv.start for m in cross)  # the columns tile it
    originals = [m for m in flash.modules() if isinstance(m, FlashAttention)]
    assert all(type(m.to_kv) is nn.Linear for m in originals)  # the copy's source is untouched
    x, t, cond = _inputs()
    with torch.no_grad():
        expected = unet(x, t, cond)
        torch.testing.assert_close(shared(x, t, cond), expected, rtol=1e-5, atol=1e-6)
        ctx = cond.crossattn
        for before, after in zip([m for m in originals if m.to_kv.in_features != m.to_q.in_features], cross,
                                 strict=True):  # fmt: skip
            torch.testing.assert_close(after.to_kv(ctx), before.to_kv(ctx), rtol=1e-5, atol=1e-6)


def test_modules_without_fused_products_are_left_alone():
    unet = _unet()
    plain = with_flash_attention(unet, "fa4", fuse_qkv=False)
    shared = with_shared_context_projections(plain)
    assert not any(isinstance(m, ColumnSlice) for m in shared.modules())
    assert not any(isinstance(m, ColumnSlice) for m in with_shared_context_projections(unet).modules())


def test_merge_context_setting_needs_compile_and_fused_products():
    cpu = torch.device("cpu")
    assert FastConfig().resolve(cpu).merge_context_projections is False
    assert FastConfig(compile=True).resolve(cpu).merge_context_projections is False  # SDPA: no fused products
    assert FastConfig(compile=True, merge_context_projections=False).resolve(cpu).merge_context_projections is False
    with pytest.raises(InputError, match="merge_context_projections=True needs compile=True and fuse_qkv"):
        FastConfig(merge_context_projections=True).resolve(cpu)
    with pytest.raises(InputError, match="fuse_qkv=False"):
        FastConfig(compile=True, merge_context_projections=True).resolve(cpu)  # SDPA: no fused products
    with pytest.raises(InputError, match="merge_context_projections must be True, False or None"):
        FastConfig(merge_context_projections="yes")  # type: ignore[arg-type]


def test_merge_context_is_on_by_default_where_the_flash_kernels_fuse_the_products(monkeypatch):
    from ldmkit.fast import attention

    monkeypatch.setattr(attention, "kernel_unusable_reason", lambda kernel, device, dtype: None)  # as on a Hopper GPU
    cpu = torch.device("cpu")
    resolved = FastConfig(compile=True).resolve(cpu)
    assert resolved.attention_kernel == "fa4" and resolved.fuse_qkv and resolved.merge_context_projections
    assert FastConfig(compile=True, merge_context_projections=False).resolve(cpu).merge_context_projections is False
    assert FastConfig(compile=False).resolve(cpu).merge_context_projections is False  # the compiler merges them


@pytest.mark.slow
@pytest.mark.skipif(not C_COMPILER, reason="torch.compile on a CPU needs a C compiler")
def test_compiled_denoiser_computes_the_shared_context_product_once(monkeypatch):
    """Through the fast path's compile: the pass leaves one product of the context for all cross-attentions."""
    import dataclasses

    unet = _unet()
    base = FastConfig(precision="fp32", compile=True, merge_time_projections=False).resolve(torch.device("cpu"))
    # the flash modules compute by SDPA on the CPU: what matters here is the products around them
    settings = dataclasses.replace(base, attention_kernel="fa4", fuse_qkv=True, merge_context_projections=True)
    swapped = with_shared_context_projections(with_flash_attention(unet, "fa4", fuse_qkv=True))
    cross = sum(isinstance(m, FlashAttention) and isinstance(m.to_kv, ColumnSlice) for m in swapped.modules())
    assert cross > 1
    before, after = compiled_matmul_merges(monkeypatch, unet, settings)
    assert before - after >= cross - 1  # the cross-attentions' k/v products became one
