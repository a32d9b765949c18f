"""A word-level tokenizer for small closed vocabularies (captions of a synthetic world)."""

from __future__ import annotations

import logging
import re

import torch
from torch import Tensor

from ldmkit.checks import host_to_device
from ldmkit.errors import InputError

log = logging.getLogger(__name__)

PAD_ID = 0
UNKNOWN_ID = 1
FIRST_WORD_ID = 2
_WORD = re.compile(r"[^\W_]+")  # runs of letters and digits


def split_words(text: str) -> list[str]:
    """Lowercase ``text`` and split it into runs of letters and digits (punctuation is dropped)."""
    return _WORD.findall(text.lower())


class WordTokenizer:
    """Maps words to ids: 0 pads, 1 is reserved for unknown words, ``vocabulary[i]`` is ``i + 2``."""

    def __init__(self, vocabulary: list[str], max_len: int) -> None:
        self.max_len = max_len
        self.ids = {word.lower(): i + FIRST_WORD_ID for i, word in enumerate(vocabulary)}

    @property
    def size(self) -> int:
        """Number of ids used (padding and unknown included)."""
        return len(self.ids) + FIRST_WORD_ID

    def encode(self, text: str) -> list[int]:
        """Ids of the words of ``text``, truncated to ``max_len``.

        A closed vocabulary cannot say anything about a word it has never seen, so such a word is an
        :class:`InputError` that lists the known words, not a silent "unknown" token.
        """
        words = split_words(text)
        unknown = sorted({word for word in words if word not in self.ids})
        if unknown:
            known = ", ".join(sorted(self.ids))
            raise InputError(f"caption {text!r}: unknown words {', '.join(unknown)}; the model knows: {known}")
        ids = [self.ids[word] for word in words]
        if len(ids) > self.max_len:
            log.warning("caption of %d words truncated to %d: %r", len(ids), self.max_len, text)
        return ids[: self.max_len]

    def __call__(self, texts: list[str], device: torch.device | None = None) -> Tensor:
        """(B, max_len) LongTensor, padded with ``PAD_ID``."""
        rows = [ids + [PAD_ID] * (self.max_len - len(ids)) for ids in map(self.encode, texts)]
        return host_to_device(torch.tensor(rows, dtype=torch.long), device)  # (B, L)
