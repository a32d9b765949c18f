"""Pieces every sampler shares: argument checks, timestep selection, noise, masking, progress.

Nothing here keeps state between sampling calls: a :class:`SamplingRun` lives for one call.
"""

from __future__ import annotations

import math
import operator
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from typing import ClassVar, Literal

import torch
from torch import Tensor

import ldmkit
from ldmkit.errors import InputError
from ldmkit.interfaces import ModelFn, StepCallback
from ldmkit.schedules import NoiseSchedule

Generators = torch.Generator | list[torch.Generator] | None
Spacing = Literal["leading", "linspace", "trailing"]

# -- argument checks ------------------------------------------------------------------------------


def check_steps(steps: object, num_timesteps: int) -> int:
    """``steps`` as an int in ``1..num_timesteps``, else :class:`InputError`."""
    try:
        if isinstance(steps, bool):
            raise TypeError
        steps = operator.index(steps)  # type: ignore[arg-type]
    except TypeError:
        raise InputError(f"steps must be an integer, got {steps!r}") from None
    if not 1 <= steps <= num_timesteps:
        raise InputError(f"steps must be between 1 and the schedule's {num_timesteps} timesteps, got {steps}")
    return steps


def check_eta(eta: object, sampler: str, *, uses_eta: bool) -> float:
    """``eta`` as a float >= 0; samplers without a stochasticity knob accept only 0."""
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not math.isfinite(eta) or eta < 0:
        raise InputError(f"eta must be a finite number >= 0, got {eta!r}")
    if not uses_eta and eta != 0:
        raise InputError(f"sampler {sampler!r} has no eta parameter (only 'ddim' has); got eta={eta}")
    return float(eta)


def check_timesteps(timesteps: Sequence[int], num_timesteps: int, what: str) -> list[int]:
    """Ascending timesteps, all inside ``0..num_timesteps-1``, else :class:`InputError` naming ``what``."""
    ts = [int(t) for t in timesteps]
    bad = [t for t in ts if not 0 <= t < num_timesteps]
    if bad:
        raise InputError(
            f"{what} gives timestep {bad[0]}, outside the schedule's 0..{num_timesteps - 1}; choose another number "
            "of steps or another spacing"
        )
    return ts


# -- timestep selection ---------------------------------------------------------------------------


def _numpy_linspace(stop: float, num: int) -> list[float]:
    """``numpy.linspace(0, stop, num)`` value for value (``i * (stop / (num - 1))``, last one exactly ``stop``)."""
    if num == 1:
        return [0.0]
    step = stop / (num - 1)
    values = [i * step for i in range(num)]
    values[-1] = stop
    return values


def compvis_timesteps(method: Literal["uniform", "quad"], steps: int, num_timesteps: int) -> list[int]:
    """CompVis ``make_ddim_timesteps``: ascending timesteps, each shifted by +1.

    "uniform" takes every ``c = T // steps``-th timestep (so ``ceil(T / c)`` of them, which can exceed
    ``steps`` when ``steps`` does not divide ``T``); "quad" spaces them quadratically up to ``0.8 T``.
    Where the shift lands on ``T`` itself (e.g. 3, 9, 27 or more than ``T / 2`` uniform steps of ``T = 1000``)
    the original indexes past the schedule; that timestep is dropped here.
    """
    if method == "uniform":
        c = num_timesteps // steps
        base = list(range(0, num_timesteps, c))
    elif method == "quad":
        base = [int(v**2) for v in _numpy_linspace(math.sqrt(num_timesteps * 0.8), steps)]
    else:
        raise InputError(f"unknown discretization {method!r}; expected 'uniform' or 'quad'")
    shifted = [t + 1 for t in base if t + 1 < num_timesteps]
    if not shifted:
        raise InputError(f"discretization {method!r} has no timestep inside a schedule of {num_timesteps} steps")
    return shifted


