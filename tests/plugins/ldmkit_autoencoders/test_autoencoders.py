"""First stages: conformance with the reference autoencoders, and the behaviour users rely on."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import ldmkit
from ldmkit.errors import InputError, SpecError
from ldmkit.testing import FirstStageConformance
from ldmkit_autoencoders.compvis import first_stage_from_compvis
from ldmkit_autoencoders.distributions import DiagonalGaussian
from ldmkit_autoencoders.identity import IdentityFirstStage
from ldmkit_autoencoders.kl import KLAutoencoder
from ldmkit_autoencoders.params import TINY_EXAMPLE
from ldmkit_autoencoders.vq import VQAutoencoder

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "compvis"
PREFIX = "first_stage_model."
TOLERANCE = 1e-4

TINY = TINY_EXAMPLE  # 16x16, two levels


# tiny models: one intra-op thread (the conftest fixture) avoids contention on small shared CPUs
pytestmark = pytest.mark.usefixtures("one_thread")


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def tiny_vq(**extra) -> VQAutoencoder:
    params = {**TINY, "double_z": False, "z_channels": 3, "embed_dim": 3, "n_embed": 16, **extra}
    torch.manual_seed(0)
    return VQAutoencoder.from_params(params).eval()


# -- the shared first-stage contract ---------------------------------------------------------------
class TestKLConformance(FirstStageConformance):
    component_cls = KLAutoencoder
    params = {**TINY, "embed_dim": 4}


class TestVQConformance(FirstStageConformance):
    component_cls = VQAutoencoder
    params = {**TINY, "double_z": False, "z_channels": 3, "embed_dim": 3, "n_embed": 16, "remap": [0, 4, 7]}


class TestIdentityConformance(FirstStageConformance):
    component_cls = IdentityFirstStage
    params = {"channels": 3}


# -- conformance with the reference checkpoints ------------------------------------------------------
def load_case(case: str):
    folder = FIXTURES / case
    config = yaml.safe_load((folder / "config.yaml").read_text())["model"]["params"]
    name, params = first_stage_from_compvis(config["first_stage_config"])
    model = ldmkit.get_registry().create("first_stage", name, params).eval()
    state = torch.load(folder / "model.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    state = {
        k[len(PREFIX) :]: v for k, v in state.items() if k.startswith(PREFIX) and not k.startswith(PREFIX + "loss.")
    }
    model.load_state_dict(state, strict=True)
    expected = load_file(folder / "expected.safetensors")
    scale_factor = json.loads((folder / "case.json").read_text())["scale_factor"]
    return model, expected, scale_factor, json.loads((folder / "case.json").read_text())


@pytest.fixture(scope="module", params=["txt2img-kl", "cin-vq"])
def case(request):
    return load_case(request.param)


def test_encode_matches_reference(case):
    model, expected, _, _ = case
    with torch.no_grad():
        latents = model.encode(expected["image"])
    assert latents.shape == expected["latent_mode"].shape
    assert rel_error(latents, expected["latent_mode"]) <= TOLERANCE


def test_decode_matches_reference(case):
    model, expected, scale_factor, _ = case
    with torch.no_grad():
        images = model.decode(expected["x_t"] / scale_factor)
    assert images.shape == expected["decoded"].shape
    assert rel_error(images, expected["decoded"]) <= TOLERANCE


def test_attributes_match_case(case):
    model, _, _, info = case
    assert isinstance(model, ldmkit.FirstStage)
    assert model.latent_channels == info["latent_shape"][0]
    assert model.downsample == info["downsample"]


def test_fixture_types():
    kl, *_ = load_case("txt2img-kl")
    vq, *_ = load_case("cin-vq")
    assert isinstance(kl, KLAutoencoder) and isinstance(vq, VQAutoencoder)
    assert "quantize.embedding.weight" in vq.state_dict()


# -- architecture ------------------------------------------------------------------------------------
def test_f8_with_attention_levels_shapes_and_keys():
    params = {**TINY, "resolution": 32, "ch_mult": [1, 1, 2, 2], "attn_resolutions": [16, 4], "embed_dim": 4}
    torch.manual_seed(0)
    model = KLAutoencoder.from_params(params).eval()
    assert model.downsample == 8 and model.latent_channels == 4
    keys = set(model.state_dict())
    # encoder levels run at 32, 16, 8, 4: attention on levels 1 and 3, one per resnet block
    assert "encoder.down.1.attn.0.q.weight" in keys and "encoder.down.3.attn.0.proj_out.weight" in keys
    assert not any(k.startswith(("encoder.down.0.attn", "encoder.down.2.attn")) for k in keys)
    # decoder levels have num_res_blocks + 1 blocks, each followed by attention where enabled
    assert "decoder.up.1.attn.1.k.weight" in keys and "decoder.up.3.attn.1.v.weight" in keys
    assert not any(k.startswith(("decoder.up.0.attn", "decoder.up.2.attn")) for k in keys)
    assert "decoder.up.1.upsample.conv.weight" in keys and "decoder.up.0.upsample.conv.weight" not in keys
    assert "encoder.down.2.downsample.conv.weight" in keys and "encoder.down.3.downsample.conv.weight" not in keys
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        z = model.encode(x)
        assert z.shape == (2, 4, 4, 4)
        assert model.decode(z).shape == (2, 3, 32, 32)
        # a non-square input keeps its aspect ratio
        assert model.encode(torch.zeros(1, 3, 16, 48)).shape == (1, 4, 2, 6)


def test_attention_block_is_softmax_attention():
    from ldmkit_autoencoders.blocks import AttnBlock

    torch.manual_seed(0)
    block = AttnBlock(32).eval()
    x = torch.randn(2, 32, 4, 5)
    with torch.no_grad():
        h = block.norm(x)
        q, k, v = (m(h).flatten(2) for m in (block.q, block.k, block.v))  # (B, C, HW)
        weights = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(32), dim=-1)  # (B, HW_q, HW_k)
        attended = (v @ weights.transpose(1, 2)).reshape(x.shape)
        expected = x + block.proj_out(attended)
        assert torch.allclose(block(x), expected, atol=1e-5)


# -- KL posterior ------------------------------------------------------------------------------------
def test_encode_distribution_sampling_is_seeded():
    torch.manual_seed(0)
    model = KLAutoencoder.from_params({**TINY, "embed_dim": 4}).eval()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        posterior = model.encode_distribution(x)
        a = posterior.sample(torch.Generator().manual_seed(1))
        b = posterior.sample(torch.Generator().manual_seed(1))
        c = posterior.sample(torch.Generator().manual_seed(2))
        assert a.shape == (2, 4, 8, 8)
        assert torch.equal(a, b)
        assert not torch.allclose(a, c)
        assert not torch.allclose(a, posterior.mode())
        assert torch.equal(posterior.mode(), model.encode(x))
        kl = posterior.kl()
    assert kl.shape == (2,) and bool((kl >= 0).all())


def test_kl_of_standard_normal_is_zero_and_logvar_is_clamped():
    standard = DiagonalGaussian(torch.zeros(3, 8, 2, 2))
    assert torch.allclose(standard.kl(), torch.zeros(3))
    moments = torch.cat([torch.zeros(1, 4, 2, 2), torch.full((1, 4, 2, 2), 100.0)], dim=1)
    wide = DiagonalGaussian(moments)
    assert torch.allclose(wide.logvar, torch.full_like(wide.logvar, 20.0))
    moments = torch.cat([torch.randn(1, 4, 2, 2), torch.full((1, 4, 2, 2), -100.0)], dim=1)
    assert torch.allclose(DiagonalGaussian(moments).logvar, torch.full((1, 4, 2, 2), -30.0))
    shifted = DiagonalGaussian(torch.cat([torch.ones(2, 1, 1, 1), torch.zeros(2, 1, 1, 1)], dim=1))
    assert torch.allclose(shifted.kl(), torch.full((2,), 0.5))  # KL(N(1,1) || N(0,1)) = 1/2


# -- VQ ----------------------------------------------------------------------------------------------
def test_vq_decode_quantizes_to_the_code():
    model = tiny_vq(sane_index_shape=True)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        latents = model.encode(x)
        quant, loss, indices = model.quantize_latents(latents)
        assert indices.shape == (2, 8, 8) and indices.dtype == torch.long
        rows = model.quantize.embedding.weight[indices].permute(0, 3, 1, 2)  # (B, C, h, w)
        assert torch.allclose(quant, rows, atol=1e-6)
        assert torch.allclose(model.decode(latents), model.decode_code(indices), atol=1e-5)
        # without quantization the decoder sees other inputs
        assert not torch.allclose(model.decode(latents, force_not_quantize=True), model.decode_code(indices))
    assert loss.ndim == 0 and loss.item() >= 0


@pytest.mark.parametrize("legacy", [True, False])
def test_vq_straight_through_and_loss_placement(legacy):
    model = tiny_vq(legacy=legacy, beta=0.25)
    latents = torch.randn(1, 3, 4, 4, requires_grad=True)
    quant, loss, _ = model.quantize_latents(latents)
    (quant_grad,) = torch.autograd.grad(quant.sum(), latents, retain_graph=True)
    assert torch.allclose(quant_grad, torch.ones_like(latents))  # straight-through
    (loss_grad,) = torch.autograd.grad(loss, latents)
    mse_grad = 2 * (latents - quant).detach() / latents.numel()
    # legacy: the commitment term (the one reaching the encoder) has weight 1; fixed: weight beta
    assert torch.allclose(loss_grad, mse_grad * (1.0 if legacy else 0.25), atol=1e-7)


def test_vq_remap_round_trip():
    model = tiny_vq(remap=[5, 2, 9], unknown_index="extra", sane_index_shape=True)
    assert torch.equal(model.state_dict()["quantize.used"], torch.tensor([5, 2, 9]))
    codebook = model.quantize.embedding.weight.detach()
    codes = torch.tensor([[[9, 5], [2, 7]]])  # (1, 2, 2); code 7 is not in use
    latents = codebook[codes].permute(0, 3, 1, 2).contiguous()  # exactly on the codebook
    with torch.no_grad():
        _, _, indices = model.quantize_latents(latents)
        assert indices.tolist() == [[[2, 0], [1, 3]]]  # positions in remap, 3 = the extra index
        entries = model.quantize.get_codebook_entry(indices[:, :1], (1, 1, 2, 3))
        assert torch.equal(entries, latents[:, :, :1])
        assert torch.allclose(model.decode_code(indices[:, :1]), model.decode(latents[:, :, :1]), atol=1e-5)


def test_vq_remap_fixed_and_random_unknown_index():
    fixed = tiny_vq(remap=[5, 2, 9], unknown_index=1)
    codebook = fixed.quantize.embedding.weight.detach()
    latents = codebook[torch.tensor([[[7, 9]]])].permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        assert fixed.quantize_latents(latents)[2].tolist() == [1, 2]
        rand = tiny_vq(remap=[5, 2, 9])
        latents = rand.quantize.embedding.weight.detach()[torch.arange(16)].T.reshape(1, 3, 4, 4)
        a = rand.quantize_latents(latents, torch.Generator().manual_seed(3))[2]
        b = rand.quantize_latents(latents, torch.Generator().manual_seed(3))[2]
    assert torch.equal(a, b) and int(a.max()) < 3


def test_vq_state_dict_loads_strictly_into_a_fresh_model():
    source = tiny_vq(remap=[1, 3])
    target = VQAutoencoder.from_params(source.params)
    target.load_state_dict(source.state_dict(), strict=True)
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(source.decode(source.encode(x)), target.eval().decode(target.encode(x)))


# -- identity ----------------------------------------------------------------------------------------
def test_identity_first_stage():
    stage = IdentityFirstStage.from_params({"channels": 4})
    assert stage.latent_channels == 4 and stage.downsample == 1
    x = torch.randn(2, 4, 8, 8)
    assert torch.equal(stage.encode(x), x) and torch.equal(stage.decode(x), x)
    assert IdentityFirstStage.from_params({}).latent_channels == 3
    with pytest.raises(InputError):
        stage.encode(torch.randn(2, 3, 8, 8))


# -- validation and registry -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cls", "params"),
    [
        (KLAutoencoder, {**TINY, "bogus": 1}),
        (KLAutoencoder, {**TINY, "ch": "32"}),
        (KLAutoencoder, {**TINY, "ch_mult": "12"}),
        (KLAutoencoder, {**TINY, "double_z": False}),
        (KLAutoencoder, {**TINY, "ch": 48}),  # not a multiple of 32 groups
        (VQAutoencoder, {**TINY, "n_embed": "16"}),
        (VQAutoencoder, {**TINY, "double_z": True}),
        (VQAutoencoder, {**TINY, "n_embed": 16, "remap": [3, 16]}),
        (VQAutoencoder, {**TINY, "remap": "used_codes.npy"}),
        (VQAutoencoder, {**TINY, "unknown_index": "sometimes"}),
        (IdentityFirstStage, {"channels": 3, "extra": True}),
        (IdentityFirstStage, {"channels": "3"}),
    ],
)
def test_bad_params_are_rejected(cls, params):
    with pytest.raises(SpecError):
        cls.from_params(params)


def test_bad_inputs_raise_input_error():
    model = tiny_vq()
    with pytest.raises(InputError, match="images"):
        model.encode(torch.zeros(1, 4, 16, 16))
    with pytest.raises(InputError, match="latents"):
        model.decode(torch.zeros(1, 3, 4))
    with pytest.raises(InputError, match="indices"):
        model.decode_code(torch.zeros(1, 2, 2))
    with pytest.raises(InputError, match="code indices"):
        model.decode_code(torch.full((1, 2, 2), 16))


def test_registry_lists_the_three_first_stages():
    registry = ldmkit.get_registry()
    assert {"kl-autoencoder", "vq-autoencoder", "identity"} <= set(registry.names("first_stage"))
    assert registry.get("first_stage", "kl-autoencoder") is KLAutoencoder
    assert registry.get("first_stage", "vq-autoencoder") is VQAutoencoder
    assert registry.get("first_stage", "identity") is IdentityFirstStage


def test_compvis_config_translation():
    config = {
        "target": "ldm.models.autoencoder.VQModelInterface",
        "params": {"embed_dim": 3, "n_embed": 16, "lossconfig": {"target": "torch.nn.Identity"}, "ddconfig": TINY},
    }
    name, params = first_stage_from_compvis(config)
    assert name == "vq-autoencoder" and params == {**TINY, "embed_dim": 3, "n_embed": 16}
    assert first_stage_from_compvis({"target": "ldm.models.autoencoder.IdentityFirstStage"}, channels=4) == (
        "identity",
        {"channels": 4},
    )
    with pytest.raises(SpecError, match="remap"):
        first_stage_from_compvis({**config, "params": {**config["params"], "remap": "codes.npy"}})
    with pytest.raises(SpecError, match="attn_type"):
        first_stage_from_compvis({**config, "params": {"ddconfig": {**TINY, "attn_type": "linear"}}})
    with pytest.raises(SpecError, match="not a supported first stage"):
        first_stage_from_compvis({"target": "my.module.Anything"})


@pytest.mark.parametrize("cls", [KLAutoencoder, VQAutoencoder])
def test_encoding_a_size_the_encoder_would_crop_is_refused(cls):
    params = {**TINY, "embed_dim": 4} if cls is KLAutoencoder else {**TINY, "double_z": False, "embed_dim": 3}
    model = cls.from_params(params).eval()
    f = model.downsample
    assert f > 1
    with torch.no_grad():
        assert model.encode(torch.zeros(1, 3, 4 * f, 2 * f)).shape[-2:] == (4, 2)
        with pytest.raises(InputError, match=rf"17x{2 * f} pixels; height and width must be multiples of {f}"):
            model.encode(torch.zeros(1, 3, 17, 2 * f))
