"""Building blocks of sampling loops: what every sampler needs besides its update rule.

A sampler that subclasses :class:`LoopSampler` writes only :meth:`LoopSampler.loop`, the algorithm; the
arguments of :meth:`ldmkit.Sampler.sample` are checked for it, and a :class:`SamplingRun` gives the loop model
calls, noise from the caller's generator(s), masked-sampling imposition, the step callback and the progress bar::

    from ldmkit import Params
    from ldmkit.sampling import LoopSampler, SamplingRun, alphas_cumprod64, spaced_timesteps


    class EulerSampler(LoopSampler):
        '''Euler steps of the probability-flow ODE in the scale x / sqrt(a_t).'''

        name = "euler-example"

        class Params(Params):
            pass

        def loop(self, run, schedule, x_T, steps, eta):
            timesteps = spaced_timesteps("trailing", steps, schedule.num_timesteps)[::-1]  # descending
            ...

What a sampler may read of the :class:`~ldmkit.schedules.NoiseSchedule`: ``alphas_cumprod`` (float32, (T,)),
``betas`` (float64, (T,)), ``num_timesteps`` and ``add_noise``. They are shared with the pipeline: read them,
never write into them, and derive coefficients from copies (:func:`alphas_cumprod64`). Any device placement is
the caller's: a sampler returns its result on ``x_T``'s device and dtype and moves nothing else.

Nothing here keeps state between sampling calls: a :class:`SamplingRun` lives for one call.

Settings shared by the samplers have one meaning wherever they appear:

============  =====================================================================================
setting       meaning
============  =====================================================================================
``eta``       scale of the fresh noise a step adds. ``None``: the sampler's own default
              (``default_eta``). ddim: CompVis' eta (default 0, deterministic; 1 is DDPM-like).
              ddpm: scales the posterior noise (default 1, Ho et al.). euler-a: k-diffusion's
              ``eta`` of the ancestral step (default 1). 0 makes ddpm and euler-a deterministic.
              plms and dpmpp-2m add no fresh noise: only 0 (or None).
``spacing``   which timesteps the steps visit (:data:`Spacing`, :func:`select_timesteps`), one of
              "uniform" and "quad" (CompVis ``make_ddim_timesteps``) or "leading", "linspace" and
              "trailing" (Lin et al. 2023, as diffusers names them); every built-in sampler takes
              all five. Defaults: "uniform" for ddim and plms, "leading" for ddpm and euler-a,
              "linspace" for dpmpp-2m. The former ``discretize`` key is read as ``spacing``
              with a DeprecationWarning.
============  =====================================================================================
"""

from __future__ import annotations

import math
import operator
import warnings
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor

from ldmkit.errors import InputError, PluginError
from ldmkit.interfaces import ModelFn, Params, Sampler, StepCallback
from ldmkit.schedules import NoiseSchedule

__all__ = [
    "Discretization",
    "Generators",
    "LoopSampler",
    "SamplingRun",
    "Spacing",
    "SpacingParams",
    "alphas_cumprod64",
    "check_eta",
    "check_generator",
    "check_init",
    "check_mask",
    "check_steps",
    "check_timesteps",
    "distinct_timesteps",
    "compvis_timesteps",
    "draw_noise",
    "select_timesteps",
    "spaced_timesteps",
]

Generators = torch.Generator | list[torch.Generator] | None
"""What ``Sampler.sample`` takes as ``generator``: one generator, one per sample, or none (the global RNG)."""

Discretization = Literal["uniform", "quad"]
"""The CompVis timestep spacings of :func:`compvis_timesteps` (``make_ddim_timesteps``)."""

Spacing = Literal["uniform", "quad", "leading", "linspace", "trailing"]
"""A timestep spacing of :func:`select_timesteps`: CompVis' two and the three diffusers names."""

# -- argument checks ------------------------------------------------------------------------------


