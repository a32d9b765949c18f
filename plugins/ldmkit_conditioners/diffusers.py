"""The conditioners <-> diffusers: ``clip-text`` as a transformers ``CLIPTextModel`` folder (``text_encoder/``)
with CLIP's tokenizer files next to it, ``transformer-text`` as diffusers' ``LDMBertModel`` (``bert/``) with
a tokenizer that gives the same ids, and ``class-embedder`` with ``target: vector`` (nothing of its own:
diffusers' UNet embeds the class ids).

The CLIP conditioner keeps the transformers model under ``transformer.``, so the weights only change
prefix (files name them ``text_model.*``, as Stable Diffusion folders hold them and transformers reads
them); the config carries the same eight architecture fields under their transformers names.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

from pydantic import ValidationError
from torch import Tensor

from ldmkit.checks import format_validation_error
from ldmkit.conversions import DiffusersCompanion, DiffusersContext, DiffusersModel
from ldmkit.diffusers_interop.config import ConfigReader
from ldmkit.diffusers_interop.mapping import IDENTITY, Pair, Rename, from_diffusers_state, to_diffusers_state
from ldmkit.errors import SpecError
from ldmkit_conditioners.word_tokenizer import FIRST_WORD_ID, PAD_ID, UNKNOWN_ID

log = logging.getLogger(__name__)

__all__ = [
    "CLIPTextDiffusers",
    "ClassEmbedderDiffusers",
    "TransformerTextDiffusers",
    "ldmbert_config",
    "ldmbert_pairs",
    "vocabulary_from_tokenizer",
    "write_id_tokenizer",
    "write_word_tokenizer",
    "clip_text_config_to_transformers",
    "write_clip_tokenizer",
]

NAME = "clip-text"
PREFIX = "transformer."
TEXT_MODEL = "text_model."
ARCHITECTURE = "CLIPTextModel"
MODEL_TYPE = "clip_text_model"
FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "max_position_embeddings",
    "hidden_act",
    "layer_norm_eps",
)
# transformers' CLIPTextConfig defaults, for configs that leave a field out
DEFAULTS: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 512,
    "intermediate_size": 2048,
    "num_hidden_layers": 12,
    "num_attention_heads": 8,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
# constant buffers some checkpoints carry; they are not weights
IGNORED = ("text_model.embeddings.position_ids",)


CLIP_VOCAB_SIZE = 49408
START, END = "<|startoftext|>", "<|endoftext|>"
TOKENIZER_CLASS = "CLIPTokenizer"
SD_PIPELINE = "StableDiffusionPipeline"


def clip_text_config_to_transformers(p: Any) -> dict[str, Any]:
    """A transformers ``config.json`` for a ``clip-text`` conditioner with params ``p``."""
    from transformers import CLIPTextConfig

    config = CLIPTextConfig(**{k: getattr(p, k) for k in FIELDS}).to_dict()
    config["architectures"] = [ARCHITECTURE]
    return config


def write_clip_tokenizer(folder: Path, model_max_length: int = 77) -> Path:
    """Write vocab.json, merges.txt, tokenizer_config.json and special_tokens_map.json into ``folder``.

    transformers' ``CLIPTokenizer`` reads ``vocab.json`` (token -> id) and ``merges.txt``; built from the
    same merges list, both tokenizers give the same ids, and padding with the end token matches clip-text.
    """
    from ldmkit.checkpoints import atomic_write_text
    from ldmkit_conditioners.clip_tokenizer import default_tokenizer

    tok = default_tokenizer()
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "vocab.json", json.dumps(tok.encoder, ensure_ascii=False))
    atomic_write_text(folder / "merges.txt", "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in tok.merges))
    special = {"bos_token": START, "eos_token": END, "unk_token": END, "pad_token": END}
    config = {
        **special,
        "tokenizer_class": TOKENIZER_CLASS,
        "model_max_length": model_max_length,
        "do_lower_case": True,
        "errors": "replace",
        "add_prefix_space": False,
    }
    atomic_write_text(folder / "tokenizer_config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
    atomic_write_text(folder / "special_tokens_map.json", json.dumps(special, indent=2, sort_keys=True) + "\n")
    return folder


class CLIPTextDiffusers:
    """Mixin of ``clip-text``: a transformers ``CLIPTextModel`` folder both ways."""

    diffusers_classes: ClassVar[tuple[str, ...]] = (ARCHITECTURE,)
    diffusers_model_types: ClassVar[tuple[str, ...]] = (MODEL_TYPE,)
    Params: ClassVar[type]
    params: Any

    @classmethod
    def params_from_diffusers(cls, config: Mapping[str, Any], context: DiffusersContext) -> Any:
        """Validated params for a transformers CLIPTextModel config (and a CLIP tokenizer, if one is declared)."""
        if context.tokenizer is not None and not context.tokenizer.startswith(TOKENIZER_CLASS):
            raise SpecError(f"tokenizer {context.tokenizer!r} is not supported; clip-text uses CLIP's BPE tokenizer")
        architectures = config.get("architectures") or [ARCHITECTURE]
        if list(architectures) != [ARCHITECTURE]:
            raise SpecError(f"text_encoder: architectures {architectures!r} is not supported (only {ARCHITECTURE})")
        if config.get("model_type", MODEL_TYPE) != MODEL_TYPE:
            raise SpecError(f"text_encoder: model_type {config.get('model_type')!r} is not {MODEL_TYPE!r}")
        values = {k: config.get(k, DEFAULTS[k]) for k in FIELDS}
        if isinstance(values["layer_norm_eps"], int) and not isinstance(values["layer_norm_eps"], bool):
            values["layer_norm_eps"] = float(values["layer_norm_eps"])
        try:
            return cls.Params.model_validate(values)  # type: ignore[attr-defined]
        except ValidationError as exc:
            raise SpecError(f"text_encoder: {format_validation_error(exc)}") from None

    @classmethod
    def state_dict_from_diffusers(cls, state: Mapping[str, Tensor], params: Any) -> dict[str, Tensor]:
        """CLIPTextModel keys -> this conditioner's (``transformer.text_model.*``); constant buffers dropped."""
        # files hold "text_model.*" keys; some transformers versions name the same tensors without the prefix
        named = {k if k.startswith(TEXT_MODEL) else TEXT_MODEL + k: v for k, v in state.items()}
        return {PREFIX + k: v for k, v in named.items() if k not in IGNORED}

    def to_diffusers(self, context: DiffusersContext) -> DiffusersModel:
        """The ``text_encoder/`` folder, with CLIP's tokenizer (the one ``clip-text`` tokenizes prompts with)."""
        state = {k[len(PREFIX) :]: v for k, v in self.state_dict().items() if k.startswith(PREFIX)}  # type: ignore[attr-defined]
        if self.params.vocab_size != CLIP_VOCAB_SIZE:
            log.warning(
                "text encoder vocab_size %d is not CLIP's %d: the CLIP tokenizer written next to it can give ids "
                "the model does not have (ldmkit refuses such prompts too)",
                self.params.vocab_size,
                CLIP_VOCAB_SIZE,
            )
        length = self.params.max_position_embeddings
        companions = (
            DiffusersCompanion(
                "tokenizer", "transformers", TOKENIZER_CLASS, partial(write_clip_tokenizer, model_max_length=length)
            ),  # noqa: E501
        )
        config = clip_text_config_to_transformers(self.params)
        return DiffusersModel("transformers", ARCHITECTURE, config, state, companions, pipeline=SD_PIPELINE)


