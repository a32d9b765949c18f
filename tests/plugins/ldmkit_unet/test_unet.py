"""Tests of the UNet denoiser plugin: CompVis checkpoint parity, architecture options, input checks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import ldmkit
from ldmkit import Conditioning, InputError
from ldmkit.errors import SpecError
from ldmkit.testing import DenoiserConformance
from ldmkit_unet.attention import AttentionBlock, QKVAttention, QKVAttentionLegacy
from ldmkit_unet.embeddings import timestep_embedding
from ldmkit_unet.layers import concat_channels
from ldmkit_unet.resblocks import Downsample, ResBlock, Upsample
from ldmkit_unet.transformer import SpatialTransformer
from ldmkit_unet.unet import UNet
from tests.tiny import tiny_unet_params

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "compvis"
PREFIX = "model.diffusion_model."

TINY = tiny_unet_params(channels=4, attention_resolutions=[1, 2], num_heads=4)


def build(seed: int = 0, **overrides) -> UNet:
    """A tiny UNet whose zero-initialized output layers are randomized so every path matters."""
    torch.manual_seed(seed)
    model = UNet.from_params({**TINY, **overrides}).eval()
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0.0, 0.05)
    return model


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def inputs(batch: int = 2, channels: int = 4, size: tuple[int, int] = (8, 8), seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, *size, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    return x, t


class TestUNetConformance(DenoiserConformance):
    component_cls = UNet
    params = TINY

    def make_component(self) -> UNet:
        return build(self.seed, **self.params)


class TestConditionedUNetConformance(DenoiserConformance):
    """Cross-attention, class ids and concatenated channels at once."""

    component_cls = UNet
    params = {**TINY, "in_channels": 6, "use_spatial_transformer": True, "context_dim": 8, "num_classes": 5}

    def make_component(self) -> UNet:
        return build(self.seed, **self.params)

    def make_cond(self, batch: int) -> Conditioning:
        g = torch.Generator().manual_seed(5)
        return Conditioning(
            crossattn=torch.randn(batch, 3, 8, generator=g),
            concat=torch.randn(batch, 2, self.latent_size, self.latent_size, generator=g),
            vector=torch.arange(batch) % 5,
        )


class TestCrossAttentionConcatUNetConformance(DenoiserConformance):
    """Cross-attention and concatenated channels: guided calls share the prefix when the concat is shared."""

    component_cls = UNet
    params = {**TINY, "in_channels": 6, "use_spatial_transformer": True, "context_dim": 8}

    def make_component(self) -> UNet:
        return build(self.seed, **self.params)

    def make_cond(self, batch: int) -> Conditioning:
        g = torch.Generator().manual_seed(batch)
        return Conditioning(
            crossattn=torch.randn(batch, 3, 8, generator=g),
            concat=torch.randn(batch, 2, self.latent_size, self.latent_size, generator=g),
        )


class TestCrossAttentionUNetConformance(DenoiserConformance):
    """Cross-attention only: guided calls share the rows before the first cross-attention."""

    component_cls = UNet
    params = {**TINY, "use_spatial_transformer": True, "context_dim": 8}

    def make_component(self) -> UNet:
        return build(self.seed, **self.params)

    def make_cond(self, batch: int) -> Conditioning:
        return Conditioning(crossattn=torch.randn(batch, 3, 8, generator=torch.Generator().manual_seed(batch)))


# -- CompVis parity -------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["txt2img-kl", "cin-vq"])
def test_compvis_checkpoint_reproduces_reference_output(case: str) -> None:
    folder = FIXTURES / case
    config = yaml.safe_load((folder / "config.yaml").read_text())
    unet_params = config["model"]["params"]["unet_config"]["params"]
    cls = ldmkit.get_registry().get("denoiser", "unet")
    model = cls.from_params(unet_params).eval()

    state = torch.load(folder / "model.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    unet_state = {k[len(PREFIX) :]: v for k, v in state.items() if k.startswith(PREFIX)}
    assert unet_state
    model.load_state_dict(unet_state, strict=True)

    expected = load_file(folder / "expected.safetensors")
    with torch.no_grad():
        out = model(expected["x_t"], expected["timesteps"], Conditioning(crossattn=expected["cond"]))
    assert out.shape == expected["model_output"].shape
    assert rel_err(out, expected["model_output"]) <= 1e-4


def test_registered_as_denoiser_with_prediction() -> None:
    cls = ldmkit.get_registry().get("denoiser", "unet")
    assert cls is UNet and issubclass(cls, ldmkit.Denoiser)
    assert UNet.from_params(TINY).prediction == "eps"
    assert UNet.from_params({**TINY, "prediction": "v"}).prediction == "v"


def test_state_dict_uses_original_key_names() -> None:
    spatial = UNet.from_params({**TINY, "use_spatial_transformer": True, "context_dim": 16, "num_classes": 3})
    keys = set(spatial.state_dict())
    for key in (
        "time_embed.0.weight",
        "time_embed.2.bias",
        "label_emb.weight",
        "input_blocks.0.0.weight",
        "input_blocks.1.0.in_layers.2.weight",
        "input_blocks.1.0.emb_layers.1.weight",
        "input_blocks.1.0.out_layers.3.weight",
        "input_blocks.1.1.norm.weight",
        "input_blocks.1.1.proj_in.weight",
        "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight",
        "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
        "input_blocks.1.1.transformer_blocks.0.attn2.to_out.0.bias",
        "input_blocks.1.1.transformer_blocks.0.ff.net.0.proj.weight",
        "input_blocks.1.1.transformer_blocks.0.ff.net.2.weight",
        "input_blocks.1.1.transformer_blocks.0.norm3.weight",
        "input_blocks.2.0.op.weight",
        "input_blocks.3.0.skip_connection.weight",
        "middle_block.1.proj_in.weight",
        "middle_block.2.out_layers.3.weight",
        "output_blocks.1.2.conv.weight",
        "out.0.weight",
        "out.2.weight",
    ):
        assert key in keys, key
    assert spatial.state_dict()["input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"].shape == (32, 16)

    plain = UNet.from_params(TINY)
    for key in ("input_blocks.1.1.qkv.weight", "input_blocks.1.1.proj_out.weight", "middle_block.1.norm.bias"):
        assert key in plain.state_dict(), key
    assert plain.state_dict()["input_blocks.1.1.qkv.weight"].shape == (96, 32, 1)


def test_fresh_model_predicts_zero_like_the_original_init() -> None:
    model = UNet.from_params(TINY)
    x, t = inputs()
    assert torch.count_nonzero(model(x, t, Conditioning())) == 0


# -- building blocks ------------------------------------------------------------------------------


def test_timestep_embedding_is_cos_then_sin_of_geometric_frequencies() -> None:
    t = torch.tensor([0, 5, 999])
    emb = timestep_embedding(t, 8)
    assert emb.shape == (3, 8) and emb.dtype == torch.float32
    freqs = torch.tensor([10000 ** (-i / 4) for i in range(4)])
    args = t[:, None].float() * freqs[None]
    torch.testing.assert_close(emb, torch.cat([args.cos(), args.sin()], dim=1))
    odd = timestep_embedding(t, 9)
    assert odd.shape == (3, 9) and torch.equal(odd[:, -1], torch.zeros(3))


def _naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Reference attention on (N, d, T) tensors: softmax over keys of q.k / sqrt(d)."""
    weight = torch.einsum("nct,ncs->nts", q, k) / math.sqrt(q.shape[1])
    return torch.einsum("nts,ncs->nct", weight.softmax(dim=-1), v)


