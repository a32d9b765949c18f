"""CLIP's text tokenizer, offline: transformers' ``CLIPTokenizerFast`` over the shipped vocabulary.

``clip_vocab/vocab.json`` (49,408 tokens) and ``clip_vocab/merges.txt`` ship with this package (see
THIRD_PARTY.md; ``scripts/make_clip_vocab.py`` derives them from OpenAI's merges file), so nothing
is downloaded. transformers is the optional ``clip`` extra and is imported only when a tokenizer is
built.
"""

from __future__ import annotations

import html
import json
from contextlib import ExitStack
from functools import cached_property, lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ldmkit import InputError

__all__ = ["CONTEXT_LENGTH", "EOT_ID", "SOT_ID", "CLIPTokenizer", "default_tokenizer"]

VOCAB_FOLDER = "clip_vocab"
SOT_ID = 49406
EOT_ID = 49407
CONTEXT_LENGTH = 77


def _load_fast_tokenizer(folder: Path) -> Any:
    try:
        # transformers 5 keeps this name as an alias outside its static exports (4.x exports it)
        from transformers import CLIPTokenizerFast  # type: ignore[attr-defined,unused-ignore]
    except ImportError as err:
        raise InputError(
            'tokenizing prompts for clip-text needs transformers: pip install "ldmkit[clip]" '
            "(or pass CLIP token ids instead of prompts)"
        ) from err
    return CLIPTokenizerFast.from_pretrained(str(folder), local_files_only=True, model_max_length=CONTEXT_LENGTH)


class CLIPTokenizer:
    """Text -> CLIP token ids; ``tokenizer(texts)`` gives the (B, 77) ids Stable Diffusion feeds its encoder.

    ``vocab_folder`` holds ``vocab.json`` and ``merges.txt``; by default the packaged ones.
    """

    def __init__(self, vocab_folder: str | Path | None = None) -> None:
        self._stack = ExitStack()
        if vocab_folder is None:  # a real folder even when the package is zipped
            vocab_folder = self._stack.enter_context(
                resources.as_file(resources.files("ldmkit_conditioners").joinpath(VOCAB_FOLDER))
            )
        self.folder = Path(vocab_folder)
        self.backend = _load_fast_tokenizer(self.folder)

    @property
    def vocab_size(self) -> int:
        """Number of token ids (49,408 for CLIP)."""
        return len(self.backend)

    @cached_property
    def encoder(self) -> dict[str, int]:
        """Token -> id, as in ``vocab.json`` (in id order, so files written from it are reproducible)."""
        return json.loads((self.folder / "vocab.json").read_text(encoding="utf-8"))

    @cached_property
    def merges(self) -> list[tuple[str, str]]:
        """The BPE merges in rank order, as in ``merges.txt``."""
        lines = (self.folder / "merges.txt").read_text(encoding="utf-8").splitlines()
        return [tuple(line.split()) for line in lines if line and not line.startswith("#version")]  # type: ignore[misc]

    @staticmethod
    def _clean(text: str) -> str:
        # CLIP unescapes HTML entities twice before tokenizing; the tokenizer does the rest
        # (NFC, whitespace runs collapsed, lowercase).
        return html.unescape(html.unescape(text))

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without the start and end tokens."""
        return list(self.backend(self._clean(text), add_special_tokens=False)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        """Text of token ids (special tokens dropped)."""
        return str(self.backend.decode(ids, skip_special_tokens=True)).strip()

    def __call__(
        self, texts: list[str], context_length: int = CONTEXT_LENGTH, device: torch.device | None = None
    ) -> Tensor:
        """(B, context_length) ids: start token, text truncated to fit, end token, then end tokens as padding."""
        batch = self.backend(
            [self._clean(text) for text in texts],
            padding="max_length",
            truncation=True,
            max_length=context_length,
            return_tensors="pt",
        )
        return batch["input_ids"].to(device=device, dtype=torch.long)  # (B, context_length)


@lru_cache(maxsize=1)
def default_tokenizer() -> CLIPTokenizer:
    """The packaged tokenizer, loaded once."""
    return CLIPTokenizer()
