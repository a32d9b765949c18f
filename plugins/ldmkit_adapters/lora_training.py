"""A fresh LoRA to train: zero-effect updates on chosen layers, their parameters, and saving in kohya's layout."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ldmkit.checkpoints import save_state_dict
from ldmkit.errors import InputError
from ldmkit_adapters.layer_names import LayerIndex
from ldmkit_adapters.lora_files import Part
from ldmkit_adapters.lora_layers import LoraUpdate, weight_of

if TYPE_CHECKING:
    from ldmkit.pipeline import Pipeline

__all__ = ["DEFAULT_LAYERS", "TrainedLayer", "fresh_layers", "kohya_state"]

DEFAULT_LAYERS: dict[Part, str] = {
    "unet": r"(attn[12]\.(to_q|to_k|to_v|to_out\.0)|ff\.net\.(0\.proj|2)|proj_in|proj_out)$",
    "text_encoder": r"(q_proj|k_proj|v_proj|out_proj|fc1|fc2)$",
}
"""Which layers a new LoRA covers by default (regular expressions searched in ldmkit's layer names):
the attention and feed-forward layers of the UNet's transformers, and those of the text encoder."""

_KOHYA_PREFIX: dict[Part, str] = {"unet": "lora_unet_", "text_encoder": "lora_te_"}
_PARTS: dict[Part, str] = {"unet": "denoiser", "text_encoder": "conditioner"}


class TrainedLayer:
    """One layer of a LoRA being trained: the module, its name in files, and its update."""

    def __init__(self, module: nn.Module, part: Part, file_name: str, update: LoraUpdate) -> None:
        self.module = module
        self.part = part
        self.file_name = file_name
        self.update = update


def fresh_layers(
    pipeline: Pipeline,
    *,
    rank: int,
    alpha: float | None,
    layers: dict[Part, str],
    generator: torch.Generator | None = None,
) -> list[TrainedLayer]:
    """Updates that change nothing yet (``up`` zero, ``down`` Kaiming-uniform as kohya starts them).

    ``layers`` maps a part (``unet``, ``text_encoder``) to a regular expression of ldmkit layer names.
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise InputError(f"LoRA rank must be a positive integer, got {rank!r}")
    out: list[TrainedLayer] = []
    for part, pattern in layers.items():
        if part not in _PARTS:
            raise InputError(f"unknown LoRA part {part!r}; parts: {', '.join(_PARTS)}")
        component = getattr(pipeline, _PARTS[part], None)
        if not isinstance(component, nn.Module):
            raise InputError(f"this pipeline has no {_PARTS[part]} for a {part} LoRA")
        index = LayerIndex(component)
        chosen = {name: m for name, m in index.layers.items() if re.search(pattern, name)}
        if not chosen:
            raise InputError(f"no layer of the {_PARTS[part]} matches {pattern!r}")
        for name, module in sorted(chosen.items()):
            weight = weight_of(module)
            down = torch.empty(rank, *weight.shape[1:], dtype=torch.float32)
            bound = 1.0 / math.sqrt(weight[0].numel())  # nn.init.kaiming_uniform_(a=sqrt(5)) of the fan-in
            down.uniform_(-bound, bound, generator=generator)
            up = torch.zeros(weight.shape[0], rank, *(1,) * (weight.dim() - 2))
            down = down.to(weight.device).requires_grad_(True)
            up = up.to(weight.device).requires_grad_(True)
            factor = 1.0 if alpha is None else alpha / rank
            out.append(TrainedLayer(module, part, index.file_name(name), LoraUpdate(down, up, factor)))
    return out


def kohya_state(layers: list[TrainedLayer], rank: int, alpha: float | None) -> dict[str, Tensor]:
    """The layers' weights in kohya's layout (``lora_unet_<layer>.lora_down.weight`` ...)."""
    state: dict[str, Tensor] = {}
    for layer in layers:
        key = _KOHYA_PREFIX[layer.part] + layer.file_name.replace(".", "_")
        state[f"{key}.lora_down.weight"] = layer.update.down.detach().float().cpu().contiguous()
        state[f"{key}.lora_up.weight"] = layer.update.up.detach().float().cpu().contiguous()
        state[f"{key}.alpha"] = torch.tensor(float(rank if alpha is None else alpha))
    return state


def save_kohya(layers: list[TrainedLayer], path: str | Path, rank: int, alpha: float | None) -> Path:
    """Write the layers as a kohya-layout safetensors file (atomically)."""
    path = Path(path)
    save_state_dict(kohya_state(layers, rank, alpha), path)
    return path
