"""A tiny random Stable-Diffusion-architecture pipeline in ldmkit and in diffusers, and LoRA files for it."""

from __future__ import annotations

import re
from pathlib import Path

import torch

import ldmkit
from ldmkit import diffusers_interop as di
from ldmkit.checkpoints import save_state_dict
from tests.tiny import tiny_sd_pipeline

# diffusers layer names that LoRA files for SD v1 commonly cover: attention, feed-forward, the
# transformer's 1x1 projections, and (LoCon) the resnets' 3x3 convolutions and time projections
UNET_LAYERS = re.compile(
    r"(attn[12]\.(to_q|to_k|to_v|to_out\.0)|ff\.net\.(0\.proj|2)|proj_in|proj_out|resnets\.\d+\.(conv1|conv2|time_emb_proj))$"
)
TEXT_LAYERS = re.compile(r"(self_attn\.(q_proj|k_proj|v_proj|out_proj)|mlp\.(fc1|fc2))$")


def tiny_pipeline() -> ldmkit.Pipeline:
    """tests/tiny.py's Stable-Diffusion-shaped pipeline (attention at both UNet levels), randomized from seed 10."""
    return tiny_sd_pipeline(seed=10, std=0.05)


def diffusers_pipeline(pipe: ldmkit.Pipeline, folder: Path):
    import diffusers

    di.to_diffusers(pipe, folder)
    return diffusers.StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)


def lora_layers(model: torch.nn.Module, pattern: re.Pattern[str]) -> dict[str, torch.nn.Module]:
    """diffusers/transformers layer name -> layer, for the layers a LoRA file covers."""
    kinds = (torch.nn.Linear, torch.nn.Conv2d)
    layers = {name: m for name, m in model.named_modules() if isinstance(m, kinds) and pattern.search(name)}
    # files name the text encoder's layers text_model.encoder...; newer transformers drop the text_model level
    flat = getattr(model, "text_model", model) is model and hasattr(model, "encoder")
    return {f"text_model.{name}" if flat else name: m for name, m in layers.items()}


def random_lora(
    layers: dict[str, torch.nn.Module], rank: int, seed: int, alpha: float | None = None
) -> dict[str, dict[str, torch.Tensor]]:
    """layer -> {down, up, alpha}: down (rank, in[, kh, kw]), up (out, rank[, 1, 1]), random and small.

    ``alpha`` None gives each layer its own alpha (rank, rank / 2 or rank / 3).
    """
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i, (name, layer) in enumerate(sorted(layers.items())):
        weight = layer.weight
        if weight.dim() == 4:
            down = torch.randn(rank, weight.shape[1], *weight.shape[2:], generator=g) * 0.2
            up = torch.randn(weight.shape[0], rank, 1, 1, generator=g) * 0.2
        else:
            down = torch.randn(rank, weight.shape[1], generator=g) * 0.2
            up = torch.randn(weight.shape[0], rank, generator=g) * 0.2
        out[name] = {"down": down, "up": up, "alpha": torch.tensor(alpha if alpha is not None else rank / (1 + i % 3))}
    return out


def write_kohya(path: Path, unet: dict, text: dict, with_alpha: bool = True) -> Path:
    state = {}
    for prefix, layers in (("lora_unet_", unet), ("lora_te_", text)):
        for name, w in layers.items():
            key = prefix + name.replace(".", "_")
            state[f"{key}.lora_down.weight"] = w["down"]
            state[f"{key}.lora_up.weight"] = w["up"]
            if with_alpha:
                state[f"{key}.alpha"] = w["alpha"]
    save_state_dict(state, path)
    return path


def write_peft(path: Path, unet: dict, text: dict) -> Path:
    state = {}
    for prefix, layers in (("unet.", unet), ("text_encoder.", text)):
        for name, w in layers.items():
            state[f"{prefix}{name}.lora_A.weight"] = w["down"]
            state[f"{prefix}{name}.lora_B.weight"] = w["up"]
    save_state_dict(state, path)
    return path


def unet_inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 4, 8, 8, generator=g), torch.tensor([7, 801]), torch.randn(2, 5, 32, generator=g)


def outputs(pipe: ldmkit.Pipeline, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(denoiser output, text encoder output) of ldmkit's pipeline."""
    x, t, ctx = unet_inputs()
    with torch.no_grad():
        return pipe.denoiser(x, t, ldmkit.Conditioning(crossattn=ctx)), pipe.conditioner(prompts).crossattn


def diffusers_outputs(sd, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    x, t, ctx = unet_inputs()
    ids = sd.tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return sd.unet(x, t, encoder_hidden_states=ctx).sample, sd.text_encoder(ids).last_hidden_state


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def weights(pipe: ldmkit.Pipeline) -> dict[str, torch.Tensor]:
    return {f"{n}.{k}": v.clone() for n, m in pipe.modules().items() for k, v in m.state_dict().items()}
