"""CompVis loader: the reference fixtures, other architectures of the family, and unsafe or broken inputs."""

from __future__ import annotations

import copy
import json
import math
import sys
import types
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from payloads import Payload  # tests/payloads.py
from safetensors.torch import load_file

from ldmkit import CheckpointError, Conditioning, SpecError, UnsafeCheckpointError, compvis, get_registry
from ldmkit.checkpoints import load_checkpoint

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "compvis"
CASES = ["txt2img-kl", "cin-vq"]
TOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative error ||a - b|| / ||b||."""
    assert a.shape == b.shape, f"shape {tuple(a.shape)} != {tuple(b.shape)}"
    return float((a.double() - b.double()).norm() / b.double().norm())


# ---------------------------------------------------------------------------------------------
# The reference fixtures: outputs of the original code on two small models
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=CASES)
def ref(request):
    d = FIXTURES / request.param
    case = json.loads((d / "case.json").read_text())
    expected = load_file(str(d / "expected.safetensors"))
    pipe = compvis.load(d / "config.yaml", d / "model.ckpt")
    key = "tokens" if case["cond_input"] == "tokens" else "class_label"
    with torch.no_grad():
        cond = pipe.conditioner(expected[key])
        uncond = pipe.conditioner(expected[f"uncond_{key}"])
    return types.SimpleNamespace(case=case, e=expected, pipe=pipe, cond=cond, uncond=uncond)


def test_reference_conditioning(ref):
    assert rel(ref.cond.crossattn, ref.e["cond"]) <= TOL


@torch.no_grad()
def test_reference_denoiser(ref):
    out = ref.pipe.denoiser(ref.e["x_t"], ref.e["timesteps"], ref.cond)
    assert rel(out, ref.e["model_output"]) <= TOL


@torch.no_grad()
def test_reference_first_stage(ref):
    assert rel(ref.pipe.first_stage.encode(ref.e["image"]), ref.e["latent_mode"]) <= TOL
    assert rel(ref.pipe.decode(ref.e["x_t"]), ref.e["decoded"]) <= TOL
    assert ref.pipe.scale_factor == ref.case["scale_factor"]


def test_reference_schedule(ref):
    assert rel(ref.pipe.schedule.alphas_cumprod, ref.e["alphas_cumprod"]) <= TOL


@torch.no_grad()
def test_reference_samplers(ref):
    e = ref.e
    for name in ref.case["samplers"]:
        plain = ref.pipe.sample(ref.cond, sampler=name, steps=10, x_T=e["x_T"], eta=0.0)
        assert rel(plain, e[f"{name}_samples"]) <= TOL, name
        guided = ref.pipe.sample(
            ref.cond,
            sampler=name,
            steps=10,
            x_T=e["x_T"],
            eta=0.0,
            uncond=ref.uncond,
            guidance_scale=ref.case["guidance_scale"],
        )
        assert rel(guided, e[f"{name}_cfg_samples"]) <= TOL, name
    # decode the reference's own DDIM samples so this check does not depend on the sampler's
    assert rel(ref.pipe.decode(e["ddim_samples"]), e["ddim_images"]) <= TOL


# ---------------------------------------------------------------------------------------------
# Checkpoints of other architectures, written here in the original format
# ---------------------------------------------------------------------------------------------
LDM = "ldm.models.diffusion.ddpm.LatentDiffusion"
UNET = "ldm.modules.diffusionmodules.openaimodel.UNetModel"
CLASS_EMBEDDER = "ldm.modules.encoders.modules.ClassEmbedder"

KL_F4 = {
    "target": "ldm.models.autoencoder.AutoencoderKL",
    "params": {
        "embed_dim": 4,
        "monitor": "val/rec_loss",
        "lossconfig": {"target": "torch.nn.Identity"},
        "ddconfig": {
            "double_z": True,
            "z_channels": 4,
            "resolution": 32,
            "in_channels": 3,
            "out_ch": 3,
            "ch": 32,
            "ch_mult": [1, 2, 2],
            "num_res_blocks": 1,
            "attn_resolutions": [],
            "dropout": 0.0,
        },
    },
}
# f8 (three downsamplings) with attention at the 8x8 and 4x4 levels of the encoder and decoder
KL_F8_ATTN = copy.deepcopy(KL_F4)
KL_F8_ATTN["params"]["ddconfig"].update(ch_mult=[1, 2, 2, 4], attn_resolutions=[8, 4])

UNET_XATTN = {
    "image_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 32,
    "attention_resolutions": [2],
    "num_res_blocks": 1,
    "channel_mult": [1, 2],
    "num_heads": 4,
    "use_spatial_transformer": True,
    "transformer_depth": 1,
    "context_dim": 32,
    "use_checkpoint": False,
    "legacy": False,
}
UNET_PLAIN = {k: v for k, v in UNET_XATTN.items() if k not in ("use_spatial_transformer", "context_dim")}
CLASSES = {"target": CLASS_EMBEDDER, "params": {"embed_dim": 32, "n_classes": 10, "key": "class_label"}}
LABELS = torch.tensor([3, 7])
IMAGES = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))


def ldm_config(unet: dict, cond_stage: Any, key: str | None = "crossattn", first_stage: dict = KL_F4, **extra) -> dict:
    """A LatentDiffusion config in the original layout (training keys included, as released configs have)."""
    params = {
        "linear_start": 0.00085,
        "linear_end": 0.012,
        "num_timesteps_cond": 1,
        "log_every_t": 200,
        "timesteps": 1000,
        "first_stage_key": "image",
        "cond_stage_key": "class_label",
        "image_size": unet["image_size"],
        "channels": 4,
        "cond_stage_trainable": True,
        "monitor": "val/loss_simple_ema",
        "scale_factor": 0.7,
        "use_ema": False,
        "unet_config": {"target": UNET, "params": unet},
        "first_stage_config": first_stage,
        "cond_stage_config": cond_stage,
        **extra,
    }
    if key is not None:
        params["conditioning_key"] = key
    return {"model": {"base_learning_rate": 1e-4, "target": LDM, "params": params}}


# name -> (config, raw conditioner input or None)
ARCHS: dict[str, tuple[dict, Any]] = {
    # plain AttentionBlocks, head count given directly (and a different one in the decoder)
    "legacy-attention": (
        ldm_config(
            {**UNET_PLAIN, "legacy": True, "num_heads": 4, "num_heads_upsample": 2}, "__is_unconditional__", None
        ),
        None,
    ),
    # spatial transformers with the original's default legacy head layout (key left out)
    "legacy-crossattn": (
        ldm_config({k: v for k, v in UNET_XATTN.items() if k != "legacy"}, CLASSES),
        LABELS,
    ),
    "num-head-channels": (ldm_config({**UNET_XATTN, "num_heads": -1, "num_head_channels": 16}, CLASSES), LABELS),
    "transformer-depth-2": (ldm_config({**UNET_XATTN, "transformer_depth": 2}, CLASSES), LABELS),
    "kl-f8-attn": (ldm_config({**UNET_XATTN, "image_size": 4}, CLASSES, first_stage=KL_F8_ATTN), LABELS),
    "unconditional": (
        ldm_config(
            {
                **UNET_PLAIN,
                "num_heads": -1,
                "num_head_channels": 16,
                "use_scale_shift_norm": True,
                "resblock_updown": True,
            },
            "__is_unconditional__",
            None,
        ),
        None,
    ),
    # a low-resolution image, resized to the latent and mapped to 2 channels, concatenated to the latent
    "concat": (
        ldm_config(
            {**UNET_PLAIN, "in_channels": 6},
            {
                "target": "ldm.modules.encoders.modules.SpatialRescaler",
                "params": {"n_stages": 2, "method": "bilinear", "multiplier": 0.5, "in_channels": 3, "out_channels": 2},
            },
            "concat",
        ),
        IMAGES,
    ),
    # class ids go to the UNet's label_emb
    "adm": (ldm_config({**UNET_PLAIN, "num_classes": 10}, CLASSES, "adm"), LABELS),
}


def randomize(module: torch.nn.Module, seed: int) -> None:
    """Every parameter drawn from a seeded generator (zero-initialized output layers included)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            fan_in = p[0].numel() if p.ndim > 1 else 1
            p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))


