"""``ldmkit validate``: pipeline specs, train specs and pipeline folders, each recognised and checked fully."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from cli_runner import run_cli

from ldmkit.generation import default_model_dir

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
# examples/paper/experiment.yaml is no spec but the paper experiment's settings, which `ldmkit paper` reads
# and checks (tests/plugins/ldmkit_shapes/test_paper.py)
EXPERIMENT = EXAMPLES / "paper" / "experiment.yaml"
EXAMPLE_DOCUMENTS = [
    path for path in sorted(EXAMPLES.rglob("*.yaml")) + sorted(EXAMPLES.rglob("*.json")) if path != EXPERIMENT
]
KIND = {"specs": "pipeline spec", "train": "train spec", "shapes": "train spec", "paper": "train spec"}


def refused(path: Path, expected: str) -> None:
    code, stdout, stderr = run_cli(["validate", str(path)])
    assert code == 2 and expected in stderr, (stdout, stderr)
    assert stderr.startswith("ldmkit: error:") and "Traceback" not in stderr and stderr.count("\n") == 1, stderr


def test_the_examples_cover_both_kinds():
    assert {path.parent.name for path in EXAMPLE_DOCUMENTS} >= {"specs", "train", "shapes"}


@pytest.mark.parametrize("path", EXAMPLE_DOCUMENTS, ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_every_example_document_is_valid_and_named_for_what_it_is(path: Path):
    code, stdout, stderr = run_cli(["validate", str(path)])
    assert code == 0, stderr
    assert stdout.startswith(f"{path}: valid {KIND[path.parent.name]}"), stdout


def test_the_shipped_model_folder_is_valid():
    code, stdout, stderr = run_cli(["validate", str(default_model_dir())])
    assert code == 0, stderr
    assert "valid pipeline folder" in stdout and "denoiser.safetensors" in stdout, stdout


def _edited(source: Path, tmp_path: Path, edit) -> Path:
    data = yaml.safe_load(source.read_text())
    edit(data)
    path = tmp_path / source.name
    path.write_text(yaml.safe_dump(data))
    return path


def _part(data: dict) -> dict:
    """The class-label part of tiny-ldm.yaml's composite conditioner."""
    return data["pipeline"]["conditioner"]["params"]["parts"]["label"]


TRAIN = EXAMPLES / "train" / "tiny-ldm.yaml"
BROKEN = {
    "train: optimizer field": (lambda d: d["optimizer"].update(lr=-1.0), "optimizer.lr"),
    "train: unknown field": (lambda d: d.update(epochs=3), "epochs: Extra inputs"),
    "train: pipeline param": (lambda d: d["pipeline"]["denoiser"]["params"].update(bogus=1), "pipeline.denoiser"),
    "train: dataset param": (lambda d: d["dataset"]["params"].update(bogus=1), "dataset.params.bogus"),
    "train: unknown stage": (lambda d: d.update(stage="finetune"), "stage: must be one of"),
    "part: import path": (
        lambda d: _part(d).update(type="os.system"),
        "pipeline.conditioner.params.parts.label.type: 'os.system' is not a component name",
    ),
    "part: misspelled type": (lambda d: _part(d).update(type="clas-embedder"), "Did you mean 'class-embedder'?"),
    "part: unknown param": (
        lambda d: _part(d)["params"].update(bogus=1),
        "pipeline.conditioner.params.parts.label.params.bogus: Extra inputs are not permitted",
    ),
    "part: bad param value": (lambda d: _part(d)["params"].update(n_classes=0), "parts.label.params.n_classes"),
    "part: absurd size": (
        lambda d: _part(d)["params"].update(n_classes=1_000_000_000, null_class=0),
        "LDMKIT_MAX_PARAMETERS",
    ),
}


@pytest.mark.parametrize("case", list(BROKEN), ids=list(BROKEN))
def test_a_broken_train_spec_exits_2_naming_the_field(case, tmp_path):
    edit, expected = BROKEN[case]
    refused(_edited(TRAIN, tmp_path, edit), expected)


def test_a_composite_part_in_a_pipeline_spec_is_checked(tmp_path):
    spec = yaml.safe_load((default_model_dir() / "spec.yaml").read_text())
    spec["conditioner"]["params"]["parts"]["x"] = {"type": "os.system"}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    refused(path, "conditioner.params.parts.x.type: 'os.system' is not a component name")


def test_the_size_limit_can_be_raised_deliberately(monkeypatch, tmp_path):
    path = _edited(TRAIN, tmp_path, lambda d: _part(d)["params"].update(n_classes=400_000_000, null_class=0))
    refused(path, "12,800,000,000 parameters")
    monkeypatch.setenv("LDMKIT_MAX_PARAMETERS", str(20_000_000_000))
    code, stdout, stderr = run_cli(["validate", str(path)])
    assert code == 0 and "valid train spec" in stdout, stderr


def test_a_broken_pipeline_spec_exits_2_naming_the_field(tmp_path):
    path = _edited(EXAMPLES / "specs" / "txt2img-tiny.yaml", tmp_path, lambda d: d["sampling"].update(steps=0))
    refused(path, "sampling.steps")


def test_a_broken_pipeline_folder_exits_2(tmp_path):
    folder = Path(shutil.copytree(default_model_dir(), tmp_path / "model"))
    (folder / "denoiser.safetensors").write_bytes(b"not safetensors")
    refused(folder, "denoiser.safetensors")
    refused(tmp_path, "holds no spec.yaml")
