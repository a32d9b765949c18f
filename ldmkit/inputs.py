"""Typed task inputs: each reader turns what a caller holds into one canonical value, or refuses it.

A task reads its inputs from two kinds of callers: the CLI, which hands over strings and the bytes of
files, and Python code, which hands over PIL images, numpy arrays, tensors, lists and dicts. Each
reader here accepts both and returns one canonical form, or raises :class:`~ldmkit.InputError` naming
the input and the accepted forms, so that a picture in the wrong range or layout is refused rather
than sampled from:

- :func:`image_input`: an RGB picture, (3, H, W) float32 in [-1, 1];
- :func:`mask_input`: a mask, (1, H, W) float32 in [0, 1], 1 where to fill in;
- :func:`class_map_input`: a segmentation map of class ids, (H, W) int64;
- :func:`layout_input`: labelled boxes, a list of :class:`LayoutObject`;
- :func:`label_input`: a class id, from an id or a class name;
- :func:`prompt_input`: a non-empty prompt.

:func:`check_size` compares a read picture with the size a pipeline generates.

A task's request model declares its fields with the annotated types below, so the same reader runs
whether the value comes from the CLI (``--input image=@pic.png``), from Python or from a picture's
metadata, and the CLI learns from the type whether a field takes a file and how to show it in help::

    from pydantic import Field
    from ldmkit.inputs import Picture, Prompt
    from ldmkit.tasks import Request

    class EditRequest(Request):
        image: Picture = Field(description="the picture to edit")
        prompt: Prompt = Field(description="what to change")

:class:`Picture`, :class:`Mask`, :class:`Layout`, :class:`SegmentationMap`, :class:`Label`,
:class:`Prompt`, :class:`Number` and :class:`Text` read what their names say; :class:`InputKind`
is the metadata each carries and :func:`describe_request` lists a request model's inputs.
Readers that need to know the task's classes (a label given by name, a segmentation map's
range) find them in the validation context (``class_names``, ``n_classes``), which
:meth:`ldmkit.tasks.ConditionedTask.parse_request` fills from the task's params.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

import torch
from pydantic import BaseModel, BeforeValidator, Field, TypeAdapter, ValidationError, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError, PydanticUndefined
from torch import Tensor

from ldmkit.errors import InputError
from ldmkit.validation import format_validation_error

__all__ = [
    "InputField",
    "InputKind",
    "Label",
    "Layout",
    "LayoutObject",
    "Mask",
    "Number",
    "Picture",
    "Prompt",
    "SegmentationMap",
    "Text",
    "check_size",
    "class_map_input",
    "describe_request",
    "image_input",
    "input_kind",
    "label_input",
    "MAX_LAYOUT_BYTES",
    "layout_input",
    "mask_input",
    "number_input",
    "prompt_input",
    "text_input",
]

# float pictures may overshoot [-1, 1] by rounding (e.g. after a resize), not by a wrong scale
_RANGE_SLACK = 1e-3
_MAX_PIXELS = 4096 * 4096


def _read_image(data: bytes, what: str, mode: str) -> Tensor:
    """Decode image file bytes (any format Pillow reads) into uint8 (H, W, 3) for "RGB" or (H, W) for "L"."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # refused, not decoded with a warning
            with Image.open(io.BytesIO(data)) as img:
                if img.width * img.height > _MAX_PIXELS:  # checked on the header, before any pixel is decoded
                    raise InputError(
                        f"{what}: a picture of {img.width}x{img.height} pixels, more than the "
                        f"{_MAX_PIXELS:,} pixels ldmkit reads"
                    )
                arr = torch.frombuffer(bytearray(img.convert(mode).tobytes()), dtype=torch.uint8)
                if mode == "L":
                    return arr.view(img.height, img.width)
                return arr.view(img.height, img.width, 3)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError(f"{what}: the picture declares more pixels than ldmkit reads ({_MAX_PIXELS:,})") from None
    except UnidentifiedImageError:  # its message names an in-memory buffer object, which helps no one
        raise InputError(f"{what}: not a picture Pillow can read (PNG, JPEG, BMP, ...)") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{what}: a damaged or truncated picture ({exc})") from None


