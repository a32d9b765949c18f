"""Classifier-free guidance: one batched call, scale 1 is no guidance, a batch equals single draws."""

from __future__ import annotations

import pytest
import torch

import ldmkit
from tests.tiny import tiny_pipeline_spec, tiny_unet_params

SPEC = tiny_pipeline_spec(
    {"type": "identity", "params": {"channels": 3}},
    tiny_unet_params(channels=3, attention_resolutions=[2], num_head_channels=32, context_dim=32),
    {"type": "class-embedder", "params": {"embed_dim": 32, "n_classes": 5, "null_class": 4}},
    version=1,
    schedule={"timesteps": 1000},
)


@pytest.fixture(scope="module")
def pipe() -> ldmkit.Pipeline:
    torch.manual_seed(0)
    p = ldmkit.Pipeline.from_spec(SPEC)
    with torch.no_grad():
        for param in p.denoiser.parameters():  # the UNet's output layer starts at zero: make it do something
            param.add_(torch.randn_like(param) * 0.05)
    return p


def _labels(*ids: int) -> torch.Tensor:
    return torch.tensor(ids, dtype=torch.long)


def test_scale_one_equals_no_guidance(pipe):
    cond, uncond = pipe.conditioner(_labels(0, 1)), pipe.conditioner.unconditional(2)
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    plain = pipe.sample(cond, steps=5, x_T=x_T)
    scaled = pipe.sample(cond, steps=5, x_T=x_T, uncond=uncond, guidance_scale=1.0)
    assert torch.equal(plain, scaled)


def test_guidance_is_one_batched_call_with_the_reference_formula(pipe):
    cond, uncond = pipe.conditioner(_labels(0, 2)), pipe.conditioner.unconditional(2)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([500, 500])
    calls = []
    forward_guided = pipe.denoiser.forward_guided

    def recording(x, t, both):
        calls.append((x.shape[0], both.crossattn.shape[0]))
        return forward_guided(x, t, both)

    pipe.denoiser.forward_guided = recording
    try:
        with torch.no_grad():
            guided = pipe.model_fn(cond, uncond, 3.0)(x, t)
    finally:
        del pipe.denoiser.forward_guided
    assert calls == [(2, 4)]  # conditional and unconditional halves in one call
    with torch.no_grad():
        e_c = pipe.denoiser(x, t, cond)
        e_u = pipe.denoiser(x, t, uncond)
    torch.testing.assert_close(guided, e_u + 3.0 * (e_c - e_u), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), "3", True, None])
def test_a_scale_that_is_not_a_finite_number_is_refused_before_sampling(pipe, scale):
    cond, uncond = pipe.conditioner(_labels(0)), pipe.conditioner.unconditional(1)
    calls = []
    handle = pipe.denoiser.register_forward_hook(lambda m, args, out: calls.append(1))
    try:
        with pytest.raises(ldmkit.InputError, match="guidance_scale must be a finite number"):
            pipe.sample(cond, steps=5, uncond=uncond, guidance_scale=scale)
    finally:
        handle.remove()
    assert calls == []  # refused before the first denoiser call


def test_negative_conditioning_changes_the_result(pipe):
    cond = pipe.conditioner(_labels(0))
    x_T = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    default = pipe.sample(cond, steps=5, x_T=x_T, uncond=pipe.conditioner.unconditional(1), guidance_scale=4.0)
    negative = pipe.sample(cond, steps=5, x_T=x_T, uncond=pipe.conditioner(_labels(3)), guidance_scale=4.0)
    assert not torch.allclose(default, negative)


@pytest.mark.parametrize("sampler,eta", [("ddim", 0.0), ("ddim", 1.0), ("ddpm", 0.0)])
def test_guided_batch_equals_samples_drawn_one_at_a_time(pipe, sampler, eta):
    labels = [0, 1, 3]
    seeds = [11, 12, 13]
    kw = dict(sampler=sampler, steps=6, eta=eta, guidance_scale=2.5)
    batch = pipe.sample(
        pipe.conditioner(_labels(*labels)),
        uncond=pipe.conditioner.unconditional(3),
        generator=[torch.Generator().manual_seed(s) for s in seeds],
        **kw,
    )
    for i, (label, seed) in enumerate(zip(labels, seeds, strict=True)):
        single = pipe.sample(
            pipe.conditioner(_labels(label)),
            uncond=pipe.conditioner.unconditional(1),
            generator=[torch.Generator().manual_seed(seed)],
            **kw,
        )
        # batched and single float arithmetic differ in the last bits, not more
        torch.testing.assert_close(batch[i : i + 1], single, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sampler": 3}, "sampler must be a registered sampler's name or a Sampler"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"batch_size": 1.5}, "batch_size must be a positive integer"),
    ],
)
def test_sample_refuses_a_bad_sampler_or_batch_size(pipe, kwargs, message):
    with pytest.raises(ldmkit.InputError, match=message):
        pipe.sample(None, steps=2, **kwargs)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("gpu",), "device 'gpu': not a device"),
        ((3.5,), "device 3.5: not a device"),
        ((None, torch.int64), "dtype must be a floating-point torch.dtype"),
    ],
)
def test_to_refuses_what_is_not_a_device_or_float_dtype(pipe, args, message):
    with pytest.raises(ldmkit.InputError, match=message):
        pipe.to(*args)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_to_cuda_without_cuda_says_so(pipe):
    with pytest.raises(ldmkit.InputError, match="CUDA is not available"):
        pipe.to("cuda")
    assert pipe.device.type == "cpu"


