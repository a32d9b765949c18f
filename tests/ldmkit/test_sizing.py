"""Pictures of other sizes than the training size: checks, conditioning fitted to the latent, tiled decoding."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import ldmkit
from ldmkit.conditioning import Conditioning
from ldmkit.errors import InputError, SpecError
from ldmkit.interfaces import SampleOptions
from ldmkit.options import resolve_options
from ldmkit.sizing import check_picture_size, fit_concat, latent_size_for, size_multiple
from tests.tiny import tiny_autoencoder_params, tiny_pipeline_spec, tiny_unet_params

# A tiny untrained pipeline: an f=2 autoencoder and a UNet of two levels (latent sides multiples of 2),
# so picture sides must be multiples of 4; trained size 16x16 pixels (8x8 latents).
TINY_SPEC = tiny_pipeline_spec(
    {"type": "kl-autoencoder", "params": tiny_autoencoder_params(channels=3, ch_mult=[1, 2], attn_resolutions=[])},
    tiny_unet_params(channels=3, channel_mult=[1, 2], num_head_channels=32),
    version=1,
    schedule={"beta_schedule": "linear", "timesteps": 1000},
    latent_size=[8, 8],
    tasks={"uncond": {"type": "uncond"}},
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def tiny() -> ldmkit.Pipeline:
    torch.manual_seed(0)
    return ldmkit.Pipeline.from_spec(TINY_SPEC)


def test_size_multiple_is_the_first_stage_factor_times_the_unet_levels(tiny: ldmkit.Pipeline) -> None:
    assert tiny.first_stage.downsample == 2 and tiny.denoiser.size_multiple == 2
    assert size_multiple(tiny) == 4
    assert tiny.default_size == (16, 16)
    assert check_picture_size(tiny, (32, 12)) == (32, 12)
    assert latent_size_for(tiny, [32, 12]) == (16, 6)


@pytest.mark.parametrize("size", [(18, 16), (16, 0), (2, 16)])
def test_sizes_that_are_no_multiple_are_refused_naming_the_multiple(tiny: ldmkit.Pipeline, size) -> None:
    with pytest.raises(InputError, match=r"multiple of 4 \(the first stage's factor 2 times the denoiser's 2\)"):
        check_picture_size(tiny, size)


def test_refusal_suggests_the_nearest_valid_sides(tiny: ldmkit.Pipeline) -> None:
    with pytest.raises(InputError, match="e.g. 16 or 20 instead of 18"):
        check_picture_size(tiny, (18, 16), what="--size 18")


@pytest.mark.parametrize("size", ["32", (32,), (32.0, 32), (True, 32), None])
def test_a_size_that_is_no_pair_of_integers_is_refused(tiny: ldmkit.Pipeline, size) -> None:
    with pytest.raises(InputError, match=r"\(height, width\)"):
        check_picture_size(tiny, size)


def test_sample_makes_latents_and_pictures_of_the_size_asked(tiny: ldmkit.Pipeline) -> None:
    g = [torch.Generator().manual_seed(1)]
    latents = tiny.sample(None, steps=2, generator=g, size=(32, 24))
    assert latents.shape == (1, 3, 16, 12)
    images = tiny.decode(latents)
    assert images.shape == (1, 3, 32, 24) and torch.isfinite(images).all()


def test_the_default_size_asked_explicitly_changes_nothing(tiny: ldmkit.Pipeline) -> None:
    plain = tiny.sample(None, steps=2, generator=[torch.Generator().manual_seed(3)])
    sized = tiny.sample(None, steps=2, generator=[torch.Generator().manual_seed(3)], size=(16, 16))
    assert torch.equal(plain, sized)


def test_size_must_agree_with_a_given_x_T(tiny: ldmkit.Pipeline) -> None:
    x_T = torch.randn(1, 3, 8, 8)
    with pytest.raises(InputError, match="does not match x_T"):
        tiny.sample(None, steps=1, x_T=x_T, size=(32, 32))


def test_latent_shape_without_any_size_is_a_spec_error() -> None:
    spec = {k: v for k, v in TINY_SPEC.items() if k != "latent_size"}
    pipe = ldmkit.Pipeline.from_spec(spec)
    with pytest.raises(SpecError, match="latent size is unknown"):
        pipe.latent_shape(1)
    assert pipe.latent_shape(2, (8, 4)) == (2, 3, 4, 2)


def test_constant_maps_are_expanded_to_the_latent() -> None:
    maps = torch.full((2, 3, 4, 4), -2.0)  # (B, C, 4, 4): a spatial conditioner's "no map"
    maps[1, 2] = 0.5
    fitted = fit_concat(Conditioning(concat=maps, vector=torch.tensor([1, 2])), (8, 6))
    assert fitted.concat is not None and fitted.concat.shape == (2, 3, 8, 6)
    assert torch.equal(fitted.concat[:, :, :1, :1].expand(2, 3, 8, 6), fitted.concat)
    assert torch.equal(fitted.concat[:, :, 0, 0], maps[:, :, 0, 0])
    assert torch.equal(fitted.vector, torch.tensor([1, 2]))


def test_maps_that_vary_over_space_are_never_resized() -> None:
    maps = torch.zeros(1, 2, 4, 4)
    maps[0, 0, 1, 1] = 1.0  # one cell of a box or a class map
    with pytest.raises(InputError, match="maps are 4x4 cells but the latent is 8x8"):
        fit_concat(Conditioning(concat=maps), (8, 8))
    same = Conditioning(concat=maps)
    assert fit_concat(same, (4, 4)) is same


def test_sample_options_size_and_tile_size_are_validated() -> None:
    assert SampleOptions(size=[64, 32]).size == (64, 32)
    assert SampleOptions(tile_size=16).tile_size == 16
    for bad in ({"size": (64,)}, {"size": (0, 64)}, {"size": "64"}, {"tile_size": 2}, {"tile_size": 8.0}):
        with pytest.raises(InputError, match=r"SampleOptions\.(size|tile_size)"):
            SampleOptions(**bad)


def test_size_is_layered_spec_then_task_then_caller() -> None:
    spec = {**TINY_SPEC, "sampling": {"size": [32, 32], "tile_size": 8}}
    pipe = ldmkit.Pipeline.from_spec(spec)
    assert resolve_options(pipe, "uncond").size == (32, 32)
    assert resolve_options(pipe, "uncond").tile_size == 8
    spec["tasks"] = {"uncond": {"type": "uncond", "params": {"size": [24, 40]}}}
    pipe = ldmkit.Pipeline.from_spec(spec)
    assert resolve_options(pipe, "uncond").size == (24, 40)
    assert resolve_options(pipe, "uncond", {"size": (16, 16)}).size == (16, 16)


def test_a_spec_size_out_of_bounds_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match="sampling.size"):
        ldmkit.Pipeline.from_spec({**TINY_SPEC, "sampling": {"size": [32]}})


def test_task_run_makes_pictures_of_the_options_size(tiny: ldmkit.Pipeline) -> None:
    task = tiny.task("uncond")
    out = task.run(tiny, task.parse_request({}), SampleOptions(steps=1, size=(12, 20)))
    assert out.shape == (1, 3, 12, 20)
    with pytest.raises(InputError, match="multiple of 4"):
        task.run(tiny, task.parse_request({}), SampleOptions(steps=1, size=(12, 22)))


class _ConvFirstStage(ldmkit.FirstStage):
    """A decoder of local convolutions only (receptive field: 2 latent cells each side), for tiling tests."""

    name = "conv-first-stage-test"

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.latent_channels, self.downsample = 3, 4
        self.decoder = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.SiLU(),
            nn.Upsample(scale_factor=4, mode="nearest"),
            nn.Conv2d(8, 3, 3, padding=1),
        )

    def encode(self, images: Tensor) -> Tensor:
        return nn.functional.avg_pool2d(images, 4)  # (B, 3, H/4, W/4)

    def decode(self, latents: Tensor) -> Tensor:
        return self.decoder(latents)  # (B, 3, 4h, 4w)


def test_tiled_decode_of_a_convolutional_decoder_equals_the_whole_decode(tiny: ldmkit.Pipeline) -> None:
    # every window carries tile/4 = 2 cells of context, which covers the decoder's receptive field, so every
    # tile is exact where it is kept and the blend of exact tiles is exact: float rounding only
    pipe = ldmkit.Pipeline(_ConvFirstStage(), tiny.denoiser, scale_factor=0.5)
    latents = torch.randn(2, 3, 21, 13, generator=torch.Generator().manual_seed(0))  # (B, C, h, w)
    whole = pipe.decode(latents)
    tiled = pipe.decode(latents, tile_size=8)
    assert tiled.shape == whole.shape == (2, 3, 84, 52)
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-5)


class _MeanFirstStage(_ConvFirstStage):
    """Decodes every window to one flat grey, the mean of its latents: a global statistic, as GroupNorm has."""

    def decode(self, latents: Tensor) -> Tensor:
        b, _, h, w = latents.shape
        return latents.mean(dim=(1, 2, 3)).view(b, 1, 1, 1).expand(b, 3, 4 * h, 4 * w)  # (B, 3, 4h, 4w)


def test_tiles_are_blended_linearly_across_their_overlap(tiny: ldmkit.Pipeline) -> None:
    # windows see different statistics (here: different means), so their tiles disagree; the blend must
    # turn each disagreement into a ramp over the overlap instead of a step at the border
    pipe = ldmkit.Pipeline(_MeanFirstStage(), tiny.denoiser)
    latents = torch.linspace(0, 8, 32).expand(1, 3, 32, 32).contiguous()  # (1, 3, 32, 32): rises along x
    tiled = pipe.decode(latents, tile_size=8)  # tiles of 8 cells overlapping by 2, i.e. 8 pixels
    assert not torch.equal(tiled, pipe.decode(latents))  # it did tile: the whole decode is one flat grey
    row = tiled[0, 0, 0]  # (128,)
    steps = row[1:] - row[:-1]  # (127,)
    assert float(steps.min()) >= -1e-5  # a blend of tiles whose means rise, rising
    window_means = [float(latents[0, 0, 0, s : s + 8 + 4].mean()) for s in (0, 4, 10, 16, 20)]
    largest_step = max(b - a for a, b in zip(window_means, window_means[1:], strict=False))
    assert float(steps.max()) <= largest_step / 8 * 1.01  # no jump: each step spread over the 8 overlap pixels
    torch.testing.assert_close(tiled[0, 0], row.expand(128, 128), rtol=0, atol=1e-5)  # nothing varies along y


def test_tiled_decode_of_the_kl_autoencoder_keeps_the_size(tiny: ldmkit.Pipeline) -> None:
    latents = torch.randn(1, 3, 24, 20, generator=torch.Generator().manual_seed(1))
    tiled = tiny.decode(latents, tile_size=8)
    assert tiled.shape == (1, 3, 48, 40) and torch.isfinite(tiled).all()
    assert not torch.equal(tiled, tiny.decode(latents))  # GroupNorm sees one window: close, not equal


def test_a_tile_no_smaller_than_the_latent_decodes_whole(tiny: ldmkit.Pipeline) -> None:
    latents = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    assert torch.equal(tiny.decode(latents, tile_size=8), tiny.decode(latents))


@pytest.mark.parametrize("tile", [0, 3, 8.0, True])
def test_bad_tile_sizes_are_refused(tiny: ldmkit.Pipeline, tile) -> None:
    with pytest.raises(InputError, match="tile_size must be an integer >= 4"):
        tiny.decode(torch.zeros(1, 3, 8, 8), tile_size=tile)
