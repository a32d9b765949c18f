"""How many pictures, from which seed, how sampled: one rule set for the command line and for replay.

``ldmkit generate`` checks its flags and ``--replay`` checks a picture's recorded ``options`` with the
same pydantic model, so a picture's metadata can never ask for what the command line may not.

A sampler is named (``"ddim"``) or given with its own params (``{"type": "dpmpp-2m", "params":
{"spacing": "trailing"}}``, from ``--sampler NAME --sampler-param KEY=VALUE``); the params are
checked by that sampler's ``Params`` (:func:`check_sampler_params`).
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ldmkit.errors import InputError, SpecError
from ldmkit.interfaces import SampleOptions
from ldmkit.options import SamplerChoice
from ldmkit.specs import MAX_PICTURE_SIDE

MAX_PICTURES = 1024  # pictures one run makes
MAX_STEPS = 10_000  # as a spec's sampling.steps
MAX_SEED = 2**64 - 1  # torch generators take seeds up to 2^64 - 1; picture i uses seed + i
MAX_LABEL_DIGITS = 18  # a class id given as digits
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]*")
_CLASS_ID = re.compile(r"-?[0-9]+")
_Side = Annotated[int, Field(ge=1, le=MAX_PICTURE_SIDE)]


class GenerationOptions(BaseModel):
    """The sampling options of one run, validated; :meth:`sample_options` gives the core's :class:`SampleOptions`."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    n: int = Field(1, ge=1, le=MAX_PICTURES, description="number of pictures")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="seed of picture 0; picture i uses seed + i")
    sampler: SamplerChoice = "ddim"
    steps: int = Field(50, ge=1, le=MAX_STEPS)
    eta: float | None = Field(None, ge=0.0, description="fresh noise per step (None: the sampler's default)")
    guidance_scale: float = Field(1.0, ge=0.0)
    progress: bool = False
    size: tuple[_Side, _Side] | None = Field(None, description="(H, W) of the pictures in pixels (None: the default)")
    tile_size: int | None = Field(None, ge=4, le=MAX_PICTURE_SIDE, description="decode tile by tile above it")

    @field_validator("size", mode="before")
    @classmethod
    def _size_pair(cls, value: Any) -> Any:
        return tuple(value) if isinstance(value, list) else value  # JSON (a picture's record) has no tuples

    @field_validator("sampler")
    @classmethod
    def _sampler_name(cls, value: SamplerChoice) -> SamplerChoice:
        name = value if isinstance(value, str) else value.type
        if not _NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a sampler name")
        return value

    @model_validator(mode="after")
    def _last_seed_fits(self) -> GenerationOptions:
        if self.seed + self.n - 1 > MAX_SEED:
            raise ValueError(
                f"seed {self.seed} with {self.n} pictures needs seeds up to {self.seed + self.n - 1}, past 2^64 - 1"
            )
        return self

    def sample_options(self) -> SampleOptions:
        """The same values as the core's :class:`SampleOptions`."""
        return SampleOptions(**dict(self))


def check_sampler_params(registry: Any, name: str, params: dict[str, Any], where: str = "--sampler-param ") -> Any:
    """``params`` validated by sampler ``name``'s ``Params``; :class:`InputError` names each field (``where`` + field).

    An unknown sampler raises :class:`ldmkit.UnknownComponentError` with the registered names.
    """
    cls = registry.get("sampler", name)
    try:
        return cls.Params.model_validate(params)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = ".".join(map(str, err["loc"]))
            shown = f"{field}={params[field]!r}" if field in params else field or "(params)"
            problems.append(f"{where}{shown}: {err['msg']}")
        known = ", ".join(cls.Params.model_fields) or "none"
        raise InputError(f"sampler {name!r}: {'; '.join(problems)} (its params: {known})") from None
    except SpecError as exc:  # a Params model's own validator may raise it
        raise InputError(f"sampler {name!r}: {exc}") from None


def check_options(values: dict[str, Any], flags: dict[str, str] | None = None, prefix: str = "") -> GenerationOptions:
    """``values`` validated as :class:`GenerationOptions`; :class:`InputError` names each problem.

    ``flags`` maps a field to the command-line flag that set it (``{"n": "-n"}``; the message then
    shows the value given), ``prefix`` words any other field (``"metadata options."``), so the
    message points at what to change.
    """
    flags = flags or {}
    try:
        return GenerationOptions.model_validate(values)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else ""
            message = err["msg"].removeprefix("Value error, ")
            flag = flags.get(field)
            if flag is None:
                where = f"{prefix}{field}" if field else prefix.rstrip(".") or "options"
                if not field and flags:  # a rule across fields: name the flags that set them
                    where = f"{flags.get('seed', 'seed')} with {flags.get('n', 'n')}"
            else:
                named = "" if flag.lstrip("-") == field else f" ({field})"
                where = f"{flag} {values.get(field)!r}{named}"
            problems.append(f"{where}: {message}")
        raise InputError("; ".join(problems)) from None


def check_label(label: Any, where: str = "--label") -> None:
    """Refuse a label the class2img task cannot read: digits other than 0-9, or a class id too long to be one."""
    if not isinstance(label, str):
        return
    text = label.strip()
    if text.lstrip("-").isdigit() and not _CLASS_ID.fullmatch(text):
        raise InputError(f"{where} {label!r}: a class id is written with the digits 0-9")
    if _CLASS_ID.fullmatch(text) and len(text.lstrip("-")) > MAX_LABEL_DIGITS:
        raise InputError(f"{where}: a class id of {len(text.lstrip('-'))} digits; class ids have at most 18")


__all__ = [
    "MAX_LABEL_DIGITS",
    "MAX_PICTURES",
    "MAX_SEED",
    "MAX_STEPS",
    "GenerationOptions",
    "check_label",
    "check_options",
    "check_sampler_params",
]