class ClassEmbedderDiffusers:
    """Mixin of ``class-embedder``: with ``target: vector`` the ids go to the UNet, so nothing is written.

    With ``target: crossattn`` (the CompVis ``ClassEmbedder``) the embedded class is a one-token
    cross-attention context. diffusers' class embedding (``class_embed_type`` / ``num_class_embeds``)
    adds its vector to the timestep embedding instead, a different function, so the embedder is left
    out of the diffusers folders (see ``diffusers_left_out``).
    """

    params: Any
    name: ClassVar[str]

    def diffusers_left_out(self) -> str | None:
        """Why this conditioner has no diffusers counterpart (None with ``target: vector``)."""
        if self.params.target == "vector":
            return None
        return (
            "class ids embedded as a one-token cross-attention context (CompVis ClassEmbedder): diffusers' UNet "
            "class embedding adds to the timestep embedding instead, which computes something else; call the "
            "unet with encoder_hidden_states = embedding.weight[labels][:, None] (the table is kept in "
            "ldmkit_conditioner.safetensors)"
        )

    def to_diffusers(self, context: DiffusersContext) -> None:
        """None (diffusers keeps no conditioner for class ids); SpecError for a cross-attention embedding."""
        reason = self.diffusers_left_out()
        if reason is not None:
            raise SpecError(f"{self.name} with target {self.params.target!r} has no diffusers counterpart: {reason}")
        classes = (context.denoiser_config or {}).get("num_class_embeds")
        if classes != self.params.n_classes:
            raise SpecError(f"{self.name} n_classes differs from the unet's num_classes ({classes})")
        log.info("%s: diffusers keeps no conditioner for class ids; null_class is not written", self.name)
        log.warning("diffusers' LDMPipeline passes no class labels; load unet/ on its own to sample by class")
        return None


