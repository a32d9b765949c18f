"""The textual-inversion adapter: tokens learned and forgotten, file layouts, refusals."""

from __future__ import annotations

import pytest
import torch
from payloads import Payload  # tests/payloads.py
from safetensors.torch import save_file

import ldmkit
from ldmkit.errors import CheckpointError, InputError, UnsafeCheckpointError
from tests.plugins.ldmkit_adapters.sd_tiny import tiny_pipeline, weights
from tests.tiny import tiny_pipeline_spec, tiny_unet_params

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


def vectors(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 32, generator=torch.Generator().manual_seed(seed))  # (n, hidden_size)


def test_a_token_stands_for_its_vectors_and_is_forgotten_on_removal(pipe, tmp_path):
    save_file({"emb_params": vectors(2)}, tmp_path / "e.safetensors")
    before = weights(pipe)
    plain = pipe.conditioner.tokenize(["a <thing> here"])
    adapter = pipe.load_embedding(tmp_path / "e.safetensors", token="<thing>")
    assert adapter.tokens == ["<thing>", "<thing>_1"]
    ids = pipe.conditioner.tokenize(["a <thing> here"])[0]
    vocab = pipe.conditioner.params.vocab_size
    assert (ids == vocab).sum() == 1 and (ids == vocab + 1).sum() == 1  # both vectors, in order
    # the token's vectors are what the text encoder embeds for it: same output as feeding them directly
    with torch.no_grad():
        ours = pipe.conditioner(["a <thing> here"]).crossattn
        text_model = pipe.conditioner.transformer.text_model
        embeds = text_model.embeddings.token_embedding(ids.clamp(max=vocab - 1))[None].clone()
        embeds[0, ids >= vocab] = vectors(2)
        hidden = embeds + text_model.embeddings.position_embedding(torch.arange(77))[None]
        mask = torch.full((77, 77), float("-inf")).triu(1)[None, None]
        for layer in text_model.encoder.layers:
            out = layer(hidden, mask)
            hidden = out[0] if isinstance(out, tuple) else out
        direct = text_model.final_layer_norm(hidden)
    torch.testing.assert_close(ours, direct, rtol=1e-5, atol=1e-5)
    pipe.remove_adapter(adapter)
    assert torch.equal(pipe.conditioner.tokenize(["a <thing> here"]), plain)
    after = weights(pipe)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_the_file_names_the_token_where_it_can(pipe, tmp_path):
    save_file({"<kitten>": vectors(1)[0]}, tmp_path / "d.safetensors")
    torch.save({"string_to_param": {"*": vectors(3)}, "name": "<puppy>"}, tmp_path / "legacy.pt")
    save_file({"emb_params": vectors(1)}, tmp_path / "nameless.safetensors")
    assert pipe.load_embedding(tmp_path / "d.safetensors").tokens == ["<kitten>"]
    assert pipe.load_embedding(tmp_path / "legacy.pt").tokens == ["<puppy>", "<puppy>_1", "<puppy>_2"]
    with pytest.raises(InputError, match="names no token"):
        pipe.load_embedding(tmp_path / "nameless.safetensors")
    pipe.remove_adapters()


def test_refusals(pipe, tmp_path):
    save_file({"emb_params": vectors(1)}, tmp_path / "e.safetensors")
    save_file({"emb_params": torch.zeros(1, 16)}, tmp_path / "narrow.safetensors")
    save_file({"a": torch.zeros(32), "b": torch.zeros(32)}, tmp_path / "two.safetensors")
    with pytest.raises(InputError, match="known to the tokenizer already"):
        pipe.load_embedding(tmp_path / "e.safetensors", token="cat")
    with pytest.raises(InputError, match="width 16"):
        pipe.load_embedding(tmp_path / "narrow.safetensors", token="<n>")
    with pytest.raises(CheckpointError, match="not a textual-inversion file"):
        pipe.load_embedding(tmp_path / "two.safetensors", token="<t>")
    pipe.load_embedding(tmp_path / "e.safetensors", token="<once>")
    with pytest.raises(InputError, match="known to the tokenizer already"):
        pipe.load_embedding(tmp_path / "e.safetensors", token="<once>")
    with pytest.raises(ldmkit.SpecError, match="token"):
        pipe.load_embedding(tmp_path / "e.safetensors", token="two words")
    pipe.remove_adapters()
    assert pipe.adapters == []


def test_a_legacy_embedding_with_a_pickle_payload_is_refused(pipe, tmp_path):
    marker = tmp_path / "ran"
    torch.save({"string_to_param": {"*": vectors(1)}, "name": "x", "hook": Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(UnsafeCheckpointError):
        pipe.load_embedding(tmp_path / "evil.pt", token="<evil>")
    assert not marker.exists() and pipe.adapters == []


def test_a_conditioner_without_tokens_is_refused(tmp_path):
    save_file({"emb_params": vectors(1)}, tmp_path / "e.safetensors")
    unet = tiny_unet_params(channels=3, channel_mult=[1], num_heads=1)
    pipe = ldmkit.Pipeline.from_spec(tiny_pipeline_spec({"type": "identity"}, unet, latent_size=None))
    with pytest.raises(InputError, match="text conditioner that learns tokens"):
        pipe.load_embedding(tmp_path / "e.safetensors", token="<x>")
