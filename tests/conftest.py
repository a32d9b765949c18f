"""Fixtures shared by the test modules."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import ldmkit
from ldmkit.checkpoints import save_state_dict
from ldmkit.training import load_train_spec

LDM_SPEC = Path(__file__).resolve().parents[1] / "examples" / "train" / "tiny-ldm.yaml"


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread (and the CI machine has two cores); restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def first_stage_weights(tmp_path_factory) -> Path:
    """Weights of the LDM example's (untrained, seeded) first stage."""
    spec = load_train_spec(LDM_SPEC)
    comp = spec.pipeline.first_stage
    torch.manual_seed(0)
    model = ldmkit.get_registry().create("first_stage", comp.type, comp.params)
    path = tmp_path_factory.mktemp("fs") / "first_stage.safetensors"
    save_state_dict(model.state_dict(), path)
    return path
