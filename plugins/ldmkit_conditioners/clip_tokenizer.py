"""An offline CLIP tokenizer: byte-level BPE over the 49,408-token vocabulary of CLIP's text encoder.

The merges ship with this package (``bpe_simple_vocab_16e6.txt.gz``, see THIRD_PARTY.md). Text is
cleaned as CLIP does (HTML entities unescaped, NFC, runs of whitespace collapsed, lowercase), split
into words, numbers and punctuation runs, and each piece is encoded as UTF-8 bytes mapped to
printable characters, then merged pair by pair in the order the merges list gives.
"""

from __future__ import annotations

import gzip
import html
import re
import unicodedata
from functools import lru_cache
from importlib import resources
from pathlib import Path

import torch
from torch import Tensor

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
SOT = "<|startoftext|>"
EOT = "<|endoftext|>"
SOT_ID = 49406
EOT_ID = 49407
CONTEXT_LENGTH = 77
N_MERGES = 49152 - 256 - 2  # the merges CLIP's vocabulary uses (the file holds more)
_CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")
_WHITESPACE = re.compile(r"\s+")


def bytes_to_unicode() -> dict[int, str]:
    """A reversible map from the 256 byte values to printable characters.

    Printable Latin-1 bytes map to themselves; the others (control characters, space, ...) are
    given the characters from U+0100 on, in byte order. The dict's order (printable first) is the
    order of the first 256 vocabulary entries.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def clean_text(text: str) -> str:
    """HTML entities unescaped (twice, as CLIP does), NFC, whitespace runs collapsed, lowercase."""
    text = html.unescape(html.unescape(text))
    text = unicodedata.normalize("NFC", text)
    return _WHITESPACE.sub(" ", text).strip().lower()


def _char_class(ch: str) -> str:
    if ch.isspace():
        return "space"
    major = unicodedata.category(ch)[0]
    return "letter" if major == "L" else "number" if major == "N" else "other"


def pre_tokenize(text: str) -> list[str]:
    """Split cleaned text the way CLIP's pattern does.

    At each position the first rule that applies wins: a special token, a contraction ('s 't 're
    've 'm 'll 'd), a run of letters, a single number character, a run of other non-space
    characters. Spaces separate pieces and are dropped.
    """
    pieces: list[str] = []
    i, n = 0, len(text)
    while i < n:
        head = next((s for s in (SOT, EOT, *_CONTRACTIONS) if text[i : i + len(s)].lower() == s), None)
        if head is not None:
            pieces.append(text[i : i + len(head)])
            i += len(head)
            continue
        kind = _char_class(text[i])
        if kind == "space":
            i += 1
            continue
        j = i + 1
        if kind != "number":  # letters and "other" form runs, numbers stand alone
            while j < n and _char_class(text[j]) == kind:
                j += 1
        pieces.append(text[i:j])
        i = j
    return pieces


class CLIPTokenizer:
    """Text -> CLIP token ids; ``tokenizer(texts)`` gives the (B, 77) ids Stable Diffusion feeds its encoder."""

    def __init__(self, vocab_path: str | Path | None = None) -> None:
        if vocab_path is None:
            data = resources.files("ldmkit_conditioners").joinpath(VOCAB_FILE).read_bytes()
        else:
            data = Path(vocab_path).read_bytes()
        lines = gzip.decompress(data).decode("utf-8").split("\n")
        self.merges: list[tuple[str, str]] = [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]  # type: ignore[misc]
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        symbols = list(self.byte_encoder.values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in self.merges] + [SOT, EOT]
        self.encoder: dict[str, int] = {token: i for i, token in enumerate(vocab)}
        self.decoder: dict[int, str] = {i: token for token, i in self.encoder.items()}
        self.ranks: dict[tuple[str, str], int] = {pair: i for i, pair in enumerate(self.merges)}
        self._cache: dict[str, list[str]] = {SOT: [SOT], EOT: [EOT]}

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def bpe(self, piece: str) -> list[str]:
        """Merge the byte characters of one pre-token; the last symbol carries the end-of-word mark."""
        if piece in self._cache:
            return self._cache[piece]
        word = [*piece[:-1], piece[-1] + "</w>"]
        while len(word) > 1:
            best = min(zip(word[:-1], word[1:], strict=True), key=lambda pair: self.ranks.get(pair, len(self.ranks)))
            if best not in self.ranks:
                break
            merged: list[str] = []
            i = 0
            while i < len(word):  # merge every occurrence of the pair, left to right
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        if len(self._cache) < 100_000:
            self._cache[piece] = word
        return word

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without the start and end tokens."""
        ids: list[int] = []
        for piece in pre_tokenize(clean_text(text)):
            if piece not in (SOT, EOT):
                piece = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[token] for token in self.bpe(piece))
        return ids

    def decode(self, ids: list[int]) -> str:
        """Text of token ids (special tokens dropped)."""
        tokens = "".join(self.decoder[i] for i in ids if i not in (SOT_ID, EOT_ID))
        tokens = tokens.replace("</w>", self.byte_encoder[ord(" ")])  # end of word -> a space byte
        raw = bytearray(self.byte_decoder[c] for c in tokens)
        return raw.decode("utf-8", errors="replace").strip()

    def __call__(
        self, texts: list[str], context_length: int = CONTEXT_LENGTH, device: torch.device | None = None
    ) -> Tensor:
        """(B, context_length) ids: start token, text truncated to fit, end token, then end tokens as padding."""
        rows = []
        for text in texts:
            ids = [SOT_ID, *self.encode(text)[: context_length - 2], EOT_ID]
            rows.append(ids + [EOT_ID] * (context_length - len(ids)))
        return torch.tensor(rows, dtype=torch.long, device=device)


@lru_cache(maxsize=1)
def default_tokenizer() -> CLIPTokenizer:
    """The packaged tokenizer, loaded once."""
    return CLIPTokenizer()