def test_qkv_attention_channel_layouts() -> None:
    b, heads, d, length = 2, 3, 4, 5
    qkv = torch.randn(b, 3 * heads * d, length)

    # legacy: channels grouped per head first, then [q, k, v]
    q, k, v = qkv.reshape(b * heads, 3 * d, length).split(d, dim=1)
    legacy_ref = _naive_attention(q, k, v).reshape(b, heads * d, length)
    torch.testing.assert_close(QKVAttentionLegacy(heads)(qkv), legacy_ref)

    # new order: [q, k, v] first, then heads
    q, k, v = (z.reshape(b * heads, d, length) for z in qkv.chunk(3, dim=1))
    new_ref = _naive_attention(q, k, v).reshape(b, heads * d, length)
    torch.testing.assert_close(QKVAttention(heads)(qkv), new_ref)
    assert not torch.allclose(legacy_ref, new_ref)


def test_legacy_and_new_attention_order_agree_after_permuting_qkv_weights() -> None:
    legacy = build(use_new_attention_order=False)
    new = UNet.from_params({**TINY, "use_new_attention_order": True}).eval()
    state = legacy.state_dict()
    heads = TINY["num_heads"]
    qkv_keys = [k for k in state if k.endswith((".qkv.weight", ".qkv.bias"))]
    assert qkv_keys
    for key in qkv_keys:
        d = state[key].shape[0] // (3 * heads)
        # legacy rows are [head][q|k|v][d]; the new order wants [q|k|v][head][d]
        rows = state[key].reshape(heads, 3, d, *state[key].shape[1:])
        state[key] = rows.transpose(0, 1).reshape(state[key].shape)
    new.load_state_dict(state)
    x, t = inputs()
    with torch.no_grad():
        out_legacy = legacy(x, t, Conditioning())
        out_new = new(x, t, Conditioning())
        unpermuted = UNet.from_params({**TINY, "use_new_attention_order": True}).eval()
        unpermuted.load_state_dict(legacy.state_dict())
        out_unpermuted = unpermuted(x, t, Conditioning())
    torch.testing.assert_close(out_new, out_legacy, rtol=1e-5, atol=1e-5)
    assert rel_err(out_unpermuted, out_legacy) > 1e-3