def check_steps(steps: object, num_timesteps: int) -> int:
    """``steps`` as an int in ``1..num_timesteps``.

    :raises InputError: for a non-integer (``True`` included) or a number outside that range.
    """
    try:
        if isinstance(steps, bool):
            raise TypeError
        steps = operator.index(steps)  # type: ignore[arg-type]
    except TypeError:
        raise InputError(f"steps must be an integer, got {steps!r}") from None
    if not 1 <= steps <= num_timesteps:
        raise InputError(f"steps must be between 1 and the schedule's {num_timesteps} timesteps, got {steps}")
    return steps


def check_eta(eta: object, sampler: str, *, uses_eta: bool, default: float = 0.0) -> float:
    """``eta`` as a float >= 0 (``None``: ``default``, the sampler's own).

    :param sampler: the sampler's name, for the message.
    :param uses_eta: whether the sampler adds fresh noise per step; samplers without any accept only 0.
    :raises InputError: for a negative, infinite or non-numeric eta, or eta != 0 where ``uses_eta`` is false.
    """
    if eta is None:
        eta = default
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not math.isfinite(eta) or eta < 0:
        raise InputError(f"eta must be a finite number >= 0, got {eta!r}")
    if not uses_eta and eta != 0:
        raise InputError(
            f"sampler {sampler!r} adds no fresh noise per step, so it has no eta to scale: "
            f"eta must be 0 (or None), got eta={eta}"
        )
    return float(eta)


def check_timesteps(timesteps: Sequence[int], num_timesteps: int, what: str) -> list[int]:
    """The timesteps as a list of ints, each inside ``0..num_timesteps-1``.

    :param what: what produced them (e.g. "spacing 'leading' with 7 steps"), for the message.
    :raises InputError: naming ``what`` and the first timestep outside the schedule.
    """
    ts = [int(t) for t in timesteps]
    bad = [t for t in ts if not 0 <= t < num_timesteps]
    if bad:
        raise InputError(
            f"{what} gives timestep {bad[0]}, outside the schedule's 0..{num_timesteps - 1}; choose another number "
            "of steps or another spacing"
        )
    return ts


def check_generator(generator: object, batch: int) -> Generators:
    """``generator`` as a :data:`Generators` value for a batch of ``batch`` samples (a tuple becomes a list).

    :raises InputError: for anything but a ``torch.Generator``, ``None`` or a list of ``batch`` generators.
    """
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, (list, tuple)):
        if len(generator) != batch or not all(isinstance(g, torch.Generator) for g in generator):
            raise InputError(f"generator list must hold one torch.Generator per sample ({batch}), got {len(generator)}")
        return list(generator)
    raise InputError(f"generator must be a torch.Generator or a list of them, got {type(generator).__name__}")


def check_mask(mask: object, x0: object, x_T: Tensor) -> tuple[Tensor | None, Tensor | None]:
    """``mask`` and ``x0`` checked against ``x_T`` and copied to its device and dtype (``(None, None)`` if unused).

    ``mask`` is 1 where ``x0`` is known and 0 where the sampler generates; both broadcast to ``x_T``'s shape
    with as many dimensions, e.g. mask (B or 1, 1, h, w) and x0 (B or 1, C, h, w).

    :raises InputError: when only one of the two is given, either is no tensor or does not fit ``x_T``, or a mask
        value lies outside [0, 1].
    """
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