def _to_signed(images_u8: Tensor) -> Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float in [-1, 1]."""
    return images_u8.permute(2, 0, 1).float() / 127.5 - 1.0


def _image_bytes(data: Any) -> bytes | None:
    """File bytes as they are, a PIL image as PNG bytes (so it takes the same path as a file), else None."""
    if isinstance(data, (bytes, bytearray)):
        return bytes(data)
    from PIL import Image

    if not isinstance(data, Image.Image):
        return None
    buffer = io.BytesIO()
    data.save(buffer, format="PNG")
    return buffer.getvalue()


def _as_tensor(data: Any, what: str, forms: str) -> Tensor:
    if isinstance(data, Tensor):
        return data.detach().cpu()
    try:  # a copy: the caller's array may be read-only (np.asarray of a picture), and stays untouched
        return torch.tensor(data)
    except (TypeError, ValueError, RuntimeError):
        raise InputError(f"{what}: expected {forms}, got {type(data).__name__}") from None


def _squeeze_leading(t: Tensor, dims: int) -> Tensor:
    """Drop leading size-1 dimensions (a batch of one) down to ``dims`` dimensions."""
    while t.dim() > dims and t.shape[0] == 1:
        t = t[0]
    return t


def _finite_float(t: Tensor, what: str) -> Tensor:
    if t.dtype == torch.bool or not (t.is_floating_point() or t.dtype == torch.uint8):
        raise InputError(f"{what}: expected float or uint8 values, got {t.dtype}")
    t = t.float()
    if not bool(torch.isfinite(t).all()):
        raise InputError(f"{what}: contains NaN or Inf")
    return t


def _problems(exc: ValidationError) -> str:
    return format_validation_error(exc, top=None)


def image_input(data: Any, what: str = "image") -> Tensor:
    """An RGB picture -> (3, H, W) float32 in [-1, 1].

    Accepted: image file bytes, a PIL image, a uint8 array (H, W, 3) or (3, H, W) with values
    0..255, or a float tensor (3, H, W) or (1, 3, H, W) with values in [-1, 1].
    """
    forms = "image bytes, a PIL image, a uint8 (H, W, 3) array or a float (3, H, W) tensor in [-1, 1]"
    png = _image_bytes(data)
    if png is not None:
        return _to_signed(_read_image(png, what, "RGB"))
    t = _squeeze_leading(_as_tensor(data, what, forms), 3)
    if t.dtype == torch.uint8 and t.dim() == 3 and t.shape[-1] == 3 and t.shape[0] != 3:
        return _to_signed(t)  # (H, W, 3), as numpy and PIL hold pictures
    if t.dim() != 3 or t.shape[0] != 3:
        raise InputError(f"{what}: expected {forms}; got shape {tuple(t.shape)}")
    if t.dtype == torch.uint8:
        return t.float() / 127.5 - 1.0
    t = _finite_float(t, what)
    low, high = float(t.min()), float(t.max())
    if low < -1 - _RANGE_SLACK or high > 1 + _RANGE_SLACK:
        raise InputError(
            f"{what}: float values must lie in [-1, 1], found {low:.4g} to {high:.4g} (pass 0..255 pictures as uint8)"
        )
    return t.clamp(-1.0, 1.0)


def mask_input(data: Any, what: str = "mask") -> Tensor:
    """A mask, 1 (or white) where to fill in -> (1, H, W) float32 in [0, 1].

    Accepted: picture file bytes in any format Pillow reads (PNG, JPEG, BMP, ...; the format comes
    from the bytes, not a file name) or a PIL image, read as grey levels with over 127 = fill in (so a
    JPEG's compression noise does not move the mask); a bool array, a uint8 array with values 0..255
    (over 127 = fill in), or a float array in [0, 1]; shaped (H, W), (1, H, W) or (1, 1, H, W).
    """
    forms = "image bytes, a PIL image, or an (H, W) bool, uint8 or float array"
    png = _image_bytes(data)
    if png is not None:
        return (_read_image(png, what, "L") > 127).float()[None]
    t = _squeeze_leading(_as_tensor(data, what, forms), 2)
    if t.dim() != 2:
        raise InputError(f"{what}: expected {forms}; got shape {tuple(t.shape)}")
    if t.dtype == torch.bool:
        return t.float()[None]
    if t.dtype == torch.uint8:
        return (t > 127).float()[None]
    t = _finite_float(t, what)
    low, high = float(t.min()), float(t.max())
    if low < 0 or high > 1:
        raise InputError(f"{what}: float values must lie in [0, 1], found {low:.4g} to {high:.4g}")
    return t[None]


def class_map_input(data: Any, n_classes: int, what: str = "segmentation") -> Tensor:
    """A segmentation map of class ids -> (H, W) int64 with values in 0..n_classes-1.

    Accepted: 8-bit single-channel image bytes or a PIL image (pixel value = class id), or an
    integer-valued array shaped (H, W) or (1, H, W).
    """
    forms = "single-channel image bytes, a PIL image or an (H, W) integer array"
    png = _image_bytes(data)
    if png is not None:
        t = _read_image(png, what, "L")
    else:
        t = _squeeze_leading(_as_tensor(data, what, forms), 2)
    if t.dim() != 2:
        raise InputError(f"{what}: expected a single-channel map ({forms}); got shape {tuple(t.shape)}")
    if t.dtype == torch.bool or t.is_complex():
        raise InputError(f"{what}: expected integer class ids, got {t.dtype}")
    if t.is_floating_point() and not bool((torch.isfinite(t) & (t == t.round())).all()):
        raise InputError(f"{what}: class ids must be whole numbers")
    ids = t.long()
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= n_classes:
        bad = low if low < 0 else high
        raise InputError(f"{what}: value {bad} found; classes are 0..{n_classes - 1}")
    return ids


class LayoutObject(BaseModel):
    """One labelled box of a layout: a class id or name, and where it lies in the picture."""

    label: int | str
    box: list[float] = Field(min_length=4, max_length=4, description="[x0, y0, x1, y1] as fractions of the picture")

    @field_validator("box")
    @classmethod
    def _inside(cls, box: list[float]) -> list[float]:
        x0, y0, x1, y1 = box
        if not all(0.0 <= v <= 1.0 for v in box):
            raise ValueError(f"box {box} is outside [0, 1]")
        if not (x0 < x1 and y0 < y1):
            raise ValueError(f"box {box} needs x0 < x1 and y0 < y1")
        return box


_LAYOUT = TypeAdapter(list[LayoutObject])


def layout_input(data: Any, what: str = "layout", max_objects: int = 16) -> list[LayoutObject]:
    """Labelled boxes -> a list of 1 to ``max_objects`` :class:`LayoutObject`.

    Accepted: JSON text or bytes (``[{"label": "red circle", "box": [0.1, 0.1, 0.5, 0.5]}]``), or
    the same as Python objects (a list of dicts or of ``LayoutObject``). Labels are checked against
    the classes by the conditioner that reads them, not here.
    """
    try:
        objects = _layout_json(data, what) if isinstance(data, (bytes, bytearray, str)) else data
        layout = _LAYOUT.validate_python(objects)
    except ValidationError as exc:
        raise InputError(f"{what}: {_problems(exc)}") from None
    if not 1 <= len(layout) <= max_objects:
        raise InputError(f"{what}: expected 1 to {max_objects} objects, got {len(layout)}")
    return layout


MAX_LAYOUT_BYTES = 1 << 20  # 16 boxes take a few hundred bytes


def _layout_json(data: str | bytes | bytearray, what: str) -> Any:
    """Layout JSON text -> Python objects; every way the text can be wrong is an InputError."""
    from ldmkit import strict_json

    size = len(data) if isinstance(data, (bytes, bytearray)) else len(data.encode("utf-8", "surrogatepass"))
    if size > MAX_LAYOUT_BYTES:
        raise InputError(f"{what}: {size} bytes, more than the {MAX_LAYOUT_BYTES} a layout may have")
    if isinstance(data, (bytes, bytearray)):
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"{what}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at {exc.start})") from None
    try:
        return strict_json.loads(data, parse_constant=_no_constant)
    except strict_json.DuplicateKeyError as exc:
        raise InputError(f"{what}: an object with a {exc}; each key may appear once") from None
    except ValueError as exc:  # JSONDecodeError, JSONLimitError, a refused constant
        raise InputError(f"{what}: not valid JSON ({exc})") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number a layout may hold")


def label_input(label: Any, class_names: Sequence[str] | None = None, what: str = "label") -> int:
    """A class id from an id (int or digits) or, when ``class_names`` are known, a class name.

    Names match case-insensitively after trimming; ids must lie in 0..len(class_names)-1 when the
    names are known, else be non-negative.
    """
    names = [name.lower() for name in class_names] if class_names is not None else None
    if isinstance(label, bool) or not isinstance(label, (int, str)):
        raise InputError(f"{what}: expected a class id or name, got {type(label).__name__}")
    if isinstance(label, str) and not label.strip().lstrip("-").isdigit():
        if not names or label.strip().lower() not in names:
            known = ", ".join(class_names or [])
            raise InputError(f"unknown {what} {label!r}; known {what}s: {known or '(class ids only)'}")
        return names.index(label.strip().lower())
    value = int(label)
    if value < 0 or (names is not None and value >= len(names)):
        raise InputError(f"{what} {value} is out of range")
    return value


def prompt_input(data: Any, what: str = "prompt", max_length: int = 1000) -> str:
    """A prompt: a string (or UTF-8 bytes of a text file) of 1 to ``max_length`` characters."""
    text = text_input(data, what, max_length)
    if not text:
        raise InputError(f"{what}: must not be empty")
    return text


def check_size(picture: Tensor, expected: tuple[int, int], what: str) -> None:
    """Refuse a picture (C, H, W) or (H, W) whose size is not ``expected`` (H, W)."""
    if tuple(picture.shape[-2:]) != tuple(expected) and not (
        picture.dim() == 3 and tuple(picture.shape[:2]) == tuple(expected)
    ):
        raise InputError(f"{what}: expected {expected[0]}x{expected[1]} pixels, got {tuple(picture.shape)}")


MAX_TEXT = 10_000  # characters of a free-text input


def text_input(data: Any, what: str = "text", max_length: int = MAX_TEXT) -> str:
    """Free text: a string (or UTF-8 bytes of a text file) of at most ``max_length`` characters; may be empty."""
    if isinstance(data, (bytes, bytearray)):
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{what}: not UTF-8 text") from None
    if not isinstance(data, str):
        raise InputError(f"{what}: expected a string, got {type(data).__name__}")
    if len(data) > max_length:
        raise InputError(f"{what}: {len(data)} characters, more than the maximum {max_length}")
    return data


def number_input(data: Any, what: str = "number") -> float:
    """A finite number: an int or float (not a bool), or its decimal text (``"2.5"``, ``"1e-3"``)."""
    if isinstance(data, bool):
        raise InputError(f"{what}: expected a number, got {data!r}")
    if isinstance(data, (bytes, bytearray)):
        data = bytes(data).decode("utf-8", errors="replace")
    if isinstance(data, str):
        try:
            data = float(data.strip())
        except ValueError:
            raise InputError(f"{what}: {data!r} is not a number") from None
    if not isinstance(data, (int, float)):
        raise InputError(f"{what}: expected a number, got {type(data).__name__}")
    if not math.isfinite(data):
        raise InputError(f"{what}: must be a finite number, got {data!r}")
    return float(data)


# -- annotated input types for request models -----------------------------------------------------
@dataclass(frozen=True)
class InputKind:
    """What an annotated input type tells the CLI and ``ldmkit tasks`` about a request field.

    ``name`` is the kind shown to users (``picture``, ``mask`` ...), ``takes_file`` whether the CLI
    reads the value from a file (``--input image=@pic.png``), ``shown_as`` how help shows a value.
    """

    name: str
    takes_file: bool
    shown_as: str


def _reader(read: Callable[[Any, str, Any], Any]) -> BeforeValidator:
    """A BeforeValidator running ``read(value, field_name, context)``; its InputError becomes a field error."""

    def validate(value: Any, info: ValidationInfo) -> Any:
        what = info.field_name or "input"
        try:
            return read(value, what, info.context or {})
        except InputError as exc:
            reason = str(exc).removeprefix(f"{what}: ")  # the field is named by the error's location
            raise PydanticCustomError("input", "{reason}", {"reason": reason}) from None

    return BeforeValidator(validate)


def _label(value: Any, what: str, context: Any) -> int:
    if isinstance(value, (bytes, bytearray)):
        value = text_input(value, what).strip()
    return label_input(value, context.get("class_names"), what)


def _class_map(value: Any, what: str, context: Any) -> Tensor:
    n_classes = context.get("n_classes")
    return class_map_input(value, 256 if n_classes is None else int(n_classes), what)


Picture = Annotated[
    Tensor,
    _reader(lambda value, what, _: image_input(value, what)),
    InputKind("picture", True, "an RGB picture file (PNG, JPEG ...)"),
]
"""An RGB picture, read by :func:`image_input`: (3, H, W) float32 in [-1, 1]."""

Mask = Annotated[
    Tensor,
    _reader(lambda value, what, _: mask_input(value, what)),
    InputKind("mask", True, "a mask picture (PNG, JPEG ...), white = fill in"),
]
"""A mask, read by :func:`mask_input`: (1, H, W) float32 in [0, 1], 1 where to fill in."""

Layout = Annotated[
    list[LayoutObject],
    _reader(lambda value, what, _: layout_input(value, what)),
    InputKind("layout", True, 'a JSON file: [{"label": ..., "box": [x0, y0, x1, y1]}, ...]'),
]
"""Labelled boxes, read by :func:`layout_input`: 1 to 16 :class:`LayoutObject`."""

SegmentationMap = Annotated[
    Tensor,
    _reader(_class_map),
    InputKind("segmentation map", True, "an 8-bit single-channel picture file, pixel value = class id"),
]
"""A map of class ids, read by :func:`class_map_input`: (H, W) int64 (classes: the context's ``n_classes``)."""

Label = Annotated[int, _reader(_label), InputKind("label", False, "a class id or class name")]
"""A class id, read by :func:`label_input` (names: the context's ``class_names``)."""

Prompt = Annotated[str, _reader(lambda value, what, _: prompt_input(value, what)), InputKind("prompt", False, "text")]
"""A non-empty prompt of at most 1000 characters, read by :func:`prompt_input`."""

Number = Annotated[
    float, _reader(lambda value, what, _: number_input(value, what)), InputKind("number", False, "a number")
]
"""A finite number, read by :func:`number_input` (decimal text from the CLI)."""

Text = Annotated[str, _reader(lambda value, what, _: text_input(value, what)), InputKind("text", False, "text")]
"""Free text (may be empty), read by :func:`text_input`."""


def _kind_in(annotation: Any) -> InputKind | None:
    """The InputKind inside an annotation: ``Picture``, ``Picture | None``, ``Optional[Mask]`` ..."""
    if get_origin(annotation) is Annotated:
        found = next((m for m in get_args(annotation)[1:] if isinstance(m, InputKind)), None)
        return found if found is not None else _kind_in(get_args(annotation)[0])
    return next((k for k in map(_kind_in, get_args(annotation)) if k is not None), None)


def input_kind(field: Any) -> InputKind | None:
    """The :class:`InputKind` of a request field (a pydantic ``FieldInfo``), or None for a plain field."""
    found = next((m for m in getattr(field, "metadata", ()) if isinstance(m, InputKind)), None)
    return found if found is not None else _kind_in(getattr(field, "annotation", None))


@dataclass(frozen=True)
class InputField:
    """One input of a task's request model, as ``ldmkit tasks`` and ``ldmkit generate`` show it."""

    name: str
    kind: str
    takes_file: bool
    shown_as: str
    required: bool
    default: Any
    description: str

    def as_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (the default as text unless it is JSON already)."""
        default = (
            self.default
            if self.default is None or isinstance(self.default, (bool, int, float, str))
            else repr(self.default)
        )
        return {
            "name": self.name,
            "kind": self.kind,
            "takes_file": self.takes_file,
            "shown_as": self.shown_as,
            "required": self.required,
            "default": default,
            "description": self.description,
        }


def _type_name(annotation: Any) -> str:
    """``int``, ``str | None``, ``list[int]``: how a plain field's type reads in a listing."""
    if get_origin(annotation) is Annotated:
        return _type_name(get_args(annotation)[0])
    if get_origin(annotation) in (Union, UnionType):
        return " | ".join(_type_name(arg) for arg in get_args(annotation))
    if annotation is type(None):
        return "None"
    if get_args(annotation):
        return repr(annotation).removeprefix("typing.")
    return getattr(annotation, "__name__", repr(annotation))


def describe_request(model: type[BaseModel]) -> list[InputField]:
    """The inputs of a request model, in declaration order: kind, whether a file, default, description."""
    fields = []
    for name, info in model.model_fields.items():
        kind = input_kind(info)
        required = info.is_required()
        default = None if required or info.default is PydanticUndefined else info.get_default(call_default_factory=True)
        fields.append(
            InputField(
                name=name,
                kind=kind.name if kind else _type_name(info.annotation),
                takes_file=kind.takes_file if kind else False,
                shown_as=kind.shown_as if kind else _type_name(info.annotation),
                required=required,
                default=default,
                description=info.description or "",
            )
        )
    return fields