def test_scale_shift_norm_is_film_on_the_second_norm() -> None:
    torch.manual_seed(0)
    block = ResBlock(32, 16, 0.0, out_channels=64, use_scale_shift_norm=True).eval()
    with torch.no_grad():
        block.out_layers[3].weight.normal_(0, 0.05)
    x, emb = torch.randn(2, 32, 4, 4), torch.randn(2, 16)
    assert block.emb_layers[1].out_features == 128
    with torch.no_grad():
        h = block.in_layers(x)
        scale, shift = block.emb_layers(emb)[:, :, None, None].chunk(2, dim=1)
        h = torch.nn.functional.group_norm(h, 32, block.out_layers[0].weight, block.out_layers[0].bias)
        h = block.out_layers[3](torch.nn.functional.silu(h * (1 + scale) + shift))
        expected = block.skip_connection(x) + h
        torch.testing.assert_close(block(x, emb), expected)


@pytest.mark.parametrize("up", [True, False])
def test_resblock_updown_resamples_both_paths(up: bool) -> None:
    block = ResBlock(32, 16, 0.0, up=up, down=not up)
    assert isinstance(block.h_upd, Upsample if up else Downsample)
    assert not list(block.h_upd.parameters())  # parameter-free resampling inside the block
    out = block(torch.randn(1, 32, 8, 8), torch.randn(1, 16))
    assert out.shape == ((1, 32, 16, 16) if up else (1, 32, 4, 4))


def test_scale_shift_norm_with_resblock_updown_model() -> None:
    model = build(use_scale_shift_norm=True, resblock_updown=True)
    assert isinstance(model.input_blocks[2][0], ResBlock) and model.input_blocks[2][0].updown
    assert isinstance(model.output_blocks[1][2], ResBlock) and model.output_blocks[1][2].updown
    assert "input_blocks.2.0.op.weight" not in model.state_dict()
    x, t = inputs()
    with torch.no_grad():
        out = model(x, t, Conditioning())
        plain = build(use_scale_shift_norm=False, resblock_updown=True)(x, t, Conditioning())
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert rel_err(out, plain) > 1e-3


def test_conv_resample_false_uses_pooling_and_plain_upsampling() -> None:
    model = UNet.from_params({**TINY, "conv_resample": False})
    assert isinstance(model.input_blocks[2][0].op, torch.nn.AvgPool2d)
    assert not hasattr(model.output_blocks[1][2], "conv")


# -- head layout and the legacy flag --------------------------------------------------------------