def test_save_where_a_file_stands_is_refused_and_keeps_the_file(pipe, tmp_path):
    if pipe.spec is None:
        pytest.skip("this pipeline was not built from a spec")
    blocker = tmp_path / "pipeline"
    blocker.write_text("not a folder")
    with pytest.raises(ldmkit.InputError, match="exists and is not a folder"):
        pipe.save(blocker)
    with pytest.raises(ldmkit.InputError, match="cannot create the output folder"):
        pipe.save(blocker / "inside")
    assert blocker.read_text() == "not a folder"


def test_a_numpy_scale_guides_like_the_same_python_float(pipe):
    import numpy as np

    cond, uncond = pipe.conditioner(_labels(0)), pipe.conditioner.unconditional(1)
    x_T = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    as_float = pipe.sample(cond, steps=3, x_T=x_T, uncond=uncond, guidance_scale=2.5)
    as_numpy = pipe.sample(cond, steps=3, x_T=x_T, uncond=uncond, guidance_scale=np.float32(2.5))
    assert torch.equal(as_float, as_numpy)


def test_guided_pair_keeps_a_concat_both_halves_share_once():
    from ldmkit.conditioning import guided_pair

    ctx_u, ctx_c, maps = torch.zeros(2, 3, 4), torch.randn(2, 3, 4), torch.randn(2, 5, 8, 8)
    shared = guided_pair(
        ldmkit.Conditioning(crossattn=ctx_u, concat=maps), ldmkit.Conditioning(crossattn=ctx_c, concat=maps.clone())
    )
    assert shared.crossattn.shape[0] == 4 and torch.equal(shared.crossattn, torch.cat([ctx_u, ctx_c]))
    assert torch.equal(shared.concat, maps)  # (B, C, h, w): one copy for both halves
    other = maps.clone()
    other[1, 0, 0, 0] += 1.0
    both = guided_pair(
        ldmkit.Conditioning(crossattn=ctx_u, concat=maps), ldmkit.Conditioning(crossattn=ctx_c, concat=other)
    )
    assert torch.equal(both.concat, torch.cat([maps, other]))  # they differ: each half keeps its own
    plain = guided_pair(ldmkit.Conditioning(crossattn=ctx_u), ldmkit.Conditioning(crossattn=ctx_c))
    assert plain.concat is None and plain.crossattn.shape[0] == 4


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_guided_eps_guides_the_epsilon_each_half_implies(prediction):
    from ldmkit.prediction import guided_eps, target_for

    schedule = ldmkit.NoiseSchedule.from_spec(ldmkit.ScheduleSpec())
    ac = schedule.alphas_cumprod
    g = torch.Generator().manual_seed(4)
    x0_u, x0_c, noise_u, noise_c = (torch.randn(2, 3, 4, 4, generator=g) for _ in range(4))
    t = torch.tensor([10, 900])
    a = ac[t].view(-1, 1, 1, 1)
    # one x_t that a perfect model explains two ways: by (x0_u, noise_u) and by (x0_c, noise_c)
    x_t = a.sqrt() * x0_u + (1 - a).sqrt() * noise_u
    noise_c = (x_t - a.sqrt() * x0_c) / (1 - a).sqrt()
    out = torch.cat([target_for(prediction, x0_u, noise_u, t, ac), target_for(prediction, x0_c, noise_c, t, ac)])
    guided = guided_eps(out, x_t, t, ac, prediction, 4.0)
    torch.testing.assert_close(guided, noise_u + 4.0 * (noise_c - noise_u), rtol=1e-4, atol=1e-4)


def test_every_path_guides_through_the_one_guidance_function(pipe):
    from ldmkit.guidance import denoiser_step, guided_model_fn

    cond, uncond = pipe.conditioner(_labels(0, 2)), pipe.conditioner.unconditional(2)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    t = torch.tensor([100, 700])
    step = denoiser_step(pipe.denoiser, pipe.schedule.alphas_cumprod)
    with torch.no_grad():
        for c, u, scale in [(cond, uncond, 3.0), (cond, None, 3.0), (cond, uncond, 1.0)]:
            direct = guided_model_fn(step, c, u, scale)(x, t)
            assert torch.equal(pipe.model_fn(c, u, scale)(x, t), direct)
            pipe.optimize(precision="fp32")  # the fast path on the CPU: float32, nothing compiled
            try:
                assert torch.equal(pipe.model_fn(c, u, scale)(x, t), direct)
            finally:
                pipe.fast = None


def test_guided_model_fn_calls_its_step_once_with_the_pair_or_the_plain_conditioning(pipe):
    from ldmkit.guidance import guided_model_fn

    cond, uncond = pipe.conditioner(_labels(1)), pipe.conditioner.unconditional(1)
    calls = []

    def step(x, t, conditioning, scale):
        calls.append((conditioning.crossattn.shape[0], scale))
        return x

    x, t = torch.zeros(1, 3, 8, 8), torch.tensor([10])
    guided_model_fn(step, cond, uncond, 2.5)(x, t)
    guided_model_fn(step, cond, uncond, 1.0)(x, t)  # scale 1: the guided result is the conditional one
    guided_model_fn(step, cond, None, 2.5)(x, t)  # no unconditional input: nothing to guide with
    assert calls == [(2, 2.5), (1, None), (1, None)]
    with pytest.raises(ldmkit.InputError, match="guidance_scale must be a finite number"):
        guided_model_fn(step, cond, uncond, float("nan"))
