"""What every built-in task shares: turning inputs into a batched raw conditioning and sampling."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import Tensor

import ldmkit
from ldmkit.errors import InputError, SpecError
from ldmkit.interfaces import SampleOptions
from ldmkit.nested import map_tensors


class TaskParams(ldmkit.Params):
    part: str | None = Field(
        None, description="name of the composite conditioner's part this task fills (None: the whole conditioner)"
    )
    guidance_scale: float | None = Field(
        None, ge=0.0, description="this task's default guidance scale (None: the spec's sampling.guidance_scale)"
    )
    sampler: str | None = Field(None, min_length=1, description="this task's default sampler (None: the spec's)")
    steps: int | None = Field(None, ge=1, description="this task's default number of steps (None: the spec's)")


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, frozen=True)


class ConditionedTask(ldmkit.Task):
    """Base: subclasses turn a request into one raw conditioner input (``raw_input``) for a single picture."""

    Params = TaskParams
    Request: ClassVar[type[BaseModel]] = Request
    inputs: ClassVar[tuple[str, ...]] = ()
    """Names of the CLI inputs (``--label``, ``--prompt`` ...) this task reads."""

    def parse_request(self, inputs: Mapping[str, Any] | None) -> BaseModel:
        """Build the request from CLI-style inputs (strings, or bytes of files) or Python objects.

        Checks that ``inputs`` holds only what this task reads, then calls :meth:`build_request`.
        """
        return self.build_request(self.check_inputs(inputs))

    def build_request(self, inputs: dict[str, Any]) -> BaseModel:
        """The request from checked inputs; tasks with inputs other than plain fields override this."""
        values = {name: self.require(inputs, name) for name in self.inputs}
        try:
            return self.Request(**values)
        except ValidationError as exc:  # e.g. an empty prompt: name the input, no pydantic traceback
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise InputError(f"task {self.name!r}: {problems}") from None

    def check_inputs(self, inputs: Mapping[str, Any] | None) -> dict[str, Any]:
        """``inputs`` as a dict; refused unless a mapping of only the inputs this task reads (None: none)."""
        if inputs is None:
            return {}
        takes = ", ".join(self.inputs) or "no inputs"
        if not isinstance(inputs, Mapping):
            raise InputError(f"task {self.name!r}: inputs must be a dict ({takes}), got {type(inputs).__name__}")
        unknown = sorted(str(key) for key, value in inputs.items() if key not in self.inputs and value is not None)
        if unknown:
            raise InputError(f"task {self.name!r} takes {takes}; it does not read {', '.join(unknown)}")
        return dict(inputs)

    def require(self, inputs: dict[str, Any], name: str) -> Any:
        """The input ``name``, or InputError naming the missing flag."""
        missing = [m for m in self.inputs if inputs.get(m) is None]
        if name in missing:
            flags = ", ".join(f"--{m}" for m in missing)
            raise InputError(f"task {self.name!r} needs {flags}")
        return inputs[name]

    def raw_input(self, pipeline: Any, request: BaseModel, n: int) -> Any:
        """The conditioner input for ``n`` copies of the request (None: unconditional)."""
        return None

    def wrap(self, value: Any) -> Any:
        return {self.params.part: value} if self.params.part is not None else value

    def conditioning(self, pipeline: Any, request: BaseModel, n: int) -> tuple[Any, Any]:
        """(cond, uncond) for ``n`` pictures; uncond is None when the pipeline has no conditioner."""
        raw = on_device(self.raw_input(pipeline, request, n), pipeline.device)
        if pipeline.conditioner is None:
            if raw is not None:  # silently ignoring the input would hand back unconditional pictures
                raise SpecError(f"task {self.name!r} needs a conditioner for its input; this pipeline has none")
            return ldmkit.Conditioning(), None
        uncond = pipeline.conditioner.unconditional(n)
        if raw is None:
            return uncond, None
        return pipeline.conditioner(self.wrap(raw)), uncond

    def sample_kwargs(self, pipeline: Any, request: BaseModel, n: int) -> dict[str, Any]:
        """Extra arguments for ``Pipeline.sample`` (masked sampling uses this)."""
        return {}

    def run(self, pipeline: Any, request: BaseModel, options: SampleOptions) -> Tensor:
        if options.n < 1:
            raise InputError("the number of pictures must be at least 1")
        with torch.no_grad():
            cond, uncond = self.conditioning(pipeline, request, options.n)
            # one generator per picture: picture i of seed s equals picture 0 of seed s + i
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
                **self.sample_kwargs(pipeline, request, options.n),
            )
            return pipeline.decode(latents).clamp(-1, 1)  # (n, 3, H, W)


def image_size(pipeline: Any) -> tuple[int, int]:
    """Pixel size the pipeline generates."""
    h, w = pipeline.latent_size or (0, 0)
    f = pipeline.first_stage.downsample
    return h * f, w * f


def read_png(data: bytes, what: str, mode: str) -> Tensor:
    """Decode PNG/any Pillow image bytes into a uint8 tensor (H, W, C) or (H, W)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > 4096 * 4096:
                raise InputError(f"{what}: image of {img.width}x{img.height} is too large")
            arr = torch.frombuffer(bytearray(img.convert(mode).tobytes()), dtype=torch.uint8)
            channels = {"L": 1, "RGB": 3}[mode]
            return (
                arr.view(img.height, img.width, channels).squeeze(-1)
                if channels == 1
                else arr.view(img.height, img.width, channels)
            )
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(f"{what}: not a readable image ({exc})") from None


def to_signed(images_u8: Tensor) -> Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float in [-1, 1]."""
    return images_u8.permute(2, 0, 1).float() / 127.5 - 1.0


def check_size(t: Tensor, expected: tuple[int, int], what: str) -> None:
    if tuple(t.shape[-2:]) != tuple(expected) and not (t.dim() == 3 and tuple(t.shape[:2]) == tuple(expected)):
        raise InputError(f"{what}: expected {expected[0]}x{expected[1]} pixels, got {tuple(t.shape)}")


def on_device(raw: Any, device: torch.device) -> Any:
    """A task's raw input with its tensors on ``device``: tasks build inputs on the CPU, the pipeline may be a GPU's."""
    return map_tensors(raw, lambda tensor: tensor.to(device))
