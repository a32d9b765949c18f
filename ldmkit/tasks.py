"""The task base for plugin authors: typed requests in, a batch of pictures out.

A task turns what a user asks for (a prompt, a label, boxes, a picture and a mask ...) into the raw
input of the pipeline's conditioner, samples, and decodes. :class:`ConditionedTask` does all but the
first step; a task author declares a :class:`Request` model whose fields are the task's inputs
(typed with :mod:`ldmkit.inputs`' annotated types, or any pydantic type), and how one request
becomes the conditioner's raw input for ``n`` pictures::

    from pydantic import Field
    from ldmkit.inputs import Number
    from ldmkit.tasks import ConditionedTask, Request

    class CountRequest(Request):
        count: Number = Field(ge=1, le=9, description="how many shapes to draw")

    class CountTask(ConditionedTask):
        name = "count2img"
        Request = CountRequest

        def raw_input(self, pipeline, request, n):
            return torch.full((n,), request.count)  # (n,)

The same request reaches the task from the CLI (strings, or the bytes of files:
``ldmkit generate --task count2img --input count=3``), from Python
(``task.parse_request({"count": 3})``) and from benchmarks (``CountRequest(count=3)``); the request
model's fields are what ``ldmkit tasks`` lists. Checks across fields (a mask the size of its picture)
are the model's own validators. A task param named like an input (``strength``, ``negative_prompt``) is that
input's default (:meth:`ConditionedTask.input_defaults`), so a spec sets it per task.

Negative conditioning: a request that declares ``negative_prompt`` or ``negative_label`` fields (the built-in
text2img, class2img and img2img do) replaces the unconditional branch of classifier-free guidance with the
conditioning of that prompt or label (:meth:`ConditionedTask.negative_input`). A conditioner made of parts gets
the negative in the part that takes prompts (labels); its other parts stay unconditional, as in the plain
unconditional branch. Without guidance (scale 1) there is no unconditional branch: the negative has no effect,
as in diffusers, and a warning says so.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import Tensor

from ldmkit.conditioning import Conditioning
from ldmkit.errors import InputError, SpecError
from ldmkit.interfaces import Params, SampleOptions, Task
from ldmkit.nested import map_tensors
from ldmkit.options import SamplerChoice, SamplerRef, resolve_options
from ldmkit.specs import MAX_PICTURE_SIDE, format_validation_error

__all__ = [
    "LABEL_KINDS",
    "NEGATIVE_INPUTS",
    "PROMPT_KINDS",
    "ConditionedTask",
    "Request",
    "SampleOptions",
    "TaskParams",
    "default_guidance",
    "default_sampling",
    "image_size",
    "on_device",
]


log = logging.getLogger(__name__)

PROMPT_KINDS = ("transformer-text", "clip-text")
"""Registered names of the built-in conditioners that take prompts (a list of strings)."""
LABEL_KINDS = ("class-embedder",)
"""Registered names of the built-in conditioners that take class ids."""
NEGATIVE_INPUTS = {"negative_prompt": PROMPT_KINDS, "negative_label": LABEL_KINDS}
"""The negative inputs a request may declare, and the conditioner kinds each goes to."""


class TaskParams(Params):
    """Settings every :class:`ConditionedTask` has: which conditioner part it fills, and its sampling defaults."""

    part: str | None = Field(
        None, description="name of the composite conditioner's part this task fills (None: the whole conditioner)"
    )
    guidance_scale: float | None = Field(
        None, ge=0.0, description="this task's default guidance scale (None: the spec's sampling.guidance_scale)"
    )
    sampler: SamplerChoice | None = Field(
        None, description="this task's default sampler, a name or {type, params} (None: the spec's)"
    )
    steps: int | None = Field(None, ge=1, description="this task's default number of steps (None: the spec's)")
    size: list[Annotated[int, Field(gt=0, le=MAX_PICTURE_SIDE)]] | None = Field(
        None, min_length=2, max_length=2, description="this task's default picture size (H, W) (None: the spec's)"
    )


class Request(BaseModel):
    """Base of a task's request model: unknown fields refused, immutable, tensors allowed as values."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, frozen=True)


