"""Reading LoRA files: kohya-style and diffusers/PEFT-style keys -> one low-rank pair per layer.

Layouts read (a file may mix the two model parts, not the layouts):

* kohya: ``lora_unet_<layer>.lora_down.weight``, ``.lora_up.weight``, ``.alpha``, and ``lora_te_`` (or
  ``lora_te1_``) for the text encoder; ``<layer>`` is a module path with dots written as underscores.
* diffusers/PEFT: ``unet.<layer>.lora_A.weight`` / ``.lora_B.weight`` (``text_encoder.`` likewise),
  optionally ``<layer>.alpha``.
* older diffusers: ``unet.<block>.processor.to_q_lora.down.weight`` (``to_k``, ``to_v``, ``to_out``) and
  ``<layer>.lora.down.weight`` / ``.lora_linear_layer.down.weight`` with ``up`` beside them.

Files are read by the core's safe loaders only: safetensors as they are, a ``.pt``/``.ckpt`` pickle only
after its scan found nothing but tensors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from torch import Tensor

from ldmkit.checkpoints import load_state_dict
from ldmkit.errors import CheckpointError

__all__ = ["LoraPair", "Part", "Style", "parse_lora", "read_lora"]

Part = Literal["unet", "text_encoder"]
Style = Literal["dotted", "underscored"]

_KOHYA_PARTS: dict[str, Part] = {"lora_unet_": "unet", "lora_te_": "text_encoder", "lora_te1_": "text_encoder"}
_KOHYA = re.compile(r"^(lora_unet_|lora_te1?_)([A-Za-z0-9_]+)\.(lora_down\.weight|lora_up\.weight|alpha)$")
_PEFT = re.compile(r"^(unet|text_encoder)\.(.+)\.(lora_A\.weight|lora_B\.weight|alpha)$")
_OLD_PROCESSOR = re.compile(r"^(unet|text_encoder)\.(.+)\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")
_OLD_LAYER = re.compile(r"^(unet|text_encoder)\.(.+)\.(?:lora|lora_linear_layer)\.(down|up)\.weight$")
_SHOWN = 20


@dataclass
class LoraPair:
    """One layer's update ``scale * (alpha / rank) * up @ down``; ``layer`` names the layer in ``style``."""

    part: Part
    layer: str
    style: Style
    down: Tensor | None = None  # (rank, in[, kh, kw])
    up: Tensor | None = None  # (out, rank[, 1, 1])
    alpha: float | None = None

    @property
    def key(self) -> str:
        """How the file names this layer (for messages)."""
        return f"{self.part}:{self.layer}"

    @property
    def rank(self) -> int:
        assert self.down is not None
        return int(self.down.shape[0])

    @property
    def factor(self) -> float:
        """``alpha / rank`` (1 without an alpha, as diffusers and kohya read such files)."""
        return 1.0 if self.alpha is None else self.alpha / self.rank


def _listing(keys: list[str]) -> str:
    more = len(keys) - _SHOWN
    return ", ".join(keys[:_SHOWN]) + (f" (+{more} more)" if more > 0 else "")


def _slot(key: str) -> tuple[Part, str, Style, str] | None:
    """(part, layer, style, role) of one file key; role is ``down``, ``up`` or ``alpha``."""
    if m := _KOHYA.match(key):
        role = {"lora_down.weight": "down", "lora_up.weight": "up", "alpha": "alpha"}[m[3]]
        return _KOHYA_PARTS[m[1]], m[2], "underscored", role
    if m := _OLD_PROCESSOR.match(key):
        projection = "to_out.0" if m[3] == "to_out" else m[3]
        return m[1], f"{m[2]}.{projection}", "dotted", m[4]  # type: ignore[return-value]
    if m := _OLD_LAYER.match(key):
        return m[1], m[2], "dotted", m[3]  # type: ignore[return-value]
    if m := _PEFT.match(key):
        role = {"lora_A.weight": "down", "lora_B.weight": "up", "alpha": "alpha"}[m[3]]
        return m[1], m[2], "dotted", role  # type: ignore[return-value]
    return None


def parse_lora(state: dict[str, Tensor], source: str) -> tuple[list[LoraPair], list[str]]:
    """The low-rank pairs of a LoRA state dict, and the keys that belong to no pair.

    A pair missing its down or up weight, a non-scalar alpha or a weight of the wrong rank is a
    :class:`CheckpointError` naming the keys.
    """
    pairs: dict[tuple[Part, str, Style], LoraPair] = {}
    unknown: list[str] = []
    for key, value in state.items():
        slot = _slot(key)
        if slot is None:
            unknown.append(key)
            continue
        part, layer, style, role = slot
        pair = pairs.setdefault((part, layer, style), LoraPair(part, layer, style))
        if role == "alpha":
            if value.numel() != 1:
                raise CheckpointError(f"{source}: {key} holds {value.numel()} values, not one alpha")
            pair.alpha = float(value.reshape(()).item())
        elif value.dim() not in (2, 4) or not value.is_floating_point():
            raise CheckpointError(f"{source}: {key} has shape {tuple(value.shape)}; LoRA weights are 2-D or 4-D floats")
        else:
            setattr(pair, role, value)
    incomplete = [pair.key for pair in pairs.values() if pair.down is None or pair.up is None]
    if incomplete:
        raise CheckpointError(f"{source}: LoRA layers without both a down and an up weight: {_listing(incomplete)}")
    for pair in pairs.values():
        assert pair.down is not None and pair.up is not None
        if pair.up.shape[1] != pair.down.shape[0] or (pair.up.dim() == 4 and tuple(pair.up.shape[2:]) != (1, 1)):
            raise CheckpointError(
                f"{source}: {pair.key}: up {tuple(pair.up.shape)} does not follow down {tuple(pair.down.shape)}"
            )
    return list(pairs.values()), unknown


def read_lora(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a LoRA file (safetensors, or a pickle the core's scan accepts); CheckpointError if none."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such LoRA file")
    state = load_state_dict(path)
    if not state:
        raise CheckpointError(f"{path}: holds no tensors")
    return state