# -- transformer-text <-> LDMBertModel ------------------------------------------------------------------
LDMBERT = "LDMBertModel"
LDMBERT_TYPE = "ldmbert"
LDMBERT_LIBRARY = "latent_diffusion"  # diffusers' pipeline module that defines LDMBertModel
LDM_TEXT_PIPELINE = "LDMTextToImagePipeline"
WORD_PAD, WORD_UNKNOWN = "[PAD]", "[UNK]"
FAST_TOKENIZER = "PreTrainedTokenizerFast"
# the fixed shape of the paper's transformer (ldmkit_conditioners.xtransformer)
BERT_HEADS, BERT_HEAD_DIM, BERT_FF_MULT = 8, 64, 4
TEXT_PREFIX = "transformer."
LDM_PIPELINE_TOKENS = 77  # LDMTextToImagePipeline tokenizes every prompt to this length
# LDMBertConfig's constructor defaults (older configs leave keys out)
LDMBERT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 30522,
    "max_position_embeddings": 77,
    "encoder_layers": 32,
    "encoder_ffn_dim": 5120,
    "encoder_attention_heads": 8,
    "head_dim": 64,
    "encoder_layerdrop": 0.0,
    "activation_function": "gelu",
    "d_model": 1280,
    "dropout": 0.1,
    "attention_dropout": 0.0,
    "activation_dropout": 0.0,
    "init_std": 0.02,
    "classifier_dropout": 0.0,
    "scale_embedding": False,
    "use_cache": True,
    "pad_token_id": 0,
}


def ldmbert_pairs(n_layer: int) -> list[Pair]:
    """The module correspondence of ``transformer-text`` (below ``transformer.``) and ``LDMBertModel``."""
    pairs: list[Pair] = [
        ("token_emb", "model.embed_tokens", IDENTITY),
        ("pos_emb.emb", "model.embed_positions", IDENTITY),
        ("norm", "model.layer_norm", IDENTITY),
        ("to_logits", "to_logits", IDENTITY),
    ]
    attention = Rename({"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"})
    feed_forward = Rename({"net.0.0": "fc1", "net.2": "fc2"})
    for i in range(n_layer):
        src, dst = "attn_layers.layers", f"model.layers.{i}"
        pairs += [
            (f"{src}.{2 * i}.0", f"{dst}.self_attn_layer_norm", IDENTITY),
            (f"{src}.{2 * i}.1", f"{dst}.self_attn", attention),
            (f"{src}.{2 * i + 1}.0", f"{dst}.final_layer_norm", IDENTITY),
            (f"{src}.{2 * i + 1}.1", f"{dst}", feed_forward),
        ]
    return pairs