class ConditionedTask(Task):
    """A task that turns a request into one raw conditioner input and samples the pipeline with it.

    Subclasses set ``name`` and ``Request`` and override :meth:`raw_input`; the request model's
    fields are the task's inputs, read by their types' validators with :meth:`validation_context`.
    Tasks that constrain sampling (masked sampling) override :meth:`sample_kwargs`. A task without
    inputs samples the conditioner's unconditional input.
    """

    Params = TaskParams
    params: TaskParams
    Request: ClassVar[type[BaseModel]] = Request
    inputs: ClassVar[tuple[str, ...] | None] = None
    """Names of the inputs this task reads; None (the default): the fields of its ``Request``."""
    feeds: ClassVar[tuple[str, ...]] = ()
    """Registered names of the conditioners this task's raw input is made for (``class-embedder`` for class ids):
    how :meth:`part_for` finds this task's part of a conditioner made of parts when ``params.part`` is unset."""

    @classmethod
    def input_names(cls) -> tuple[str, ...]:
        """The inputs this task reads: ``inputs`` if set, else its request model's fields."""
        return tuple(cls.inputs) if cls.inputs is not None else tuple(cls.Request.model_fields)

    @classmethod
    def required_inputs(cls) -> tuple[str, ...]:
        """The inputs without a default, which every request must give."""
        fields = cls.Request.model_fields
        return tuple(name for name in cls.input_names() if name not in fields or fields[name].is_required())

    def validation_context(self) -> dict[str, Any]:
        """What the input types may read beyond the value: the task, its ``class_names`` and ``n_classes`` params."""
        context: dict[str, Any] = {"task": self.name}
        for key in ("class_names", "n_classes"):
            if getattr(self.params, key, None) is not None:
                context[key] = getattr(self.params, key)
        return context

    def parse_request(self, inputs: Mapping[str, Any] | None) -> BaseModel:
        """Build the request from CLI-style inputs (strings, or bytes of files) or Python objects.

        Checks that ``inputs`` holds only what this task reads, then calls :meth:`build_request`.
        """
        return self.build_request(self.check_inputs(inputs))

    def input_defaults(self) -> dict[str, Any]:
        """Inputs left out take these values: this task's params named like one of its inputs, where set.

        The CLI records them in each picture with the inputs given, so a picture names e.g. the img2img
        ``strength`` it was made with even where the spec chose it.
        """
        fields = type(self.params).model_fields
        names = [name for name in self.input_names() if name in fields]
        return {name: getattr(self.params, name) for name in names if getattr(self.params, name) is not None}

    def build_request(self, inputs: dict[str, Any]) -> BaseModel:
        """The request model validated from checked inputs; every problem an :class:`InputError` naming its field.

        Inputs left out (or None) take :meth:`input_defaults`.
        """
        given = {name: value for name, value in inputs.items() if value is not None}
        inputs = {**self.input_defaults(), **given}
        missing = [name for name in self.required_inputs() if inputs.get(name) is None]
        if missing:
            raise InputError(f"task {self.name!r} needs {', '.join(f'--{m}' for m in missing)}")
        values = {name: value for name, value in inputs.items() if value is not None}
        try:
            return self.Request.model_validate(values, context=self.validation_context())
        except ValidationError as exc:  # e.g. an empty prompt: name the input, no pydantic traceback
            raise InputError(f"task {self.name!r}: {format_validation_error(exc)}") from None

    def check_inputs(self, inputs: Mapping[str, Any] | None) -> dict[str, Any]:
        """``inputs`` as a dict; refused unless a mapping of only the inputs this task reads (None: none)."""
        if inputs is None:
            return {}
        names = self.input_names()
        takes = ", ".join(names) or "no inputs"
        if not isinstance(inputs, Mapping):
            raise InputError(f"task {self.name!r}: inputs must be a dict ({takes}), got {type(inputs).__name__}")
        unknown = sorted(str(key) for key, value in inputs.items() if key not in names and value is not None)
        if unknown:
            raise InputError(f"task {self.name!r} takes {takes}; it does not read {', '.join(unknown)}")
        return dict(inputs)

    def require(self, inputs: dict[str, Any], name: str) -> Any:
        """The input ``name``, or InputError naming every missing flag."""
        missing = [m for m in self.required_inputs() if inputs.get(m) is None]
        if name in missing:
            flags = ", ".join(f"--{m}" for m in missing)
            raise InputError(f"task {self.name!r} needs {flags}")
        return inputs[name]

    def raw_input(self, pipeline: Any, request: BaseModel, n: int) -> Any:
        """The conditioner input for ``n`` copies of the request (None: unconditional)."""
        return None

    def part_for(self, conditioner: Any) -> str | None:
        """The part of ``conditioner`` this task fills: ``params.part`` if set, else inferred; None: the whole.

        A conditioner made of named parts (the built-in ``composite``) exposes them as ``parts``, a mapping of
        part name -> :class:`~ldmkit.interfaces.Conditioner`. The inferred part is the one whose registered
        name is in :attr:`feeds`; among several, the one named after the task or one of its inputs. SpecError
        when no part, or more than one, fits: the spec then names it (``tasks.<task>.params.part``).
        """
        if self.params.part is not None:
            return self.params.part
        parts = getattr(conditioner, "parts", None)
        if parts is None or not hasattr(parts, "items"):
            return None
        kinds = {name: getattr(type(part), "name", type(part).__name__) for name, part in parts.items()}
        fits = [name for name, kind in kinds.items() if kind in self.feeds]
        if len(fits) == 1:
            return fits[0]
        # none or several fit by kind: a part named after the task or one of its inputs settles it
        named = [name for name in (fits or kinds) if name in (self.name, *self.input_names())]
        if len(named) == 1:
            return named[0]
        listed = ", ".join(f"{name} ({kind})" for name, kind in kinds.items())
        which = "more than one part" if len(fits) > 1 else "no part"
        raise SpecError(
            f"task {self.name!r}: {which} of the conditioner can take its input (parts: {listed}); "
            f"name it in the pipeline spec: tasks.{self.name}.params.part"
        )

    def wrap(self, value: Any, conditioner: Any = None) -> Any:
        """``value`` addressed to this task's part of a composite conditioner (:meth:`part_for`), if it has one.

        Without ``conditioner`` only ``params.part`` is used (no inference).
        """
        part = self.part_for(conditioner) if conditioner is not None else self.params.part
        return {part: value} if part is not None else value

    def part_taking(self, conditioner: Any, kinds: tuple[str, ...], what: str) -> str | None:
        """The part of ``conditioner`` that takes inputs of the conditioner ``kinds`` (registered names); None: whole.

        ``params.part`` when that part is of such a kind; else the one part of such a kind. A conditioner without
        parts takes the input whole if it is of such a kind. A task that feeds only such kinds (text2img's prompt
        and its negative) sends it where its own input goes (:meth:`part_for`), whatever conditioner is there.
        ``what`` names the input in the SpecError raised when no part, or more than one, fits.
        """
        if self.feeds and set(self.feeds) <= set(kinds):
            return self.part_for(conditioner)
        parts = getattr(conditioner, "parts", None)
        if parts is None or not hasattr(parts, "items"):
            kind = getattr(type(conditioner), "name", type(conditioner).__name__)
            if kind in kinds:
                return None
            raise SpecError(f"task {self.name!r}: this pipeline's conditioner ({kind}) takes no {what}")
        kinds_of = {name: getattr(type(part), "name", type(part).__name__) for name, part in parts.items()}
        if self.params.part is not None and kinds_of.get(self.params.part) in kinds:
            return self.params.part
        fits = [name for name, kind in kinds_of.items() if kind in kinds]
        if len(fits) == 1:
            return fits[0]
        listed = ", ".join(f"{name} ({kind})" for name, kind in kinds_of.items())
        which = "more than one part" if fits else "no part"
        raise SpecError(f"task {self.name!r}: {which} of the conditioner takes a {what} (parts: {listed})")

    def negative_input(self, pipeline: Any, request: BaseModel, n: int) -> Any:
        """The conditioner input of guidance's unconditional branch for ``n`` pictures; None: its own unconditional.

        Made of the request's ``negative_prompt`` and ``negative_label`` (the fields it declares of
        :data:`NEGATIVE_INPUTS`), each in the part that takes prompts or labels (:meth:`part_taking`); a
        conditioner made of parts keeps its other parts unconditional.
        """
        given = {name: value for name in NEGATIVE_INPUTS if (value := getattr(request, name, None)) is not None}
        if not given:
            return None
        conditioner = pipeline.conditioner
        if conditioner is None:
            raise SpecError(f"task {self.name!r}: a {' and '.join(given)} needs a conditioner; this pipeline has none")
        raw: dict[str | None, Any] = {}
        for name, value in given.items():
            what = name.removeprefix("negative_")
            part = self.part_taking(conditioner, NEGATIVE_INPUTS[name], what)
            raw[part] = [value] * n if name == "negative_prompt" else torch.full((n,), int(value), dtype=torch.long)
        if None in raw:
            if len(raw) > 1:
                raise InputError(f"task {self.name!r}: this pipeline's conditioner takes one of {', '.join(given)}")
            return raw[None]
        return raw

    def conditioning(self, pipeline: Any, request: BaseModel, n: int) -> tuple[Conditioning, Conditioning | None]:
        """(cond, uncond) for ``n`` pictures; uncond is None when the pipeline has no conditioner.

        uncond is the conditioner's unconditional, or the request's negative (:meth:`negative_input`); with a
        negative and no input, cond is the unconditional (guidance then steers away from the negative alone).
        """
        raw = on_device(self.raw_input(pipeline, request, n), pipeline.device)
        negative = on_device(self.negative_input(pipeline, request, n), pipeline.device)
        if pipeline.conditioner is None:
            if raw is not None:  # silently ignoring the input would hand back unconditional pictures
                raise SpecError(f"task {self.name!r} needs a conditioner for its input; this pipeline has none")
            return Conditioning(), None
        uncond = pipeline.conditioner.unconditional(n)
        cond = uncond if raw is None else pipeline.conditioner(self.wrap(raw, pipeline.conditioner))
        if negative is not None:
            return cond, pipeline.conditioner(negative)
        return cond, None if raw is None else uncond

    def sample_kwargs(self, pipeline: Any, request: BaseModel, n: int) -> dict[str, Any]:
        """Extra arguments for ``Pipeline.sample`` (masked sampling passes ``mask`` and ``x0``)."""
        return {}

    def input_size(self, pipeline: Any, request: BaseModel) -> tuple[int, int] | None:
        """The picture size (H, W) the request's inputs fix (a map, a picture to fill in); None: they fix none.

        Tasks whose conditioning is drawn from a spatial input override it; such a task makes
        pictures of its input's size, and refuses a different ``size`` asked for.
        """
        return None

    def picture_size(self, pipeline: Any, request: BaseModel, size: tuple[int, int] | None) -> tuple[int, int] | None:
        """The size (H, W) to make pictures of: ``size`` if given, else :meth:`input_size`, else None (the pipeline's).

        :raises InputError: when ``size`` differs from the size the inputs fix, or is no multiple of
            :func:`ldmkit.sizing.size_multiple`.
        """
        from ldmkit.sizing import check_picture_size

        fixed = self.input_size(pipeline, request)
        if fixed is not None and size is not None and tuple(size) != tuple(fixed):
            raise InputError(
                f"task {self.name!r}: size {size[0]}x{size[1]} differs from {fixed[0]}x{fixed[1]}, the size its "
                "input fixes; leave the size out (the pictures take their input's size) or resize the input"
            )
        chosen = size if size is not None else fixed
        if chosen is None:
            return None
        what = "size" if size is not None else f"task {self.name!r}: the input's size"
        return check_picture_size(pipeline, chosen, what)

    def run(self, pipeline: Any, request: BaseModel, options: SampleOptions) -> Tensor:
        """Sample ``options.n`` pictures for ``request``: (n, 3, H, W) in [-1, 1].

        Picture ``i`` draws its noise from seed ``options.seed + i``, so picture i of seed s equals
        picture 0 of seed s + i, whatever the batch. The pictures are ``options.size`` large, else
        their input's size (:meth:`picture_size`), else the pipeline's :attr:`~ldmkit.Pipeline.default_size`;
        ``options.tile_size`` decodes them tile by tile (:meth:`ldmkit.Pipeline.decode`).
        """
        if options.n < 1:
            raise InputError("the number of pictures must be at least 1")
        negatives = [name for name in NEGATIVE_INPUTS if getattr(request, name, None) is not None]
        if negatives and options.guidance_scale == 1.0:
            log.warning("%s has no effect: guidance scale 1 has no unconditional branch to replace", negatives[0])
        size = self.picture_size(pipeline, request, options.size)
        with torch.no_grad():
            cond, uncond = self.conditioning(pipeline, request, options.n)
            generators = [torch.Generator().manual_seed(options.seed + i) for i in range(options.n)]
            latents = pipeline.sample(
                cond,
                sampler=options.sampler,
                steps=options.steps,
                eta=options.eta,
                uncond=uncond if options.guidance_scale != 1.0 else None,
                guidance_scale=options.guidance_scale,
                generator=generators,
                batch_size=options.n,
                progress=options.progress,
                **({} if size is None else {"size": size}),
                **self.sample_kwargs(pipeline, request, options.n),
            )
            if options.tile_size is None:
                return pipeline.decode(latents).clamp(-1, 1)  # (n, 3, H, W)
            return pipeline.decode(latents, tile_size=options.tile_size).clamp(-1, 1)  # (n, 3, H, W)


