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
    fa4_available,
    flash_attention_4,
    fused_projection,
    kernel_applies,
    kernel_suits_shape,
    kernel_unusable_reason,
    with_flash_attention,
)
from ldmkit_unet.transformer import CrossAttention
from tests.tiny import tiny_unet_params

FA3_HERE = torch.cuda.is_available() and fa3_unusable_reason(torch.device("cuda"), torch.bfloat16) is None
FA4_HERE = torch.cuda.is_available() and kernel_unusable_reason("fa4", torch.device("cuda"), torch.bfloat16) is None


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


@pytest.mark.parametrize("context_dim", [None, 12])
def test_fused_projections_compute_what_the_separate_ones_do(context_dim):
    source = _attention(context_dim)
    fused = FlashAttention(source, fuse_qkv=True)
    x = torch.randn(2, 10, 32)  # (B, N, query_dim)
    context = None if context_dim is None else torch.randn(2, 7, context_dim)
    with torch.no_grad():
        torch.testing.assert_close(fused(x, context), source(x, context), rtol=1e-5, atol=1e-6)
        if context is None:  # self-attention: q, k, v come out of one product, in the order q | k | v
            assert fused.to_qkv is not None
            q, k, v = fused.to_qkv(x).chunk(3, dim=-1)
            torch.testing.assert_close(q, source.to_q(x), rtol=1e-5, atol=1e-6)
        else:  # keys from another width: k | v of the context by one product, q by its own
            assert fused.to_qkv is None
            k, v = fused.to_kv(context).chunk(2, dim=-1)
            torch.testing.assert_close(k, source.to_k(context), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(v, source.to_v(x if context is None else context), rtol=1e-5, atol=1e-6)
    assert "by one product" in repr(fused)


def test_fused_projection_takes_plain_linears_of_one_shape_only():
    lin = torch.nn.Linear
    three = fused_projection(lin(8, 4, bias=False), lin(8, 4, bias=False), lin(8, 4, bias=False))
    assert three is not None and three.weight.shape == (12, 8) and three.bias is None
    assert not three.weight.requires_grad
    with_bias = fused_projection(lin(8, 4), lin(8, 4))
    assert with_bias is not None and with_bias.bias is not None and with_bias.bias.shape == (8,)
    assert fused_projection(lin(8, 4), lin(6, 4), lin(6, 4)) is None  # cross-attention's q against its k, v
    assert fused_projection(lin(8, 4), lin(8, 4, bias=False)) is None
    assert fused_projection(lin(8, 4), torch.nn.Identity()) is None
    assert FlashAttention(_attention(), fuse_qkv=False).to_qkv is None


def test_fuse_qkv_setting_follows_the_attention_kernel():
    resolved = FastConfig(attention_kernel="sdpa").resolve(torch.device("cpu"))
    assert resolved.fuse_qkv is False  # SDPA keeps three projections
    assert FastConfig(fuse_qkv=False)._fuse_qkv("fa4") is False
    assert FastConfig()._fuse_qkv("fa4") is True and FastConfig()._fuse_qkv("fa3") is True
    with pytest.raises(InputError, match="fuse_qkv=True needs attention_kernel 'fa3' or 'fa4'"):
        FastConfig(fuse_qkv=True).resolve(torch.device("cpu"))
    with pytest.raises(InputError, match="fuse_qkv must be True, False or None"):
        FastConfig(fuse_qkv="yes")  # type: ignore[arg-type]


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


def test_fa4_where_it_cannot_run_is_an_input_error_naming_why():
    # CUDA is not the CPU: whatever is installed, "fa4" cannot run there
    with pytest.raises(InputError, match="attention_kernel='fa4' cannot run here: "):
        FastConfig(attention_kernel="fa4", precision="bf16").resolve(torch.device("cpu"))
    reason = kernel_unusable_reason("fa4", torch.device("cpu"), torch.bfloat16)
    assert reason is not None
    if not fa4_available():
        assert "pip install 'ldmkit[fa4]'" in reason
    else:
        assert "CUDA devices only" in reason


@pytest.mark.parametrize(
    ("unusable", "chosen"), [((), "fa4"), (("fa4",), "fa3"), (("fa3",), "fa4"), (("fa3", "fa4"), "sdpa")]
)
def test_the_default_takes_the_fastest_kernel_that_runs(monkeypatch, unusable, chosen):
    from ldmkit.fast import attention

    # measured on an H100 (benchmarks/RESULTS.md): FlashAttention-4 before FlashAttention-3 before SDPA
    def reason(kernel, device, dtype):
        return "not here" if kernel in unusable else None

    monkeypatch.setattr(attention, "kernel_unusable_reason", reason)
    device = torch.device("cuda")
    assert FastConfig()._attention_kernel(device, torch.bfloat16) == chosen
    for kernel in ("fa3", "fa4"):  # asked for by name: that kernel or an error naming why not
        if kernel in unusable:
            with pytest.raises(InputError, match=f"attention_kernel='{kernel}' cannot run here: not here"):
                FastConfig(attention_kernel=kernel)._attention_kernel(device, torch.bfloat16)
        else:
            assert FastConfig(attention_kernel=kernel)._attention_kernel(device, torch.bfloat16) == kernel
    assert FastConfig(attention_kernel="sdpa")._attention_kernel(device, torch.bfloat16) == "sdpa"


def test_the_swap_takes_fa3_or_fa4_only():
    assert FlashAttention(_attention(), kernel="fa4").kernel == "fa4"
    assert "FlashAttention-4" in repr(FlashAttention(_attention(), kernel="fa4"))
    with pytest.raises(ValueError, match="kernel must be 'fa3' or 'fa4'"):
        FlashAttention(_attention(), kernel="fa5")


def test_fa4_operator_traces_under_compile_and_calls_the_kernel_once(monkeypatch):
    """The custom operator around FlashAttention-4: the compiler sees its shape from the fake and calls the
    kernel as one opaque step (here a stand-in with the package's signature, since the DSL needs a GPU)."""
    from ldmkit.fast import attention

    calls = []

    def stand_in(q, k, v, softmax_scale=None, causal=False):  # flash_attn_func's keywords; returns (out, lse)
        calls.append((q.shape, softmax_scale, causal))
        from ldmkit.fast.attention import sdpa_heads_last

        return sdpa_heads_last(q, k, v, softmax_scale), None

    monkeypatch.setattr(attention, "_fa4_function", lambda: stand_in)
    q, k, v = (torch.randn(2, n, 4, 8) for n in (10, 7, 7))  # (B, N|L, heads, d)
    compiled = torch.compile(lambda q, k, v: flash_attention_4(q, k, v, 0.5) * 2, fullgraph=True, backend="eager")
    out = compiled(q, k, v)
    assert out.shape == (2, 10, 4, 8)
    torch.testing.assert_close(out, 2 * attention.sdpa_heads_last(q, k, v, 0.5))
    assert calls == [((2, 10, 4, 8), 0.5, False)]


def test_fa4_kernel_that_fails_warns_once_and_sdpa_computes_that_head_width(monkeypatch, caplog):
    """FlashAttention-4 is taken by default where installed; a kernel it cannot build for some head width
    must not break sampling: the same attention by SDPA, a warning naming the failure, no retries."""
    from ldmkit.fast import attention

    calls = []

    def failing(q, k, v, softmax_scale=None, causal=False):
        calls.append(q.shape[-1])
        if q.shape[-1] == 24:
            raise RuntimeError("no tile for this head width")
        return attention.sdpa_heads_last(q, k, v, softmax_scale), None

    monkeypatch.setattr(attention, "_fa4_function", lambda: failing)
    monkeypatch.setattr(attention, "_FA4_FAILED", set())
    q, k, v = (torch.randn(2, n, 4, 24) for n in (10, 7, 7))  # (B, N|L, heads, d): the failing width
    with caplog.at_level("WARNING", logger="ldmkit.fast.attention"):
        first = flash_attention_4(q, k, v, 0.5)
        second = flash_attention_4(q, k, v, 0.5)
    torch.testing.assert_close(first, attention.sdpa_heads_last(q, k, v, 0.5))
    assert torch.equal(first, second)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "head width 24" in warnings[0] and "no tile for this head width" in warnings[0]
    q8, k8, v8 = (t[..., :8] for t in (q, k, v))  # another width still goes to the kernel
    torch.testing.assert_close(flash_attention_4(q8, k8, v8, 0.5), attention.sdpa_heads_last(q8, k8, v8, 0.5))
    assert calls == [24, 8]


def _own_stand_in(calls: list):
    """A stand-in for the package's ``flash_attn_func`` (its own tile), recording the head width."""
    from ldmkit.fast import attention

    def own(q, k, v, softmax_scale=None, causal=False):
        calls.append(("own", q.shape[-1]))
        return attention.sdpa_heads_last(q, k, v, softmax_scale), None

    return own


def _tiled_stand_in(calls: list, fail_width: int | None = None):
    """A stand-in for the package's ``_flash_attn_fwd`` with its tile keywords (the DSL needs a GPU)."""
    from ldmkit.fast import attention

    def tiled(q, k, v, softmax_scale=None, causal=False, tile_mn=None, mma_pv_is_rs=None, intra_wg_overlap=None):
        calls.append(("tiled", q.shape[-1], tile_mn, mma_pv_is_rs, intra_wg_overlap))
        if q.shape[-1] == fail_width:
            raise RuntimeError("tile does not fit")
        return attention.sdpa_heads_last(q, k, v, softmax_scale), None

    return tiled


def test_fa4_tiles_reach_the_kernel_by_head_width_on_hopper(monkeypatch):
    """attention_tiles: the module's table entry for the head width goes to the package's tile arguments;
    other widths, and GPUs that are not Hopper, take the package's own tile."""
    from ldmkit.fast import attention

    calls: list = []

    monkeypatch.setattr(attention, "_fa4_function", lambda: _own_stand_in(calls))
    monkeypatch.setattr(attention, "_fa4_tiled_function", lambda: _tiled_stand_in(calls))
    monkeypatch.setattr(attention, "_takes_tiles", lambda device: True)
    monkeypatch.setattr(attention, "kernel_applies", lambda q, k, kernel="fa3": True)
    source = _attention()  # 4 heads of 8
    module = FlashAttention(source, kernel="fa4", tiles={8: (128, 96, True, False), 40: (192, 96, True, True)})
    assert "128x96 tiles at width 8" in repr(module)
    x = torch.randn(2, 10, 32)  # (B, N, query_dim)
    with torch.no_grad():
        torch.testing.assert_close(module(x), source(x))
    assert calls == [("tiled", 8, (128, 96), True, False)]
    calls.clear()
    untiled = FlashAttention(source, kernel="fa4", tiles={40: (192, 96, True, True)})  # no entry for width 8
    with torch.no_grad():
        untiled(x)
    assert calls == [("own", 8)]
    calls.clear()
    monkeypatch.setattr(attention, "_takes_tiles", lambda device: False)  # e.g. Blackwell: its own kernels
    with torch.no_grad():
        module(x)
    assert calls == [("own", 8)]


def test_fa4_tile_that_fails_warns_once_and_the_packages_own_tile_computes_it(monkeypatch, caplog):
    from ldmkit.fast import attention

    calls: list = []

    monkeypatch.setattr(attention, "_fa4_function", lambda: _own_stand_in(calls))
    monkeypatch.setattr(attention, "_fa4_tiled_function", lambda: _tiled_stand_in(calls, fail_width=24))
    monkeypatch.setattr(attention, "_takes_tiles", lambda device: True)
    monkeypatch.setattr(attention, "_FA4_TILE_FAILED", set())
    q, k, v = (torch.randn(2, n, 4, 24) for n in (10, 7, 7))  # (B, N|L, heads, d)
    with caplog.at_level("WARNING", logger="ldmkit.fast.attention"):
        first = flash_attention_4(q, k, v, 0.5, [192, 96, 1, 1])
        second = flash_attention_4(q, k, v, 0.5, [192, 96, 1, 1])
    torch.testing.assert_close(first, attention.sdpa_heads_last(q, k, v, 0.5))
    assert torch.equal(first, second)
    assert calls == [("tiled", 24, (192, 96), True, True), ("own", 24), ("own", 24)]  # the tile is not retried
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "192x96 tile failed for head width 24" in warnings[0]


def test_attention_tiles_follow_fa4_and_need_it():
    config = FastConfig(attention_kernel="fa4", precision="bf16")
    assert config._attention_tiles("fa4") is True
    assert FastConfig(attention_tiles=False)._attention_tiles("fa4") is False
    assert FastConfig()._attention_tiles("sdpa") is False and FastConfig()._attention_tiles("fa3") is False
    with pytest.raises(InputError, match="attention_tiles=True needs attention_kernel 'fa4'.*'sdpa'"):
        FastConfig(attention_tiles=True).resolve(torch.device("cpu"))
    with pytest.raises(InputError, match="attention_tiles must be True, False or None, got 'yes'"):
        FastConfig(attention_tiles="yes")  # type: ignore[arg-type]


# -- GPU ------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not FA3_HERE, reason="needs the fa3-fwd package and a Hopper GPU")
@pytest.mark.parametrize("fuse_qkv", [False, True])
@pytest.mark.parametrize(("tokens", "keys", "head_dim"), [(4096, None, 40), (1024, None, 80), (4096, 77, 40)])
def test_gpu_fa3_matches_float32_attention_as_closely_as_sdpa(tokens, keys, head_dim, fuse_qkv):
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
        fa3 = FlashAttention(low, fuse_qkv=fuse_qkv)(x16, c16).float()  # fused: q, k, v as strided views

    def err(a: torch.Tensor) -> float:
        return ((a - ref).norm() / ref.norm()).item()

    # both round q, k, v and the output to bf16; the kernels differ in the softmax's arithmetic only
    assert err(fa3) <= 1.1 * err(sdpa) + 1e-4


@pytest.mark.gpu
@pytest.mark.skipif(not FA4_HERE, reason="needs the flash-attn-4 package and a Hopper or Blackwell GPU")
@pytest.mark.parametrize("fuse_qkv", [False, True])
@pytest.mark.parametrize("tile", [None, (128, 128, True, True)])  # the package's own tile, or one named
@pytest.mark.parametrize(("tokens", "head_dim"), [(4096, 40), (1024, 80), (256, 160)])
def test_gpu_fa4_matches_float32_attention_as_closely_as_sdpa_compiled_and_graphed(tokens, head_dim, fuse_qkv, tile):
    from ldmkit.fast import attention

    torch.manual_seed(0)
    heads = 8
    source = CrossAttention(heads * head_dim, heads=heads, dim_head=head_dim).cuda().eval()
    x = torch.randn(4, tokens, heads * head_dim, device="cuda")
    with torch.no_grad():
        ref = source(x)  # float32
        low = source.to(torch.bfloat16)
        x16 = x.bfloat16()
        sdpa = low(x16).float()
        # fused: the kernel reads q, k, v as strided views of one product
        tiles = None if tile is None else {head_dim: tile}
        fast = torch.compile(FlashAttention(low, kernel="fa4", fuse_qkv=fuse_qkv, tiles=tiles), fullgraph=True)
        eager = fast(x16).float()
        graph = torch.cuda.CUDAGraph()
        static_x = x16.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            fast(static_x)  # warm-up on a side stream, as capture requires
        torch.cuda.current_stream().wait_stream(stream)
        with torch.cuda.graph(graph):
            static_out = fast(static_x)
        graph.replay()
        torch.cuda.synchronize()

    def err(a: torch.Tensor) -> float:
        return ((a - ref).norm() / ref.norm()).item()

    assert err(eager) <= 1.1 * err(sdpa) + 1e-4
    torch.testing.assert_close(static_out.float(), eager, rtol=0, atol=0)  # the replay computed the same
    assert not attention._FA4_FAILED and not attention._FA4_TILE_FAILED  # the kernels themselves ran
