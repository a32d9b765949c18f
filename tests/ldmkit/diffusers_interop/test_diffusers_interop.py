"""ldmkit <-> diffusers: the same weights compute the same function in both libraries, and convert back bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import ldmkit
from ldmkit import diffusers_interop as di
from ldmkit.errors import SpecError
from tests.tiny import TINY_SD_CLIP, tiny_autoencoder_params, tiny_sd_pipeline, tiny_unet_params

diffusers = pytest.importorskip("diffusers")

TOL = 1e-5


def randomize(module: torch.nn.Module, seed: int = 0, std: float = 0.1) -> torch.nn.Module:
    """Random weights everywhere (many layers start at zero, which would hide mapping mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module.eval()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def create(kind: str, name: str, params: dict) -> torch.nn.Module:
    return ldmkit.get_registry().create(kind, name, params)


def diffusers_model(config: dict, state: dict) -> torch.nn.Module:
    model = getattr(diffusers, config["_class_name"]).from_config(config).eval()
    model.load_state_dict(state, strict=True)
    return model


CROSS_UNETS = {
    "heads": tiny_unet_params(channels=4, attention_resolutions=[1, 2], num_heads=2, context_dim=24,
                              transformer_depth=2),
    "head-width+classes+scale-shift": tiny_unet_params(channels=4, attention_resolutions=[2], num_head_channels=16,
                                                       context_dim=24, num_classes=5, use_scale_shift_norm=True),
}  # fmt: skip
PLAIN_UNETS = {
    "head-width+classes": tiny_unet_params(channels=3, attention_resolutions=[2], num_head_channels=16,
                                           num_classes=3),
    "new-order+scale-shift": tiny_unet_params(channels=3, attention_resolutions=[1, 2], num_head_channels=16,
                                              use_new_attention_order=True, use_scale_shift_norm=True),
    "one-head+concat": tiny_unet_params(channels=3, in_channels=5, attention_resolutions=[1], num_heads=1),
}  # fmt: skip


def unet_outputs(unet, model, params: dict, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, params["in_channels"], 8, 8, generator=g)
    t = torch.tensor([7, 801])
    ctx = torch.randn(2, 5, params["context_dim"], generator=g) if params.get("context_dim") else None
    y = torch.tensor([0, params["num_classes"] - 1]) if params.get("num_classes") else None
    with torch.no_grad():
        ours = unet(x, t, ldmkit.Conditioning(crossattn=ctx, vector=y))
        kwargs = {"class_labels": y} if y is not None else {}
        if ctx is not None:
            kwargs["encoder_hidden_states"] = ctx
        theirs = model(x, t, **kwargs).sample
    return ours, theirs


@pytest.mark.parametrize("params", list(CROSS_UNETS.values()) + list(PLAIN_UNETS.values()),
                         ids=[f"cross-{k}" for k in CROSS_UNETS] + [f"plain-{k}" for k in PLAIN_UNETS])  # fmt: skip
def test_unet_to_diffusers_computes_the_same(params):
    unet = randomize(create("denoiser", "unet", params))
    config, state = di.unet_to_diffusers(unet)
    assert config["_class_name"] == ("UNet2DConditionModel" if params.get("context_dim") else "UNet2DModel")
    model = diffusers_model(config, state)
    ours, theirs = unet_outputs(unet, model, params)
    assert rel_err(ours, theirs) <= TOL
    back = di.unet_from_diffusers(config, model.state_dict())
    assert same_weights(unet, back)


def test_unet_from_diffusers_computes_the_same():
    model = randomize(
        diffusers.UNet2DConditionModel(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=24,
            attention_head_dim=(2, 4),  # heads per block: a fixed head width of 16
        ),
        seed=3,
    )
    config = {**model.config, "_class_name": "UNet2DConditionModel"}
    unet = di.unet_from_diffusers(config, model.state_dict(), prediction="v")
    assert unet.prediction == "v" and unet.params.context_dim == 24
    ours, theirs = unet_outputs(unet, model, {"in_channels": 4, "context_dim": 24})
    assert rel_err(ours, theirs) <= TOL


@pytest.mark.parametrize(
    "name, params",
    [
        ("kl-autoencoder", tiny_autoencoder_params(channels=4, attn_resolutions=[8])),
        ("vq-autoencoder", tiny_autoencoder_params(channels=3, embed_dim=2, n_embed=16, attn_resolutions=[16])),
    ],
)
def test_autoencoder_to_diffusers_computes_the_same(name, params):
    ours = randomize(create("first_stage", name, params), std=0.05)
    config, state = di.autoencoder_to_diffusers(ours, scaling_factor=0.5)
    theirs = diffusers_model(config, state)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        z = ours.encode(x)
        out = theirs.encode(x)
        z_theirs = out.latent_dist.mode() if name == "kl-autoencoder" else out.latents
        assert rel_err(z, z_theirs) <= TOL
        # VQ decoding snaps to the codebook: feed codebook vectors so no near-tie can flip a code
        if name == "vq-autoencoder":
            z = ours.quantize.embedding.weight[torch.tensor([[[1, 5], [7, 2]]])].permute(0, 3, 1, 2).repeat(2, 1, 4, 4)
        assert rel_err(ours.decode(z), theirs.decode(z).sample) <= TOL
    back = di.autoencoder_from_diffusers(config, theirs.state_dict())
    assert same_weights(ours, back)
    assert di.autoencoder_params_from_diffusers(config)[2] == 0.5


def test_autoencoder_from_diffusers_computes_the_same():
    theirs = randomize(
        diffusers.AutoencoderKL(
            block_out_channels=(32, 64),
            down_block_types=("DownEncoderBlock2D", "AttnDownEncoderBlock2D"),
            up_block_types=("AttnUpDecoderBlock2D", "UpDecoderBlock2D"),
            latent_channels=4,
            layers_per_block=1,
            sample_size=16,
        ),
        std=0.05,
    )
    ours = di.autoencoder_from_diffusers({**theirs.config, "_class_name": "AutoencoderKL"}, theirs.state_dict())
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert rel_err(ours.encode(x), theirs.encode(x).latent_dist.mode()) <= TOL
        z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
        assert rel_err(ours.decode(z), theirs.decode(z).sample) <= TOL


def test_clip_text_both_ways():
    from transformers import CLIPTextConfig, CLIPTextModel

    theirs = randomize(CLIPTextModel(CLIPTextConfig(**TINY_SD_CLIP)), std=0.05)
    config = theirs.config.to_dict()
    ours = di.clip_text_from_transformers(config, theirs.state_dict())
    tokens = torch.randint(0, TINY_SD_CLIP["vocab_size"], (2, 77), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        assert rel_err(ours(tokens).crossattn, theirs(input_ids=tokens).last_hidden_state) <= TOL
    config2, state2 = di.clip_text_to_transformers(ours)
    again = di.clip_text_from_transformers(config2, state2)
    assert same_weights(ours, again)


@pytest.mark.parametrize(
    "schedule",
    [
        {"beta_schedule": "linear", "linear_start": 0.00085, "linear_end": 0.012, "timesteps": 1000},
        {"beta_schedule": "sqrt_linear", "linear_start": 0.0001, "linear_end": 0.02, "timesteps": 500},
        {"beta_schedule": "cosine", "timesteps": 1000},
    ],
)
def test_scheduler_has_the_same_forward_process(schedule):
    spec = ldmkit.ScheduleSpec.model_validate(schedule)
    config = di.scheduler_config_to_diffusers(spec, "v")
    scheduler = diffusers.DDIMScheduler.from_config(config)
    ours = ldmkit.NoiseSchedule.from_spec(spec).alphas_cumprod
    assert scheduler.config.prediction_type == "v_prediction"
    assert rel_err(ours, scheduler.alphas_cumprod.float()) <= TOL
    back, prediction = di.schedule_from_diffusers(dict(scheduler.config))
    assert back == spec and prediction == "v"


def test_unsupported_configurations_raise_spec_error():
    config, _ = di.unet_to_diffusers(create("denoiser", "unet", CROSS_UNETS["heads"]))
    assert di.unet_params_from_diffusers(config).context_dim == 24
    with pytest.raises(SpecError, match="use_linear_projection"):  # Stable Diffusion 2
        di.unet_params_from_diffusers({**config, "use_linear_projection": True})
    with pytest.raises(SpecError, match="same levels"):
        di.unet_params_from_diffusers({**config, "up_block_types": ["UpBlock2D", "UpBlock2D"]})
    with pytest.raises(SpecError, match="channel_mult"):
        di.unet_to_diffusers(create("denoiser", "unet", dict(PLAIN_UNETS["one-head+concat"], channel_mult=[2, 2])))
    with pytest.raises(SpecError, match="some_new_option"):
        di.autoencoder_params_from_diffusers({"_class_name": "AutoencoderKL", "some_new_option": 3})
    with pytest.raises(SpecError, match="shift_factor"):
        di.autoencoder_params_from_diffusers({"_class_name": "AutoencoderKL", "shift_factor": 0.1})
    with pytest.raises(SpecError, match="AutoencoderTiny"):
        di.autoencoder_params_from_diffusers({"_class_name": "AutoencoderTiny"})
    with pytest.raises(SpecError, match="embed_dim"):
        kl = create("first_stage", "kl-autoencoder", tiny_autoencoder_params(channels=4, embed_dim=3))
        di.autoencoder_to_diffusers(kl)
    with pytest.raises(SpecError, match="beta_schedule"):
        di.scheduler_config_to_diffusers(ldmkit.ScheduleSpec(beta_schedule="sqrt"))
    with pytest.raises(SpecError, match="trained_betas"):
        di.schedule_from_diffusers({"trained_betas": [0.1, 0.2]})


# -- whole pipelines --------------------------------------------------------------------------------
def tiny_pipeline() -> ldmkit.Pipeline:
    """tests/tiny.py's Stable-Diffusion-shaped pipeline with the "heads" UNet (context 32, v-prediction)."""
    pipe = tiny_sd_pipeline(seed=10, std=0.05, unet=dict(CROSS_UNETS["heads"], context_dim=32, prediction="v"))
    for module in pipe.modules().values():
        module.eval()
    return pipe


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[ldmkit.Pipeline, Path]:
    pipe = tiny_pipeline()
    out = tmp_path_factory.mktemp("sd") / "diffusers"
    di.to_diffusers(pipe, out)
    return pipe, out


def test_pipeline_folder_loads_in_diffusers(exported):
    pipe, out = exported
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    for folder in ("unet", "vae", "text_encoder", "scheduler", "tokenizer"):
        assert (out / folder).is_dir()
    assert not list(out.rglob("*.bin"))  # safetensors only
    sd = diffusers.DiffusionPipeline.from_pretrained(out)  # the folder alone: no component passed by hand
    assert type(sd).__name__ == "StableDiffusionPipeline" and sd.safety_checker is None
    assert sd.vae.config.scaling_factor == pytest.approx(0.18215)
    assert sd.scheduler.config.prediction_type == "v_prediction"
    prompts = ["a red circle", "two blue squares, left of a triangle!"]
    ids = sd.tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    assert torch.equal(ids, pipe.conditioner.tokenize(prompts))
    with torch.no_grad():
        ctx = pipe.conditioner(prompts).crossattn
        assert rel_err(ctx, sd.text_encoder(ids).last_hidden_state) <= TOL


def test_pipeline_round_trip_is_bit_identical(exported):
    pipe, out = exported
    back = di.from_diffusers(out)
    for name, module in pipe.modules().items():
        assert same_weights(module, back.modules()[name]), name
    assert back.scale_factor == pytest.approx(pipe.scale_factor)
    assert back.denoiser.prediction == "v"
    assert back.spec.schedule == pipe.spec.schedule
    assert torch.equal(back.schedule.alphas_cumprod, pipe.schedule.alphas_cumprod)


def test_from_diffusers_names_what_is_missing_or_unsupported(exported, tmp_path):
    _, out = exported
    with pytest.raises(SpecError, match="model_index.json"):
        di.from_diffusers(tmp_path)
    index = json.loads((out / "model_index.json").read_text())
    bad = tmp_path / "bert"
    bad.mkdir()
    (bad / "model_index.json").write_text(json.dumps({**index, "image_encoder": ["transformers", "CLIPVisionModel"]}))
    with pytest.raises(SpecError, match="image_encoder"):
        di.from_diffusers(bad)
    (bad / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(SpecError, match="scheduler_config.json"):
        di.from_diffusers(bad)
    (bad / "unet").mkdir()
    (bad / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x02}q\x00.")
    (bad / "unet" / "config.json").write_text((out / "unet" / "config.json").read_text())
    (bad / "scheduler").mkdir()
    (bad / "scheduler" / "scheduler_config.json").write_text((out / "scheduler" / "scheduler_config.json").read_text())
    with pytest.raises(SpecError, match="pickle"):
        di.from_diffusers(bad)


def test_unconditional_vq_pipeline_round_trip(tmp_path):
    spec = {
        "first_stage": {"type": "vq-autoencoder", "params": tiny_autoencoder_params(channels=3, n_embed=8)},
        "denoiser": {"type": "unet", "params": PLAIN_UNETS["head-width+classes"]},
        "conditioner": {"type": "class-embedder", "params": {"embed_dim": 128, "n_classes": 3, "target": "vector"}},
        "schedule": {"beta_schedule": "sqrt_linear"},
    }
    pipe = ldmkit.Pipeline.from_spec(spec)
    for module in pipe.modules().values():
        randomize(module)
    di.to_diffusers(pipe, tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["_class_name"] == "LDMPipeline"
    back = di.from_diffusers(tmp_path)
    assert back.conditioner.name == "class-embedder" and back.conditioner.params.target == "vector"
    for name in ("first_stage", "denoiser"):
        assert same_weights(pipe.modules()[name], back.modules()[name])
    assert back.scale_factor == 1.0 and back.spec.schedule.beta_schedule == "sqrt_linear"


def test_cli_round_trip(exported, tmp_path, capsys):
    from ldmkit.cli import main

    pipe, _ = exported
    pipe.save(tmp_path / "ours")
    assert main(["convert", "--to", "diffusers", str(tmp_path / "ours"), str(tmp_path / "df")]) == 0
    assert main(["convert", "--from", "diffusers", str(tmp_path / "df"), str(tmp_path / "back")]) == 0
    back = ldmkit.Pipeline.load(tmp_path / "back")
    for name, module in pipe.modules().items():
        assert same_weights(module, back.modules()[name]), name
    (tmp_path / "empty").mkdir()
    assert main(["convert", "--from", "diffusers", str(tmp_path / "empty"), str(tmp_path / "x")]) == 2
    assert "model_index.json" in capsys.readouterr().err
    assert main(["convert", "--to", "diffusers", str(tmp_path / "ours")]) == 2


def test_components_without_a_diffusers_conversion_are_named(tmp_path):
    identity = create("first_stage", "identity", {"channels": 3})
    with pytest.raises(SpecError, match="identity"):
        di.first_stage_to_diffusers(identity)
    spec = {
        "first_stage": {"type": "kl-autoencoder", "params": tiny_autoencoder_params(channels=4)},
        "denoiser": {"type": "unet", "params": dict(PLAIN_UNETS["one-head+concat"], in_channels=6, out_channels=4)},
        "conditioner": {"type": "spatial-rescaler", "params": {"n_stages": 1, "in_channels": 3, "out_channels": 2}},
        "schedule": {"beta_schedule": "linear"},
    }
    pipe = ldmkit.Pipeline.from_spec(spec)
    for module in pipe.modules().values():
        randomize(module)
    out = di.to_diffusers(pipe, tmp_path / "df")  # the rest is written; the conditioner is named as left out
    record = json.loads((out / "ldmkit_export.json").read_text())
    [item] = record["left_out"]
    assert item["type"] == "spatial-rescaler" and "2 conditioning channels" in item["reason"]
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "LDMPipeline" and "text_encoder" not in index
    assert type(diffusers.DiffusionPipeline.from_pretrained(out).unet).__name__ == "UNet2DModel"
    back = di.from_diffusers(out)
    assert back.conditioner.name == "spatial-rescaler" and same_weights(back.conditioner, pipe.conditioner)


@pytest.mark.parametrize("vocab_size", [49408, 1000], ids=["clip-vocabulary", "own-vocabulary"])
def test_clip_text_folder_always_has_its_tokenizer(tmp_path, vocab_size):
    spec = tiny_pipeline().spec.model_dump(mode="json")
    spec["conditioner"]["params"] = dict(TINY_SD_CLIP, vocab_size=vocab_size, max_position_embeddings=20)
    pipe = ldmkit.Pipeline.from_spec(spec)
    out = di.to_diffusers(pipe, tmp_path / "df")
    sd = diffusers.DiffusionPipeline.from_pretrained(out)  # loads with no tokenizer=None
    assert sd.tokenizer.model_max_length == 20  # the length the text encoder has positions for
    if vocab_size == TINY_SD_CLIP["vocab_size"]:  # the same ids as ldmkit (a smaller vocabulary takes ids only)
        ids = sd.tokenizer(["a red circle"], padding="max_length", max_length=20, return_tensors="pt").input_ids
        assert torch.equal(ids, pipe.conditioner.tokenize(["a red circle"]))


def test_a_registry_without_the_reader_refuses_the_folder(exported):
    from ldmkit.registry import Registry

    _, out = exported
    with pytest.raises(SpecError, match="UNet2DConditionModel") as info:
        di.from_diffusers(out, registry=Registry())
    assert "(none)" in str(info.value)


def test_a_diffusers_config_past_the_size_limit_is_refused_before_building(monkeypatch):
    """A diffusers folder's config comes with its weights, unchecked: a model too large to build is a SpecError
    naming the limit, found on the meta device (nothing allocated), and the weights are never matched."""
    config = {
        "_class_name": "UNet2DConditionModel",
        "sample_size": 8,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": [65536, 65536],  # about 10^11 parameters
        "layers_per_block": 1,
        "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
        "cross_attention_dim": 32,
        "attention_head_dim": 8,
    }
    with pytest.raises(SpecError, match="UNet2DConditionModel config: unet with these params has .* parameters"):
        di.unet_from_diffusers(config, {})
    monkeypatch.setenv("LDMKIT_MAX_PARAMETERS", "1000")  # the same check, with the limit set low
    small = dict(config, block_out_channels=[32, 64])
    with pytest.raises(SpecError, match="more than the limit of 1,000"):
        di.unet_from_diffusers(small, {})
