"""The five component interfaces of ldmkit (the contract of DESIGN.md section 2).

Every component class carries ``name`` (its registered name) and a nested pydantic ``Params``
model that validates its spec parameters; it is built with ``Cls(params)`` or
``Cls.from_params(mapping)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from ldmkit.conditioning import Conditioning
from ldmkit.errors import InputError
from ldmkit.options import SampleOptions
from ldmkit.schedules import NoiseSchedule
from ldmkit.validation import StrictModel, format_validation_error

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "Component",
    "Conditioner",
    "Denoiser",
    "FirstStage",
    "KINDS",
    "LatentDistribution",
    "ModelFn",
    "Params",
    "PointMass",
    "Prediction",
    "SampleOptions",
    "Sampler",
    "Slot",
    "StepCallback",
    "Task",
]

Prediction = Literal["eps", "x0", "v"]
Slot = Literal["crossattn", "concat", "vector"]


class Params(StrictModel):
    """Base of every component's ``Params``: a :class:`~ldmkit.validation.StrictModel` that is also immutable.

    Describe each field with ``Field(description=...)`` or a docstring under it.
    """

    model_config = ConfigDict(frozen=True)


# the base under another name: inside the classes below, ``Params`` is the class attribute
_BaseParams = Params


class _Configurable:
    """Shared ``name`` / ``Params`` plumbing of all component kinds."""

    kind: ClassVar[str] = ""
    name: ClassVar[str] = ""
    Params: ClassVar[type[_BaseParams]] = _BaseParams
    example_params: ClassVar[Mapping[str, Any] | None] = None
    """Small params that build a fast instance, for tests and docs. ``ldmkit.testing.sweep`` builds every
    registered component from them and runs its kind's conformance class (None: ``Params()`` defaults)."""

    params: _BaseParams

    def __init__(self, params: _BaseParams | None = None) -> None:
        self.params = params if params is not None else type(self).Params()

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | _BaseParams | None = None) -> Self:
        """Validate ``params`` with ``cls.Params`` and build the component; bad params raise SpecError."""
        if not isinstance(params, BaseModel):
            from pydantic import ValidationError

            from ldmkit.errors import SpecError

            try:
                params = cls.Params.model_validate(dict(params or {}))
            except ValidationError as exc:
                raise SpecError(f"{cls.kind} {cls.name!r}: {format_validation_error(exc, 'params')}") from None
        return cls(params)


class Component(_Configurable, nn.Module):
    """A component with weights (first stage, denoiser, conditioner)."""

    def __init__(self, params: _BaseParams | None = None) -> None:
        nn.Module.__init__(self)
        self.params = params if params is not None else type(self).Params()


class LatentDistribution(Protocol):
    """What ``FirstStage.encode_distribution`` returns."""

    def sample(self, generator: torch.Generator | None = None) -> Tensor: ...
    def mode(self) -> Tensor: ...
    def kl(self) -> Tensor: ...