def build_components(config: dict, seed: int = 0) -> dict[str, torch.nn.Module]:
    """Each component built from the translated spec through the registry, with random weights."""
    spec = compvis.spec_from_config(config)
    registry = get_registry()
    parts = {}
    for i, (field, comp) in enumerate(spec.components().items()):
        parts[field] = registry.create(field, comp.type, comp.params).eval()
        randomize(parts[field], seed + i)
    return parts


def schedule_buffers(config: dict) -> dict[str, torch.Tensor]:
    """The schedule buffers LatentDiffusion registers (float32), from the config's linear schedule."""
    p = config["model"]["params"]
    betas = np.linspace(p["linear_start"] ** 0.5, p["linear_end"] ** 0.5, p["timesteps"], dtype=np.float64) ** 2
    alphas_cumprod = np.cumprod(1.0 - betas)
    prev = np.append(1.0, alphas_cumprod[:-1])
    post_var = betas * (1.0 - prev) / (1.0 - alphas_cumprod)
    arrays = {
        "betas": betas,
        "alphas_cumprod": alphas_cumprod,
        "alphas_cumprod_prev": prev,
        "sqrt_alphas_cumprod": np.sqrt(alphas_cumprod),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - alphas_cumprod),
        "log_one_minus_alphas_cumprod": np.log(1.0 - alphas_cumprod),
        "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod - 1),
        "posterior_variance": post_var,
        "posterior_log_variance_clipped": np.log(np.maximum(post_var, 1e-20)),
        "posterior_mean_coef1": betas * np.sqrt(prev) / (1.0 - alphas_cumprod),
        "posterior_mean_coef2": (1.0 - prev) * np.sqrt(1.0 - betas) / (1.0 - alphas_cumprod),
    }
    return {k: torch.tensor(v, dtype=torch.float32) for k, v in arrays.items()}


