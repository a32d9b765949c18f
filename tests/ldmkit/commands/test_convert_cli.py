"""``ldmkit convert CONFIG CKPT OUTDIR``: CompVis checkpoints become pipeline folders that compute the same thing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from payloads import Payload  # tests/payloads.py
from safetensors.torch import load_file

from ldmkit import Pipeline, compvis
from ldmkit.cli import main

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "compvis"
CASES = ["txt2img-kl", "cin-vq"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.mark.parametrize("case", CASES)
def test_convert_gives_a_bit_identical_pipeline(case, tmp_path, capsys):
    d = FIXTURES / case
    out = tmp_path / "converted"
    assert main(["convert", str(d / "config.yaml"), str(d / "model.ckpt"), str(out)]) == 0
    assert str(out) in capsys.readouterr().out

    original = compvis.load(d / "config.yaml", d / "model.ckpt")
    converted = Pipeline.load(out)
    assert converted.spec == original.spec
    assert converted.scale_factor == original.scale_factor == json.loads((d / "case.json").read_text())["scale_factor"]
    assert set(converted.modules()) == set(original.modules())

    e = load_file(str(d / "expected.safetensors"))
    key = "tokens" if "tokens" in e else "class_label"
    with torch.no_grad():
        cond, cond2 = original.conditioner(e[key]), converted.conditioner(e[key])
        uncond = original.conditioner(e[f"uncond_{key}"])
        assert torch.equal(cond2.crossattn, cond.crossattn)
        assert torch.equal(
            converted.denoiser(e["x_t"], e["timesteps"], cond), original.denoiser(e["x_t"], e["timesteps"], cond)
        )
        assert torch.equal(converted.decode(e["x_t"]), original.decode(e["x_t"]))
        assert torch.equal(converted.encode(e["image"]), original.encode(e["image"]))
        kwargs = dict(sampler="ddim", steps=4, x_T=e["x_T"], uncond=uncond, guidance_scale=2.5)
        assert torch.equal(converted.sample(cond, **kwargs), original.sample(cond, **kwargs))


def _error(capsys) -> str:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    assert captured.err.startswith("ldmkit: error: ")
    return captured.err


def _config(tmp_path: Path, edit) -> Path:
    config = yaml.safe_load((FIXTURES / "cin-vq" / "config.yaml").read_text())
    edit(config["model"])
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _set(section: str, key: str, value):
    def edit(model: dict) -> None:
        target = model if section == "model" else model["params"][section] if section else model["params"]
        target[key] = value

    return edit


CKPT = FIXTURES / "cin-vq" / "model.ckpt"
CONFIG = FIXTURES / "cin-vq" / "config.yaml"


def test_missing_config(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "nope.yaml"), str(CKPT), str(tmp_path / "out")]) == 2
    assert "nope.yaml" in _error(capsys)
    assert not (tmp_path / "out").exists()


def test_missing_checkpoint(tmp_path, capsys):
    assert main(["convert", str(CONFIG), str(tmp_path / "nope.ckpt"), str(tmp_path / "out")]) == 2
    assert "nope.ckpt" in _error(capsys)
    assert not (tmp_path / "out").exists()


def test_malicious_pickle(tmp_path, capsys):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "model.ckpt"
    state = torch.load(CKPT, weights_only=True)
    torch.save({**state, "hyper_parameters": Payload(marker)}, ckpt)
    assert main(["convert", str(CONFIG), str(ckpt), str(tmp_path / "out")]) == 2
    err = _error(capsys)
    assert "system" in err and "allowlist" in err
    assert not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "content",
    [b"\x00\x01\xff\xfe binary", b"model: [unclosed\n  - x: {", b"just a sentence\n", b"- a list\n- of things\n", b""],
    ids=["binary", "broken-yaml", "scalar", "list", "empty"],
)
def test_config_that_is_not_a_yaml_mapping(content, tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_bytes(content)
    assert main(["convert", str(config), str(CKPT), str(tmp_path / "out")]) == 2
    assert "config.yaml" in _error(capsys)


@pytest.mark.parametrize(
    "edit, expected",
    [
        (_set("model", "target", "ldm.models.diffusion.ddpm.Elsewhere"), "Elsewhere"),
        (_set("model", "params", [1, 2]), "model.params"),
        (_set("model", "target", None), "model.target"),
        (_set("", "timesteps", "lots"), "timesteps"),
        (_set("unet_config", "params", "small"), "unet_config.params"),
        (_set("unet_config", "target", "mymodels.unet.BetterUNet"), "BetterUNet"),
        (_set("cond_stage_config", "target", "os.system"), "os.system"),
        (_set("first_stage_config", "target", "taming.models.vqgan.VQModel"), "taming.models.vqgan.VQModel"),
        (_set("first_stage_config", "params", 7), "first_stage_config"),
    ],
    ids=[
        "model-target",
        "params-list",
        "no-target",
        "timesteps",
        "unet-params",
        "unet",
        "cond",
        "first-stage",
        "fs-params",
    ],
)
def test_bad_config_content(edit, expected, tmp_path, capsys):
    config = _config(tmp_path, edit)
    assert main(["convert", str(config), str(CKPT), str(tmp_path / "out")]) == 2
    assert expected in _error(capsys)
    assert not (tmp_path / "out").exists()


def test_unknown_target_lists_the_known_ones(tmp_path, capsys):
    config = _config(tmp_path, _set("cond_stage_config", "target", "ldm.modules.encoders.modules.FrozenT5Embedder"))
    assert main(["convert", str(config), str(CKPT), str(tmp_path / "out")]) == 2
    err = _error(capsys)
    assert "FrozenT5Embedder" in err and "ldm.modules.encoders.modules.ClassEmbedder" in err


def test_checkpoint_of_another_model(tmp_path, capsys):
    other = FIXTURES / "txt2img-kl" / "model.ckpt"
    assert main(["convert", str(CONFIG), str(other), str(tmp_path / "out")]) == 2
    err = _error(capsys)
    assert "model.ckpt" in err and "does not fit" in err