def _heads(model: UNet) -> list[tuple[str, int, int]]:
    """(module name, heads, per-head width) of every attention layer."""
    out = []
    for name, module in model.named_modules():
        if isinstance(module, AttentionBlock):
            out.append((name, module.num_heads, module.channels // module.num_heads))
        elif isinstance(module, SpatialTransformer):
            attn = module.transformer_blocks[0].attn1
            out.append((name, attn.heads, attn.to_q.out_features // attn.heads))
    return out


def test_num_head_channels_fixes_the_head_width() -> None:
    model = UNet.from_params({**TINY, "num_heads": -1, "num_head_channels": 16, "legacy": False})
    layout = _heads(model)
    assert layout and all(width == 16 for _, _, width in layout)
    assert {heads for _, heads, _ in layout} == {2, 4}  # 32 and 64 channels
    spatial = UNet.from_params(
        {**TINY, "num_heads": -1, "num_head_channels": 16, "use_spatial_transformer": True, "context_dim": 8}
    )
    assert all(width == 16 for _, _, width in _heads(spatial))


def test_legacy_flag_semantics_for_the_head_layout() -> None:
    # legacy attention blocks without num_head_channels take head counts directly, decoder from num_heads_upsample
    legacy = {n: h for n, h, _ in _heads(UNet.from_params({**TINY, "num_heads_upsample": 1}))}
    assert legacy["input_blocks.1.1"] == 4 and legacy["middle_block.1"] == 4
    assert legacy["output_blocks.0.1"] == 1 and legacy["output_blocks.2.1"] == 1
    # non-legacy blocks resolve a head width ch // num_heads, so num_heads_upsample has no effect
    new = {n: h for n, h, _ in _heads(UNet.from_params({**TINY, "num_heads_upsample": 1, "legacy": False}))}
    assert set(new.values()) == {4}
    # spatial transformers always use ch // num_heads per head
    spatial = UNet.from_params({**TINY, "use_spatial_transformer": True, "context_dim": 8, "legacy": True})
    assert {(h, w) for _, h, w in _heads(spatial)} == {(4, 8), (4, 16)}


# -- transformer, classes, concat -----------------------------------------------------------------


def test_transformer_depth_two_uses_both_blocks() -> None:
    model = build(use_spatial_transformer=True, context_dim=8, transformer_depth=2)
    keys = model.state_dict()
    assert "middle_block.1.transformer_blocks.1.attn2.to_v.weight" in keys
    assert "middle_block.1.transformer_blocks.2.attn2.to_v.weight" not in keys
    x, t = inputs()
    cond = Conditioning(crossattn=torch.randn(2, 3, 8))
    with torch.no_grad():
        before = model(x, t, cond)
        model.middle_block[1].transformer_blocks[1].ff.net[2].weight.mul_(2.0)
        after = model(x, t, cond)
        other_context = model(x, t, Conditioning(crossattn=torch.randn(2, 3, 8)))
    assert rel_err(after, before) > 1e-4
    assert rel_err(other_context, after) > 1e-4


def test_class_conditional_uses_vector_ids() -> None:
    model = build(num_classes=5)
    x, t = inputs()
    with torch.no_grad():
        a = model(x, t, Conditioning(vector=torch.tensor([0, 3])))
        b = model(x, t, Conditioning(vector=torch.tensor([1, 3])))
    assert rel_err(a[0], b[0]) > 1e-4
    torch.testing.assert_close(a[1], b[1])
    with pytest.raises(InputError, match="cond.vector"):
        model(x, t, Conditioning())
    with pytest.raises(InputError, match="class ids"):
        model(x, t, Conditioning(vector=torch.tensor([0, 5])))
    with pytest.raises(InputError, match="integer class ids"):
        model(x, t, Conditioning(vector=torch.tensor([0.0, 1.0])))


def test_concat_channels_join_the_latent() -> None:
    model = build(in_channels=6)
    x, t = inputs()
    c1, c2 = torch.randn(2, 2, 8, 8), torch.randn(2, 2, 8, 8)
    with torch.no_grad():
        a = model(x, t, Conditioning(concat=c1))
        b = model(x, t, Conditioning(concat=c2))
    assert a.shape == (2, 4, 8, 8)
    assert rel_err(a, b) > 1e-4
    # the concatenated channels come after the latent ones
    first_conv = model.input_blocks[0][0]
    with torch.no_grad():
        first_conv.weight[:, 4:].zero_()
        torch.testing.assert_close(model(x, t, Conditioning(concat=c1)), model(x, t, Conditioning(concat=c2)))
    with pytest.raises(InputError, match="concat"):
        model(x, t, Conditioning())


# -- shapes, determinism, input checks -------------------------------------------------------------


@pytest.mark.parametrize("size", [(8, 8), (16, 8), (4, 12)])
def test_output_keeps_the_spatial_shape(size: tuple[int, int]) -> None:
    model = build(out_channels=3, use_spatial_transformer=True, context_dim=8)
    x, t = inputs(size=size)
    with torch.no_grad():
        out = model(x, t, Conditioning(crossattn=torch.randn(2, 5, 8)))
    assert out.shape == (2, 3, *size)


def test_deterministic_and_batch_independent() -> None:
    m1, m2 = build(seed=3), build(seed=3)
    for (k1, v1), (k2, v2) in zip(m1.state_dict().items(), m2.state_dict().items(), strict=True):
        assert k1 == k2 and torch.equal(v1, v2)
    x, t = inputs()
    with torch.no_grad():
        out = m1(x, t, Conditioning())
        assert torch.equal(out, m1(x, t, Conditioning()))
        assert torch.equal(out, m2(x, t, Conditioning()))
        single = m1(x[1:], t[1:], Conditioning())
    torch.testing.assert_close(single, out[1:], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_skip_concatenation_keeps_the_input_layout(layout: torch.memory_format) -> None:
    a = torch.randn(2, 3, 4, 5).contiguous(memory_format=layout)
    b = torch.randn(2, 6, 4, 5).contiguous(memory_format=layout)
    joined = concat_channels(a, b)
    assert torch.equal(joined, torch.cat([a, b], dim=1))
    assert joined.is_contiguous(memory_format=layout)


def test_channels_last_model_computes_the_same_function() -> None:
    model = build(use_spatial_transformer=True, context_dim=8)
    x, t = inputs()
    cond = Conditioning(crossattn=torch.randn(2, 5, 8))
    with torch.no_grad():
        reference = model(x, t, cond)
        model.to(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last), t, cond)
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-5)


def test_scalar_timestep_is_broadcast() -> None:
    model = build()
    x, _ = inputs()
    with torch.no_grad():
        torch.testing.assert_close(
            model(x, torch.tensor(10), Conditioning()), model(x, torch.tensor([10, 10]), Conditioning())
        )
    with pytest.raises(InputError, match="one timestep per sample"):
        model(x, torch.tensor([1, 2, 3]), Conditioning())


def test_bad_inputs_raise_input_error() -> None:
    spatial = build(use_spatial_transformer=True, context_dim=8)
    x, t = inputs()
    with pytest.raises(InputError, match="crossattn.*missing"):
        spatial(x, t, Conditioning())
    with pytest.raises(InputError, match="crossattn"):
        spatial(x, t, Conditioning(crossattn=torch.randn(2, 3, 7)))
    plain = build()
    with pytest.raises(InputError, match="no cross-attention"):
        plain(x, t, Conditioning(crossattn=torch.randn(2, 3, 8)))
    with pytest.raises(InputError, match="not class-conditional"):
        plain(x, t, Conditioning(vector=torch.tensor([0, 1])))
    with pytest.raises(InputError, match="divisible by 2"):
        plain(torch.randn(2, 4, 7, 8), t, Conditioning())
    with pytest.raises(InputError, match="input channels"):
        plain(torch.randn(2, 3, 8, 8), t, Conditioning())


# -- params -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"use_spatial_transformer": True}, "needs context_dim"),
        ({"context_dim": 8}, "use_spatial_transformer is false"),
        ({"num_heads": -1, "num_head_channels": -1}, "num_heads or num_head_channels"),
        ({"dims": 3}, "only 2-D"),
        ({"n_embed": 16}, "n_embed"),
        ({"model_channels": 48}, "divisible by 32"),
        ({"num_heads": -1, "num_head_channels": 24}, "attention heads"),
        ({"num_heads": 3, "legacy": True}, "3 heads"),
        ({"num_heads": 0}, "num_heads"),
        ({"channel_mult": [1, 0]}, "channel_mult"),
        ({"channel_mult": (1, 2)}, "channel_mult"),
        ({"attention_resolution": [1]}, "attention_resolution"),
        ({"prediction": "noise"}, "prediction"),
        ({"transformer_depth": 0}, "transformer_depth"),
    ],
)
def test_params_errors(overrides: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        UNet.from_params({**TINY, **overrides})


def test_params_accept_the_compvis_config_and_ignore_runtime_flags() -> None:
    params = UNet.Params.model_validate({**TINY, "use_checkpoint": True, "use_fp16": True, "dropout": 0})
    model = UNet(params)
    assert model.params.use_checkpoint and model.params.dropout == 0.0
    assert all(p.dtype == torch.float32 for p in model.parameters())


# -- guided calls ---------------------------------------------------------------------------------


def _rows_seen(module: torch.nn.Module, call) -> list[int]:
    rows: list[int] = []
    handle = module.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[0]))
    try:
        with torch.no_grad():
            call()
    finally:
        handle.remove()
    return rows


