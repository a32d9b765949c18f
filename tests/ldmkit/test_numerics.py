"""Numerics promises: the determinism switch, NaN-free decoding, device-independent noise, reproducible seeds."""

from __future__ import annotations

import os
import warnings

import pytest
import torch
from tiny import TINY_SPEC

from ldmkit import Pipeline, SampleOptions
from ldmkit.errors import InputError, LdmkitError, NumericsError
from ldmkit.generation import generate, save_pictures
from ldmkit.numerics import CUBLAS_ENV, NonFiniteDecodeWarning, enable_determinism, safe_decode

# tiny models: one intra-op thread (the conftest fixture) avoids contention on small shared CPUs
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_pipeline(seed: int = 0) -> Pipeline:
    torch.manual_seed(seed)  # the random initial weights
    return Pipeline.from_spec(TINY_SPEC)


@pytest.fixture(scope="module")
def pipe() -> Pipeline:
    return tiny_pipeline()


def _opts(**kw) -> SampleOptions:
    return SampleOptions(**{"n": 2, "seed": 5, "steps": 4, **kw})


# -- enable_determinism -----------------------------------------------------------------------------


def test_enable_determinism_sets_flags_globally_and_context_restores(monkeypatch) -> None:
    monkeypatch.delenv(CUBLAS_ENV, raising=False)
    torch.use_deterministic_algorithms(False)
    bench = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = True
        with enable_determinism() as previous:
            assert torch.are_deterministic_algorithms_enabled()
            assert not torch.is_deterministic_algorithms_warn_only_enabled()
            assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
            assert os.environ[CUBLAS_ENV] in (":4096:8", ":16:8")
            assert previous.deterministic_algorithms is False and previous.cudnn_benchmark is True
        assert not torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.benchmark is True
        assert CUBLAS_ENV not in os.environ
        # without ``with`` the settings stay on
        settings = enable_determinism()
        assert torch.are_deterministic_algorithms_enabled()
        settings.restore()
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = bench


def test_enable_determinism_keeps_a_user_cublas_setting(monkeypatch) -> None:
    monkeypatch.setenv(CUBLAS_ENV, ":16:8")
    with enable_determinism():
        assert os.environ[CUBLAS_ENV] == ":16:8"
    assert os.environ[CUBLAS_ENV] == ":16:8"


def test_generation_runs_under_determinism(pipe: Pipeline) -> None:
    free, _ = generate(pipe, "class2img", {"label": 2}, _opts())
    with enable_determinism():
        strict, _ = generate(pipe, "class2img", {"label": 2}, _opts())
    assert torch.equal(free, strict)


# -- safe_decode --------------------------------------------------------------------------------------


