"""Write CLIP's ``vocab.json`` and ``merges.txt`` from OpenAI's ``bpe_simple_vocab_16e6.txt.gz``.

The two files are what transformers' ``CLIPTokenizerFast`` reads; ldmkit ships them in
``plugins/ldmkit_conditioners/clip_vocab/``. CLIP's vocabulary is laid out as: the 256 byte
symbols (in the order of GPT-2's byte-to-unicode table), the same symbols with the end-of-word
mark ``</w>``, one token per merge (the first 48,894 merges of the file), then the start and end
tokens: 49,408 ids in all. The gz file comes with OpenAI's CLIP and the ``open-clip-torch``
package (``open_clip/bpe_simple_vocab_16e6.txt.gz``).

    python scripts/make_clip_vocab.py path/to/bpe_simple_vocab_16e6.txt.gz
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "plugins" / "ldmkit_conditioners" / "clip_vocab"
N_MERGES = 49152 - 256 - 2  # the merges CLIP's vocabulary uses (the file holds more)
SPECIAL = ["<|startoftext|>", "<|endoftext|>"]


def byte_symbols() -> list[str]:
    """The 256 printable characters that stand for the byte values, in vocabulary order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


def clip_vocab(merges: list[str]) -> dict[str, int]:
    """Token -> id for CLIP's 49,408-token vocabulary."""
    symbols = byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + [m.replace(" ", "") for m in merges] + SPECIAL
    return {token: i for i, token in enumerate(tokens)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bpe_gz", type=Path, help="bpe_simple_vocab_16e6.txt.gz")
    parser.add_argument("--out", type=Path, default=OUT, help="folder to write vocab.json and merges.txt into")
    args = parser.parse_args()
    lines = gzip.decompress(args.bpe_gz.read_bytes()).decode("utf-8").split("\n")
    merges = lines[1 : N_MERGES + 1]  # line 0 is a version header
    vocab = clip_vocab(merges)
    assert len(vocab) == 49408, len(vocab)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False) + "\n", encoding="utf-8")
    (args.out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
