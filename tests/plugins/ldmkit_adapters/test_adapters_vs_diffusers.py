"""LoRA and textual inversion against diffusers' own loaders, on the same tiny random SD-architecture weights."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from tests.plugins.ldmkit_adapters.sd_tiny import (
    TEXT_LAYERS,
    UNET_LAYERS,
    diffusers_outputs,
    diffusers_pipeline,
    lora_layers,
    outputs,
    random_lora,
    rel_err,
    tiny_pipeline,
    write_kohya,
    write_peft,
)

pytest.importorskip("diffusers")
pytest.importorskip("peft")  # diffusers' load_lora_weights needs it

TOL = 1e-4
PROMPTS = ["a red circle", "two blue squares, left of a triangle!"]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """(ldmkit pipeline, the same weights as a diffusers StableDiffusionPipeline, a scratch folder)."""
    root = tmp_path_factory.mktemp("adapters")
    pipe = tiny_pipeline()
    return pipe, diffusers_pipeline(pipe, root / "sd"), root


@pytest.fixture(scope="module")
def lora(both):
    """Random LoRA weights for every attention, feed-forward, projection and resnet layer of both parts."""
    _, sd, _ = both
    unet = random_lora(lora_layers(sd.unet, UNET_LAYERS), rank=4, seed=1, alpha=2.0)
    text = random_lora(lora_layers(sd.text_encoder, TEXT_LAYERS), rank=4, seed=2, alpha=2.0)
    assert any(w["down"].dim() == 4 and w["down"].shape[-1] == 3 for w in unet.values())  # 3x3 convolutions too
    return unet, text


@pytest.mark.parametrize("merge", [False, True], ids=["unmerged", "merged"])
@pytest.mark.parametrize("layout", ["kohya", "peft"])
def test_lora_outputs_match_diffusers_load_lora_weights(both, lora, layout, merge):
    pipe, sd, root = both
    unet, text = lora
    write = write_kohya if layout == "kohya" else write_peft
    path = write(root / f"{layout}.safetensors", unet, text)
    base = outputs(pipe, PROMPTS)
    adapter = pipe.load_lora(path, scale=0.7, merge=merge)
    ours = outputs(pipe, PROMPTS)
    pipe.remove_adapter(adapter)
    sd.load_lora_weights(str(path), adapter_name="test")
    try:
        sd.set_adapters(["test"], adapter_weights=[0.7])
        theirs = diffusers_outputs(sd, PROMPTS)
    finally:
        sd.unload_lora_weights()
    for mine, reference, plain, part in zip(ours, theirs, base, ("denoiser", "text encoder"), strict=True):
        assert rel_err(mine, reference) <= TOL, part
        assert rel_err(plain, reference) > 100 * TOL, f"the LoRA hardly changes the {part}"


def test_textual_inversion_matches_diffusers_load_textual_inversion(both):
    pipe, sd, root = both
    g = torch.Generator().manual_seed(3)
    save_file({"<cat>": torch.randn(32, generator=g)}, root / "cat.safetensors")  # diffusers' layout
    save_file({"emb_params": torch.randn(3, 32, generator=g)}, root / "dog.safetensors")  # three vectors
    legacy = {"string_to_param": {"*": torch.randn(2, 32, generator=g)}, "name": "bird", "step": 100}
    torch.save(legacy, root / "bird.pt")
    prompts = ["a photo of <cat> next to <dog>", "<bird> flying over <dog>"]
    for name, token in (("cat.safetensors", None), ("dog.safetensors", "<dog>"), ("bird.pt", "<bird>")):
        pipe.load_embedding(root / name, token=token)
        sd.load_textual_inversion(str(root / name), token=token)
    try:
        spelled = [sd.maybe_convert_prompt(p, sd.tokenizer) for p in prompts]  # multi-vector tokens written out
        ids = sd.tokenizer(spelled, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        assert torch.equal(pipe.conditioner.tokenize(prompts), ids.input_ids)
        with torch.no_grad():
            theirs = sd.text_encoder(ids.input_ids).last_hidden_state
            ours = pipe.conditioner(prompts).crossattn
        assert rel_err(ours, theirs) <= TOL
    finally:
        pipe.remove_adapters()
        sd.unload_textual_inversion()