def spaced_timesteps(spacing: Spacing, steps: int, num_timesteps: int, offset: int = 0) -> list[int]:
    """Ascending timesteps with the spacings of Lin et al. 2023 (Table 2), as diffusers names them.

    - "leading": ``i * (T // steps) + offset`` for ``i < steps``;
    - "linspace": the top ``steps`` of ``round(linspace(0, T - 1, steps + 1))`` (DPM-Solver's default);
    - "trailing": ``round(T - i * T / steps) - 1`` for ``i < steps``.
    """
    n = num_timesteps
    if spacing == "leading":
        ts = [i * (n // steps) + offset for i in range(steps)]
    elif spacing == "linspace":
        ts = [round(v) for v in _numpy_linspace(float(n - 1), steps + 1)][1:]
    elif spacing == "trailing":
        ratio = n / steps
        ts = sorted(round(n - i * ratio) - 1 for i in range(steps))
    else:
        raise InputError(f"unknown timestep spacing {spacing!r}; expected 'leading', 'linspace' or 'trailing'")
    if len(set(ts)) != len(ts):
        raise InputError(f"spacing {spacing!r} with {steps} steps repeats timesteps; use fewer steps or 'trailing'")
    return check_timesteps(ts, n, f"spacing {spacing!r} with {steps} steps")


def alphas_cumprod64(schedule: NoiseSchedule) -> Tensor:
    """The schedule's (float32) ``alphas_cumprod`` as float64 on the CPU, for coefficient arithmetic."""
    return schedule.alphas_cumprod.detach().to(device="cpu", dtype=torch.float64)


# -- one sampling call ----------------------------------------------------------------------------


def draw_noise(shape: torch.Size, generator: Generators, like: Tensor) -> Tensor:
    """Standard normal noise of ``shape``, drawn on the generators' device (the CPU by default) and moved to ``like``.

    With a list, sample ``i`` comes from ``generator[i]``, so a batch of seeds reproduces one-by-one sampling.
    """
    if isinstance(generator, list):
        noise = torch.stack([torch.randn(shape[1:], generator=g, device=g.device) for g in generator])
    elif generator is not None:
        noise = torch.randn(shape, generator=generator, device=generator.device)
    else:
        noise = torch.randn(shape)
    return noise.to(device=like.device, dtype=like.dtype)


class SamplingRun:
    """What one ``Sampler.sample`` call needs besides the update rule; discarded when the call returns.

    Masked sampling follows CompVis DDIM ``mask`` / ``x0``: before the model sees ``x`` at timestep ``t``,
    the known region (``mask == 1``) is replaced by ``q_sample(x0, t)`` with fresh noise, and the result's
    known region is ``x0`` itself.
    """

    def __init__(
        self,
        sampler: str,
        model_fn: ModelFn,
        schedule: NoiseSchedule,
        x_T: Tensor,
        *,
        generator: Generators = None,
        callback: StepCallback | None = None,
        mask: Tensor | None = None,
        x0: Tensor | None = None,
        progress: bool = False,
    ) -> None:
        if not isinstance(x_T, Tensor) or not x_T.is_floating_point() or x_T.dim() < 1:
            raise InputError(f"x_T must be a floating point tensor (B, ...), got {type(x_T).__name__}")
        self.sampler = sampler
        self.model_fn = model_fn
        self.shape = x_T.shape
        self.like = x_T
        self.callback = callback
        self.progress = progress
        self.generator = _check_generator(generator, x_T.shape[0])
        self.mask, self.x0 = _check_mask(mask, x0, x_T)
        if self.mask is not None:
            ac = alphas_cumprod64(schedule)
            # Python floats: no host-to-device copy per step, and x * c computes in x's dtype
            self._sqrt_a = ac.sqrt().to(torch.float32).tolist()  # (T,)
            self._sqrt_1ma = (1 - ac).sqrt().to(torch.float32).tolist()  # (T,)

    @property
    def masked(self) -> bool:
        return self.mask is not None

    def timestep(self, t: int) -> Tensor:
        """``t`` as the LongTensor (B,) on x's device that ``model_fn`` receives."""
        return torch.full((self.shape[0],), int(t), dtype=torch.long, device=self.like.device)

    def eps(self, x: Tensor, t: int) -> Tensor:
        """The model's epsilon at ``(x, t)``, checked for shape."""
        out = self.model_fn(x, self.timestep(t))
        if not isinstance(out, Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise InputError(f"model_fn returned {got} for an input of shape {tuple(x.shape)}; expected the same shape")
        return out

    def noise(self) -> Tensor:
        """Fresh noise like x_T, from the caller's generator(s)."""
        return draw_noise(self.shape, self.generator, self.like)

    def impose(self, x: Tensor, t: int) -> Tensor:
        """Replace the known region of ``x`` by ``x0`` noised to timestep ``t`` (no-op without a mask)."""
        if self.mask is None or self.x0 is None:
            return x
        noisy = self._sqrt_a[t] * self.x0 + self._sqrt_1ma[t] * self.noise()  # q_sample
        return noisy * self.mask + (1.0 - self.mask) * x

    def finish(self, x: Tensor) -> Tensor:
        """The final sample: its known region is ``x0``."""
        if self.mask is None or self.x0 is None:
            return x
        return self.x0 * self.mask + (1.0 - self.mask) * x

    def report(self, step: int, t: int, x: Tensor, pred_x0: Tensor) -> bool:
        """Call the callback after a step; True means stop."""
        return bool(self.callback is not None and self.callback(step, int(t), x, pred_x0) is True)

    def steps(self, total: int) -> Iterator[int]:
        """``range(total)`` with a progress bar when asked for."""
        from tqdm.auto import tqdm

        yield from tqdm(range(total), total=total, desc=self.sampler, disable=not self.progress, leave=False)


def _check_generator(generator: Generators, batch: int) -> Generators:
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, (list, tuple)):
        if len(generator) != batch or not all(isinstance(g, torch.Generator) for g in generator):
            raise InputError(f"generator list must hold one torch.Generator per sample ({batch}), got {len(generator)}")
        return list(generator)
    raise InputError(f"generator must be a torch.Generator or a list of them, got {type(generator).__name__}")


def _check_mask(mask: Tensor | None, x0: Tensor | None, x_T: Tensor) -> tuple[Tensor | None, Tensor | None]:
    """Validate ``mask`` / ``x0`` against x_T and bring them to its device and dtype (copies, for this call)."""
    if mask is None and x0 is None:
        return None, None
    if mask is None or x0 is None:
        raise InputError("masked sampling needs both mask (1 = known) and x0 (the known content)")
    if not isinstance(mask, Tensor) or not isinstance(x0, Tensor):
        raise InputError("mask and x0 must be tensors")
    for what, value in (("mask", mask), ("x0", x0)):
        try:
            fits = torch.broadcast_shapes(value.shape, x_T.shape) == x_T.shape
        except RuntimeError:
            fits = False
        if not fits or value.dim() != x_T.dim():
            raise InputError(f"{what} of shape {tuple(value.shape)} does not fit x_T of shape {tuple(x_T.shape)}")
    mask = mask.to(device=x_T.device, dtype=x_T.dtype)
    if bool(((mask < 0) | (mask > 1)).any()):
        raise InputError("mask values must lie in [0, 1] (1 = known)")
    return mask, x0.to(device=x_T.device, dtype=x_T.dtype)


class LoopSampler(ldmkit.Sampler):
    """Base of the built-in samplers: the shared argument checks and per-call state, then :meth:`loop`.

    ``uses_eta``: whether the algorithm has a stochasticity parameter (others refuse eta != 0).
    """

    uses_eta: ClassVar[bool] = False

    def sample(
        self,
        model_fn: ModelFn,
        schedule: NoiseSchedule,
        x_T: Tensor,
        *,
        steps: int,
        eta: float = 0.0,
        generator: Generators = None,
        callback: StepCallback | None = None,
        mask: Tensor | None = None,
        x0: Tensor | None = None,
        progress: bool = False,
    ) -> Tensor:
        steps = check_steps(steps, schedule.num_timesteps)
        eta = check_eta(eta, self.name, uses_eta=self.uses_eta)
        run = SamplingRun(
            self.name, model_fn, schedule, x_T, generator=generator, callback=callback, mask=mask, x0=x0,
            progress=progress,
        )  # fmt: skip
        return self.loop(run, schedule, x_T, steps, eta)

    @abstractmethod
    def loop(self, run: SamplingRun, schedule: NoiseSchedule, x_T: Tensor, steps: int, eta: float) -> Tensor:
        """The algorithm: ``steps`` already checked, noise, masking and callbacks through ``run``."""