@pytest.mark.parametrize("attention_resolutions", [[1, 2], [2]])
def test_guided_call_runs_the_shared_prefix_once(attention_resolutions: list[int]) -> None:
    model = build(use_spatial_transformer=True, context_dim=8, attention_resolutions=attention_resolutions)
    x, t = inputs(batch=3)
    both = Conditioning(crossattn=torch.randn(6, 5, 8))
    first_res, last_block = model.input_blocks[1][0], model.output_blocks[-1]
    call = lambda: model.forward_guided(x, t, both)  # noqa: E731
    # the first residual block precedes every cross-attention: it sees the 3 shared rows
    assert _rows_seen(first_res, call) == [3]
    assert _rows_seen(last_block, call) == [6]
    with torch.no_grad():
        guided = model.forward_guided(x, t, both)
        plain = model(torch.cat([x, x]), torch.cat([t, t]), both)
    torch.testing.assert_close(guided, plain, rtol=1e-4, atol=1e-5)
    assert rel_err(guided[:3], guided[3:]) > 1e-4  # the halves' contexts differ, and so do their outputs


def test_guided_call_with_class_ids_runs_all_rows() -> None:
    # the class embedding differs between the halves from the first residual block on
    model = build(num_classes=5)
    x, t = inputs(batch=2)
    both = Conditioning(vector=torch.tensor([4, 4, 0, 1]))
    assert _rows_seen(model.input_blocks[1][0], lambda: model.forward_guided(x, t, both)) == [4]
    with torch.no_grad():
        guided = model.forward_guided(x, t, both)
    torch.testing.assert_close(guided, model(torch.cat([x, x]), torch.cat([t, t]), both))


