"""The CLIP tokenizer gives the token ids of CLIP's original tokenizer (recorded in a fixture)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from ldmkit import InputError  # noqa: E402
from ldmkit_conditioners.clip_tokenizer import CONTEXT_LENGTH, EOT_ID, SOT_ID, CLIPTokenizer, default_tokenizer  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
GOLDEN = json.loads((FIXTURES / "clip_token_ids.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def tokenizer() -> CLIPTokenizer:
    return default_tokenizer()


def test_ids_match_the_recorded_original_ids(tokenizer):
    prompts = [row["prompt"] for row in GOLDEN["prompts"]]
    expected = torch.tensor([row["ids"] for row in GOLDEN["prompts"]])
    ids = tokenizer(prompts)
    assert ids.dtype == torch.long and ids.shape == (len(prompts), CONTEXT_LENGTH)
    for prompt, ours, theirs in zip(prompts, ids, expected, strict=True):
        assert ours.tolist() == theirs.tolist(), prompt


def test_known_ids_and_layout(tokenizer):
    assert tokenizer.vocab_size == 49408
    assert tokenizer.encode("a photo of a cat") == [320, 1125, 539, 320, 2368]
    long = tokenizer(["word " * 100])[0]
    assert long[0] == SOT_ID and long[-1] == EOT_ID and len(long) == CONTEXT_LENGTH
    empty = tokenizer([""])[0]
    assert empty[0] == SOT_ID and bool((empty[1:] == EOT_ID).all())  # padded with the end token, as SD v1
    assert tokenizer.encode("Tom &amp; Jerry") == tokenizer.encode("tom & jerry")
    assert tokenizer.decode(tokenizer.encode("A red Circle, above!")) == "a red circle , above !"
    assert tokenizer([""], context_length=16).shape == (1, 16)


def test_vocabulary_files_agree_with_the_tokenizer(tokenizer):
    assert tokenizer.encoder == tokenizer.backend.get_vocab()
    assert list(tokenizer.encoder.values()) == list(range(49408))  # id order: written vocab files are reproducible
    assert len(tokenizer.merges) == 49152 - 256 - 2
    assert tokenizer.encoder["".join(tokenizer.merges[0])] == 512  # merges follow the 2 x 256 byte symbols


def test_missing_transformers_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    with pytest.raises(InputError, match=r'pip install "ldmkit\[clip\]"'):
        CLIPTokenizer()
