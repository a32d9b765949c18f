"""``tiny-unet-example``: a small denoiser that loads from an original-format (CompVis) checkpoint.

The network is deliberately small (a convolution in, one time-modulated hidden convolution, a
convolution out); the point is its conversion, declared on the class as :mod:`ldmkit.conversions`
describes: the ``target`` string it answers to in a CompVis config, how that entry's ``params`` become
its own ``Params``, and how the checkpoint's key names become its module's.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

import ldmkit

if TYPE_CHECKING:  # the conversion protocol is only named in annotations
    from ldmkit.conversions import CompVisContext

COMPVIS_TARGET = "ldmkit_plugin_example.models.TinyUNet"
# the original module's parameter names -> this module's
COMPVIS_KEYS = {"in_conv.": "conv_in.", "time_proj.": "time_embed.", "mid_conv.": "conv_mid.", "out_conv.": "conv_out."}


def timestep_features(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal features of integer timesteps: (B,) -> (B, dim), cosines first."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)  # (half,)
    angles = t.float()[:, None] * freqs[None]  # (B, half)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)  # (B, dim)


class TinyUNet(ldmkit.Denoiser):
    """x_t (B, in_channels, h, w) [+ ``cond.concat``] -> prediction (B, out_channels, h, w)."""

    name = "tiny-unet-example"
    compvis_targets: ClassVar[tuple[str, ...]] = (COMPVIS_TARGET,)

    class Params(ldmkit.Params):
        in_channels: int = Field(4, ge=1, description="latent channels plus concatenated conditioning channels")
        out_channels: int = Field(4, ge=1)
        width: int = Field(32, ge=2, multiple_of=2, description="hidden channels (even: sine and cosine halves)")
        prediction: Literal["eps", "x0", "v"] = "eps"

    params: Params

    def __init__(self, params: Params | None = None) -> None:
        super().__init__(params)
        p = self.params
        self.prediction = p.prediction
        self.conv_in = nn.Conv2d(p.in_channels, p.width, 3, padding=1)
        self.time_embed = nn.Linear(p.width, p.width)
        self.conv_mid = nn.Conv2d(p.width, p.width, 3, padding=1)
        self.conv_out = nn.Conv2d(p.width, p.out_channels, 3, padding=1)

    def forward(self, x_t: Tensor, t: Tensor, cond: ldmkit.Conditioning) -> Tensor:
        """x_t (B, C, h, w), t (B,) -> (B, out_channels, h, w)."""
        x = x_t if cond.concat is None else torch.cat([x_t, cond.concat], dim=1)  # (B, in_channels, h, w)
        t = torch.as_tensor(t, device=x.device).expand(x.shape[0])  # (B,)
        h = F.silu(self.conv_in(x))  # (B, width, h, w)
        h = h + self.time_embed(timestep_features(t, self.params.width))[:, :, None, None]
        h = F.silu(self.conv_mid(h))  # (B, width, h, w)
        return self.conv_out(h)  # (B, out_channels, h, w)

    # -- the CompVis translation ------------------------------------------------------------------
    @classmethod
    def params_from_compvis(cls, params: dict[str, Any], context: CompVisContext) -> dict[str, Any]:
        """The original ``unet_config.params`` (``in_channels``, ``out_channels``, ``model_channels``)."""
        return {
            "in_channels": params["in_channels"],
            "out_channels": params.get("out_channels", params["in_channels"]),
            "width": params.get("model_channels", 32),
            "prediction": context.parameterization,
        }

    @classmethod
    def state_dict_from_compvis(cls, state: dict[str, Tensor], params: Params) -> dict[str, Tensor]:
        """The original's parameter names (``in_conv.weight`` ...) -> this module's (``conv_in.weight`` ...)."""
        out = {}
        for key, value in state.items():
            prefix = next((old for old in COMPVIS_KEYS if key.startswith(old)), None)
            out[key if prefix is None else COMPVIS_KEYS[prefix] + key[len(prefix) :]] = value
        return out