def test_guided_call_checks_the_conditioning_rows() -> None:
    model = build(use_spatial_transformer=True, context_dim=8)
    x, t = inputs(batch=2)
    with pytest.raises(InputError, match=r"cond.crossattn must be \(B=4"):
        model.forward_guided(x, t, Conditioning(crossattn=torch.randn(2, 5, 8)))


def test_guided_call_with_a_shared_concat_runs_the_shared_prefix_once() -> None:
    model = build(in_channels=6, use_spatial_transformer=True, context_dim=8)
    x, t = inputs(batch=2)
    concat, context = torch.randn(2, 2, 8, 8), torch.randn(4, 5, 8)
    shared = Conditioning(crossattn=context, concat=concat)  # the halves share the concat: B rows
    call = lambda: model.forward_guided(x, t, shared)  # noqa: E731
    assert _rows_seen(model.input_blocks[1][0], call) == [2]
    with torch.no_grad():
        guided = model.forward_guided(x, t, shared)
        plain = model(
            torch.cat([x, x]), torch.cat([t, t]), Conditioning(crossattn=context, concat=concat.repeat(2, 1, 1, 1))
        )
        # concat rows of their own (2B) are not shared: every row runs from the stem
        both = Conditioning(crossattn=context, concat=concat.repeat(2, 1, 1, 1))
        assert _rows_seen(model.input_blocks[1][0], lambda: model.forward_guided(x, t, both)) == [4]
        torch.testing.assert_close(model.forward_guided(x, t, both), plain, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(guided, plain, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("num_classes", [None, 5])
def test_guided_call_takes_a_scalar_timestep(num_classes: int | None) -> None:
    # with class ids the UNet runs every row (the default forward_guided), without them it shares rows
    model = build(use_spatial_transformer=True, context_dim=8, num_classes=num_classes)
    x, _ = inputs(batch=2)
    labels = None if num_classes is None else torch.tensor([4, 4, 0, 1])
    both = Conditioning(crossattn=torch.randn(4, 5, 8), vector=labels)
    with torch.no_grad():
        guided = model.forward_guided(x, 500, both)
        plain = model(torch.cat([x, x]), 500, both)
    torch.testing.assert_close(guided, plain, rtol=1e-4, atol=1e-5)