def check_init(init: object, strength: object, x_T: Tensor) -> tuple[Tensor | None, float]:
    """``init`` (copied to ``x_T``'s device and dtype) and ``strength`` as a float (``(None, 1.0)`` if unused).

    ``init`` is the clean latent to start from (image-to-image), shaped like ``x_T``; ``strength`` in [0, 1] is
    the fraction of the sampler's steps taken from it (see :meth:`SamplingRun.start`; None with ``init``: 1).

    :raises InputError: when only ``strength`` is given, ``init`` is no tensor of ``x_T``'s shape, or ``strength``
        is no number in [0, 1].
    """
    if init is None:
        if strength is not None:
            raise InputError("strength goes with init (the latents to start from)")
        return None, 1.0
    if not isinstance(init, Tensor) or tuple(init.shape) != tuple(x_T.shape):
        got = tuple(init.shape) if isinstance(init, Tensor) else type(init).__name__
        raise InputError(f"init must be latents of x_T's shape {tuple(x_T.shape)}, got {got}")
    if strength is None:
        strength = 1.0
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0.0 <= strength <= 1.0:
        raise InputError(f"strength must be a number in [0, 1], got {strength!r}")
    return init.to(device=x_T.device, dtype=x_T.dtype), float(strength)


# -- timestep selection ---------------------------------------------------------------------------


def _numpy_linspace(stop: float, num: int) -> list[float]:
    """``numpy.linspace(0, stop, num)`` value for value (``i * (stop / (num - 1))``, last one exactly ``stop``)."""
    if num == 1:
        return [0.0]
    step = stop / (num - 1)
    values = [i * step for i in range(num)]
    values[-1] = stop
    return values