def image_size(pipeline: Any) -> tuple[int, int]:
    """Pixel size (H, W) the pipeline generates: its latent size times the first stage's downsampling."""
    h, w = pipeline.latent_size or (0, 0)
    f = pipeline.first_stage.downsample
    return h * f, w * f


def on_device(raw: Any, device: torch.device) -> Any:
    """A task's raw input with its tensors on ``device``: tasks build inputs on the CPU, the pipeline may be a GPU's."""
    return map_tensors(raw, lambda tensor: tensor.to(device))


def default_guidance(pipeline: Any, task: str) -> float:
    """The guidance scale task ``task`` of ``pipeline`` samples with unless told otherwise.

    The task's own ``guidance_scale`` param when it sets one (tasks differ in how much guidance they
    need), else the spec's ``sampling.guidance_scale``, else 1.0 (no guidance); see
    :func:`ldmkit.options.resolve_options`.
    """
    return resolve_options(pipeline, task).guidance_scale


def default_sampling(pipeline: Any, task: str) -> tuple[str | SamplerRef, int]:
    """The sampler (a name or ``{type, params}``) and number of steps task ``task`` samples with by default.

    The task's own ``sampler`` / ``steps`` params when it sets them (an unconditional model has no
    guidance to lean on and gains from more, stochastic steps, as the paper samples its unconditional
    models), else the spec's ``sampling``, else DDIM with 50 steps; see :func:`ldmkit.options.resolve_options`.
    """
    options = resolve_options(pipeline, task)
    return options.sampler, options.steps
