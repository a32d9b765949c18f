"""A pipeline trained from the docs' example specs serves its conditioner's tasks from the CLI.

A train spec's pipeline may carry a ``tasks:`` section (the export writes it); a task without an entry
finds its part of a composite conditioner by itself (``ConditionedTask.part_for``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from PIL import Image

import ldmkit
from ldmkit.cli import main
from ldmkit.errors import SpecError
from ldmkit.generation import default_model_dir
from ldmkit.training import load_train_spec, train

ROOT = Path(__file__).resolve().parents[3]
AE_SPEC = ROOT / "examples" / "train" / "tiny-autoencoder.yaml"
LDM_SPEC = ROOT / "examples" / "train" / "tiny-ldm.yaml"

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_the_docs_training_path_ends_in_a_class2img_picture(tmp_path, capsys):
    ae, ldm, out = tmp_path / "ae", tmp_path / "ldm", tmp_path / "out"
    assert main(["train", str(AE_SPEC), "--out-dir", str(ae), "--max-steps", "2", "--no-progress"]) == 0
    weights = f"first_stage_weights={ae / 'first_stage.safetensors'}"
    argv = ["train", str(LDM_SPEC), "--out-dir", str(ldm), "--max-steps", "2", "--no-progress", "--set", weights]
    assert main(argv) == 0
    folder = ldm / "pipeline"
    argv = ["generate", "--spec", str(folder), "--task", "class2img", "--label", "3", "-n", "1", "--steps", "2"]
    assert main([*argv, "--out", str(out), "--no-progress"]) == 0
    (picture,) = sorted(out.glob("*.png"))
    assert Image.open(picture).size == (16, 16)


def test_a_task_the_conditioner_cannot_take_is_refused_with_exit_2(tmp_path, first_stage_weights, capsys):
    overrides = {"out_dir": str(tmp_path), "first_stage_weights": str(first_stage_weights), "max_steps": 1}
    folder = train(load_train_spec(LDM_SPEC, {**overrides, "progress": False})).export
    argv = ["generate", "--spec", str(folder), "--task", "text2img", "--prompt", "a red circle", "-n", "1"]
    assert main([*argv, "--steps", "1", "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "no part of the conditioner can take its input" in err and "label (class-embedder)" in err
    assert "tasks.text2img.params.part" in err


def test_a_train_specs_tasks_are_exported_and_used(tmp_path, first_stage_weights):
    names = ["red circle", "green circle", "blue circle", "yellow circle"]
    tasks = {"class2img": {"type": "class2img", "params": {"class_names": names, "guidance_scale": 2.0}}}
    overrides = {"out_dir": str(tmp_path), "first_stage_weights": str(first_stage_weights), "max_steps": 1}
    spec = load_train_spec(LDM_SPEC, {**overrides, "progress": False, "pipeline.tasks": tasks})
    folder = train(spec).export
    written = yaml.safe_load((folder / "spec.yaml").read_text())["tasks"]
    assert written["class2img"]["params"]["class_names"] == names
    pipe = ldmkit.Pipeline.load(folder)
    task = pipe.task("class2img")
    assert task.label_id("yellow circle") == 3 and task.params.guidance_scale == 2.0
    assert task.part_for(pipe.conditioner) == "label"  # inferred: the spec names no part
    argv = ["generate", "--spec", str(folder), "--task", "class2img", "--label", "yellow circle", "-n", "1"]
    assert main([*argv, "--steps", "1", "--out", str(tmp_path / "out"), "--no-progress"]) == 0


@pytest.fixture(scope="module")
def shipped() -> ldmkit.Pipeline:
    return ldmkit.Pipeline.load(default_model_dir())


@pytest.mark.parametrize("name", ["class2img", "text2img", "layout2img", "semantic2img", "inpaint"])
def test_inferred_parts_match_the_shipped_specs_choice(shipped, name):
    task = ldmkit.get_registry().create("task", name)  # defaults: no part named
    assert task.params.part is None
    assert task.part_for(shipped.conditioner) == shipped.spec.tasks[name].params["part"]


def test_an_ambiguous_part_must_be_named(shipped):
    # superres' low-resolution picture and semantic2img's map both feed a spatial rescaler; neither part is
    # named after superres or its input, so the spec has to say which
    task = ldmkit.get_registry().create("task", "superres")
    with pytest.raises(SpecError, match=r"more than one part.*lowres \(spatial-rescaler\).*tasks\.superres\.params"):
        task.part_for(shipped.conditioner)
    named = ldmkit.get_registry().create("task", "superres", {"part": "lowres"})
    assert named.part_for(shipped.conditioner) == "lowres"


def test_a_conditioner_without_parts_takes_the_input_whole():
    task = ldmkit.get_registry().create("task", "class2img")
    conditioner = ldmkit.get_registry().create("conditioner", "class-embedder", {"embed_dim": 8, "n_classes": 4})
    assert task.part_for(conditioner) is None
    assert task.wrap(7, conditioner) == 7


def test_unconditional_needs_no_part(shipped):
    task = ldmkit.get_registry().create("task", "uncond")
    cond, uncond = task.conditioning(shipped, task.Request(), 2)
    assert uncond is None and cond.crossattn is not None


@pytest.mark.parametrize("bad", [None, 3])
def test_no_inference_without_a_conditioner(bad):
    task = ldmkit.get_registry().create("task", "class2img")
    assert task.wrap(5) == 5 and task.part_for(bad) is None
