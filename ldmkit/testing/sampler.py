"""Conformance checks for :class:`ldmkit.Sampler` on an analytic model and a small schedule."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import torch
from torch import Tensor

from ldmkit.errors import LdmkitError
from ldmkit.interfaces import ModelFn, Sampler
from ldmkit.schedules import NoiseSchedule, ScheduleSpec
from ldmkit.testing.analytic import gaussian_eps_fn
from ldmkit.testing.base import ComponentConformance

__all__ = ["SamplerConformance"]


class SamplerConformance(ComponentConformance):
    """Shape and dtype, seeded determinism, statelessness, callbacks, per-sample generators, masks.

    ``eta`` is used for every call; ``noise_eta`` is the eta at which the sampler draws noise, used
    by the checks about generators: ``1.0`` for DDIM-like samplers, ``0.0`` for samplers that are
    always stochastic (ancestral ones, DDPM), ``None`` for deterministic ones.
    """

    kind = "sampler"
    shape: ClassVar[tuple[int, int, int, int]] = (2, 3, 4, 4)
    steps: ClassVar[int] = 5
    eta: ClassVar[float] = 0.0
    noise_eta: ClassVar[float | None] = 1.0
    atol: ClassVar[float] = 1e-5
    mask_atol: ClassVar[float] = 2e-2
    data_mean: ClassVar[float] = 0.5
    data_std: ClassVar[float] = 0.5

    # -- inputs -------------------------------------------------------------------------------
    def make_schedule(self) -> NoiseSchedule:
        """A short schedule that still ends near pure noise (alphas_cumprod[-1] ~ 0.02)."""
        return NoiseSchedule.from_spec(ScheduleSpec(timesteps=100, linear_start=0.0015, linear_end=0.1))

    def make_model_fn(self, schedule: NoiseSchedule) -> ModelFn:
        return gaussian_eps_fn(schedule, self.data_mean, self.data_std)

    def make_x_T(self, seed: int = 0, batch: int | None = None) -> Tensor:
        shape = (batch or self.shape[0], *self.shape[1:])
        return torch.randn(shape, generator=torch.Generator().manual_seed(seed))  # (B, C, h, w)

    def _built(self) -> Any:
        sampler = self.make_component()
        assert isinstance(sampler, Sampler)
        return sampler

    def _run(self, sampler: Any, x_T: Tensor, **kwargs: Any) -> Tensor:
        schedule = kwargs.pop("schedule", None) or self.make_schedule()
        model_fn = kwargs.pop("model_fn", None) or self.make_model_fn(schedule)
        kwargs.setdefault("steps", self.steps)
        kwargs.setdefault("eta", self.eta)
        with torch.no_grad():
            return sampler.sample(model_fn, schedule, x_T, **kwargs)

    def _noisy_eta(self) -> float:
        return self.eta if self.noise_eta is None else self.noise_eta

    # -- checks -------------------------------------------------------------------------------
    def test_output_shape_and_dtype(self) -> None:
        x_T = self.make_x_T()
        out = self._run(self._built(), x_T)
        assert out.shape == x_T.shape
        assert out.dtype == x_T.dtype == torch.float32
        assert torch.isfinite(out).all()

    def test_model_fn_inputs(self) -> None:
        schedule = self.make_schedule()
        inner = self.make_model_fn(schedule)
        seen: list[tuple[tuple[int, ...], Tensor]] = []

        def model_fn(x: Tensor, t: Tensor) -> Tensor:
            seen.append((tuple(x.shape), t.clone()))
            return inner(x, t)

        x_T = self.make_x_T()
        self._run(self._built(), x_T, schedule=schedule, model_fn=model_fn)
        assert seen, "the sampler never called model_fn"
        for shape, t in seen:
            assert shape == tuple(x_T.shape)
            assert t.shape == (x_T.shape[0],), f"t must be (B,), got {tuple(t.shape)}"
            assert not t.is_floating_point(), "t holds integer timesteps"
            assert 0 <= int(t.min()) and int(t.max()) < schedule.num_timesteps

    def test_does_not_modify_inputs(self) -> None:
        x_T, x0 = self.make_x_T(0), self.make_x_T(1)
        mask = torch.zeros(1, 1, *self.shape[2:])
        mask[..., : self.shape[-1] // 2] = 1
        copies = (x_T.clone(), x0.clone(), mask.clone())
        self._run(self._built(), x_T, mask=mask, x0=x0)
        for before, after in zip(copies, (x_T, x0, mask), strict=True):
            assert torch.equal(before, after)

    def test_seeded_generator_deterministic(self) -> None:
        sampler, x_T, eta = self._built(), self.make_x_T(), self._noisy_eta()
        first = self._run(sampler, x_T, eta=eta, generator=torch.Generator().manual_seed(0))
        torch.manual_seed(123)  # the global RNG must not matter when a generator is given
        second = self._run(sampler, x_T, eta=eta, generator=torch.Generator().manual_seed(0))
        assert torch.equal(first, second)

    def test_generator_is_used(self) -> None:
        if self.noise_eta is None:
            pytest.skip("deterministic sampler: no noise is drawn")
        sampler, x_T = self._built(), self.make_x_T()
        a = self._run(sampler, x_T, eta=self.noise_eta, generator=torch.Generator().manual_seed(0))
        b = self._run(sampler, x_T, eta=self.noise_eta, generator=torch.Generator().manual_seed(1))
        assert not torch.allclose(a, b), f"eta={self.noise_eta} with different seeds gave the same samples"

    def test_stateless(self) -> None:
        sampler, eta = self._built(), self._noisy_eta()
        first = self._run(sampler, self.make_x_T(0), eta=eta, generator=torch.Generator().manual_seed(0))
        # a different call in between must leave no trace
        self._run(sampler, self.make_x_T(5, batch=1), steps=self.steps + 1, eta=eta)
        again = self._run(sampler, self.make_x_T(0), eta=eta, generator=torch.Generator().manual_seed(0))
        fresh = self._run(self._built(), self.make_x_T(0), eta=eta, generator=torch.Generator().manual_seed(0))
        assert torch.equal(first, again)
        assert torch.equal(first, fresh)

    def test_callback(self) -> None:
        schedule = self.make_schedule()
        calls: list[tuple[int, int, tuple[int, ...], tuple[int, ...]]] = []

        def callback(step: int, t: int, x: Tensor, pred_x0: Tensor) -> None:
            calls.append((step, t, tuple(x.shape), tuple(pred_x0.shape)))

        x_T = self.make_x_T()
        self._run(self._built(), x_T, schedule=schedule, callback=callback)
        assert [c[0] for c in calls] == list(range(self.steps)), "callback once per step, steps counted from 0"
        timesteps = [c[1] for c in calls]
        assert all(isinstance(t, int) and not isinstance(t, bool) for t in timesteps), "t is a Python int"
        assert all(0 <= t < schedule.num_timesteps for t in timesteps)
        assert timesteps == sorted(timesteps, reverse=True) and len(set(timesteps)) == len(timesteps)
        assert all(c[2] == tuple(x_T.shape) and c[3] == tuple(x_T.shape) for c in calls)

    def test_callback_stops_early(self) -> None:
        schedule = self.make_schedule()
        inner = self.make_model_fn(schedule)
        evaluations = {"full": 0, "stopped": 0}
        mode = "full"

        def model_fn(x: Tensor, t: Tensor) -> Tensor:
            evaluations[mode] += 1
            return inner(x, t)

        x_T = self.make_x_T()
        self._run(self._built(), x_T, schedule=schedule, model_fn=model_fn)
        mode = "stopped"
        steps_seen: list[int] = []

        def stop_after_two(step: int, t: int, x: Tensor, pred_x0: Tensor) -> bool:
            steps_seen.append(step)
            return step == 1

        out = self._run(self._built(), x_T, schedule=schedule, model_fn=model_fn, callback=stop_after_two)
        assert steps_seen == [0, 1], f"callback returned True at step 1 but sampling went on: {steps_seen}"
        assert evaluations["stopped"] < evaluations["full"]
        assert out.shape == x_T.shape

    def test_per_sample_generators(self) -> None:
        sampler, eta = self._built(), self._noisy_eta()
        x_T = self.make_x_T()
        seeds = [10 + i for i in range(x_T.shape[0])]
        batched = self._run(sampler, x_T, eta=eta, generator=[torch.Generator().manual_seed(s) for s in seeds])
        for i, seed in enumerate(seeds):
            single = self._run(sampler, x_T[i : i + 1], eta=eta, generator=torch.Generator().manual_seed(seed))
            torch.testing.assert_close(batched[i : i + 1], single, atol=self.atol, rtol=1e-5)

    def test_masked_sampling_keeps_known_region(self) -> None:
        x_T = self.make_x_T(0)
        # the known content is a draw from the model's data distribution, independent of x_T
        x0 = self.data_mean + self.data_std * self.make_x_T(1)
        mask = torch.zeros(1, 1, *self.shape[2:])  # (1, 1, h, w), 1 = known
        mask[..., : self.shape[-1] // 2] = 1
        schedule = self.make_schedule()
        out = self._run(
            self._built(), x_T, schedule=schedule, mask=mask, x0=x0, generator=torch.Generator().manual_seed(0)
        )
        # a sampler that re-noises the known region before each step (as CompVis does) and does not paste x0
        # at the end leaves it with the noise of the lowest noise level: allow five standard deviations of it
        tol = self.mask_atol + 5 * float((1 - schedule.alphas_cumprod[0]).sqrt())
        known = mask.expand_as(out).bool()
        err = (out - x0)[known].abs().max().item()
        assert err <= tol, f"masked sampling moved the known region by up to {err:.3g} (tolerance {tol:.3g})"
        # the unknown region is generated, not copied
        assert (out - x0)[~known].abs().max().item() > tol

    def test_steps_out_of_range(self) -> None:
        schedule = self.make_schedule()
        sampler, x_T = self._built(), self.make_x_T()
        for steps in (0, -1, schedule.num_timesteps + 1):
            with pytest.raises(LdmkitError):
                self._run(sampler, x_T, schedule=schedule, steps=steps)
