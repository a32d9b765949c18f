"""The shipped Shapes model: small fp16 weights that load strictly, a valid spec, and how it was trained."""

from __future__ import annotations

import csv
import math
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import ldmkit
from ldmkit.errors import CheckpointError
from ldmkit.generation import default_model_dir
from ldmkit.pipeline import COMPONENT_FIELDS, SPEC_FILE
from ldmkit.specs import load_spec
from ldmkit.training.spec import AutoencoderTrainSpec, LDMTrainSpec, load_train_spec

ROOT = Path(__file__).resolve().parents[3]
MODEL = ROOT / "plugins" / "ldmkit_shapes" / "model"
TRAIN_SH = ROOT / "examples" / "shapes" / "train.sh"
STAGE7_SH = ROOT / "examples" / "shapes" / "stage7.sh"  # train.sh's stage 7, a script of its own
TASKS = {"uncond", "class2img", "text2img", "layout2img", "semantic2img", "superres", "inpaint", "img2img"}


def test_default_model_dir_is_the_shipped_folder():
    assert default_model_dir().resolve() == MODEL.resolve()


def test_weights_are_small_fp16_safetensors():
    files = sorted(MODEL.glob("*.safetensors"))
    assert [f.stem for f in files] == sorted(COMPONENT_FIELDS)
    assert sum(f.stat().st_size for f in files) <= 30 * 1024 * 1024
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
        assert dtypes <= {"F16", "I64", "I32"} and "F16" in dtypes, (path.name, dtypes)


def test_spec_validates_and_serves_the_eight_tasks():
    spec = load_spec(MODEL / SPEC_FILE)
    assert set(spec.tasks) == TASKS
    assert spec.latent_size == [16, 16] and spec.scale_factor != 1.0


def test_loads_strictly_into_float32(tmp_path):
    pipe = ldmkit.Pipeline.load(MODEL)
    assert pipe.dtype == torch.float32 and pipe.first_stage.downsample == 4
    for name, module in pipe.modules().items():
        with safe_open(str(MODEL / f"{name}.safetensors"), framework="pt") as f:
            assert set(f.keys()) == set(module.state_dict()), name
    # strict: a file missing one tensor is refused, naming the file's component
    broken = tmp_path / "model"
    shutil.copytree(MODEL, broken)
    state = load_file(str(broken / "conditioner.safetensors"))
    state.pop(sorted(state)[0])
    save_file(state, str(broken / "conditioner.safetensors"))
    with pytest.raises(CheckpointError, match="conditioner"):
        ldmkit.Pipeline.load(broken)


def _log(name: str) -> list[dict[str, float]]:
    with open(MODEL / name, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _max_steps_in_train_sh() -> list[int]:
    """The LDM stages' ``--max-steps``, in order: train.sh's, then stage7.sh's (its comments left out)."""
    stage7 = "\n".join(line for line in STAGE7_SH.read_text().splitlines() if not line.lstrip().startswith("#"))
    return [int(m) for text in (TRAIN_SH.read_text(), stage7) for m in re.findall(r"--max-steps (\d+)", text)]


def test_training_logs_ship_and_end_where_train_sh_stops():
    autoencoder = _log("autoencoder.log.csv")
    ae_spec = load_train_spec(ROOT / "examples" / "shapes" / "autoencoder.yaml")
    stage_ends = _max_steps_in_train_sh()  # the LDM stages' --max-steps, in order
    # stage 2, stage 3, stage 4's second (resuming) command, stages 5, 6 and 7
    assert len(stage_ends) == 7, stage_ends
    ldm_logs = {
        "ldm.log.csv": stage_ends[0],
        "ldm-finetune.log.csv": stage_ends[1],
        "ldm-finetune2.log.csv": stage_ends[3],
        "ldm-finetune3.log.csv": stage_ends[4],
        "ldm-finetune4.log.csv": stage_ends[5],
        "ldm-finetune5.log.csv": stage_ends[6],
    }
    for rows, last in [(autoencoder, ae_spec.max_steps)] + [(_log(name), end) for name, end in ldm_logs.items()]:
        steps = [r["step"] for r in rows]
        assert steps == sorted(set(steps)) and steps[-1] == last
        assert all(math.isfinite(r["loss"]) for r in rows)
        if last >= 1000:  # the long runs lowered their loss
            assert rows[-1]["loss"] < rows[0]["loss"], "training lowered the loss"
        else:  # stage 7, a short fine-tune of a converged model on a new label mix: its loss stays level
            assert max(r["loss"] for r in rows) < 1.5 * rows[0]["loss"], "the fine-tune did not diverge"
    assert autoencoder[-1]["rec_loss"] < 0.05  # the reconstruction term itself, not the KL-weighted sum


def test_train_sh_names_specs_that_validate_and_match_the_shipped_spec():
    script = TRAIN_SH.read_text()
    assert "ldmkit train examples/shapes/autoencoder.yaml" in script
    assert "ldmkit train examples/shapes/ldm.yaml" in script
    assert "bash examples/shapes/stage7.sh plugins/ldmkit_shapes/model" in script
    assert "ldmkit.cli train examples/shapes/ldm.yaml" in STAGE7_SH.read_text()
    autoencoder = load_train_spec(ROOT / "examples" / "shapes" / "autoencoder.yaml")
    ldm = load_train_spec(ROOT / "examples" / "shapes" / "ldm.yaml")
    assert isinstance(autoencoder, AutoencoderTrainSpec) and isinstance(ldm, LDMTrainSpec)
    shipped = load_spec(MODEL / SPEC_FILE)
    # the specs train exactly the shipped architecture (the scale factor is measured in training)
    assert autoencoder.first_stage == shipped.first_stage
    for field in ("first_stage", "denoiser", "conditioner", "schedule", "latent_size", "tasks"):
        assert getattr(ldm.pipeline, field) == getattr(shipped, field), field
    assert f"pipeline.scale_factor={shipped.scale_factor}" in script