def original_state_dict(config: dict, parts: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """The LatentDiffusion state dict: prefixed component weights plus the schedule buffers."""
    state = {}
    for field, prefix in compvis.PREFIXES.items():
        if field in parts:
            state.update({prefix + k: v.clone() for k, v in parts[field].state_dict().items()})
    state.update(schedule_buffers(config))
    return state


def save_original(state: dict[str, torch.Tensor], path: Path, **extra: Any) -> Path:
    """torch.save as a Lightning trainer writes it (the loader must look only at ``state_dict``)."""
    first = next(iter(state.values()))
    checkpoint = {
        "epoch": 1,
        "global_step": 3,
        "pytorch-lightning_version": "1.4.2",
        "state_dict": state,
        "callbacks": {},
        "optimizer_states": [
            {
                "state": {0: {"step": 3, "exp_avg": torch.zeros_like(first), "exp_avg_sq": torch.ones_like(first)}},
                "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "params": [0]}],
            }
        ],
        "lr_schedulers": [{"base_lrs": [1e-4], "last_epoch": 3, "_step_count": 4, "lr_lambdas": [None]}],
        **extra,
    }
    torch.save(checkpoint, path)
    return path


def write_config(config: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def assert_same_outputs(pipe, parts: dict[str, torch.nn.Module], raw: Any) -> None:
    """The loaded pipeline computes exactly what the directly built components compute."""
    gen = torch.Generator().manual_seed(1)
    fs = parts["first_stage"]
    with torch.no_grad():
        latents = fs.encode(IMAGES)
        assert torch.equal(pipe.first_stage.encode(IMAGES), latents)
        assert torch.equal(pipe.decode(latents), fs.decode(latents / pipe.scale_factor))
        if raw is None:
            assert pipe.conditioner is None and "conditioner" not in parts
            cond = Conditioning()
        else:
            cond = parts["conditioner"](raw)
            got = pipe.conditioner(raw)
            assert got.filled() == cond.filled()
            for slot in cond.filled():
                assert torch.equal(getattr(got, slot), getattr(cond, slot)), slot
        x = torch.randn(latents.shape, generator=gen)
        t = torch.tensor([10, 900])
        expected = parts["denoiser"](x, t, cond)
        assert float(expected.abs().sum()) > 0  # a zero output conv would make the comparison vacuous
        assert torch.equal(pipe.denoiser(x, t, cond), expected)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_architecture_roundtrip(arch, tmp_path):
    config, raw = ARCHS[arch]
    parts = build_components(config)
    state = original_state_dict(config, parts)
    ckpt = save_original(state, tmp_path / "model.ckpt")
    pipe = compvis.load(write_config(config, tmp_path / "config.yaml"), ckpt)
    assert set(pipe.modules()) == set(parts)
    for field, module in parts.items():
        loaded = pipe.modules()[field].state_dict()
        assert loaded.keys() == module.state_dict().keys()
        assert all(torch.equal(loaded[k], v) for k, v in module.state_dict().items()), field
    assert pipe.scale_factor == pytest.approx(0.7)
    assert torch.allclose(pipe.schedule.alphas_cumprod, state["alphas_cumprod"], rtol=1e-6)
    assert_same_outputs(pipe, parts, raw)


def test_concat_unconditional_fills_latent_size(tmp_path):
    config, _ = ARCHS["concat"]
    parts = build_components(config)
    ckpt = save_original(original_state_dict(config, parts), tmp_path / "model.ckpt")
    pipe = compvis.load(write_config(config, tmp_path / "config.yaml"), ckpt)
    with torch.no_grad():
        images = pipe.sample(
            IMAGES, sampler="ddim", steps=2, uncond=pipe.conditioner.unconditional(2), guidance_scale=2.0, batch_size=2
        )
    assert images.shape == (2, 4, 8, 8) and torch.isfinite(images).all()


def ema_key(name: str) -> str:
    """LitEma's key of a denoiser parameter: the DiffusionWrapper name with its dots removed."""
    return "model_ema." + ("diffusion_model." + name).replace(".", "")


def ema_state(parts: dict[str, torch.nn.Module], seed: int) -> dict[str, torch.Tensor]:
    """Shadow weights (the regular ones moved a little) plus LitEma's two counters."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, p in parts["denoiser"].named_parameters():
        state[ema_key(name)] = p.detach() + 0.1 * torch.randn(p.shape, generator=gen)
    state["model_ema.decay"] = torch.tensor(0.9999)
    state["model_ema.num_updates"] = torch.tensor(3, dtype=torch.int)
    return state


def test_ema_weights(tmp_path):
    config, raw = ARCHS["legacy-crossattn"]
    parts = build_components(config)
    state = original_state_dict(config, parts)
    ema = ema_state(parts, seed=9)
    ckpt = save_original({**state, **ema}, tmp_path / "model.ckpt")
    cfg = write_config(config, tmp_path / "config.yaml")

    plain = compvis.load(cfg, ckpt)
    assert_same_outputs(plain, parts, raw)

    averaged = compvis.load(cfg, ckpt, ema=True)
    loaded = averaged.denoiser.state_dict()
    for name in parts["denoiser"].state_dict():
        assert torch.equal(loaded[name], ema[ema_key(name)]), name
    # the other components are the regular weights either way
    for field in ("first_stage", "conditioner"):
        regular = parts[field].state_dict()
        assert all(torch.equal(v, regular[k]) for k, v in averaged.modules()[field].state_dict().items())
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([5, 500])
    with torch.no_grad():
        cond = averaged.conditioner(raw)
        assert not torch.allclose(averaged.denoiser(x, t, cond), plain.denoiser(x, t, cond))


def test_ema_requested_but_absent(tmp_path):
    config, _ = ARCHS["legacy-crossattn"]
    parts = build_components(config)
    ckpt = save_original(original_state_dict(config, parts), tmp_path / "model.ckpt")
    with pytest.raises(CheckpointError, match="model_ema"):
        compvis.load(write_config(config, tmp_path / "config.yaml"), ckpt, ema=True)


# ---------------------------------------------------------------------------------------------
# Lightning extras: pickled callback objects and numpy scalars next to the weights
# ---------------------------------------------------------------------------------------------
LIGHTNING_MODULE = "pytorch_lightning.callbacks.model_checkpoint"


@contextmanager
def fake_lightning():
    """A stand-in ``ModelCheckpoint`` importable under Lightning's module name, only inside the block."""
    names = ["pytorch_lightning", "pytorch_lightning.callbacks", LIGHTNING_MODULE]
    assert not any(n in sys.modules for n in names), "tests expect Lightning not to be installed"
    module = types.ModuleType(LIGHTNING_MODULE)

    class ModelCheckpoint:
        def __init__(self, **state: Any) -> None:
            self.__dict__.update(state)

    ModelCheckpoint.__module__ = LIGHTNING_MODULE
    ModelCheckpoint.__qualname__ = "ModelCheckpoint"
    module.ModelCheckpoint = ModelCheckpoint
    sys.modules.update({n: types.ModuleType(n) for n in names[:2]})
    sys.modules[LIGHTNING_MODULE] = module
    try:
        yield ModelCheckpoint
    finally:
        for n in names:
            sys.modules.pop(n, None)


def test_lightning_callbacks_and_numpy_scalars(tmp_path):
    config, raw = ARCHS["num-head-channels"]
    parts = build_components(config)
    state = original_state_dict(config, parts)
    with fake_lightning() as ModelCheckpoint:
        callback = ModelCheckpoint(
            monitor="val/loss_simple_ema",
            best_model_score=np.float64(0.125),
            best_model_path="logs/checkpoints/last.ckpt",
            current_score=torch.tensor(0.25),
            save_top_k=np.int64(3),
        )
        ckpt = save_original(
            state,
            tmp_path / "last.ckpt",
            # Lightning 1.x keys the callback states by the class itself
            callbacks={ModelCheckpoint: {"best_model_score": np.float32(0.5), "dirpath": "logs"}},
            checkpoint_callback=callback,
            loss=np.float32(0.03125),
        )
    assert LIGHTNING_MODULE not in sys.modules
    pipe = compvis.load(write_config(config, tmp_path / "config.yaml"), ckpt)
    assert LIGHTNING_MODULE not in sys.modules and "pytorch_lightning" not in sys.modules
    assert_same_outputs(pipe, parts, raw)
    extras = load_checkpoint(ckpt)
    assert extras["checkpoint_callback"].best_model_score == 0.125
    assert float(extras["loss"]) == 0.03125


# ---------------------------------------------------------------------------------------------
# Bad configs and checkpoints
# ---------------------------------------------------------------------------------------------
PROBE = "ldmkit_probe_target"


@pytest.fixture
def importable_probe(tmp_path, monkeypatch):
    """A real module on sys.path that leaves a marker file if anything imports it."""
    marker = tmp_path / "imported"
    (tmp_path / f"{PROBE}.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass Thing:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(PROBE, None)
    yield marker
    sys.modules.pop(PROBE, None)


def _with_target(section: str) -> tuple[dict, str]:
    config = copy.deepcopy(ARCHS["legacy-crossattn"][0])
    p = config["model"]["params"]
    bad = f"{PROBE}.Thing"
    if section == "model":
        config["model"]["target"] = bad
        return config, LDM
    p[section]["target"] = bad
    known = {"unet_config": UNET, "first_stage_config": KL_F4["target"], "cond_stage_config": CLASS_EMBEDDER}
    return config, known[section]


@pytest.mark.parametrize("section", ["model", "unet_config", "first_stage_config", "cond_stage_config"])
def test_unknown_target_lists_known_and_imports_nothing(section, importable_probe, tmp_path):
    config, known = _with_target(section)
    before = set(sys.modules)
    with pytest.raises(SpecError) as info:
        compvis.load(write_config(config, tmp_path / "config.yaml"), FIXTURES / "cin-vq" / "model.ckpt")
    message = str(info.value)
    assert f"{PROBE}.Thing" in message and known in message
    assert PROBE not in sys.modules and not importable_probe.exists()
    assert not any(name.startswith(PROBE) for name in set(sys.modules) - before)


def test_missing_key_is_listed(tmp_path):
    config, _ = ARCHS["legacy-crossattn"]
    state = original_state_dict(config, build_components(config))
    gone = "model.diffusion_model.out.2.weight"
    del state[gone]
    ckpt = save_original(state, tmp_path / "model.ckpt")
    with pytest.raises(CheckpointError, match="missing") as info:
        compvis.load(write_config(config, tmp_path / "config.yaml"), ckpt)
    assert "out.2.weight" in str(info.value)


@pytest.mark.parametrize(
    "extra", ["model.diffusion_model.extra_block.weight", "first_stage_model.decoder.extra.bias", "stray.tensor"]
)
def test_unexpected_key_is_listed(extra, tmp_path):
    config, _ = ARCHS["legacy-crossattn"]
    state = original_state_dict(config, build_components(config))
    state[extra] = torch.zeros(3)
    ckpt = save_original(state, tmp_path / "model.ckpt")
    with pytest.raises(CheckpointError, match="unexpected") as info:
        compvis.load(write_config(config, tmp_path / "config.yaml"), ckpt)
    assert extra.split("_model.")[-1] in str(info.value)


def test_conditioner_weights_for_an_unconditional_model_are_unexpected(tmp_path):
    config, _ = ARCHS["unconditional"]
    state = original_state_dict(config, build_components(config))
    state["cond_stage_model.embedding.weight"] = torch.zeros(10, 32)
    ckpt = save_original(state, tmp_path / "model.ckpt")
    with pytest.raises(CheckpointError, match="cond_stage_model.embedding.weight"):
        compvis.load(write_config(config, tmp_path / "config.yaml"), ckpt)


def test_malicious_pickle_is_refused(tmp_path):
    config, _ = ARCHS["legacy-crossattn"]
    state = original_state_dict(config, build_components(config))
    marker = tmp_path / "pwned"
    ckpt = save_original(state, tmp_path / "model.ckpt", hyper_parameters={"hook": Payload(marker)})
    cfg = write_config(config, tmp_path / "config.yaml")
    with pytest.raises(UnsafeCheckpointError, match="system"):
        compvis.load(cfg, ckpt)
    assert not marker.exists()
    # the payload is real: unpickling without the scan runs it
    load_checkpoint(ckpt, unsafe_allow_pickle=True)
    assert marker.exists()
