"""Adapters through the core: specs, Pipeline.load/save, `ldmkit plugins`, `ldmkit generate --lora/--embedding`."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from cli_runner import run_cli

import ldmkit
from ldmkit.adapters import file_sha256
from ldmkit.errors import SpecError, UnknownComponentError
from ldmkit.generation import default_model_dir, read_metadata
from ldmkit.replay import recorded_pixels
from ldmkit.specs import validate_spec

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory) -> Path:
    """A LoRA for the shipped Shapes model: a new one with its up weights made non-zero, saved in kohya's layout."""
    pipe = ldmkit.Pipeline.load(default_model_dir())
    adapter = pipe.registry.get("adapter", "lora").new(pipe, rank=2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for i, p in enumerate(adapter.parameters()):
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(i)) * 0.2)
    return adapter.save(tmp_path_factory.mktemp("lora") / "shapes-lora.safetensors")


def denoised(pipe: ldmkit.Pipeline) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, pipe.first_stage.latent_channels, *pipe.latent_size, generator=g)
    with torch.no_grad():
        return pipe.denoiser(x, torch.tensor([500]), pipe.conditioner.unconditional(1))


def test_spec_adapters_apply_on_the_loaded_weights_with_paths_from_the_folder(lora_file, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(default_model_dir(), folder)
    (folder / "loras").mkdir()
    shutil.copy(lora_file, folder / "loras" / "style.safetensors")
    spec = yaml.safe_load((folder / "spec.yaml").read_text())
    spec["adapters"] = [{"type": "lora", "params": {"path": "loras/style.safetensors", "scale": 0.5, "merge": True}}]
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))

    loaded = ldmkit.Pipeline.load(folder)
    assert [a.name for a in loaded.adapters] == ["lora"]
    assert loaded.adapters[0].params.path == str(folder / "loras" / "style.safetensors")
    by_hand = ldmkit.Pipeline.load(default_model_dir())
    base = denoised(by_hand)
    by_hand.load_lora(lora_file, scale=0.5, merge=True)
    assert torch.equal(denoised(loaded), denoised(by_hand))
    assert not torch.equal(denoised(loaded), base)

    # saving writes the base weights and the spec with its adapters; loading applies them again
    saved = loaded.save(tmp_path / "saved")
    from safetensors.torch import load_file

    original, written = (
        load_file(default_model_dir() / "denoiser.safetensors"),
        load_file(saved / "denoiser.safetensors"),
    )
    assert original.keys() == written.keys() and all(torch.equal(original[k], written[k]) for k in original)
    assert loaded.adapters[0].applied  # put back after saving
    shutil.copytree(folder / "loras", saved / "loras")
    assert torch.equal(denoised(ldmkit.Pipeline.load(saved)), denoised(loaded))


def test_a_spec_without_adapters_saves_as_before(tmp_path):
    saved = ldmkit.Pipeline.load(default_model_dir()).save(tmp_path / "again")
    assert "adapters" not in yaml.safe_load((saved / "spec.yaml").read_text())


def test_spec_adapters_are_validated_with_the_spec():
    spec = yaml.safe_load((default_model_dir() / "spec.yaml").read_text())
    with pytest.raises(SpecError, match=r"adapters\.0\.params\.scale"):
        validate_spec({**spec, "adapters": [{"type": "lora", "params": {"path": "x", "scale": "much"}}]})
    with pytest.raises(SpecError, match=r"adapters\.1\.params\.path"):
        validate_spec({**spec, "adapters": [{"type": "lora", "params": {"path": "x"}}, {"type": "lora"}]})
    with pytest.raises(UnknownComponentError, match="Did you mean 'lora'"):
        validate_spec({**spec, "adapters": [{"type": "lorra", "params": {"path": "x"}}]})


def test_ldmkit_plugins_lists_the_adapters():
    code, out, _ = run_cli(["plugins"])
    assert code == 0
    listed = out.split("adapter:")[1]
    assert "lora" in listed and "textual-inversion" in listed


def test_generate_with_lora_records_it_and_replay_wants_it_again(lora_file, tmp_path):
    base = ["generate", "--task", "uncond", "-n", "1", "--steps", "2", "--no-progress"]
    code, _, err = run_cli([*base, "--out", str(tmp_path / "plain")])
    assert code == 0, err
    code, _, err = run_cli([*base, "--lora", f"{lora_file}:0.5", "--out", str(tmp_path / "lora")])
    assert code == 0, err
    picture = tmp_path / "lora" / "000000.png"
    assert not np.array_equal(recorded_pixels(picture), recorded_pixels(tmp_path / "plain" / "000000.png"))
    (record,) = read_metadata(picture)["model"]["adapters"]
    assert record["type"] == "lora" and record["sha256"] == file_sha256(lora_file)
    assert record["params"]["scale"] == 0.5 and record["params"]["path"] == str(lora_file.resolve())
    assert "adapters" not in read_metadata(tmp_path / "plain" / "000000.png")["model"]

    code, _, err = run_cli(["generate", "--replay", str(picture), "--out", str(tmp_path / "r1")])
    assert code == 2 and f"--lora {lora_file.resolve()}:0.5" in err and "Traceback" not in err
    code, _, err = run_cli(
        ["generate", "--replay", str(picture), "--lora", f"{lora_file}:0.4", "--out", str(tmp_path / "r2")]
    )
    assert code == 2 and "this replay has --lora" in err
    code, out, err = run_cli(
        ["generate", "--replay", str(picture), "--lora", f"{lora_file}:0.5", "--out", str(tmp_path / "r3")]
    )
    assert code == 0 and "identical" in out, err


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--lora", "missing.safetensors:0.5"], "no such file"),
        (["--lora", "missing.safetensors"], "no such file"),
        (["--embedding", "missing.pt:<cat>"], "no such file"),
        (["--embedding", "{lora}:two words"], "without spaces"),
        (["--embedding", "{lora}:<cat>"], "text conditioner that learns tokens"),
    ],
)
def test_bad_adapter_flags_exit_2_with_one_message(lora_file, tmp_path, flags, message):
    flags = [f.format(lora=lora_file) for f in flags]
    argv = ["generate", "--task", "uncond", "-n", "1", "--steps", "2", *flags, "--out", str(tmp_path / "o")]
    code, _, err = run_cli(argv)
    assert code == 2 and message in err and "Traceback" not in err
