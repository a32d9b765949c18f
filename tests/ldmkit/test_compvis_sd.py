"""Stable Diffusion v1: the released config, a full-size checkpoint in the original layout, offline text-to-image."""

from __future__ import annotations

import gc
import math
import socket
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ldmkit import Pipeline, compvis

CONFIG = Path(__file__).resolve().parents[1] / "fixtures" / "sd-v1" / "v1-inference.yaml"
POSITION_IDS = "cond_stage_model.transformer.text_model.embeddings.position_ids"


@pytest.fixture
def offline(monkeypatch):
    """No hub access: offline flags set, and any attempt to open a connection fails the test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _shapes() -> dict[str, torch.Size]:
    """Every weight of the SD v1 model built from the translated spec, under its original name."""
    spec = compvis.spec_from_config(CONFIG)
    with torch.device("meta"):  # shapes only: no memory, no init time
        pipe = Pipeline.from_spec(spec)
    return {compvis.PREFIXES[f] + k: v.shape for f, m in pipe.modules().items() for k, v in m.state_dict().items()}


def _fingerprint(t: torch.Tensor) -> tuple[tuple[int, ...], float, list[float]]:
    return tuple(t.shape), float(t.sum()), t.flatten()[:8].tolist()


def _write_sd_checkpoint(path: Path) -> dict[str, tuple]:
    """Random SD v1 weights saved as the original LatentDiffusion state dict; returns each tensor's fingerprint."""
    gen = torch.Generator().manual_seed(1234)
    state: dict[str, torch.Tensor] = {}
    for key, shape in _shapes().items():
        fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
        state[key] = torch.randn(shape, generator=gen) / math.sqrt(fan_in)  # zero-initialized layers too
    prints = {k: _fingerprint(v) for k, v in state.items()}
    # what released SD v1 files carry besides the weights: the CLIP position ids and the schedule
    state[POSITION_IDS] = torch.arange(77).unsqueeze(0)
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    state["betas"] = betas.float()
    state["alphas_cumprod"] = torch.cumprod(1 - betas, 0).float()
    save_file(state, str(path))
    del state
    gc.collect()
    return prints


@pytest.mark.slow
def test_sd_v1_text_to_image_offline(tmp_path, offline, two_threads):
    ckpt = tmp_path / "sd-v1-random.safetensors"
    try:
        prints = _write_sd_checkpoint(ckpt)
        pipe = compvis.load(CONFIG, ckpt)
    finally:
        ckpt.unlink(missing_ok=True)  # 4 GB: do not leave it in pytest's kept temp folders

    # every tensor arrived, at its own name
    loaded = {compvis.PREFIXES[f] + k: v for f, m in pipe.modules().items() for k, v in m.state_dict().items()}
    assert loaded.keys() == prints.keys()
    assert all(_fingerprint(v) == prints[k] for k, v in loaded.items())
    assert pipe.scale_factor == pytest.approx(0.18215)
    assert type(pipe.conditioner).name == "clip-text"

    with torch.no_grad():
        cond = pipe.conditioner(["a red circle"])
        uncond = pipe.conditioner([""])
        assert cond.crossattn.shape == (1, 77, 768)
        assert not torch.allclose(cond.crossattn, uncond.crossattn)
        x_T = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        latents = pipe.sample(cond, uncond=uncond, guidance_scale=7.5, sampler="plms", steps=2, x_T=x_T)
        images = pipe.decode(latents)
    assert latents.shape == (1, 4, 8, 8) and torch.isfinite(latents).all()
    assert not torch.equal(latents, x_T)
    assert images.shape == (1, 3, 64, 64)
    assert torch.isfinite(images).all()
