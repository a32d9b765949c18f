"""img2img and negative prompts against diffusers: a tiny random Stable Diffusion (UNet2DConditionModel, AutoencoderKL,
CLIP text model) converted with ldmkit.diffusers_interop, the same weights, noise and steps in both libraries."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ldmkit
from ldmkit import diffusers_interop as di
from tests.tiny import tiny_sd_spec

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

TOL = 1e-4  # relative error of the final latents

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
STEPS = 10
SCALE = 7.5
PROMPT = "a red circle above a blue square"
NEGATIVE = "green triangles, blurry"


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def randomize(module: torch.nn.Module, seed: int, std: float = 0.05) -> None:
    """Random weights everywhere (zero-initialised layers would hide mistakes).

    The cross-attention weights are larger, so that the prompt changes the denoiser's output measurably.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            scale = 0.5 if "attn2" in name or "proj_out" in name else std
            p.copy_(torch.randn(p.shape, generator=g) * scale)


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[ldmkit.Pipeline, Path]:
    """An SD-architecture ldmkit pipeline with random weights and the same pipeline as a diffusers folder."""
    pipe = ldmkit.Pipeline.from_spec(tiny_sd_spec())
    for i, module in enumerate(pipe.modules().values()):
        randomize(module, seed=20 + i)
    out = tmp_path_factory.mktemp("sd") / "diffusers"
    di.to_diffusers(pipe, out)
    return pipe, out


@pytest.fixture(scope="module")
def picture() -> Image.Image:
    g = torch.Generator().manual_seed(3)
    pixels = (torch.rand(16, 16, 3, generator=g) * 255).round().to(torch.uint8)  # (H, W, 3)
    return Image.fromarray(pixels.numpy(), "RGB")


def _deterministic_encoding(monkeypatch) -> None:
    """diffusers draws one sample of the autoencoder's posterior; ldmkit encodes to its mode (deterministic)."""
    from diffusers.pipelines.stable_diffusion import pipeline_stable_diffusion_img2img as module

    monkeypatch.setattr(
        module, "retrieve_latents", lambda output, generator=None, sample_mode="sample": output.latent_dist.mode()
    )


@pytest.mark.parametrize("strength", [0.3, 0.75, 1.0])
def test_img2img_latents_match_diffusers(pair, picture, monkeypatch, strength):
    pipe, folder = pair
    _deterministic_encoding(monkeypatch)
    sd = diffusers.StableDiffusionImg2ImgPipeline.from_pretrained(folder, safety_checker=None)
    sd.set_progress_bar_config(disable=True)
    theirs = sd(
        PROMPT, image=picture, strength=strength, num_inference_steps=STEPS, guidance_scale=SCALE, eta=0.0,
        negative_prompt=NEGATIVE, generator=torch.Generator().manual_seed(5), output_type="latent",
    ).images  # fmt: skip
    task = pipe.task("img2img")
    request = task.parse_request(
        {"image": picture, "strength": strength, "prompt": PROMPT, "negative_prompt": NEGATIVE}
    )
    kwargs = task.sample_kwargs(pipe, request, 1)
    cond, uncond = task.conditioning(pipe, request, 1)
    ours = pipe.sample(
        cond, uncond=uncond, guidance_scale=SCALE, sampler="ddim", steps=STEPS, eta=0.0,
        generator=torch.Generator().manual_seed(5), **kwargs,
    )  # fmt: skip
    assert ours.shape == theirs.shape == (1, 4, 8, 8)
    assert rel_err(ours, theirs) <= TOL  # about 1e-6 to 3e-6 on x86-64


def test_img2img_task_run_is_the_pipeline_sample_it_states(pair, picture):
    """task.run draws picture i's noise from seed + i, as Pipeline.sample with one generator per picture does."""
    pipe, _ = pair
    task = pipe.task("img2img")
    request = task.parse_request({"image": picture, "strength": 0.6, "prompt": PROMPT})
    options = ldmkit.SampleOptions(n=2, seed=4, steps=STEPS, guidance_scale=SCALE)
    images = task.run(pipe, request, options)
    cond, uncond = task.conditioning(pipe, request, 2)
    latents = pipe.sample(
        cond, uncond=uncond, guidance_scale=SCALE, steps=STEPS,
        generator=[torch.Generator().manual_seed(4 + i) for i in range(2)], **task.sample_kwargs(pipe, request, 2),
    )  # fmt: skip
    assert torch.equal(images, pipe.decode(latents).clamp(-1, 1))


def test_negative_prompt_matches_diffusers(pair):
    pipe, folder = pair
    sd = diffusers.StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    sd.set_progress_bar_config(disable=True)
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(9))
    theirs = sd(
        PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=SCALE, eta=0.0, latents=noise,
        output_type="latent",
    ).images  # fmt: skip
    task = pipe.task("text2img")
    request = task.parse_request({"prompt": PROMPT, "negative_prompt": NEGATIVE})
    cond, uncond = task.conditioning(pipe, request, 1)
    ours = pipe.sample(cond, uncond=uncond, guidance_scale=SCALE, sampler="ddim", steps=STEPS, x_T=noise)
    assert rel_err(ours, theirs) <= TOL  # about 2e-6 on x86-64
    # ignoring the negative would fail the tolerance: the empty prompt's branch lands elsewhere
    plain = pipe.sample(cond, uncond=pipe.conditioner.unconditional(1), guidance_scale=SCALE, steps=STEPS, x_T=noise)
    assert rel_err(plain, theirs) > 5 * TOL


def test_strength_zero_is_the_reconstruction(pair, picture):
    pipe, _ = pair
    task = pipe.task("img2img")
    request = task.parse_request({"image": picture, "strength": 0.0})
    images = task.run(pipe, request, ldmkit.SampleOptions(n=1, steps=STEPS))
    pixels = torch.from_numpy(np.array(picture)).permute(2, 0, 1).float() / 127.5 - 1  # (3, H, W)
    assert torch.equal(images, pipe.decode(pipe.encode(pixels[None])).clamp(-1, 1))
