"""``colour-example``: a colour, by name or as ``#rrggbb``, becomes one cross-attention token."""

from __future__ import annotations

import re
from typing import Any

import torch
from pydantic import Field
from torch import Tensor, nn

from ldmkit import Conditioner, Conditioning, InputError, Params
from ldmkit.checks import check_batch, check_device, host_to_device, text_batch

COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "grey": (128, 128, 128),
    "red": (255, 0, 0),
    "orange": (255, 128, 0),
    "yellow": (255, 255, 0),
    "green": (0, 255, 0),
    "cyan": (0, 255, 255),
    "blue": (0, 0, 255),
    "magenta": (255, 0, 255),
}
"""The colour names understood, as 8-bit RGB."""

_HEX = re.compile(r"#([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})")


def parse_colour(text: str) -> tuple[float, float, float]:
    """RGB in [0, 1] of a colour name (``COLOURS``) or of ``#rrggbb``; InputError for anything else."""
    key = text.strip().lower()
    if key in COLOURS:
        return tuple(v / 255 for v in COLOURS[key])  # type: ignore[return-value]
    match = _HEX.fullmatch(key)
    if match is None:
        raise InputError(f"unknown colour {text!r}: give #rrggbb or one of {', '.join(COLOURS)}")
    return tuple(int(part, 16) / 255 for part in match.groups())  # type: ignore[return-value]


class ColourConditioner(Conditioner):
    """Colours -> (B, 1, embed_dim): the RGB values through one learned linear layer.

    ``raw`` is a colour (name or ``#rrggbb``), a list of them, or a float tensor (B, 3) of RGB in
    [0, 1]. The unconditional input (for classifier-free guidance) is a learned "no colour" token.
    """

    name = "colour-example"
    slots = ("crossattn",)

    class Params(Params):
        embed_dim: int = Field(gt=0, description="token width (the UNet's context_dim)")

    params: Params

    def __init__(self, params: Params | None = None) -> None:
        super().__init__(params)
        self.proj = nn.Linear(3, self.params.embed_dim)
        self.null_token = nn.Parameter(torch.zeros(1, 1, self.params.embed_dim))

    def _rgb(self, raw: Any) -> Tensor:
        if isinstance(raw, Tensor):
            check_device(raw, self.device, "colours")
            if not raw.is_floating_point() or raw.ndim != 2 or raw.shape[1] != 3 or raw.shape[0] == 0:
                raise InputError(f"colours must be a float tensor (B, 3), got {raw.dtype} {tuple(raw.shape)}")
            if not bool(((raw >= 0) & (raw <= 1)).all()):
                raise InputError("colours must hold RGB values in [0, 1]")
            return raw
        rgb = torch.tensor([parse_colour(text) for text in text_batch(raw, "colours")])  # (B, 3)
        return host_to_device(rgb, self.device)

    def forward(self, raw: Any) -> Conditioning:
        """``raw``: a colour name or ``#rrggbb``, a list of them, or RGB (B, 3) in [0, 1]."""
        rgb = self._rgb(raw).to(self.proj.weight.dtype)  # (B, 3)
        return Conditioning(crossattn=self.proj(2 * rgb - 1)[:, None])  # (B, 1, embed_dim)

    def unconditional(self, batch: int) -> Conditioning:
        """The learned "no colour" token for every sample."""
        return Conditioning(crossattn=self.null_token.expand(check_batch(batch), -1, -1))  # (B, 1, embed_dim)