def ldmbert_config(p: Any) -> dict[str, Any]:
    """The ``config.json`` of diffusers' ``LDMBertModel`` for a ``transformer-text`` with params ``p``."""
    return {
        "architectures": [LDMBERT],
        "model_type": LDMBERT_TYPE,
        "vocab_size": p.vocab_size,
        "max_position_embeddings": p.max_seq_len,
        "d_model": p.n_embed,
        "encoder_layers": p.n_layer,
        "encoder_ffn_dim": BERT_FF_MULT * p.n_embed,
        "encoder_attention_heads": BERT_HEADS,
        "head_dim": BERT_HEAD_DIM,
        "activation_function": "gelu",
        "scale_embedding": False,
        "pad_token_id": PAD_ID,
        # the paper's transformer has dropout on the embeddings only; inference uses none
        "dropout": 0.0,
        "attention_dropout": 0.0,
        "activation_dropout": 0.0,
        "encoder_layerdrop": 0.0,
    }


def _tokenizer_files(folder: Path, tokenizer: Any, max_length: int, pad: str, unk: str | None) -> None:
    from ldmkit.checkpoints import atomic_write_text

    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "tokenizer.json", tokenizer.to_str(pretty=True))
    special = {"pad_token": pad, **({"unk_token": unk} if unk else {})}
    config = {**special, "tokenizer_class": FAST_TOKENIZER, "model_max_length": max_length}
    atomic_write_text(folder / "tokenizer_config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
    atomic_write_text(folder / "special_tokens_map.json", json.dumps(special, indent=2, sort_keys=True) + "\n")


def write_word_tokenizer(folder: Path, vocabulary: list[str], max_length: int) -> Path:
    """A ``tokenizer.json`` that gives the ids of ldmkit's word tokenizer (0 pads, 1 unknown, words from 2).

    Lowercased, split into runs of letters and digits; an unknown word becomes id 1 (ldmkit refuses it).
    """
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers

    vocab = {WORD_PAD: PAD_ID, WORD_UNKNOWN: UNKNOWN_ID}
    vocab.update({word.lower(): i + FIRST_WORD_ID for i, word in enumerate(vocabulary)})
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=WORD_UNKNOWN))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\W_]+"), behavior="removed")  # keeps [^\W_]+ runs
    _tokenizer_files(folder, tokenizer, max_length, WORD_PAD, WORD_UNKNOWN)
    return folder


