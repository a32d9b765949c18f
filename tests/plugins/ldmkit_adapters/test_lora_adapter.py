"""The lora adapter on ldmkit's own modules: the update it adds, exact removal, file layouts, refusals."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from payloads import Payload  # tests/payloads.py

from ldmkit.checkpoints import save_state_dict
from ldmkit.errors import CheckpointError, InputError, UnsafeCheckpointError
from tests.plugins.ldmkit_adapters.sd_tiny import outputs, rel_err, tiny_pipeline, weights

CONV = "input_blocks.1.0.in_layers.2"  # 3x3 convolution (32, 32, 3, 3)
LINEAR = "input_blocks.1.1.transformer_blocks.0.attn2.to_k"  # (32, 32)
PROJ = "input_blocks.1.1.proj_in"  # 1x1 convolution (32, 32, 1, 1)
TEXT = "transformer.text_model.encoder.layers.0.mlp.fc1"  # (37, 32)
# the same layers as diffusers and transformers name them
DIFFUSERS = {
    CONV: "down_blocks.0.resnets.0.conv1",
    LINEAR: "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
    PROJ: "down_blocks.0.attentions.0.proj_in",
}
TEXT_NAME = "text_model.encoder.layers.0.mlp.fc1"
PROMPTS = ["a red circle", "two blue squares"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


def pairs(rank: int = 3, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """ldmkit layer name -> random {down, up, alpha}, each layer with its own alpha."""
    g = torch.Generator().manual_seed(seed)
    shapes = {CONV: (32, 32, 3, 3), LINEAR: (32, 32), PROJ: (32, 32, 1, 1), TEXT: (37, 32)}
    out = {}
    for i, (name, shape) in enumerate(shapes.items()):
        down = torch.randn(rank, *shape[1:], generator=g) * 0.3
        up = torch.randn(shape[0], rank, *(1,) * (len(shape) - 2), generator=g) * 0.3
        out[name] = {"down": down, "up": up, "alpha": torch.tensor(float(i + 1))}
    return out


def kohya(path: Path, layers: dict, names: str = "diffusers", alpha: bool = True) -> Path:
    state = {}
    for ours, w in layers.items():
        if ours == TEXT:
            key = "lora_te_" + TEXT_NAME.replace(".", "_")
        else:
            key = "lora_unet_" + (DIFFUSERS[ours] if names == "diffusers" else ours).replace(".", "_")
        state[f"{key}.lora_down.weight"], state[f"{key}.lora_up.weight"] = w["down"], w["up"]
        if alpha:
            state[f"{key}.alpha"] = w["alpha"]
    save_state_dict(state, path)
    return path


def peft(path: Path, layers: dict) -> Path:
    state = {}
    for ours, w in layers.items():
        key = f"text_encoder.{TEXT_NAME}" if ours == TEXT else f"unet.{DIFFUSERS[ours]}"
        state[f"{key}.lora_A.weight"], state[f"{key}.lora_B.weight"] = w["down"], w["up"]
    save_state_dict(state, path)
    return path


def module(pipe, name: str) -> torch.nn.Module:
    return pipe.conditioner.get_submodule(name) if name == TEXT else pipe.denoiser.get_submodule(name)


def test_merged_weights_are_the_base_plus_each_layers_scaled_low_rank_product(pipe, tmp_path):
    layers = pairs()
    before = {name: module(pipe, name).weight.detach().clone() for name in layers}
    adapter = pipe.load_lora(kohya(tmp_path / "k.safetensors", layers), scale=0.6, merge=True)
    try:
        for name, w in layers.items():
            rank = w["down"].shape[0]
            delta = (w["up"].flatten(1) @ w["down"].flatten(1)).reshape(before[name].shape)
            expected = before[name] + 0.6 * (float(w["alpha"]) / rank) * delta
            torch.testing.assert_close(module(pipe, name).weight, expected, rtol=1e-5, atol=1e-6)
    finally:
        pipe.remove_adapter(adapter)


def test_unmerged_computes_what_merged_does(pipe, tmp_path):
    path = kohya(tmp_path / "k.safetensors", pairs())
    base = outputs(pipe, PROMPTS)
    results = []
    for merge in (False, True):
        adapter = pipe.load_lora(path, scale=0.8, merge=merge)
        results.append(outputs(pipe, PROMPTS))
        pipe.remove_adapter(adapter)
    for unmerged, merged, plain in zip(*results, base, strict=True):
        assert rel_err(unmerged, merged) <= 1e-5
        assert rel_err(unmerged, plain) > 1e-3  # the LoRA does change both outputs


def test_removing_in_any_order_restores_the_weights_bit_for_bit(pipe, tmp_path):
    original = weights(pipe)
    files = [kohya(tmp_path / f"{i}.safetensors", pairs(seed=i)) for i in range(3)]
    for order in ([0, 1, 2], [2, 0, 1]):
        applied = [
            pipe.load_lora(files[0], scale=0.7, merge=True),
            pipe.load_lora(files[1], scale=-1.3, merge=True),
            pipe.load_lora(files[2], scale=0.5, merge=False),
        ]
        applied[1].set_scale(2.0)  # a merged one rescaled: merged again from the original weights
        changed = weights(pipe)
        assert any(not torch.equal(v, changed[k]) for k, v in original.items())
        for i in order:
            pipe.remove_adapter(applied[i])
        after = weights(pipe)
        assert all(torch.equal(original[k], after[k]) for k in original)
    assert pipe.adapters == []
    assert not any(hasattr(m, "_ldmkit_lora_slot") for m in pipe.denoiser.modules())


def test_set_scale_of_an_unmerged_lora_equals_loading_it_at_that_scale(pipe, tmp_path):
    path = kohya(tmp_path / "k.safetensors", pairs())
    adapter = pipe.load_lora(path, scale=0.2)
    adapter.set_scale(0.9)
    rescaled = outputs(pipe, PROMPTS)
    pipe.remove_adapters()
    pipe.load_lora(path, scale=0.9)
    direct = outputs(pipe, PROMPTS)
    pipe.remove_adapters()
    for a, b in zip(rescaled, direct, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("layout", ["kohya-compvis-names", "peft", "old-diffusers"])
def test_every_layout_names_the_same_layers(pipe, tmp_path, layout):
    layers = {k: {**v, "alpha": torch.tensor(3.0)} for k, v in pairs().items()}  # alpha = rank: factor 1
    reference = pipe.load_lora(kohya(tmp_path / "ref.safetensors", layers), merge=True)
    expected = weights(pipe)
    pipe.remove_adapter(reference)
    if layout == "kohya-compvis-names":
        path = kohya(tmp_path / "c.safetensors", layers, names="compvis")
    elif layout == "peft":
        path = peft(tmp_path / "p.safetensors", layers)
    else:
        state = {}
        for ours, w in layers.items():
            if ours == LINEAR:  # the attention processor's spelling
                key = "unet." + DIFFUSERS[LINEAR].replace("attn2.to_k", "attn2.processor.to_k_lora")
            elif ours == TEXT:
                key = f"text_encoder.{TEXT_NAME}.lora_linear_layer"
            else:
                key = f"unet.{DIFFUSERS[ours]}.lora"
            state[f"{key}.down.weight"], state[f"{key}.up.weight"] = w["down"], w["up"]
        path = tmp_path / "o.safetensors"
        save_state_dict(state, path)
    adapter = pipe.load_lora(path, merge=True)
    got = weights(pipe)
    pipe.remove_adapter(adapter)
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_keys_that_match_no_layer_are_refused_by_name_or_skipped_when_not_strict(pipe, tmp_path, caplog):
    layers = pairs()
    state = {
        "lora_unet_down_blocks_7_attentions_0_proj_in.lora_down.weight": torch.zeros(3, 32, 1, 1),
        "lora_unet_down_blocks_7_attentions_0_proj_in.lora_up.weight": torch.zeros(32, 3, 1, 1),
        "some_other_tensor": torch.zeros(2),
    }
    path = kohya(tmp_path / "good.safetensors", layers)
    from safetensors.torch import load_file

    save_state_dict({**load_file(path), **state}, tmp_path / "bad.safetensors")
    original = weights(pipe)
    with pytest.raises(CheckpointError, match="down_blocks_7_attentions_0_proj_in") as info:
        pipe.load_lora(tmp_path / "bad.safetensors")
    assert "some_other_tensor" in str(info.value) and "strict=False" in str(info.value)
    assert pipe.adapters == [] and all(torch.equal(original[k], v) for k, v in weights(pipe).items())  # once
    with caplog.at_level(logging.WARNING):
        adapter = pipe.load_lora(tmp_path / "bad.safetensors", strict=False, merge=True)
    assert "skipped 2 LoRA keys" in caplog.text and "some_other_tensor" in caplog.text
    assert not torch.equal(module(pipe, LINEAR).weight, original[f"denoiser.{LINEAR}.weight"])
    pipe.remove_adapter(adapter)
    nothing = tmp_path / "nothing.safetensors"
    save_state_dict(state, nothing)
    with pytest.raises(CheckpointError, match="no LoRA key matches"):
        pipe.load_lora(nothing, strict=False)


@pytest.mark.parametrize(
    "state, message",
    [
        ({"lora_unet_x.lora_down.weight": torch.zeros(2, 4)}, "without both a down and an up"),
        (
            {
                f"lora_unet_{DIFFUSERS[LINEAR].replace('.', '_')}.lora_down.weight": torch.zeros(3, 31),
                f"lora_unet_{DIFFUSERS[LINEAR].replace('.', '_')}.lora_up.weight": torch.zeros(32, 3),
            },
            "do not fit the layer's weight",
        ),
        (
            {
                "lora_unet_x.lora_down.weight": torch.zeros(3, 4),
                "lora_unet_x.lora_up.weight": torch.zeros(4, 2),
            },
            "does not follow down",
        ),
        (
            {
                "lora_unet_x.lora_down.weight": torch.zeros(3, 4),
                "lora_unet_x.lora_up.weight": torch.zeros(4, 3),
                "lora_unet_x.alpha": torch.zeros(2),
            },
            "not one alpha",
        ),
    ],
)
def test_malformed_files_are_refused_with_the_key(pipe, tmp_path, state, message):
    path = tmp_path / "bad.safetensors"
    save_state_dict(state, path)
    with pytest.raises(CheckpointError, match=message):
        pipe.load_lora(path)
    assert pipe.adapters == []


def test_a_pickle_payload_is_refused_and_never_runs(pipe, tmp_path):
    marker = tmp_path / "ran"
    state = {f"lora_unet_{DIFFUSERS[LINEAR].replace('.', '_')}.lora_down.weight": torch.zeros(3, 32)}
    torch.save({**state, "extra": Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(UnsafeCheckpointError, match="posix.system|os.system"):
        pipe.load_lora(tmp_path / "evil.pt")
    assert not marker.exists() and pipe.adapters == []


def test_a_pickle_of_tensors_only_loads_like_safetensors(pipe, tmp_path):
    layers = pairs()
    safe = kohya(tmp_path / "k.safetensors", layers)
    from safetensors.torch import load_file

    torch.save(load_file(safe), tmp_path / "k.pt")
    results = []
    for path in (safe, tmp_path / "k.pt"):
        adapter = pipe.load_lora(path, merge=True)
        results.append(weights(pipe))
        pipe.remove_adapter(adapter)
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])


def test_a_new_lora_changes_nothing_until_trained_and_saves_in_kohya_layout(pipe, tmp_path):
    cls = pipe.registry.get("adapter", "lora")
    base = outputs(pipe, PROMPTS)
    adapter = cls.new(pipe, rank=2, alpha=1.0, layers={"unet": r"attn2\.to_k$|proj_in$", "text_encoder": "fc1$"})
    assert all(torch.equal(a, b) for a, b in zip(outputs(pipe, PROMPTS), base, strict=True))
    params = adapter.parameters()
    assert params and all(p.requires_grad for p in params)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.1)
    trained = outputs(pipe, PROMPTS)
    assert all(rel_err(a, b) > 1e-4 for a, b in zip(trained, base, strict=True))
    assert pipe.adapters == [adapter]
    path = adapter.save(tmp_path / "mine.safetensors")
    assert adapter.params.path == str(path)
    pipe.remove_adapter(adapter)
    from safetensors.torch import load_file

    keys = set(load_file(path))
    assert f"lora_unet_{DIFFUSERS[PROJ].replace('.', '_')}.alpha" in keys
    assert f"lora_te_{TEXT_NAME.replace('.', '_')}.lora_up.weight" in keys
    assert all(torch.equal(a, b) for a, b in zip(outputs(pipe, PROMPTS), base, strict=True))
    pipe.load_lora(path)
    for again, before in zip(outputs(pipe, PROMPTS), trained, strict=True):
        assert rel_err(again, before) <= 1e-6
    pipe.remove_adapters()


def test_an_adapter_is_applied_once_and_removing_a_stranger_is_refused(pipe, tmp_path):
    path = kohya(tmp_path / "k.safetensors", pairs())
    adapter = pipe.load_lora(path)
    with pytest.raises(InputError, match="applied already"):
        pipe.add_adapter(adapter)
    pipe.remove_adapter(adapter)
    with pytest.raises(InputError, match="not applied to this pipeline"):
        pipe.remove_adapter(adapter)
    with pytest.raises(CheckpointError, match="no such LoRA file"):
        pipe.load_lora(tmp_path / "missing.safetensors")
