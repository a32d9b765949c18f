"""CLIP's tokenizer files (``tokenizer/`` of a Stable Diffusion folder), written from ldmkit's bundled BPE merges.

transformers' ``CLIPTokenizer`` reads ``vocab.json`` (token -> id) and ``merges.txt``; built from the
same merges list, both tokenizers give the same ids, and padding with the end token matches clip-text.
"""

from __future__ import annotations

import json
from pathlib import Path

CLIP_VOCAB_SIZE = 49408
START, END = "<|startoftext|>", "<|endoftext|>"


def write_clip_tokenizer(folder: Path, model_max_length: int = 77) -> Path:
    """Write vocab.json, merges.txt, tokenizer_config.json and special_tokens_map.json into ``folder``."""
    from ldmkit.checkpoints import atomic_write_text
    from ldmkit_conditioners.clip_tokenizer import default_tokenizer

    tok = default_tokenizer()
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "vocab.json", json.dumps(tok.encoder, ensure_ascii=False))
    atomic_write_text(folder / "merges.txt", "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in tok.merges))
    special = {"bos_token": START, "eos_token": END, "unk_token": END, "pad_token": END}
    config = {
        **special,
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": model_max_length,
        "do_lower_case": True,
        "errors": "replace",
        "add_prefix_space": False,
    }
    atomic_write_text(folder / "tokenizer_config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
    atomic_write_text(folder / "special_tokens_map.json", json.dumps(special, indent=2, sort_keys=True) + "\n")
    return folder
