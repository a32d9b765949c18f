"""The fast inference path (ldmkit.fast): exactness in float32, bf16 tolerance, tiled decoding, GPU checks."""

from __future__ import annotations

import functools
import shutil

import pytest
import torch
import torch.nn.functional as F

from ldmkit import Conditioning, InputError, NoiseSchedule, Pipeline
from ldmkit.fast import FastConfig, tile_starts, tiled_decode
from ldmkit.fast.norms import ChannelsLastGroupNorm
from ldmkit.registry import get_registry
from tests.tiny import tiny_autoencoder_params, tiny_unet_params

CUDA = torch.cuda.is_available()
C_COMPILER = shutil.which("cc") or shutil.which("gcc")


def _randomize_zeroed(module: torch.nn.Module) -> None:
    """Re-initialise the layers the constructors zero, so outputs depend on every block."""
    for m in module.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv1d, torch.nn.Linear)) and not m.weight.any():
            m.reset_parameters()


def tiny_pipeline(seed: int = 0, *, model_channels: int = 32, context_dim: int = 16) -> Pipeline:
    torch.manual_seed(seed)
    reg = get_registry()
    unet_params = tiny_unet_params(
        channels=4,
        model_channels=model_channels,
        attention_resolutions=[2],
        num_heads=2,
        context_dim=context_dim,
        legacy=False,
    )
    unet = reg.create("denoiser", "unet", unet_params)
    vae = reg.create("first_stage", "kl-autoencoder", tiny_autoencoder_params(channels=4, resolution=32))
    _randomize_zeroed(unet)
    return Pipeline(vae, unet, schedule=NoiseSchedule.from_spec(), scale_factor=0.5, latent_size=(8, 8))


def _conds(batch: int = 2) -> tuple[Conditioning, Conditioning]:
    g = torch.Generator().manual_seed(1)
    return Conditioning(crossattn=torch.randn(batch, 5, 16, generator=g)), Conditioning(
        crossattn=torch.zeros(batch, 5, 16)
    )


def _latents() -> torch.Tensor:
    return torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))  # (B, C, h, w)


def _sample(pipe: Pipeline, steps: int = 4) -> torch.Tensor:
    cond, uncond = _conds()
    latents = pipe.sample(
        cond, uncond=uncond, guidance_scale=3.0, steps=steps, generator=torch.Generator().manual_seed(2)
    )
    return pipe.decode(latents)


def test_fp32_fast_path_on_cpu_changes_nothing():
    pipe = tiny_pipeline()
    ref = _sample(pipe)
    pipe.optimize()  # CPU defaults: float32, no compile, no graphs
    assert pipe.fast is not None and pipe.fast.settings.dtype == torch.float32
    assert not pipe.fast.settings.compile and not pipe.fast.settings.cuda_graphs
    assert torch.equal(_sample(pipe), ref)


def test_bf16_fast_path_on_cpu_within_bf16_tolerance():
    pipe = tiny_pipeline()
    cond, _ = _conds()
    x, t = _latents(), torch.tensor([700, 700])
    with torch.no_grad():
        ref_eps = pipe.model_fn(cond)(x, t)  # the UNet itself, unguided
        ref_images = _sample(pipe)
        pipe.optimize(precision="bf16")
        eps = pipe.model_fn(cond)(x, t)
    assert eps.dtype == torch.float32  # the sampler state stays float32
    assert ((eps - ref_eps).norm() / ref_eps.norm()).item() < 2e-2
    images = _sample(pipe)
    assert images.dtype == torch.float32
    assert (images - ref_images).abs().mean().item() < 2e-2
    # the pipeline's own weights are untouched: the bf16 weights are a copy
    assert pipe.dtype == torch.float32
    assert next(pipe.fast.denoiser.module.parameters()).dtype == torch.bfloat16
    pipe.fast = None
    assert torch.equal(_sample(pipe), ref_images)


