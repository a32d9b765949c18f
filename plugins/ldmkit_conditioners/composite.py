"""``composite``: several conditioners side by side, their slots merged into one Conditioning."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal, cast

import torch
from pydantic import ConfigDict, Field, ValidationError, field_validator
from torch import Tensor, nn

import ldmkit
from ldmkit import (
    Conditioner,
    Conditioning,
    FirstStage,
    InputError,
    SpecError,
    UnknownComponentError,
)
from ldmkit.building import building_with, current_registry
from ldmkit.checks import check_batch, host_to_device
from ldmkit.conditioning import SLOTS
from ldmkit.interfaces import Slot
from ldmkit.sizing import common_map_size, fit_concat
from ldmkit.specs import ComponentSpec

if TYPE_CHECKING:
    from ldmkit.registry import Registry


class PartSpec(ComponentSpec):
    """One part: a registered conditioner ``type``, its ``params``, and its guidance-dropout probability.

    A part is a component spec of kind ``conditioner``: a spec validated against a registry has each
    part's ``params`` validated by that conditioner's ``Params`` too.
    """

    kind: ClassVar[str | None] = "conditioner"
    model_config = ConfigDict(frozen=True)

    dropout: float = Field(0.0, ge=0.0, le=1.0, description="probability of the unconditional input in training")
    weight: float = Field(1.0, gt=0.0, description="'one-part' training: relative chance that this part is kept")


class CompositeConditioner(Conditioner):
    """Runs named parts on ``{part_name: raw}`` and merges their outputs (``Conditioning.merge``, in part order).

    A part given as ``None`` or left out uses its unconditional input. :meth:`forward_train` replaces
    each sample's part by its unconditional with that part's ``dropout`` probability, which trains a
    model for classifier-free guidance. Parts are child modules (state dict keys ``parts.<name>.*``),
    built through ``registry``, by default the registry building this conditioner
    (:func:`ldmkit.building.current_registry`), so a pipeline's own registry supplies the parts too.
    """

    name = "composite"
    example_params = {
        "parts": {
            "label": {"type": "class-embedder", "params": {"embed_dim": 8, "n_classes": 4, "null_class": 3}},
            "map": {"type": "spatial-rescaler", "params": {"in_channels": 1, "out_size": [8, 8]}},
        }
    }
    slots: tuple[Slot, ...] = SLOTS  # narrowed per instance to what the parts fill

    class Params(ldmkit.Params):
        parts: dict[str, PartSpec] = Field(min_length=1)
        """The conditioners side by side: part name -> {type, params, dropout, weight}."""
        training_mode: Literal["independent", "one-part"] = Field(
            "independent",
            description="independent: each part dropped with its own 'dropout'; one-part: each sample keeps one "
            "part (chosen by 'weight') and every other part is unconditional, or none with 'uncond_rate', so a "
            "multi-task model learns each task alone",
        )
        uncond_rate: float = Field(0.1, ge=0.0, le=1.0, description="'one-part' training: all parts unconditional")

        @field_validator("parts")
        @classmethod
        def _names(cls, parts: dict[str, PartSpec]) -> dict[str, PartSpec]:
            for name in parts:
                if not name.isidentifier():
                    raise ValueError(f"part name {name!r} must be an identifier (letters, digits, '_')")
            return parts

    params: Params

    def example_input(self, batch: int) -> dict[str, Any]:
        parts: dict[str, Conditioner] = dict(self.parts.items())  # type: ignore[arg-type]  # ModuleDict of Conditioners
        return {name: part.example_input(batch) for name, part in parts.items()}

    def __init__(self, params: Params | None = None, registry: Registry | None = None) -> None:
        super().__init__(params)
        registry = registry or current_registry()
        self.parts = nn.ModuleDict()
        for part_name, spec in self.params.parts.items():
            try:
                cls = registry.get("conditioner", spec.type)
            except UnknownComponentError as exc:
                raise UnknownComponentError(f"composite part {part_name!r}: {exc}") from None
            try:
                with building_with(registry):  # a part's own children come from the same registry
                    self.parts[part_name] = cls.from_params(spec.params_for(registry) or spec.params)
            except (ValidationError, SpecError) as exc:
                raise SpecError(f"composite part {part_name!r} ({spec.type}): {exc}") from None
        filled = [slot for part in self._parts.values() for slot in part.slots]
        if filled.count("vector") > 1:
            raise SpecError("composite: at most one part may fill the 'vector' slot (vectors cannot be merged)")
        self.slots = tuple(slot for slot in SLOTS if slot in filled)

    @property
    def _parts(self) -> Mapping[str, Conditioner]:
        """``parts`` as the conditioners they are (a ModuleDict types its values as plain modules)."""
        return cast("Mapping[str, Conditioner]", self.parts)

    def attach(self, first_stage: FirstStage) -> None:
        for part in self._parts.values():
            part.attach(first_stage)

    # -- conditioning ---------------------------------------------------------------------------
    def _check_raw(self, raw: Any) -> Mapping[str, Any]:
        if not isinstance(raw, Mapping):
            raise InputError(f"composite input must be a dict {{part name: input}}, not {type(raw).__name__}")
        unknown = sorted(set(raw) - set(self.parts))
        if unknown:
            raise InputError(f"composite: unknown part(s) {unknown}; parts are {list(self.parts)}")
        return raw

    def _conditionings(self, raw: Any) -> dict[str, Conditioning]:
        """Each part's conditioning; missing or ``None`` parts use their unconditional."""
        raw = self._check_raw(raw)
        given = {name: self.parts[name](value) for name, value in raw.items() if value is not None}
        sizes = {name: cond.batch_size for name, cond in given.items()}
        if not given:
            raise InputError("composite: no part was given; use unconditional(batch) for an empty conditioning")
        if len(set(sizes.values())) > 1:
            raise InputError(f"composite: the parts have different batch sizes {sizes}")
        batch = next(iter(sizes.values()))
        return {name: given[name] if name in given else part.unconditional(batch) for name, part in self._parts.items()}

    def _merge(self, conds: list[Conditioning]) -> Conditioning:
        size = common_map_size(conds)
        if size is not None:  # a part drawn from an input of another size: the other parts' constant maps follow it
            conds = [fit_concat(cond, size, "composite part's") for cond in conds]
        out = conds[0]
        for cond in conds[1:]:
            try:
                out = out.merge(cond)
            except (RuntimeError, ValueError) as exc:
                raise SpecError(f"composite: the parts' conditionings cannot be merged: {exc}") from None
        return out

    def forward(self, raw: Any) -> Conditioning:
        """``raw``: ``{part_name: raw input or None}``."""
        return self._merge(list(self._conditionings(raw).values()))

    def forward_train(self, raw: Any, generator: torch.Generator | None = None) -> Conditioning:
        """Like :meth:`forward`, but each sample's part is unconditional with the part's ``dropout`` probability.

        The random draws come from ``generator`` (on the CPU), one per sample per part with dropout,
        in part order, so a seeded generator makes the choice reproducible.
        """
        conds = self._conditionings(raw)
        if self.params.training_mode == "one-part":
            return self._merge(list(self._keep_one_part(conds, generator).values()))
        for name, part in self._parts.items():
            p = self.params.parts[name].dropout
            if p <= 0.0:
                continue
            cond = conds[name]
            batch = cond.batch_size
            assert batch is not None  # every part's conditioning fills a slot
            drop = torch.rand(batch, generator=generator) < p  # (B,) on the CPU
            if bool(drop.any()):
                conds[name] = _where(drop, part.unconditional(batch), cond)
        return self._merge(list(conds.values()))

    def _keep_one_part(
        self, conds: dict[str, Conditioning], generator: torch.Generator | None
    ) -> dict[str, Conditioning]:
        names = list(self.parts)
        batch = next(iter(conds.values())).batch_size
        assert batch is not None  # every part's conditioning fills a slot
        weights = torch.tensor([self.params.parts[n].weight for n in names], dtype=torch.float64)
        kept = torch.multinomial(weights, batch, replacement=True, generator=generator)  # (B,) part index
        none = torch.rand(batch, generator=generator) < self.params.uncond_rate  # (B,)
        out = {}
        for index, name in enumerate(names):
            drop = (kept != index) | none
            out[name] = _where(drop, self._parts[name].unconditional(batch), conds[name]) if drop.any() else conds[name]
        return out

    def unconditional(self, batch: int) -> Conditioning:
        """Every part's unconditional, merged."""
        batch = check_batch(batch)
        return self._merge([part.unconditional(batch) for part in self._parts.values()])


def _where(drop: Tensor, uncond: Conditioning, cond: Conditioning) -> Conditioning:
    """Per sample: ``uncond`` where ``drop`` else ``cond`` (both must fill the same slots with equal shapes)."""
    out: dict[str, Tensor | None] = {}
    on_device: dict[torch.device, Tensor] = {}  # the mask sent once per device, not once per slot
    for slot in SLOTS:
        a, b = getattr(uncond, slot), getattr(cond, slot)
        if a is None or b is None:
            if a is not b:
                raise SpecError(f"composite: a part's unconditional and conditional fill different slots ({slot})")
            out[slot] = None
            continue
        if a.shape != b.shape:
            raise SpecError(
                f"composite: a part's unconditional {slot} {tuple(a.shape)} and conditional {tuple(b.shape)} "
                "differ in shape, so samples cannot be swapped"
            )
        if b.device not in on_device:
            on_device[b.device] = host_to_device(drop, b.device)
        mask = on_device[b.device].view(-1, *([1] * (b.ndim - 1)))  # (B, 1, ...)
        out[slot] = torch.where(mask, a, b)
    return Conditioning(**out)
