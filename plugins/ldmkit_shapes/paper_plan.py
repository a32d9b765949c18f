"""The paper experiment's plan: ``experiment.yaml`` and the per-factor train specs, with the ``--tiny`` overrides.

A specs folder (``examples/paper``) holds ``experiment.yaml`` (factors, checkpoints, evaluation and throughput
settings, and a ``tiny`` section), ``autoencoder-f{f}.yaml`` for every factor above 1 and ``ldm-f{f}.yaml`` for
every factor. The LDM of factor f always gets the first stage its autoencoder was trained with (after any
overrides), so the two cannot drift apart.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, model_validator

from ldmkit.errors import SpecError
from ldmkit.specs import StrictModel, format_validation_error, read_document

EXPERIMENT_FILE = "experiment.yaml"


class EvaluationPlan(StrictModel):
    samples: int = Field(500, ge=2)
    reference: int = Field(2000, ge=2)
    sampler: str = "ddim"
    steps: int = Field(50, ge=1)
    steps_sweep: list[int] = Field(default_factory=list)
    batch: int = Field(250, ge=1)


class ThroughputPlan(StrictModel):
    train_warmup: int = Field(10, ge=1)
    train_steps: int = Field(30, ge=1)
    sample_batch: int = Field(250, ge=1)


class TinyPlan(StrictModel):
    checkpoints: list[int] = Field(min_length=1)
    evaluation: dict[str, Any] = Field(default_factory=dict)
    throughput: dict[str, Any] = Field(default_factory=dict)
    deadline_s: float | None = Field(None, gt=0)
    autoencoder: dict[str, Any] = Field(default_factory=dict)
    ldm: dict[str, Any] = Field(default_factory=dict)


class ExperimentPlan(StrictModel):
    """``experiment.yaml``."""

    factors: list[int] = Field(min_length=1)
    checkpoints: list[int] = Field(min_length=1)
    evaluation: EvaluationPlan = Field(default_factory=EvaluationPlan)
    throughput: ThroughputPlan = Field(default_factory=ThroughputPlan)
    deadline_s: float = Field(400.0, gt=0)
    tiny: TinyPlan | None = None

    @model_validator(mode="after")
    def _check(self) -> ExperimentPlan:
        if any(f < 1 or f & (f - 1) for f in self.factors):
            raise ValueError(f"factors must be powers of two, got {self.factors}")
        if len(set(self.factors)) != len(self.factors):
            raise ValueError(f"factors repeat: {self.factors}")
        if self.checkpoints != sorted(set(self.checkpoints)) or self.checkpoints[0] < 1:
            raise ValueError(f"checkpoints must be increasing positive steps, got {self.checkpoints}")
        return self


@dataclass
class Experiment:
    """A loaded plan with the train-spec mappings of every factor (overrides applied, not yet validated)."""

    folder: Path
    plan: ExperimentPlan
    tiny: bool
    autoencoders: dict[int, dict[str, Any]] = field(default_factory=dict)
    ldms: dict[int, dict[str, Any]] = field(default_factory=dict)

    @property
    def max_steps(self) -> int:
        return self.plan.checkpoints[-1]


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """``set_dotted(d, "a.b", v)`` sets ``d["a"]["b"] = v``; the parent mappings must exist."""
    node = data
    *parents, last = key.split(".")
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            raise SpecError(f"override {key!r}: {part!r} is not a mapping of the spec")
        node = child
    node[last] = copy.deepcopy(value)


def _validated(model: type[StrictModel], data: Any, source: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise SpecError(f"{source}: {format_validation_error(exc)}") from None


def load_experiment(folder: str | Path, *, tiny: bool = False) -> Experiment:
    """Read ``experiment.yaml`` and the specs of its factors from ``folder``; ``tiny`` applies its ``tiny`` section.

    Every LDM spec gets ``max_steps`` = the last checkpoint, and (for f > 1) its autoencoder's first stage.
    """
    folder = Path(folder)
    path = folder / EXPERIMENT_FILE
    if not path.is_file():
        raise SpecError(f"{folder}: no {EXPERIMENT_FILE} (is this the paper specs folder, e.g. examples/paper?)")
    raw = read_document(path)
    plan: ExperimentPlan = _validated(ExperimentPlan, raw, str(path))
    overrides: dict[str, dict[str, Any]] = {"autoencoder": {}, "ldm": {}}
    if tiny:
        if plan.tiny is None:
            raise SpecError(f"{path}: --tiny needs a 'tiny' section")
        t = plan.tiny
        overrides = {"autoencoder": t.autoencoder, "ldm": t.ldm}
        merged = {**raw, "checkpoints": t.checkpoints, "tiny": None}
        merged["evaluation"] = {**raw.get("evaluation", {}), **t.evaluation}
        merged["throughput"] = {**raw.get("throughput", {}), **t.throughput}
        if t.deadline_s is not None:
            merged["deadline_s"] = t.deadline_s
        plan = _validated(ExperimentPlan, merged, f"{path} (tiny)")
    exp = Experiment(folder, plan, tiny)
    for f in plan.factors:
        ae_first_stage = None
        if f > 1:
            ae = _read_spec(folder / f"autoencoder-f{f}.yaml")
            for key, value in overrides["autoencoder"].items():
                set_dotted(ae, key, value)
            exp.autoencoders[f] = ae
            ae_first_stage = ae.get("first_stage")
        ldm = _read_spec(folder / f"ldm-f{f}.yaml")
        for key, value in overrides["ldm"].items():
            set_dotted(ldm, key, value)
        ldm["max_steps"] = exp.max_steps
        if ae_first_stage is not None:
            ldm.setdefault("pipeline", {})["first_stage"] = copy.deepcopy(ae_first_stage)
        exp.ldms[f] = ldm
    return exp


def _read_spec(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SpecError(f"{path}: no such spec (the experiment's factors name it)")
    data = read_document(path)
    if not isinstance(data, dict):
        raise SpecError(f"{path}: a train spec must be a mapping")
    return data


__all__ = ["EvaluationPlan", "Experiment", "ExperimentPlan", "ThroughputPlan", "load_experiment", "set_dotted"]