@pytest.mark.slow
@pytest.mark.skipif(not C_COMPILER, reason="torch.compile on a CPU needs a C compiler")
def test_compiled_channels_last_fast_path_on_cpu_computes_the_same():
    """torch.compile (with the fast path's options) of the channels_last denoiser and decoder, in float32."""
    pipe = tiny_pipeline()
    cond, uncond = _conds()
    x, t = _latents(), torch.tensor([700, 300])
    with torch.no_grad():
        ref_eps = pipe.model_fn(cond, uncond, guidance_scale=3.0)(x, t)
        ref_images = pipe.decode(x)
        pipe.optimize(precision="fp32", channels_last=True, compile=True)
        eps = pipe.model_fn(cond, uncond, guidance_scale=3.0)(x, t)
        images = pipe.decode(x)
    assert pipe.fast.settings.compile and pipe.fast.settings.channels_last
    # the compiled decoder normalises along channels_last; the pipeline's own modules keep their GroupNorms
    assert any(isinstance(m, ChannelsLastGroupNorm) for m in pipe.fast.decoder.module.modules())
    assert not any(isinstance(m, ChannelsLastGroupNorm) for m in pipe.fast.denoiser.module.modules())
    assert not any(isinstance(m, ChannelsLastGroupNorm) for m in pipe.modules())
    torch.testing.assert_close(eps, ref_eps, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(images, ref_images, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.skipif(not C_COMPILER, reason="torch.compile on a CPU needs a C compiler")
def test_compiled_bf16_decoder_with_channels_last_norms_stays_within_2_of_255():
    """The GPU settings of the decoder (bf16, channels_last, compiled, its GroupNorms swapped) on the CPU."""
    pipe = tiny_pipeline()
    x = _latents() * 3
    with torch.no_grad():
        reference = pipe.decode(x)  # float32, the first stage's own GroupNorms
        pipe.optimize(precision="bf16", channels_last=True, compile=True)
        images = pipe.decode(x)
    assert any(isinstance(m, ChannelsLastGroupNorm) for m in pipe.fast.decoder.module.modules())
    assert images.dtype == reference.dtype
    assert (images - reference).abs().mean().item() * 255 / 2 < 2.0  # images in [-1, 1]: 2/255 of the range


def test_autotune_matmuls_reaches_the_denoisers_compiles_only(monkeypatch):
    """autotune_matmuls: the compiler's matmul autotuning for the denoiser's two compiled calls (plain and
    guided), not the decoder's; asked for without compile, an InputError."""
    from ldmkit.fast import modules

    seen = []

    def recording_compile(fn, dynamic=None, options=None):
        seen.append((getattr(fn, "__name__", ""), dict(options or {})))
        return fn  # uncompiled: only the options are under test here

    monkeypatch.setattr(modules.torch, "compile", recording_compile)
    pipe = tiny_pipeline()
    pipe.optimize(precision="fp32", compile=True, autotune_matmuls=True)
    tuned = {name for name, options in seen if options.get("max_autotune_gemm")}
    assert tuned == {"_forward", "_forward_guided"}, seen
    assert all(not options.get("max_autotune_gemm") for name, options in seen if name not in tuned)
    assert any(name not in tuned for name, _ in seen)  # the decoder was compiled too, untuned
    seen.clear()
    pipe.optimize(precision="fp32", compile=True)  # off unless asked
    assert seen and not any(options.get("max_autotune_gemm") for _, options in seen)
    with pytest.raises(InputError, match="autotune_matmuls=True needs compile=True"):
        pipe.optimize(precision="fp32", compile=False, autotune_matmuls=True)
    with pytest.raises(InputError, match="autotune_matmuls must be True or False, got 1"):
        FastConfig(autotune_matmuls=1)  # type: ignore[arg-type]


@pytest.mark.slow
@pytest.mark.skipif(not C_COMPILER, reason="torch.compile on a CPU needs a C compiler")
def test_compiled_with_matmul_autotuning_on_cpu_computes_the_same():
    pipe = tiny_pipeline()
    cond, uncond = _conds()
    x, t = _latents(), torch.tensor([700, 300])
    with torch.no_grad():
        ref_eps = pipe.model_fn(cond, uncond, guidance_scale=3.0)(x, t)
        pipe.optimize(precision="fp32", compile=True, autotune_matmuls=True)
        eps = pipe.model_fn(cond, uncond, guidance_scale=3.0)(x, t)
    assert pipe.fast.settings.autotune_matmuls
    torch.testing.assert_close(eps, ref_eps, rtol=1e-4, atol=1e-5)


def test_to_rebuilds_the_fast_path():
    pipe = tiny_pipeline().optimize(precision="bf16")
    first = pipe.fast
    pipe.to("cpu")
    assert pipe.fast is not None and pipe.fast is not first and pipe.fast.settings.dtype == torch.bfloat16


@pytest.mark.parametrize(
    "kwargs",
    [
        {"precision": "int8"},
        {"compile": "yes"},
        {"compile_mode": "fastest"},
        {"tile_size": 0},
        {"tile_size": 8, "tile_overlap": 4},
        {"tile_size": "64"},  # text from a command line or a config, not a number
        {"tile_overlap": 2.5},
        {"max_graphs": "4"},
        {"compile": True, "cuda_graphs": True, "compile_mode": "reduce-overhead"},
    ],
)
def test_bad_options_raise_input_error(kwargs):
    with pytest.raises(InputError):
        FastConfig(**kwargs)


def test_tile_starts_cover_with_overlap():
    for size, tile, overlap in [(10, 4, 1), (64, 24, 8), (33, 16, 4), (16, 16, 4)]:
        starts = tile_starts(size, tile, overlap)
        assert starts[0] == 0 and starts[-1] + tile == max(size, tile)
        assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:], strict=False))


