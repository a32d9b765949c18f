"""A third-party denoiser (the example plugin's) loads from an original-format CompVis config and checkpoint."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch
import yaml

from ldmkit import SpecError, compvis
from ldmkit.registry import PluginInfo, Registry, discover
from ldmkit.testing import DenoiserConformance

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ldmkit-plugin-example"
TARGET = "ldmkit_plugin_example.models.TinyUNet"
# the original module's parameter names, as its checkpoints hold them
ORIGINAL_KEYS = {
    "conv_in.": "in_conv.",
    "time_embed.": "time_proj.",
    "conv_mid.": "mid_conv.",
    "conv_out.": "out_conv.",
}


@pytest.fixture(scope="module")
def example():
    """The example plugin's package, imported from its folder (as an installed distribution would be)."""
    sys.path.insert(0, str(EXAMPLE))
    try:
        yield importlib.import_module("ldmkit_plugin_example")
    finally:
        sys.path.remove(str(EXAMPLE))


@pytest.fixture(scope="module")
def registry(example) -> Registry:
    """The built-in plugins plus the example plugin; the process's own registry is left alone."""
    registry = discover(strict=True)
    if ("denoiser", "tiny-unet-example") not in registry.components:  # not installed: add it by hand
        assert registry.add_plugin(example, PluginInfo("example", "ldmkit-plugin-example", "0.1.0"))
    return registry


def original_config(unet_target: str = TARGET) -> dict:
    """An original LatentDiffusion config: pixel space (identity first stage), unconditional, v-prediction."""
    return {
        "model": {
            "base_learning_rate": 1e-4,
            "target": "ldm.models.diffusion.ddpm.LatentDiffusion",
            "params": {
                "linear_start": 0.0015,
                "linear_end": 0.0195,
                "timesteps": 1000,
                "image_size": 8,
                "channels": 3,
                "parameterization": "v",
                "cond_stage_config": "__is_unconditional__",
                "unet_config": {"target": unet_target, "params": {"in_channels": 3, "model_channels": 16}},
                "first_stage_config": {"target": "ldm.models.autoencoder.IdentityFirstStage"},
            },
        }
    }


def original_checkpoint(path: Path, registry: Registry) -> dict[str, torch.Tensor]:
    """A torch-saved dict with a ``state_dict`` in the original layout; returns the denoiser's weights."""
    torch.manual_seed(3)
    model = registry.create("denoiser", "tiny-unet-example", {"in_channels": 3, "out_channels": 3, "width": 16})
    weights = {k: torch.randn(v.shape) for k, v in model.state_dict().items()}
    state = {"betas": torch.linspace(1e-4, 2e-2, 1000)}  # bookkeeping the loader skips
    for key, value in weights.items():
        prefix = next(p for p in ORIGINAL_KEYS if key.startswith(p))
        state["model.diffusion_model." + ORIGINAL_KEYS[prefix] + key[len(prefix) :]] = value
    torch.save({"state_dict": state, "global_step": 3}, path)
    return weights


def test_example_denoiser_loads_from_a_compvis_checkpoint(registry, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(original_config()))
    weights = original_checkpoint(tmp_path / "model.ckpt", registry)

    pipe = compvis.load(config, tmp_path / "model.ckpt", registry=registry)

    assert pipe.spec.denoiser.type == "tiny-unet-example" and pipe.denoiser.prediction == "v"
    assert pipe.first_stage.name == "identity" and pipe.conditioner is None
    loaded = pipe.denoiser.state_dict()
    assert loaded.keys() == weights.keys()
    assert all(torch.equal(loaded[k], v) for k, v in weights.items())

    class LoadedConformance(DenoiserConformance):
        component_cls = type(pipe.denoiser)
        params = pipe.denoiser.params.model_dump()
        x_channels = 3

        def registry(self) -> Registry:
            return registry

        def make_component(self):
            return pipe.denoiser.eval()

    checks = LoadedConformance()
    for name in dir(checks):
        if name.startswith("test_"):
            getattr(checks, name)()


def test_unknown_target_names_the_plugins_target(registry, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(original_config("somebody_else.models.UNet")))
    with pytest.raises(SpecError, match="somebody_else.models.UNet") as info:
        compvis.load(config, tmp_path / "missing.ckpt", registry=registry)
    assert TARGET in str(info.value) and "ldm.modules.diffusionmodules.openaimodel.UNetModel" in str(info.value)