class ScaleDecoder(torch.nn.Module):
    """decode(z) = z * scale: overflows float16 for large scale, never float32."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(scale))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.scale


def test_half_overflow_is_redone_in_float32_with_one_warning() -> None:
    module = ScaleDecoder(1000.0).half()
    latents = torch.full((1, 4, 2, 2), 100.0, dtype=torch.float16)
    assert not torch.isfinite(module.decode(latents)).all()  # the premise: float16 overflows
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        images = safe_decode(module, latents)
    assert [w.category for w in record] == [NonFiniteDecodeWarning]
    assert images.dtype == torch.float32 and torch.equal(images, torch.full((1, 4, 2, 2), 100_000.0))
    assert module.scale.dtype == torch.float16  # the caller's module is not converted


def test_half_overflow_raises_when_asked() -> None:
    module = ScaleDecoder(1000.0).half()
    with pytest.raises(NumericsError, match="float16") as info:
        safe_decode(module, torch.full((1, 1), 100.0, dtype=torch.float16), on_nonfinite="raise")
    assert isinstance(info.value, LdmkitError)


def test_finite_decode_is_untouched_and_silent() -> None:
    module = ScaleDecoder(2.0).half()
    latents = torch.ones(1, 3, dtype=torch.float16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        images = safe_decode(module, latents)
    assert images.dtype == torch.float16 and torch.equal(images, latents * 2)


@pytest.mark.parametrize("mode", ["retry", "raise"])
def test_float32_nan_and_nonfinite_latents_always_raise(mode: str) -> None:
    with pytest.raises(NumericsError, match="float32"):
        safe_decode(ScaleDecoder(float("nan")), torch.ones(1, 2), on_nonfinite=mode)
    with pytest.raises(NumericsError, match="latents"):
        safe_decode(ScaleDecoder(1.0), torch.tensor([[1.0, float("inf")]]), on_nonfinite=mode)


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="on_nonfinite"):
        safe_decode(ScaleDecoder(1.0), torch.ones(1), on_nonfinite="ignore")  # type: ignore[arg-type]


def test_pipeline_decode_retries_a_half_first_stage() -> None:
    pipe = tiny_pipeline()
    pipe.first_stage.half()
    with torch.no_grad():
        pipe.first_stage.decoder.conv_out.weight.mul_(1e5)  # make float16 outputs overflow
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)).half()
    with pytest.raises(NumericsError):
        pipe.decode(latents, on_nonfinite="raise")
    with pytest.warns(NonFiniteDecodeWarning):
        images = pipe.decode(latents)
    assert images.shape == (1, 3, 16, 16) and torch.isfinite(images).all()
    assert pipe.first_stage.decoder.conv_out.weight.dtype == torch.float16


# -- NaN never reaches a picture ---------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nonfinite_pictures_are_never_saved(tmp_path, bad: float) -> None:
    images = torch.zeros(2, 3, 4, 4)
    images[1, 0, 2, 2] = bad
    out = tmp_path / "out"
    with pytest.raises(InputError, match="NaN or Inf"):
        save_pictures(out, images, task="uncond", inputs={}, options=_opts(), model={"source": "test"})
    assert not out.exists() or list(out.iterdir()) == []


# -- device-independent initial noise ---------------------------------------------------------------


def _devices() -> list[str]:
    return ["cpu", "cpu:0"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("device", _devices())
def test_initial_noise_is_drawn_on_cpu_whatever_the_pipeline(dtype: torch.dtype, device: str) -> None:
    pipe = tiny_pipeline().to(device=device, dtype=dtype)
    want = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(11))  # float32, CPU
    got = pipe.initial_noise(3, torch.Generator().manual_seed(11))
    assert got.dtype == dtype and got.device.type == torch.device(device).type
    assert torch.equal(got.cpu(), want.to(dtype))
    # a list of generators: sample i is the first sample of seed i, whatever the batch
    per_sample = pipe.initial_noise(2, [torch.Generator().manual_seed(s) for s in (4, 9)])
    single = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(9))
    assert torch.equal(per_sample[1:].cpu(), single.to(dtype))


# -- reproducible seeds -------------------------------------------------------------------------------


@pytest.mark.parametrize(("sampler", "eta"), [("ddim", 0.0), ("ddim", 1.0), ("euler-a", 0.0), ("ddpm", 0.0)])
def test_same_seed_gives_identical_pictures(pipe: Pipeline, sampler: str, eta: float) -> None:
    opts = _opts(sampler=sampler, eta=eta)
    first, _ = generate(pipe, "class2img", {"label": 4}, opts)
    again, _ = generate(tiny_pipeline(), "class2img", {"label": 4}, opts)  # a fresh pipeline, same weights
    other, _ = generate(pipe, "class2img", {"label": 4}, _opts(sampler=sampler, eta=eta, seed=6))
    assert torch.isfinite(first).all()
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_saved_pictures_are_identical_for_the_same_seed(pipe: Pipeline, tmp_path) -> None:
    paths = []
    for run in ("a", "b"):
        images, _ = generate(pipe, "class2img", {"label": 1}, _opts())
        paths.append(save_pictures(tmp_path / run, images, task="class2img", inputs={"label": 1}, options=_opts(),
                                   model={"source": "test"}))  # fmt: skip
    for a, b in zip(*paths, strict=True):
        assert a.read_bytes() == b.read_bytes()