def test_tiled_decode_of_a_local_decoder_is_exact():
    # a decoder whose receptive field is smaller than the context pad: tiles must reassemble exactly
    weight = torch.randn(3, 4, 3, 3, generator=torch.Generator().manual_seed(0))

    def decode(z: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.interpolate(z, scale_factor=4, mode="nearest"), weight, padding=1)

    z = torch.randn(2, 4, 20, 27, generator=torch.Generator().manual_seed(1))
    tiled = tiled_decode(decode, z, tile=8, overlap=2, pad=2)
    torch.testing.assert_close(tiled, decode(z), atol=1e-4, rtol=1e-4)


def test_tiled_decode_matches_untiled_on_a_small_autoencoder():
    pipe = tiny_pipeline()
    vae = pipe.first_stage
    # smooth latents, like real ones: an upsampled coarse field
    coarse = torch.randn(1, 4, 6, 6, generator=torch.Generator().manual_seed(4))
    z = F.interpolate(coarse, size=(40, 40), mode="bilinear", align_corners=False)
    with torch.no_grad():
        full = vae.decode(z)
        tiled = tiled_decode(vae.decode, z, tile=24, overlap=4, pad=6)
        assert torch.equal(tiled_decode(vae.decode, z, tile=40), full.float())  # one tile: the plain decode
    # windows (36 of 40 latent pixels) normalise with their own GroupNorm statistics, so the match is
    # approximate; a blending or cropping mistake (seams, shifted tiles) gives errors of the order of `scale`
    scale = full.abs().mean().item()
    assert (tiled - full).abs().mean().item() < 0.2 * scale
    # through the pipeline's switch (context pad = overlap there)
    pipe.optimize(tile_size=24, tile_overlap=8)
    via_pipe = pipe.decode(z * pipe.scale_factor)
    assert (via_pipe - full).abs().mean().item() < 0.2 * scale


# -- GPU ------------------------------------------------------------------------------------------