class FirstStage(Component, ABC):
    """Perceptual autoencoder. Images are NCHW in [-1, 1]."""

    kind = "first_stage"
    latent_channels: int
    downsample: int

    @abstractmethod
    def encode(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, latent_channels, H/f, W/f); deterministic (KL mode, VQ pre-quantization)."""

    @abstractmethod
    def decode(self, latents: Tensor) -> Tensor:
        """(B, latent_channels, h, w) -> (B, 3, h*f, w*f); VQ quantizes first."""

    def encode_distribution(self, images: Tensor) -> LatentDistribution:
        """The posterior used in training. Deterministic first stages return a point mass."""
        return PointMass(self.encode(images))


class PointMass:
    """A degenerate distribution (VQ and identity first stages)."""

    def __init__(self, value: Tensor) -> None:
        self.value = value

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        return self.value

    def mode(self) -> Tensor:
        return self.value

    def kl(self) -> Tensor:
        return self.value.new_zeros(self.value.shape[0])


class Denoiser(Component, ABC):
    """Noise-prediction network ``forward(x_t, t, cond) -> prediction``."""

    kind = "denoiser"
    prediction: Prediction = "eps"
    size_multiple: int = 1
    """The latent's sides must be multiples of this (a UNet halves them at each level: 2 ** (levels - 1))."""

    def example_inputs(self, batch: int) -> tuple[Tensor, Tensor, Conditioning]:
        """``(x_t, t, cond)`` of ``batch`` items that this instance (built from ``example_params``) accepts."""
        raise NotImplementedError(f"denoiser {self.name!r} declares no example_inputs")

    @abstractmethod
    def forward(self, x_t: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        """x_t (B, C, h, w), t (B,) integer timesteps -> (B, C_out, h, w) in the ``prediction`` parameterization."""

    def forward_guided(self, x_t: Tensor, t: Tensor, both: Conditioning) -> Tensor:
        """Both halves of a classifier-free-guided call: ``forward([x_t; x_t], [t; t], both)``.

        x_t (B, C, h, w), t (B,), ``both`` with 2B rows, the unconditional ones first, except that
        ``both.concat`` may hold B rows that both halves share -> (2B, C_out, h, w). Denoisers may
        override it to compute once what the two halves share.
        """
        t = torch.as_tensor(t, device=x_t.device)
        if t.dim() == 0:
            t = t.expand(x_t.shape[0])  # (B,)
        concat = both.concat
        if concat is not None and concat.shape[0] == x_t.shape[0]:
            both = replace(both, concat=torch.cat([concat, concat]))  # (2B, C_c, h, w)
        return self(torch.cat([x_t, x_t]), torch.cat([t, t]), both)


class Conditioner(Component, ABC):
    """Turns a raw input into :class:`Conditioning`; declares the slots it fills."""

    kind = "conditioner"
    slots: tuple[Slot, ...] = ()  # a class default; an instance may narrow it to what its params fill
    _device_anchor: Tensor
    example_first_stage: ClassVar[Mapping[str, Any] | None] = None
    """``{"type", "params"}`` of a first stage to ``attach`` in examples, for conditioners that encode pictures."""

    def example_input(self, batch: int) -> Any:
        """A raw input of ``batch`` items that this instance (built from ``example_params``) accepts."""
        raise NotImplementedError(f"conditioner {self.name!r} declares no example_input")

    def __init__(self, params: _BaseParams | None = None) -> None:
        super().__init__(params)
        # follows .to() so conditioners without weights still know their device (not saved in state dicts)
        self.register_buffer("_device_anchor", torch.empty(0), persistent=False)

    @abstractmethod
    def forward(self, raw: Any) -> Conditioning:
        """raw in its natural type (class ids, token ids or strings, boxes, maps, images)."""

    @abstractmethod
    def unconditional(self, batch: int) -> Conditioning:
        """The 'empty' conditioning used for classifier-free guidance."""

    def attach(self, first_stage: FirstStage) -> None:
        """Called by the Pipeline with its first stage (for conditioners that encode images with it)."""

    @property
    def device(self) -> torch.device:
        return self._device_anchor.device


ModelFn = Callable[[Tensor, Tensor], Tensor]
"""``model_fn(x, t) -> eps``: guidance applied, prediction already converted to epsilon."""

StepCallback = Callable[[int, int, Tensor, Tensor], "bool | None"]
"""``callback(step, t, x, pred_x0)``; returning ``True`` stops sampling early."""


class Sampler(_Configurable, ABC):
    """Reverse process. Stateless between calls; moves nothing to another device."""

    kind = "sampler"
    starts_from_init: ClassVar[bool] = False
    """Whether :meth:`sample` takes ``init`` and ``strength`` (image-to-image); every LoopSampler does."""

    @abstractmethod
    def sample(
        self,
        model_fn: ModelFn,
        schedule: NoiseSchedule,
        x_T: Tensor,
        *,
        steps: int,
        eta: float | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        callback: StepCallback | None = None,
        mask: Tensor | None = None,
        x0: Tensor | None = None,
        progress: bool = False,
        init: Tensor | None = None,
        strength: float | None = None,
    ) -> Tensor:
        """Run the reverse process from ``x_T`` (B, C, h, w) and return x_0 (B, C, h, w).

        ``mask`` (B or 1, 1, h, w), 1 where ``x0`` is known: that region is re-noised from ``x0`` and kept.
        ``init`` (B, C, h, w), clean latents, with ``strength`` in [0, 1] (samplers with ``starts_from_init``):
        start from ``init`` noised with ``x_T`` and take only the last ``int(n * strength)`` of the ``n`` steps
        (:meth:`ldmkit.sampling.SamplingRun.start`); the pipeline passes them only when given.
        """


class Task(_Configurable, ABC):
    """A user-facing job: turns a request into conditioning, runs the pipeline, returns images."""

    kind = "task"
    Request: ClassVar[type[BaseModel]] = BaseModel

    def parse_request(self, inputs: dict[str, Any]) -> BaseModel:
        """Build the request from CLI-style inputs (strings, or the bytes of files)."""
        from pydantic import ValidationError

        try:
            return self.Request.model_validate(inputs)
        except ValidationError as exc:
            raise InputError(f"task {self.name!r}: {format_validation_error(exc)}") from None

    @abstractmethod
    def run(self, pipeline: Any, request: BaseModel, options: SampleOptions) -> Tensor:
        """Return images (N, 3, H, W) in [-1, 1]."""


KINDS: dict[str, type] = {
    "first_stage": FirstStage,
    "denoiser": Denoiser,
    "conditioner": Conditioner,
    "sampler": Sampler,
    "task": Task,
}