def write_id_tokenizer(folder: Path, vocab_size: int, max_length: int) -> Path:
    """A ``tokenizer.json`` for a model that reads token ids: the text ``"12 7 33"`` gives ids 12, 7, 33 (0 pads)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({str(i): i for i in range(vocab_size)}, unk_token=WORD_UNKNOWN))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    _tokenizer_files(folder, tokenizer, max_length, str(PAD_ID), None)
    return folder


def vocabulary_from_tokenizer(data: Mapping[str, Any] | None) -> list[str] | None:
    """The word list of a ``tokenizer.json`` written by :func:`write_word_tokenizer` (None for any other)."""
    model = (data or {}).get("model")
    if not isinstance(model, dict) or model.get("type") != "WordLevel" or not isinstance(model.get("vocab"), dict):
        return None
    vocab = model["vocab"]
    if vocab.get(WORD_PAD) != PAD_ID or vocab.get(WORD_UNKNOWN) != UNKNOWN_ID:
        return None
    words = sorted((i, w) for w, i in vocab.items() if w not in (WORD_PAD, WORD_UNKNOWN) and isinstance(i, int))
    if [i for i, _ in words] != list(range(FIRST_WORD_ID, FIRST_WORD_ID + len(words))):
        return None
    return [w for _, w in words] or None


class TransformerTextDiffusers:
    """Mixin of ``transformer-text``: diffusers' ``LDMBertModel`` (``bert/``, ``LDMTextToImagePipeline``).

    Both are the paper's text transformer (pre-norm, 8 heads of 64, GELU feed-forward 4x, learned
    positions, a final LayerNorm); the weights only change names. The tokenizer written next to it
    gives ldmkit's ids: the word tokenizer's, or (a model that reads token ids) ids written as numbers.
    """

    diffusers_classes: ClassVar[tuple[str, ...]] = (LDMBERT,)
    diffusers_model_types: ClassVar[tuple[str, ...]] = (LDMBERT_TYPE,)
    Params: ClassVar[type]
    params: Any
    name: ClassVar[str]

    @classmethod
    def params_from_diffusers(cls, config: Mapping[str, Any], context: DiffusersContext) -> Any:
        """Validated params of an ``LDMBertModel`` config (the vocabulary from a word ``tokenizer.json``)."""
        what = f"bert ({LDMBERT})"
        r = ConfigReader(config, LDMBERT_DEFAULTS, what)
        r.expect("encoder_attention_heads", [BERT_HEADS], "the paper's transformer has 8 heads")
        r.expect("head_dim", [BERT_HEAD_DIM], "the paper's transformer has heads of width 64")
        r.expect("activation_function", ["gelu"])
        r.expect("scale_embedding", [False])
        width = r.integer("d_model")
        if r.integer("encoder_ffn_dim") != BERT_FF_MULT * width:
            raise SpecError(f"{what}: encoder_ffn_dim must be {BERT_FF_MULT} * d_model = {BERT_FF_MULT * width}")
        values: dict[str, Any] = {
            "n_embed": width,
            "n_layer": r.integer("encoder_layers"),
            "vocab_size": r.integer("vocab_size"),
            "max_seq_len": r.integer("max_position_embeddings"),
        }
        vocabulary = vocabulary_from_tokenizer(context.tokenizer_json)
        if vocabulary is not None:
            values.update(tokenizer="words", vocabulary=vocabulary)
        else:
            log.info("%s: no word tokenizer next to it; the conditioner reads token ids", what)
        try:
            return cls.Params.model_validate(values)  # type: ignore[attr-defined]
        except ValidationError as exc:
            raise SpecError(f"{what}: {format_validation_error(exc)}") from None

    @classmethod
    def state_dict_from_diffusers(cls, state: Mapping[str, Tensor], params: Any) -> dict[str, Tensor]:
        """LDMBertModel keys -> this conditioner's (``transformer.*``)."""
        ours = from_diffusers_state(state, ldmbert_pairs(params.n_layer), LDMBERT)
        return {TEXT_PREFIX + k: v for k, v in ours.items()}

    def to_diffusers(self, context: DiffusersContext) -> DiffusersModel:
        """The ``bert/`` folder and a ``tokenizer/`` that gives the same ids as this conditioner."""
        p = self.params
        own = {k[len(TEXT_PREFIX) :]: v for k, v in self.state_dict().items() if k.startswith(TEXT_PREFIX)}  # type: ignore[attr-defined]
        state = to_diffusers_state(own, ldmbert_pairs(p.n_layer), self.name)
        if p.embedding_dropout:
            log.warning(
                "%s: embedding_dropout=%s is a training setting; LDMBert is written without it",
                self.name,
                p.embedding_dropout,
            )
        if p.tokenizer == "words" and p.vocabulary:
            write = partial(write_word_tokenizer, vocabulary=list(p.vocabulary), max_length=p.max_seq_len)
        else:
            write = partial(write_id_tokenizer, vocab_size=p.vocab_size, max_length=p.max_seq_len)
        if p.max_seq_len != LDM_PIPELINE_TOKENS:
            log.warning(
                "%s: max_seq_len is %d, but LDMTextToImagePipeline.__call__ pads prompts to %d tokens; call "
                "the tokenizer, bert and unet yourself (see the diffusers page of the docs)",
                self.name,
                p.max_seq_len,
                LDM_PIPELINE_TOKENS,
            )
        companion = DiffusersCompanion("tokenizer", "transformers", FAST_TOKENIZER, write)
        return DiffusersModel(
            LDMBERT_LIBRARY, LDMBERT, ldmbert_config(p), state, (companion,), pipeline=LDM_TEXT_PIPELINE
        )