@functools.cache
def _precision_line_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Guided-batch inputs of the shipped model's UNet, its float32 output (TF32 off) and diffusers' compiled
    bf16 error on the same weights (computed once for every setting tested against it)."""
    import diffusers

    from ldmkit.diffusers_interop import unet_to_diffusers
    from ldmkit.fast.modules import compile_options
    from ldmkit.generation import default_model_dir

    pipe = Pipeline.load(default_model_dir(), device="cuda")
    unet = pipe.denoiser.eval()
    g = torch.Generator(device="cuda").manual_seed(0)
    in_channels, side = unet.params.in_channels, pipe.latent_shape(1)[-1]
    x = torch.randn(8, in_channels, side, side, device="cuda", generator=g)  # latents with their concat channels
    t = torch.randint(0, 1000, (8,), device="cuda", generator=g)
    ctx = torch.randn(8, 12, unet.params.context_dim, device="cuda", generator=g)
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.no_grad():
            ref = unet(x, t, Conditioning(crossattn=ctx)).float()  # float32, TF32 off
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    config, state = unet_to_diffusers(unet)
    peer = diffusers.UNet2DConditionModel.from_config(config)
    peer.load_state_dict(state, strict=True)
    peer = peer.to("cuda", torch.bfloat16, memory_format=torch.channels_last).eval()
    compiled = torch.compile(peer, dynamic=False, options=compile_options("default"))
    with torch.no_grad():
        theirs = compiled(x.bfloat16(), t, encoder_hidden_states=ctx.bfloat16(), return_dict=False)[0].float()
    return x, t, ctx, ref, ((theirs - ref).norm() / ref.norm()).item()


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize(
    "settings",
    [{}, {"norm_kernels": True}, {"attention_kernel": "fa3"}, {"attention_kernel": "fa4"}, {"approximate_gelu": True}],
)
def test_gpu_fast_unet_within_the_precision_line(settings):
    """The fast path's bf16 UNet is no further from float32 than diffusers' compiled bf16 on the same weights,
    plus 10% (the precision line of benchmarks/RESULTS.md), on the shipped model with a guided batch."""
    pytest.importorskip("diffusers")
    from ldmkit.fast.attention import kernel_unusable_reason
    from ldmkit.fast.support import hopper_with_triton
    from ldmkit.generation import default_model_dir

    kernel = settings.get("attention_kernel")
    if kernel and (reason := kernel_unusable_reason(kernel, torch.device("cuda"), torch.bfloat16)):
        pytest.skip(reason)
    if settings.get("approximate_gelu") and not hopper_with_triton(torch.device("cuda")):
        pytest.skip("the tanh GELU is the GEGLU kernel's: a Hopper GPU with Triton")
    x, t, ctx, ref, theirs = _precision_line_inputs()
    pipe = Pipeline.load(default_model_dir(), device="cuda").optimize(**settings)
    denoise = pipe.fast.denoiser.denoise_step(pipe.schedule.alphas_cumprod)
    with torch.no_grad():
        for _ in range(3):  # compile and capture, then replays
            ours = denoise(x, t, Conditioning(crossattn=ctx), None).float()  # eps: the shipped model predicts eps
    assert pipe.fast.describe()["graph_failures"] == 0
    ours_err = ((ours - ref).norm() / ref.norm()).item()
    assert theirs < 5e-2  # the peer itself computes the same function in bf16
    assert ours_err <= 1.1 * theirs, (ours_err, theirs)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("precision", [None, "fp16"])
def test_gpu_fast_images_within_2_of_255_after_50_steps(precision):
    from ldmkit.generation import default_model_dir
    from ldmkit.interfaces import SampleOptions

    pipe = Pipeline.load(default_model_dir(), device="cuda")
    task = pipe.task("text2img")
    request = task.Request(prompt="a red circle and a blue square")
    options = SampleOptions(n=2, steps=50, guidance_scale=2.0, seed=5)
    ref = task.run(pipe, request, options).clamp(-1, 1)
    pipe.optimize(precision)
    fast = task.run(pipe, request, options).clamp(-1, 1)
    assert pipe.fast.describe()["graph_failures"] == 0
    assert ((fast - ref).abs().mean() * 127.5).item() < 2.0


def test_one_config_object_with_keyword_overrides():
    from ldmkit import fast

    pipe = tiny_pipeline()
    base = FastConfig(precision="bf16", tile_size=24)
    pipe.optimize(base, tile_overlap=4)
    assert pipe.fast.config == FastConfig(precision="bf16", tile_size=24, tile_overlap=4)
    assert pipe.fast.settings.dtype == torch.bfloat16
    pipe.optimize("fp32")  # a precision name is short for FastConfig(precision=...)
    assert pipe.fast.config == FastConfig(precision="fp32")
    fast.optimize(pipe, precision="bf16", channels_last=False, max_graphs=2)  # keyword calls keep working
    assert pipe.fast.config == FastConfig(precision="bf16", channels_last=False, max_graphs=2)
    assert fast.fast_config(base) is base


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((), {"precison": "bf16"}, "unknown fast-path setting.*precison"),
        ((), {"tile_size": 0}, "tile_size must be a positive number"),
        ((FastConfig(tile_size=24),), {"tile_overlap": 12}, "tile_overlap .12. must be less than half"),
        (({"precision": "bf16"},), {}, "config must be a FastConfig"),
    ],
)
def test_optimize_refuses_unknown_or_bad_settings(args, kwargs, message):
    pipe = tiny_pipeline()
    with pytest.raises(InputError, match=message):
        pipe.optimize(*args, **kwargs)
    assert pipe.fast is None
