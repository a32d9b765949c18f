"""Specs asking for models that cannot be built are refused before anything is allocated, on every path.

A parameter count past ``LDMKIT_MAX_PARAMETERS`` (parts of a composite conditioner included), a
component of more than ``MAX_MODULES`` modules, tensors whose size overflows, or one picture
needing a tensor past ``LDMKIT_MAX_ACTIVATION_BYTES``: a ``SpecError`` naming what was asked and
how to raise the limit, from ``Pipeline.from_spec``, pipeline folders, ``generate --spec``,
``train``, ``convert`` and ``validate`` alike.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from cli_runner import run_cli_stderr as run_cli

from ldmkit import Pipeline
from ldmkit.errors import SpecError
from ldmkit.generation import default_model_dir
from ldmkit.pipeline import SPEC_FILE
from ldmkit.spec_checks import MAX_ACTIVATION_BYTES_ENV, MAX_MODULES, MAX_PARAMETERS_ENV, largest_activation
from ldmkit.specs import load_spec

SHIPPED = load_spec(default_model_dir() / SPEC_FILE).model_dump(mode="json")
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
COMPVIS = Path(__file__).resolve().parents[1] / "fixtures" / "compvis" / "cin-vq"


def edited(edit) -> dict[str, Any]:
    spec = copy.deepcopy(SHIPPED)
    edit(spec)
    return spec


# what the issue asked for, and what each refusal must say
HUGE: dict[str, tuple[Any, str]] = {
    "model_channels 10^9": (
        lambda s: s["denoiser"]["params"].update(model_channels=10**9),
        "denoiser: unet with these params has tensors too large",
    ),
    "num_res_blocks 10^6": (
        lambda s: s["denoiser"]["params"].update(num_res_blocks=10**6),
        f"denoiser: unet with these params has more than {MAX_MODULES:,} modules",
    ),
    "n_classes 10^9 in a composite part": (
        lambda s: s["conditioner"]["params"]["parts"]["label"]["params"].update(n_classes=10**9),
        "conditioner: composite with these params has 256,002,143,040 parameters (1,024.0 GB in float32), "
        f"more than the limit of 10,000,000,000; set {MAX_PARAMETERS_ENV}",
    ),
    "latent_size 4096x4096": (
        lambda s: s.update(latent_size=[4096, 4096]),
        "one picture of latent size [4096, 4096] needs a tensor of 34,359,738,368 values (128.0 GiB in float32)",
    ),
}


@pytest.mark.parametrize("case", list(HUGE), ids=list(HUGE))
def test_from_spec_refuses_sizes_that_cannot_be_built(case: str) -> None:
    edit, expected = HUGE[case]
    with pytest.raises(SpecError) as info:
        Pipeline.from_spec(edited(edit))
    assert expected in str(info.value)
    assert any(how in str(info.value) for how in ("raise it deliberately", "fixed limit", "overflow"))


@pytest.mark.parametrize("case", ["n_classes 10^9 in a composite part", "latent_size 4096x4096"])
@pytest.mark.parametrize("command", ["validate", "generate"])
def test_the_cli_refuses_them_with_exit_2(case: str, command: str, tmp_path: Path) -> None:
    edit, expected = HUGE[case]
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(edited(edit)))
    argv = {
        "validate": ["validate", str(path)],
        "generate": ["generate", "--spec", str(path), "--task", "uncond", "-n", "1", "--out", str(tmp_path / "out")],
    }[command]
    code, stderr = run_cli(argv)
    assert code == 2 and stderr.startswith(f"ldmkit: error: {path}: ") and expected in stderr, stderr
    assert "Traceback" not in stderr and not (tmp_path / "out").exists()


def test_the_limits_are_raised_deliberately(monkeypatch) -> None:
    spec = edited(lambda s: s.update(latent_size=[64, 64]))
    Pipeline.from_spec(spec)  # 64x64 latents of the shipped model: within the default limits
    monkeypatch.setenv(MAX_ACTIVATION_BYTES_ENV, str(1 << 20))
    with pytest.raises(SpecError, match=f"more than the limit of 1,048,576 bytes; set {MAX_ACTIVATION_BYTES_ENV}"):
        Pipeline.from_spec(spec)
    monkeypatch.setenv(MAX_ACTIVATION_BYTES_ENV, str(1 << 40))
    monkeypatch.setenv(MAX_PARAMETERS_ENV, "1000")
    with pytest.raises(SpecError, match=f"first_stage: .* more than the limit of 1,000; set {MAX_PARAMETERS_ENV}"):
        Pipeline.from_spec(spec)
    monkeypatch.setenv(MAX_PARAMETERS_ENV, "10000000000000")
    assert isinstance(Pipeline.from_spec(spec), Pipeline)
    monkeypatch.setenv(MAX_PARAMETERS_ENV, "lots")
    with pytest.raises(SpecError, match=f"{MAX_PARAMETERS_ENV}='lots'"):
        Pipeline.from_spec(spec)


def test_the_largest_activation_is_measured_without_allocating() -> None:
    from ldmkit.registry import get_registry
    from ldmkit.specs import validate_spec

    spec = validate_spec(SHIPPED)
    elements, where = largest_activation(spec, get_registry())
    h, w = SHIPPED["latent_size"]
    # the decoder's widest layer at full resolution: the shipped first stage upsamples 4x, 128 channels
    assert elements == 128 * (4 * h) * (4 * w), where
    assert where.startswith("first_stage.decoder.")


def test_every_path_that_builds_checks_first(monkeypatch, tmp_path: Path) -> None:
    """A tiny limit makes each path refuse the shipped or example models: the check runs on every path."""
    folder = tmp_path / "folder"
    Pipeline.from_spec(SHIPPED).save(folder)
    monkeypatch.setenv(MAX_PARAMETERS_ENV, "1000")
    expected = "more than the limit of 1,000; set LDMKIT_MAX_PARAMETERS"
    with pytest.raises(SpecError, match=expected):
        Pipeline.load(folder)
    runs = {
        "pipeline folder": ["generate", "--spec", str(folder), "--task", "uncond", "--out", str(tmp_path / "o")],
        "train ldm": ["train", str(EXAMPLES / "train" / "tiny-ldm.yaml"), "--out-dir", str(tmp_path / "ldm")],
        "train autoencoder": ["train", str(EXAMPLES / "train" / "tiny-autoencoder.yaml"), "--out-dir", str(tmp_path)],
        "convert": ["convert", str(COMPVIS / "config.yaml"), str(COMPVIS / "model.ckpt"), str(tmp_path / "c")],
    }
    for name, argv in runs.items():
        code, stderr = run_cli(argv)
        assert code == 2 and expected in stderr and "Traceback" not in stderr, (name, stderr)
    assert not (tmp_path / "o").exists() and not (tmp_path / "c").exists()