def compvis_timesteps(method: Discretization, steps: int, num_timesteps: int) -> list[int]:
    """CompVis ``make_ddim_timesteps``: ascending timesteps, each shifted by +1.

    "uniform" takes every ``c = T // steps``-th timestep (so ``ceil(T / c)`` of them, which can exceed
    ``steps`` when ``steps`` does not divide ``T``); "quad" spaces them quadratically up to ``0.8 T``.
    Where the shift lands on ``T`` itself (e.g. 3, 9, 27 or more than ``T / 2`` uniform steps of ``T = 1000``)
    the original indexes past the schedule; that timestep is dropped here.

    :raises InputError: for an unknown method, or when no timestep is left.
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


def spaced_timesteps(spacing: str, steps: int, num_timesteps: int, offset: int = 0) -> list[int]:
    """``steps`` distinct ascending timesteps with the spacings of Lin et al. 2023 (Table 2), as diffusers names them.

    - "leading": ``i * (T // steps) + offset`` for ``i < steps``;
    - "linspace": the top ``steps`` of ``round(linspace(0, T - 1, steps + 1))`` (DPM-Solver's default);
    - "trailing": ``round(T - i * T / steps) - 1`` for ``i < steps``.

    :raises InputError: for an unknown spacing, repeated timesteps, or timesteps outside the schedule.
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


def select_timesteps(spacing: Spacing, steps: int, num_timesteps: int, offset: int = 0) -> list[int]:
    """Ascending timesteps for ``steps`` steps with any :data:`Spacing`.

    "uniform" and "quad" are :func:`compvis_timesteps` (which shift by +1 themselves, so ``offset`` is
    not used); "leading", "linspace" and "trailing" are :func:`spaced_timesteps` with ``offset`` (added
    to "leading" only, as diffusers' ``steps_offset``).

    :raises InputError: for an unknown spacing or timesteps outside the schedule.
    """
    if spacing in ("uniform", "quad"):
        return compvis_timesteps(spacing, steps, num_timesteps)
    if spacing in ("leading", "linspace", "trailing"):
        return spaced_timesteps(spacing, steps, num_timesteps, offset)
    raise InputError(
        f"unknown timestep spacing {spacing!r}; expected 'uniform', 'quad', 'leading', 'linspace' or 'trailing'"
    )


def distinct_timesteps(timesteps: list[int], spacing: str, steps: int) -> list[int]:
    """``timesteps`` if no two are equal, for samplers whose step size would be 0 between equal ones.

    :raises InputError: naming the spacing and number of steps that repeat a timestep.
    """
    if len(set(timesteps)) != len(timesteps):
        raise InputError(f"spacing {spacing!r} with {steps} steps repeats timesteps; use fewer steps or 'trailing'")
    return timesteps


class SpacingParams(Params):
    """``Params`` base of samplers that select timesteps: ``spacing`` with its one set of values.

    A sampler's ``Params`` subclasses it and sets its own default (``spacing: Spacing = "leading"``).
    The former key ``discretize`` is still read as ``spacing``, with a DeprecationWarning.
    """

    spacing: Spacing = Field("uniform", description="which timesteps the steps visit (see ldmkit.sampling)")

    @model_validator(mode="before")
    @classmethod
    def _discretize_is_spacing(cls, data: Any) -> Any:
        if isinstance(data, dict) and "discretize" in data:
            if "spacing" in data:
                raise ValueError("give 'spacing' only ('discretize' is its former name)")
            warnings.warn(
                "sampler param 'discretize' is deprecated; use 'spacing' (same values)",
                DeprecationWarning,
                stacklevel=2,
            )
            data = {("spacing" if key == "discretize" else key): value for key, value in data.items()}
        return data


def alphas_cumprod64(schedule: NoiseSchedule) -> Tensor:
    """A float64 CPU copy (T,) of the schedule's (float32) ``alphas_cumprod``, for coefficient arithmetic."""
    return schedule.alphas_cumprod.detach().to(device="cpu", dtype=torch.float64)


# -- one sampling call ----------------------------------------------------------------------------


def draw_noise(shape: torch.Size, generator: Generators, like: Tensor) -> Tensor:
    """Standard normal noise of ``shape``, drawn on the generators' device (the CPU by default) and moved to ``like``.

    With a list, sample ``i`` comes from ``generator[i]`` alone, so a batch run with generators ``[g_0, g_1, ...]``
    draws for sample ``i`` exactly what a batch-1 run with ``g_i`` draws. Without a generator the global RNG is used.
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

    A loop takes each step as: :meth:`impose` the known region (masked sampling), :meth:`eps` from the model,
    its own update (drawing :meth:`noise` when it needs some), :meth:`report` to the callback (return the current
    latent when it says stop), and returns :meth:`finish` of the last latent. :meth:`steps` counts the steps and
    draws the progress bar. Every tensor here is in the VP scale of ``x_T``; a loop that works in another scale
    (``x / sqrt(a_t)``, say) converts before and after.

    Masked sampling follows CompVis DDIM ``mask`` / ``x0``: before the model sees ``x`` at timestep ``t``,
    the known region (``mask == 1``) is replaced by ``q_sample(x0, t)`` with fresh noise, and the result's
    known region is ``x0`` itself.

    :param sampler: the sampler's name (progress bar label).
    :param generator: see :data:`Generators`; checked with :func:`check_generator`.
    :param mask: 1 where ``x0`` is known; with ``x0``, checked with :func:`check_mask`.
    :param progress: whether :meth:`steps` shows a progress bar.
    :param init: the clean latent to start from (image-to-image), checked with :func:`check_init`; ``x_T`` is then
        the noise it is noised with.
    :param strength: with ``init``: the fraction of the steps taken (0 keeps ``init``, 1 takes them all).
    :raises InputError: for an ``x_T`` that is no floating point tensor, or a bad generator, mask, x0, init or
        strength.
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
        init: Tensor | None = None,
        strength: float | None = None,
    ) -> None:
        if not isinstance(x_T, Tensor) or not x_T.is_floating_point() or x_T.dim() < 1:
            raise InputError(f"x_T must be a floating point tensor (B, ...), got {type(x_T).__name__}")
        self.sampler = sampler
        self.model_fn = model_fn
        self.shape = x_T.shape
        self.like = x_T
        self.callback = callback
        self.progress = progress
        self.generator = check_generator(generator, x_T.shape[0])
        self.mask, self.x0 = check_mask(mask, x0, x_T)
        self.init, self.strength = check_init(init, strength, x_T)
        self.first = 0  # the first step taken: set by start()
        self._started = False
        self._alphas_cumprod = schedule.alphas_cumprod
        if self.mask is not None:
            ac = alphas_cumprod64(schedule)
            # Python floats: no host-to-device copy per step, and x * c computes in x's dtype
            self._sqrt_a = ac.sqrt().to(torch.float32).tolist()  # (T,)
            self._sqrt_1ma = (1 - ac).sqrt().to(torch.float32).tolist()  # (T,)

    @property
    def masked(self) -> bool:
        """Whether this call samples with a mask (then :meth:`impose` and :meth:`finish` do something)."""
        return self.mask is not None

    def timestep(self, t: int) -> Tensor:
        """``t`` as the LongTensor (B,) on x's device that ``model_fn`` receives."""
        return torch.full((self.shape[0],), int(t), dtype=torch.long, device=self.like.device)

    def eps(self, x: Tensor, t: int) -> Tensor:
        """The model's epsilon at ``(x, t)`` (x in the VP scale), checked for shape.

        :raises InputError: when ``model_fn`` returns no tensor of ``x``'s shape.
        """
        out = self.model_fn(x, self.timestep(t))
        if not isinstance(out, Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise InputError(f"model_fn returned {got} for an input of shape {tuple(x.shape)}; expected the same shape")
        return out

    def noise(self) -> Tensor:
        """Fresh standard normal noise like x_T, from the caller's generator(s) (see :func:`draw_noise`)."""
        return draw_noise(self.shape, self.generator, self.like)

    def impose(self, x: Tensor, t: int) -> Tensor:
        """Replace the known region of ``x`` by ``x0`` noised to timestep ``t`` (no-op without a mask).

        Draws noise (from the generators) only when masked, so unmasked runs draw the same noise as before.
        """
        if self.mask is None or self.x0 is None:
            return x
        noisy = self._sqrt_a[t] * self.x0 + self._sqrt_1ma[t] * self.noise()  # q_sample
        return noisy * self.mask + (1.0 - self.mask) * x

    def start(self, x_T: Tensor, timesteps: Sequence[int]) -> tuple[int, Tensor]:
        """The first step a loop over descending ``timesteps`` takes, and the latent it starts from.

        Without ``init``: ``(0, x_T)``. With it, as diffusers' image-to-image pipelines do, the last
        ``int(n * strength)`` of the ``n`` steps are taken: the loop starts at step ``first = n - int(n * strength)``
        from ``init`` noised to ``timesteps[first]`` with ``x_T`` as the noise (``q_sample``); when no step is left
        (strength 0, or ``n * strength < 1``) it starts and ends at ``init`` itself. :meth:`steps` skips the steps
        before ``first``. Call it once, before :meth:`steps`; the latent is in the VP scale.
        """
        self._started = True
        if self.init is None:
            return 0, x_T
        n = len(timesteps)
        self.first = n - min(int(n * self.strength), n)
        if self.first == n:
            return n, self.init
        t = torch.full((x_T.shape[0],), int(timesteps[self.first]), dtype=torch.long)
        return self.first, _q_sample(self._alphas_cumprod, self.init, x_T, t)

    def finish(self, x: Tensor) -> Tensor:
        """The final sample: ``x`` with its known region set to ``x0`` (``x`` itself without a mask)."""
        if self.mask is None or self.x0 is None:
            return x
        return self.x0 * self.mask + (1.0 - self.mask) * x

    def report(self, step: int, t: int, x: Tensor, pred_x0: Tensor) -> bool:
        """Call the callback after step ``step`` (from 0) at timestep ``t``; True means stop and return ``x``.

        ``x`` is the latent after the step and ``pred_x0`` the step's estimate of x_0, both in the VP scale.
        """
        return bool(self.callback is not None and self.callback(step, int(t), x, pred_x0) is True)

    def steps(self, total: int) -> Iterator[int]:
        """``range(total)``, with a progress bar on stderr when the caller asked for ``progress``.

        This is all ``progress`` does: it shows (or hides) the bar and never changes what is computed. After
        :meth:`start` of an image-to-image run the steps before its first are skipped.

        :raises PluginError: for a run with ``init`` whose loop did not call :meth:`start` first.
        """
        from tqdm.auto import tqdm

        if self.init is not None and not self._started:
            raise PluginError(
                f"sampler {self.sampler!r} cannot start from given latents (image-to-image): its loop does not "
                "call run.start(x_T, timesteps)"
            )
        steps = range(self.first, total)
        yield from tqdm(steps, total=len(steps), desc=self.sampler, disable=not self.progress, leave=False)


def _q_sample(alphas_cumprod: Tensor, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """``sqrt(a_t) x0 + sqrt(1 - a_t) noise`` (B, C, h, w), in float32 from the float32 ``a_t``, as diffusers'
    ``add_noise`` computes it."""
    a = alphas_cumprod.detach().to("cpu", torch.float32)[t].view(-1, *([1] * (x0.dim() - 1)))  # (B, 1, 1, 1)
    sqrt_a, sqrt_1ma = a.sqrt().to(x0), (1 - a).sqrt().to(x0)
    return sqrt_a * x0 + sqrt_1ma * noise


class LoopSampler(Sampler):
    """A :class:`ldmkit.Sampler` whose subclasses write only :meth:`loop`.

    :meth:`sample` checks ``steps`` (:func:`check_steps`) and ``eta`` (:func:`check_eta`), builds the
    :class:`SamplingRun` (which checks generator, mask and x0) and hands over to :meth:`loop`. Subclasses set
    ``name`` and ``Params`` as any component does, ``uses_eta = True`` when the algorithm adds fresh noise
    per step, scaled by ``eta`` (the others refuse eta != 0), and ``default_eta`` to the eta it samples
    with when given ``None``.
    Gradients are the caller's business (the pipeline samples under ``torch.no_grad``).
    """

    uses_eta: ClassVar[bool] = False
    default_eta: ClassVar[float] = 0.0
    starts_from_init = True

    def sample(
        self,
        model_fn: ModelFn,
        schedule: NoiseSchedule,
        x_T: Tensor,
        *,
        steps: int,
        eta: float | None = None,
        generator: Generators = None,
        callback: StepCallback | None = None,
        mask: Tensor | None = None,
        x0: Tensor | None = None,
        progress: bool = False,
        init: Tensor | None = None,
        strength: float | None = None,
    ) -> Tensor:
        """Check the arguments and run :meth:`loop`; see :meth:`ldmkit.Sampler.sample` for their meaning."""
        steps = check_steps(steps, schedule.num_timesteps)
        eta = check_eta(eta, self.name, uses_eta=self.uses_eta, default=self.default_eta)
        run = SamplingRun(
            self.name, model_fn, schedule, x_T, generator=generator, callback=callback, mask=mask, x0=x0,
            progress=progress, init=init, strength=strength,
        )  # fmt: skip
        return self.loop(run, schedule, x_T, steps, eta)

    @abstractmethod
    def loop(self, run: SamplingRun, schedule: NoiseSchedule, x_T: Tensor, steps: int, eta: float) -> Tensor:
        """The algorithm, from ``x_T`` (B, C, h, w) to x_0 (B, C, h, w).

        ``steps`` is already in ``1..schedule.num_timesteps`` and ``eta`` a float >= 0 (``default_eta`` where the
        caller gave None; 0 unless ``uses_eta``).
        Take model calls, noise, masking and callbacks through ``run``, take the starting latent from
        ``run.start(x_T, timesteps)`` (image-to-image), iterate with ``run.steps(n)``, call
        ``run.report`` once per step, and return ``run.finish(x)`` (or the current latent when ``run.report``
        said stop).
        """
