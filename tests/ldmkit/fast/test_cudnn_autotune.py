"""cuDNN's autotuner around the fast path's calls (ldmkit.fast.cudnn, FastConfig.cudnn_benchmark)."""

from __future__ import annotations

import pytest
import torch

from ldmkit import InputError
from ldmkit.fast import FastConfig
from ldmkit.fast.cudnn import autotuned_convolutions


@pytest.fixture
def flags_restored():
    saved = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    deterministic = torch.are_deterministic_algorithms_enabled()
    yield
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved
    torch.use_deterministic_algorithms(deterministic)


def test_autotuner_is_on_inside_and_restored_after(flags_restored) -> None:
    torch.backends.cudnn.benchmark = False
    with autotuned_convolutions(True):
        assert torch.backends.cudnn.benchmark
    assert not torch.backends.cudnn.benchmark
    with pytest.raises(RuntimeError, match="boom"), autotuned_convolutions(True):
        raise RuntimeError("boom")
    assert not torch.backends.cudnn.benchmark  # restored when the call fails too
    with autotuned_convolutions(False):
        assert not torch.backends.cudnn.benchmark


def test_autotuner_leaves_a_callers_choice_alone(flags_restored) -> None:
    torch.backends.cudnn.benchmark = True
    with autotuned_convolutions(True):
        assert torch.backends.cudnn.benchmark
    assert torch.backends.cudnn.benchmark  # the caller turned it on: it stays on
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    with autotuned_convolutions(True):
        assert not torch.backends.cudnn.benchmark  # determinism asked for: no autotuning
    torch.backends.cudnn.deterministic = False
    torch.use_deterministic_algorithms(True)
    with autotuned_convolutions(True):
        assert not torch.backends.cudnn.benchmark


def test_cudnn_benchmark_setting_follows_the_device() -> None:
    assert FastConfig().resolve(torch.device("cpu")).cudnn_benchmark is False
    assert FastConfig(cuda_graphs=False, compile=False).resolve(torch.device("cuda")).cudnn_benchmark is True
    cuda_off = FastConfig(cudnn_benchmark=False, compile=False, cuda_graphs=False).resolve(torch.device("cuda"))
    assert cuda_off.cudnn_benchmark is False
    with pytest.raises(InputError, match="cudnn_benchmark must be True, False or None"):
        FastConfig(cudnn_benchmark="on")  # type: ignore[arg-type]


def test_fast_decoder_on_the_cpu_leaves_the_flag_alone(flags_restored, monkeypatch) -> None:
    """The decoder's calls go through the autotuner's context, which stays shut for CPU tensors even when the
    setting is asked for: the global flag is off during and after the call (on a GPU the same context turns
    it on, as the tests above show)."""
    import ldmkit.fast.modules as modules

    seen: list[bool] = []
    real = modules.autotuned_convolutions

    def spy(enabled: bool):
        seen.append(enabled)
        return real(enabled)

    monkeypatch.setattr(modules, "autotuned_convolutions", spy)
    from ldmkit.fast.config import Resolved
    from ldmkit.fast.modules import FastDecoder

    class Identity(torch.nn.Module):
        def decode(self, z: torch.Tensor) -> torch.Tensor:
            assert not torch.backends.cudnn.benchmark  # a CPU tensor: the autotuner is for CUDA calls
            return z

    settings = FastConfig(cudnn_benchmark=True).resolve(torch.device("cpu"))
    assert isinstance(settings, Resolved) and settings.cudnn_benchmark
    torch.backends.cudnn.benchmark = False
    decoder = FastDecoder(Identity(), settings)
    z = torch.randn(1, 4, 8, 8)
    assert torch.equal(decoder(z), z)
    assert seen == [False] and not torch.backends.cudnn.benchmark
