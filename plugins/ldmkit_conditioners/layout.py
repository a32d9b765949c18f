"""``layout``: labelled bounding boxes -> tokens -> transformer -> cross-attention, as the paper's layout model.

Tokens follow the paper's layout-to-image data (taming-transformers' bounding-box conditional
builder): each object is three tokens, its class id and the grid cells of its top-left and
bottom-right corners. A corner (x, y) in [0, 1] is snapped to a ``coord_bins`` x ``coord_bins`` grid
and numbered ``row * coord_bins + column``. Unused object slots hold the "none" token
(``vocab_size - 1``); ``encode_crop`` appends the corner pair of the (full-image) crop. Class ids and
corner cells share one vocabulary, as in the original.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from pydantic import ConfigDict, Field, PositiveInt, ValidationError, field_validator, model_validator
from torch import Tensor

import ldmkit
from ldmkit import Conditioner, Conditioning, InputError
from ldmkit.checks import check_batch, format_validation_error, host_to_device, index_tensor
from ldmkit.interfaces import Slot
from ldmkit.specs import StrictModel
from ldmkit_conditioners.box_map import box_map
from ldmkit_conditioners.xtransformer import TransformerWrapper

TOKENS_PER_OBJECT = 3


def _ids_needed(n_classes: int, coord_bins: int, coordinates: str) -> int:
    """Ids that classes and coordinates occupy (the 'none' token comes after them)."""
    return max(n_classes, coord_bins**2) if coordinates == "corner-cells" else n_classes + coord_bins


class LayoutObject(StrictModel):
    """One object: a class (id or name) and its box ``[x0, y0, x1, y1]`` as fractions of the image."""

    model_config = ConfigDict(frozen=True)

    label: int | str
    box: list[float] = Field(min_length=4, max_length=4)

    @field_validator("box")
    @classmethod
    def _box(cls, box: list[float]) -> list[float]:
        if any(not 0.0 <= v <= 1.0 for v in box):
            raise ValueError(f"box {box} must lie inside [0, 1] (fractions of the image width and height)")
        x0, y0, x1, y1 = box
        if not (x0 < x1 and y0 < y1):
            raise ValueError(f"box {box} must have x0 < x1 and y0 < y1")
        return box


class LayoutConditioner(Conditioner):
    """Layouts (one list of objects per image) or layout tokens (B, max_seq_len) -> (B, max_seq_len, n_embed)."""

    name = "layout"
    example_params = {
        "n_classes": 3,
        "class_names": ["red circle", "blue square", "green triangle"],
        "coord_bins": 4,
        "max_objects": 2,
        "n_embed": 16,
        "n_layer": 1,
    }
    slots: tuple[Slot, ...] = ("crossattn",)

    class Params(ldmkit.Params):
        n_classes: int = Field(gt=0)
        """Object classes; labels are ids in [0, n_classes) or names from class_names."""
        class_names: list[str] | None = Field(None, description="names of the classes, so labels can be names")
        coord_bins: int = Field(64, ge=2, description="grid cells per axis for box corners")
        max_objects: int = Field(30, gt=0)
        """Most objects in one layout (the token sequence is padded to this many)."""
        encode_crop: bool = Field(False, description="append the crop's corner tokens (the paper's models do)")
        coordinates: Literal["corner-cells", "separate"] = Field(
            "corner-cells",
            description="corner-cells: the paper's tokens, one grid cell per box corner (coord_bins**2 ids); "
            "separate: one token per coordinate (coord_bins ids after the classes), learned from less data",
        )
        vocab_size: int | None = Field(None, gt=1, description="default: max(n_classes, coord_bins**2) + 1")
        n_embed: int = Field(512, gt=0)
        """Width of the token embeddings (the UNet's context_dim)."""
        n_layer: int = Field(16, ge=1)
        """Number of (attention, feed-forward) blocks."""
        embedding_dropout: float = Field(0.0, ge=0.0, lt=1.0)
        """Dropout on the token embeddings in training."""
        spatial_map: list[PositiveInt] | None = Field(
            None,
            min_length=2,
            max_length=2,
            description="(h, w), the latent size: also fill the concat slot with a map of the boxes, one channel "
            "per class holding the share of each cell that boxes of that class cover (a denoiser learns where "
            "to draw from such a map far sooner than from tokens alone)",
        )

        @model_validator(mode="after")
        def _consistent(self):
            if self.class_names is not None:
                if len(self.class_names) != self.n_classes:
                    raise ValueError(f"class_names has {len(self.class_names)} names but n_classes is {self.n_classes}")
                if len({n.strip().lower() for n in self.class_names}) != self.n_classes:
                    raise ValueError("class_names must be distinct (case and surrounding spaces are ignored)")
            if self.coordinates == "separate" and self.encode_crop:
                raise ValueError("encode_crop is part of the paper's corner-cell tokens; use coordinates: corner-cells")
            needed = _ids_needed(self.n_classes, self.coord_bins, self.coordinates)
            if self.vocab_size is not None and self.vocab_size <= needed:
                raise ValueError(
                    f"vocab_size {self.vocab_size} must exceed {needed}, the ids classes and coordinates use "
                    "(the last id is the 'none' token)"
                )
            return self

    params: Params

    def example_input(self, batch: int) -> list[list[dict[str, Any]]]:
        return [[{"label": i % self.params.n_classes, "box": [0.1, 0.2, 0.6, 0.9]}] for i in range(batch)]

    def __init__(self, params: Params | None = None) -> None:
        super().__init__(params)
        p = self.params
        self.vocab_size = p.vocab_size or _ids_needed(p.n_classes, p.coord_bins, p.coordinates) + 1
        self.none_token = self.vocab_size - 1
        self.tokens_per_object = TOKENS_PER_OBJECT if p.coordinates == "corner-cells" else 5
        self.max_seq_len = p.max_objects * self.tokens_per_object + (2 if p.encode_crop else 0)
        self._names = {n.strip().lower(): i for i, n in enumerate(p.class_names or [])}
        if p.spatial_map is not None:
            self.slots = ("crossattn", "concat")
        self.transformer = TransformerWrapper(
            self.vocab_size, self.max_seq_len, p.n_embed, p.n_layer, p.embedding_dropout
        )

    # -- tokens -------------------------------------------------------------------------------
    def corner_token(self, x: float, y: float) -> int:
        """Grid cell of a point in [0, 1]^2 (Python's round, as the original)."""
        bins = self.params.coord_bins
        return int(round(y * (bins - 1))) * bins + int(round(x * (bins - 1)))

    def coordinate_token(self, v: float) -> int:
        """One coordinate in [0, 1] as an id after the class ids ('separate' coordinates)."""
        return self.params.n_classes + int(round(v * (self.params.coord_bins - 1)))

    def label_id(self, label: int | str) -> int:
        """A class id, or a class name looked up in ``class_names``."""
        if isinstance(label, str):
            if not self._names:
                raise InputError(f"label {label!r} is a name, but this layout conditioner has no class_names; use ids")
            key = label.strip().lower()
            if key not in self._names:
                close = difflib.get_close_matches(key, list(self._names), n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise InputError(f"unknown label {label!r}.{hint}")
            return self._names[key]
        if not 0 <= label < self.params.n_classes:
            raise InputError(f"label {label} is outside [0, n_classes={self.params.n_classes})")
        return label

    def layout_objects(self, objects: Sequence[LayoutObject | Mapping[str, Any]]) -> list[tuple[int, list[float]]]:
        """One image's layout validated: ``(class id, box)`` per object."""
        if isinstance(objects, (str, bytes, Mapping)) or not isinstance(objects, Sequence):
            raise InputError(f"a layout must be a list of objects, not {type(objects).__name__}")
        if len(objects) > self.params.max_objects:
            raise InputError(f"a layout has {len(objects)} objects, more than max_objects={self.params.max_objects}")
        out = []
        for index, obj in enumerate(objects):
            try:
                obj = obj if isinstance(obj, LayoutObject) else LayoutObject.model_validate(obj)
            except ValidationError as exc:
                raise InputError(f"layout object {index}: {format_validation_error(exc)}") from None
            out.append((self.label_id(obj.label), list(obj.box)))
        return out

    def tokenize_layout(self, objects: Sequence[LayoutObject | Mapping[str, Any]]) -> list[int]:
        """Tokens (max_seq_len,) of one image's layout."""
        return self._tokens(self.layout_objects(objects))

    def _tokens(self, objects: list[tuple[int, list[float]]]) -> list[int]:
        """Tokens (max_seq_len,) of one validated layout."""
        p = self.params
        tokens: list[int] = []
        for label, (x0, y0, x1, y1) in objects:
            if p.coordinates == "corner-cells":
                tokens += [label, self.corner_token(x0, y0), self.corner_token(x1, y1)]
            else:  # [label, x0, y0, x1, y1], coordinates as ids after the class ids
                tokens += [label, *(self.coordinate_token(v) for v in (x0, y0, x1, y1))]
        tokens += [self.none_token] * (self.tokens_per_object * p.max_objects - len(tokens))
        if p.encode_crop:
            tokens += [self.corner_token(0.0, 0.0), self.corner_token(1.0, 1.0)]  # the whole image
        return tokens

    def _validated(self, raw: Any) -> list[list[tuple[int, list[float]]]]:
        """A batch of layouts validated, each a list of ``(class id, box)``."""
        if isinstance(raw, (str, bytes, Mapping)) or not isinstance(raw, Sequence) or len(raw) == 0:
            raise InputError("layouts must be a non-empty list with one list of objects per image")
        return [self.layout_objects(objects) for objects in raw]

    def _token_rows(self, rows: list[list[tuple[int, list[float]]]]) -> Tensor:
        tokens = torch.tensor([self._tokens(row) for row in rows], dtype=torch.long)  # (B, max_seq_len)
        return host_to_device(tokens, self.device)

    def tokenize(self, raw: Any) -> Tensor:
        """Layouts or ready tokens -> validated LongTensor (B, max_seq_len)."""
        if isinstance(raw, Tensor):
            tokens = index_tensor(raw, what="layout tokens", high=self.vocab_size, ndim=2, device=self.device)
            if tokens.shape[1] != self.max_seq_len:
                raise InputError(f"layout tokens must have length {self.max_seq_len}, got {tokens.shape[1]}")
            return tokens
        return self._token_rows(self._validated(raw))

    def boxes_from_tokens(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Tokens (B, max_seq_len) -> class ids (B, max_objects), -1 where none, and boxes (B, max_objects, 4).

        Coordinates come back at the token grid's precision (cell corners or bin values).
        """
        p = self.params
        body = tokens[:, : p.max_objects * self.tokens_per_object].reshape(tokens.shape[0], p.max_objects, -1)
        labels = body[..., 0]  # (B, K)
        present = labels < p.n_classes
        if p.coordinates == "corner-cells":
            bins = p.coord_bins
            corners = body[..., 1:3].clamp(max=bins * bins - 1)  # (B, K, 2): top-left, bottom-right cells
            xy = torch.stack([corners % bins, corners // bins], dim=-1)  # (B, K, 2, 2): (corner, x|y)
            boxes = xy.reshape(*labels.shape, 4).float() / (bins - 1)  # (B, K, 4): x0, y0, x1, y1
        else:
            boxes = (body[..., 1:5] - p.n_classes).clamp(0, p.coord_bins - 1).float() / (p.coord_bins - 1)
        return torch.where(present, labels, -1), boxes

    def _boxes(self, rows: list[list[tuple[int, list[float]]]]) -> tuple[Tensor, Tensor]:
        """Exact class ids (B, max_objects), -1 where none, and boxes (B, max_objects, 4) of validated layouts."""
        empty = [(-1, [0.0, 0.0, 0.0, 0.0])]
        padded = [row + empty * (self.params.max_objects - len(row)) for row in rows]  # one tensor, not one per box
        labels = torch.tensor([[label for label, _ in row] for row in padded], dtype=torch.long)  # (B, K)
        boxes = torch.tensor([[box for _, box in row] for row in padded], dtype=torch.float32)  # (B, K, 4)
        return host_to_device(labels, self.device), host_to_device(boxes, self.device)

    # -- conditioning ---------------------------------------------------------------------------
    def forward(self, raw: Any) -> Conditioning:
        """``raw``: ``[[{"label": ..., "box": [x0, y0, x1, y1]}, ...], ...]`` or tokens (B, max_seq_len).

        With ``spatial_map``, layouts give a map of their exact boxes, tokens one of the boxes at the
        token grid's precision.
        """
        p = self.params
        rows = None if isinstance(raw, Tensor) else self._validated(raw)  # validated once, for both outputs
        tokens = self.tokenize(raw) if rows is None else self._token_rows(rows)
        context = self.transformer(tokens)  # (B, max_seq_len, n_embed)
        if p.spatial_map is None:
            return Conditioning(crossattn=context)
        labels, boxes = self.boxes_from_tokens(tokens) if rows is None else self._boxes(rows)
        box_channels = box_map(labels, boxes, p.n_classes, (p.spatial_map[0], p.spatial_map[1]))  # (B, C, h, w)
        return Conditioning(crossattn=context, concat=box_channels.to(context.dtype))

    def unconditional(self, batch: int) -> Conditioning:
        """The empty layout (every object slot 'none'; an all-zero map)."""
        return self.forward([[] for _ in range(check_batch(batch))])
