"""``stage: lora``: a LoRA of the shipped Shapes model trained with its weights frozen, saved in kohya's layout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import ldmkit
from ldmkit.conditioning import Conditioning
from ldmkit.errors import SpecError
from ldmkit.generation import default_model_dir
from ldmkit.training import load_train_spec, train, validate_train_spec
from ldmkit.training.lora import reword_texts

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "train" / "shapes-lora.yaml"


def _spec(out_dir: Path, **changes: Any) -> dict[str, Any]:
    spec = load_train_spec(EXAMPLE).model_dump(mode="json")
    spec.update({"batch_size": 2, "max_steps": 2, "log_every": 1, "checkpoint_every": 2, "progress": False})
    spec.update({"out_dir": str(out_dir), "uncond_rate": 0.0, "optimizer": {"lr": 0.05, "weight_decay": 0.0}})
    spec.update(changes)
    return spec


def _weights(pipe: ldmkit.Pipeline) -> dict[str, torch.Tensor]:
    return {f"{name}.{k}": v.detach().clone() for name, m in pipe.modules().items() for k, v in m.state_dict().items()}


@pytest.mark.slow
def test_lora_training_changes_only_the_lora_and_saves_a_loadable_kohya_file(tmp_path: Path) -> None:
    seen: list[Any] = []
    result = train(_spec(tmp_path), resume=False, callbacks=[lambda step, stage: seen.append(stage)])
    stage = seen[-1]
    base = ldmkit.Pipeline.load(default_model_dir())
    # the base weights are what they were, bit for bit (the LoRA runs beside them, unmerged)
    trained, original = _weights(stage.pipe), _weights(base)
    assert trained.keys() == original.keys()
    assert all(torch.equal(trained[k], original[k]) for k in original), "a base weight changed"
    # the LoRA learned: every up matrix starts at zero, and some are not zero now
    ups = stage.lora.parameters()[1::2]
    assert any(bool(up.abs().sum() > 0) for up in ups)

    # kohya's layout: lora_unet_<layer>.lora_down/lora_up/alpha, nothing for the text encoder
    assert result.export == tmp_path / "lora.safetensors"
    state = load_file(result.export)
    assert state and all(k.startswith("lora_unet_") for k in state)
    stems = {k.rsplit(".", 2)[0] if k.endswith("weight") else k.rsplit(".", 1)[0] for k in state}
    for stem in stems:
        assert {f"{stem}.lora_down.weight", f"{stem}.lora_up.weight", f"{stem}.alpha"} <= state.keys()
        assert float(state[f"{stem}.alpha"]) == 4.0

    # the file loads back through the adapters plugin and the denoiser computes what it computed in training
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 16, 16, generator=g)  # (B, C, h, w)
    t = torch.tensor([10, 700])
    cond = base.conditioner({"text": ["a circle", "a red square"]})
    with torch.no_grad():
        before = base.denoiser(x, t, cond)
        in_training = stage.denoiser(x, t, cond)
        base.load_lora(result.export)
        loaded = base.denoiser(x, t, cond)
    torch.testing.assert_close(loaded, in_training, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(loaded, before)
    assert isinstance(cond, Conditioning)


def test_reword_replaces_whole_words_only() -> None:
    texts = ["a magenta circle", "a Magenta square and a red triangle", "a magentas"]
    assert reword_texts(texts, {"magenta": ""}) == ["a circle", "a square and a red triangle", "a magentas"]
    assert reword_texts(["a red circle"], {"red": "cyan"}) == ["a cyan circle"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"lora": {"rank": 0}}, "lora.rank"),
        ({"reword": {"two words": ""}}, "reword"),
        ({"uncond_rate": 1.0}, "uncond_rate"),
        ({"base": ""}, "base"),
    ],
)
def test_bad_lora_specs_are_refused_naming_the_field(tmp_path: Path, change: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        validate_train_spec(_spec(tmp_path, **change))


def test_a_base_that_is_neither_a_folder_nor_a_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no such pipeline folder"):
        train(_spec(tmp_path, base=str(tmp_path / "missing" / "model")), resume=False)


def test_layers_that_match_nothing_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="lora: no layer of the denoiser matches"):
        train(_spec(tmp_path, lora={"rank": 2, "layers": "no_such_layer$"}), resume=False)


def test_ldmkit_validate_checks_the_example(capsys: pytest.CaptureFixture[str]) -> None:
    from ldmkit.cli import main

    assert main(["validate", str(EXAMPLE)]) == 0
    assert "valid train spec (stage lora, dataset=shapes; base=shapes, LoRA rank 4)" in capsys.readouterr().out
