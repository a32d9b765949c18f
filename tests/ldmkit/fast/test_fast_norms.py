"""The fast path's channels_last GroupNorm: same function as GroupNorm, weights shared, inputs of any layout."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ldmkit.fast.norms import ChannelsLastGroupNorm, channels_last_moments, with_channels_last_group_norms
from ldmkit_unet.layers import GroupNorm32


def _reference(x: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    weight = None if norm.weight is None else norm.weight.double()
    bias = None if norm.bias is None else norm.bias.double()
    return F.group_norm(x.double(), norm.num_groups, weight, bias, norm.eps)


def _norm(channels: int, groups: int = 32, affine: bool = True, eps: float = 1e-5) -> nn.GroupNorm:
    norm = nn.GroupNorm(groups, channels, eps=eps, affine=affine)
    if affine:
        with torch.no_grad():
            norm.weight.normal_(1.0, 0.3)
            norm.bias.normal_(0.0, 0.3)
    return norm


@pytest.mark.parametrize("channels", [320, 96, 64])
@pytest.mark.parametrize("affine", [True, False])
def test_matches_group_norm_in_float32(channels: int, affine: bool) -> None:
    torch.manual_seed(channels)
    norm = _norm(channels, affine=affine)
    x = (torch.randn(2, channels, 6, 5) * 3 + 1).contiguous(memory_format=torch.channels_last)
    out = ChannelsLastGroupNorm(norm)(x)
    assert out.dtype == torch.float32 and out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out.double(), _reference(x, norm), rtol=1e-5, atol=1e-5)


def test_a_large_mean_against_a_small_spread_keeps_float32_accuracy() -> None:
    # E[x^2] - E[x]^2 without the shift would lose every digit of this variance in float32
    torch.manual_seed(0)
    x = (1000.0 + 0.01 * torch.randn(1, 64, 16, 16)).contiguous(memory_format=torch.channels_last)
    mean, var = channels_last_moments(x, 32)
    groups = x.double().reshape(1, 32, -1)
    torch.testing.assert_close(mean.double(), groups.mean(-1), rtol=1e-7, atol=0)
    torch.testing.assert_close(var.double(), groups.var(-1, unbiased=False), rtol=1e-3, atol=0)


def test_half_precision_input_is_normalised_in_float32() -> None:
    torch.manual_seed(1)
    norm = _norm(64).to(torch.bfloat16)
    x = torch.randn(2, 64, 8, 8).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    out = ChannelsLastGroupNorm(norm)(x)
    assert out.dtype == torch.bfloat16
    expected = GroupNorm32(32, 64)
    expected.load_state_dict(norm.state_dict())
    torch.testing.assert_close(out.float(), expected(x).float(), rtol=1e-2, atol=1e-2)
    assert (out.float() - expected(x).float()).abs().max() <= 2**-6  # one bf16 rounding apart at most


@pytest.mark.parametrize("shape", [(2, 64, 8, 8), (2, 64, 40)])
def test_other_layouts_take_group_norm(shape: tuple[int, ...]) -> None:
    norm = _norm(64)
    x = torch.randn(*shape)  # contiguous 4-D, or the 3-D input of the UNet's attention blocks
    torch.testing.assert_close(ChannelsLastGroupNorm(norm)(x).double(), _reference(x, norm), rtol=1e-5, atol=1e-5)


def test_swap_shares_the_weights_and_leaves_the_original_alone() -> None:
    model = nn.Sequential(_norm(64), nn.SiLU(), nn.Conv2d(64, 64, 3, padding=1), GroupNorm32(32, 64))
    swapped = with_channels_last_group_norms(model)
    assert isinstance(model[0], nn.GroupNorm) and isinstance(model[3], GroupNorm32)
    assert isinstance(swapped[0], ChannelsLastGroupNorm) and isinstance(swapped[3], ChannelsLastGroupNorm)
    assert swapped[0].weight is model[0].weight and swapped[2].weight is model[2].weight
    x = torch.randn(2, 64, 8, 8).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(swapped(x), model(x), rtol=1e-4, atol=1e-5)
    alone = _norm(64)  # a GroupNorm at the top is swapped too
    assert isinstance(with_channels_last_group_norms(alone), ChannelsLastGroupNorm)
