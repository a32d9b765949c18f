"""Tests of the built-in conditioners (plugin ``ldmkit_conditioners``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file

import ldmkit
from ldmkit import Conditioner, Conditioning, FirstStage, InputError, SpecError, UnknownComponentError
from ldmkit.testing import ConditionerConformance
from ldmkit_conditioners.class_embedder import ClassEmbedder
from ldmkit_conditioners.clip_text import CLIPTextConditioner
from ldmkit_conditioners.composite import CompositeConditioner
from ldmkit_conditioners.first_stage_concat import MaskedImageConditioner
from ldmkit_conditioners.layout import LayoutConditioner
from ldmkit_conditioners.spatial_rescaler import SpatialRescaler
from ldmkit_conditioners.transformer_text import TransformerTextConditioner

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "compvis"
NAMES = ["class-embedder", "transformer-text", "clip-text", "layout", "spatial-rescaler", "masked-image", "composite"]


def create(name: str, params: dict) -> Conditioner:
    return ldmkit.get_registry().create("conditioner", name, params).eval()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def compvis_case(case: str) -> tuple[dict, dict, dict]:
    """(cond_stage_config params, cond_stage_model state dict without prefix, expected tensors)."""
    folder = FIXTURES / case
    config = yaml.safe_load((folder / "config.yaml").read_text())["model"]["params"]["cond_stage_config"]["params"]
    state = torch.load(folder / "model.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    prefix = "cond_stage_model."
    cond_state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return config, cond_state, load_file(folder / "expected.safetensors")


def test_all_conditioners_registered():
    registry = ldmkit.get_registry()
    assert set(NAMES) <= set(registry.names("conditioner"))
    for name in NAMES:
        cls = registry.get("conditioner", name)
        assert issubclass(cls, Conditioner) and cls.name == name and cls.slots


# -- CompVis fixtures -----------------------------------------------------------------------------
@torch.no_grad()
def test_txt2img_fixture_transformer_text_matches_compvis():
    config, state, expected = compvis_case("txt2img-kl")
    cond = create("transformer-text", config)
    cond.load_state_dict(state, strict=True)
    out = cond(expected["tokens"])
    assert out.filled() == ("crossattn",)
    assert out.crossattn.shape == expected["cond"].shape
    assert rel_err(out.crossattn, expected["cond"]) <= 1e-4
    # the unconditional input of the fixture is all padding ids, which is what unconditional() uses
    uncond = cond.unconditional(expected["uncond_tokens"].shape[0]).crossattn
    torch.testing.assert_close(uncond, cond(expected["uncond_tokens"]).crossattn)


@torch.no_grad()
def test_cin_fixture_class_embedder_matches_compvis():
    config, state, expected = compvis_case("cin-vq")
    cond = create("class-embedder", config)
    cond.load_state_dict(state, strict=True)
    out = cond(expected["class_label"]).crossattn
    assert out.shape == expected["cond"].shape == (2, 1, 32)
    assert rel_err(out, expected["cond"]) <= 1e-4
    null = int(expected["uncond_class_label"][0])
    with_null = create("class-embedder", {**config, "null_class": null})
    with_null.load_state_dict(state, strict=True)
    torch.testing.assert_close(with_null.unconditional(2).crossattn, cond(expected["uncond_class_label"]).crossattn)


# -- class-embedder -------------------------------------------------------------------------------
def test_class_embedder_vector_target_passes_ids_and_has_no_weights():
    cond = create("class-embedder", {"embed_dim": 8, "n_classes": 5, "target": "vector", "null_class": 4})
    assert cond.slots == ("vector",) and cond.state_dict() == {}
    ids = torch.tensor([0, 3, 1])
    assert torch.equal(cond(ids).vector, ids) and cond(ids).crossattn is None
    assert torch.equal(cond.unconditional(2).vector, torch.tensor([4, 4]))
    assert torch.equal(cond([2, 1]).vector, torch.tensor([2, 1]))


@pytest.mark.parametrize(
    "raw, message",
    [
        (torch.tensor([0, 5]), "[0, 5)"),
        (torch.tensor([-1]), "[0, 5)"),
        (torch.tensor([1.0]), "integers"),
        ("3", "list"),
    ],
)
def test_class_embedder_rejects_bad_ids(raw, message):
    cond = create("class-embedder", {"embed_dim": 8, "n_classes": 5})
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace(")", r"\)")):
        cond(raw)


def test_class_embedder_unconditional_needs_null_class():
    with pytest.raises(InputError, match="null_class"):
        create("class-embedder", {"embed_dim": 8, "n_classes": 5}).unconditional(2)
    with pytest.raises(SpecError, match="null_class"):
        create("class-embedder", {"embed_dim": 8, "n_classes": 5, "null_class": 5})


# -- transformer-text -----------------------------------------------------------------------------
WORDS = {"n_embed": 16, "n_layer": 1, "vocab_size": 20, "max_seq_len": 6, "tokenizer": "words"}


def test_transformer_text_word_tokenizer():
    cond = create("transformer-text", {**WORDS, "vocabulary": ["red", "circle", "above", "a"]})
    tokens = cond.tokenize(["A red circle, above a RED circle!", ""])
    assert tokens.tolist() == [[5, 2, 3, 4, 5, 2], [0, 0, 0, 0, 0, 0]]  # case ignored, the rest truncated
    with pytest.raises(InputError, match="unknown words blue"):
        cond.tokenize(["a blue circle"])
    out = cond(["a red circle", "red"])
    assert out.crossattn.shape == (2, 6, 16)
    torch.testing.assert_close(cond.unconditional(2).crossattn, cond(["", ""]).crossattn)
    torch.testing.assert_close(cond("a red circle").crossattn, out.crossattn[:1])


def test_transformer_text_accepts_shorter_token_sequences():
    cond = create("transformer-text", {"n_embed": 16, "n_layer": 1, "vocab_size": 20, "max_seq_len": 6})
    assert cond(torch.tensor([[3, 4, 5]])).crossattn.shape == (1, 3, 16)
    assert cond.unconditional(3).crossattn.shape == (3, 6, 16)


@pytest.mark.parametrize(
    "raw, message",
    [
        (["a caption"], "no tokenizer"),
        (torch.zeros(1, 7, dtype=torch.long), "maximum 6"),
        (torch.tensor([[0, 20]]), "vocab|0, 20"),
        (torch.zeros(6, dtype=torch.long), r"\(B, L\)"),
    ],
)
def test_transformer_text_rejects_bad_input(raw, message):
    cond = create("transformer-text", {"n_embed": 16, "n_layer": 1, "vocab_size": 20, "max_seq_len": 6})
    with pytest.raises(InputError, match=message):
        cond(raw)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"use_tokenizer": True}, "not bundled"),
        ({"tokenizer": "words"}, "vocabulary"),
        ({"vocabulary": ["a"]}, "tokenizer"),
        ({"tokenizer": "words", "vocabulary": ["a", "A"]}, "twice"),
        ({"tokenizer": "words", "vocabulary": ["two words"]}, "single word"),
        ({"tokenizer": "words", "vocabulary": [f"w{i}" for i in range(19)]}, "vocab_size"),
    ],
)
def test_transformer_text_rejects_bad_params(params, message):
    with pytest.raises(SpecError, match=message):
        create("transformer-text", {"n_embed": 16, "n_layer": 1, "vocab_size": 20, **params})


# -- CLIP text encoder (the tokenizer's tests: test_clip_tokenizer.py) -----------------------------------
TINY_CLIP = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}


@torch.no_grad()
def test_clip_text_matches_transformers_text_model():
    transformers = pytest.importorskip("transformers")
    cond = create("clip-text", TINY_CLIP)
    assert not any(p.requires_grad for p in cond.parameters())  # frozen, as SD v1
    keys = list(cond.state_dict())
    assert "transformer.text_model.embeddings.token_embedding.weight" in keys
    assert "transformer.text_model.final_layer_norm.weight" in keys

    config = transformers.CLIPTextConfig(**TINY_CLIP, hidden_act="quick_gelu", max_position_embeddings=77)
    reference = transformers.CLIPTextModel(config).eval()
    ref_keys = set(reference.state_dict())
    mapped = {}
    for key, value in cond.state_dict().items():
        inner = key[len("transformer.text_model.") :]
        mapped[inner if inner in ref_keys else "text_model." + inner] = value
    reference.load_state_dict(mapped, strict=True)

    prompts = ["a red circle above a blue square", ""]
    out = cond(prompts).crossattn
    tokens = cond.tokenize(prompts)
    assert out.shape == (2, 77, 32)
    torch.testing.assert_close(out, reference(input_ids=tokens).last_hidden_state)
    torch.testing.assert_close(cond.unconditional(2).crossattn, cond(["", ""]).crossattn)
    torch.testing.assert_close(cond(tokens).crossattn, out)


def test_clip_text_loads_sd_style_state_dict_with_position_ids():
    pytest.importorskip("transformers")
    cond = create("clip-text", TINY_CLIP)
    state = dict(cond.state_dict())
    state["transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    cond.load_state_dict(state, strict=True)


def test_clip_text_rejects_bad_input():
    pytest.importorskip("transformers")
    cond = create("clip-text", TINY_CLIP)
    with pytest.raises(InputError, match="maximum 77"):
        cond(torch.zeros(1, 78, dtype=torch.long))
    with pytest.raises(InputError, match="strings"):
        cond(["ok", 3])
    small = create("clip-text", {**TINY_CLIP, "vocab_size": 1000})
    with pytest.raises(InputError, match="vocab_size 1000"):
        small(["a photo"])


# -- layout ---------------------------------------------------------------------------------------
LAYOUT = {"n_classes": 3, "class_names": ["red circle", "blue square", "green triangle"], "coord_bins": 4}
LAYOUT.update({"max_objects": 2, "n_embed": 16, "n_layer": 1})


def test_layout_tokens_follow_the_bounding_box_builder():
    cond = create("layout", LAYOUT)
    assert cond.vocab_size == 17 and cond.none_token == 16 and cond.max_seq_len == 6
    objects = [{"label": "Blue Square", "box": [0.0, 0.0, 1.0, 1.0]}, {"label": 0, "box": [0.34, 0.0, 0.7, 0.5]}]
    # corners snap to a 4x4 grid numbered row * 4 + column: (0.34, 0) -> column 1, (0.7, 0.5) -> (2, 2)
    assert cond.tokenize([objects]).tolist() == [[1, 0, 15, 0, 1, 10]]
    assert cond.tokenize([objects[:1]]).tolist() == [[1, 0, 15, 16, 16, 16]]
    cropped = create("layout", {**LAYOUT, "encode_crop": True})
    assert cropped.tokenize([[]]).tolist() == [[16] * 6 + [0, 15]]


def test_layout_forward_and_unconditional():
    from ldmkit_conditioners.layout import LayoutObject

    cond = create("layout", LAYOUT)
    layouts = [[LayoutObject(label="red circle", box=[0.1, 0.1, 0.5, 0.5])], []]
    out = cond(layouts).crossattn
    assert out.shape == (2, 6, 16)
    torch.testing.assert_close(cond.unconditional(1).crossattn, out[1:])
    torch.testing.assert_close(cond(cond.tokenize(layouts)).crossattn, out)


@pytest.mark.parametrize(
    "objects, message",
    [
        ([{"label": "purple star", "box": [0, 0, 1, 1]}], "unknown label"),
        ([{"label": "red circl", "box": [0, 0, 1, 1]}], "Did you mean 'red circle'"),
        ([{"label": 3, "box": [0, 0, 1, 1]}], "n_classes"),
        ([{"label": 0, "box": [0, 0, 1.5, 1]}], r"inside \[0, 1\]"),
        ([{"label": 0, "box": [0.5, 0, 0.4, 1]}], "x0 < x1"),
        ([{"label": 0, "box": [0, 0, 1]}], "box"),
        ([{"label": 0, "box": [0, 0, 1, 1], "color": "red"}], "color"),
        ([{"label": 0, "box": [0, 0, 1, 1]}] * 3, "max_objects=2"),
    ],
)
def test_layout_rejects_bad_objects(objects, message):
    with pytest.raises(InputError, match=message):
        create("layout", LAYOUT)([objects])


def test_layout_rejects_bad_batches_and_params():
    cond = create("layout", LAYOUT)
    for raw in ([], {"label": 0}, torch.zeros(1, 5, dtype=torch.long), torch.full((1, 6), 17)):
        with pytest.raises(InputError):
            cond(raw)
    with pytest.raises(InputError, match="no class_names"):
        create("layout", {**LAYOUT, "class_names": None})([[{"label": "red circle", "box": [0, 0, 1, 1]}]])
    with pytest.raises(SpecError, match="class_names"):
        create("layout", {**LAYOUT, "class_names": ["a", "b"]})


# -- spatial-rescaler -----------------------------------------------------------------------------
def test_spatial_rescaler_matches_interpolation_and_maps_channels():
    maps = torch.randn(2, 3, 16, 16)
    plain = create("spatial-rescaler", {"n_stages": 2, "method": "area"})
    assert plain.state_dict() == {}
    torch.testing.assert_close(plain(maps).concat, F.interpolate(maps, scale_factor=0.25, mode="area"))
    mapped = create("spatial-rescaler", {"n_stages": 1, "in_channels": 3, "out_channels": 5, "bias": True})
    assert set(mapped.state_dict()) == {"channel_mapper.weight", "channel_mapper.bias"}
    out = mapped(maps).concat
    assert out.shape == (2, 5, 8, 8) and mapped.slots == ("concat",)
    half = F.interpolate(maps, scale_factor=0.5, mode="bilinear")
    torch.testing.assert_close(out, mapped.channel_mapper(half))


def test_spatial_rescaler_unconditional_and_errors():
    cond = create("spatial-rescaler", {"out_channels": 4, "out_size": [8, 8], "uncond_value": -1.0})
    uncond = cond.unconditional(3).concat
    assert uncond.shape == (3, 4, 8, 8) and bool((uncond == -1).all())
    with pytest.raises(InputError, match="out_size"):
        create("spatial-rescaler", {}).unconditional(1)
    for raw, message in [
        (torch.randn(1, 2, 8, 8), "3 channels"),
        (torch.randn(3, 8, 8), r"\(B, C, H, W\)"),
        (torch.zeros(1, 3, 8, 8, dtype=torch.long), "float"),
        ([[0.0]], "float tensor"),
    ]:
        with pytest.raises(InputError, match=message):
            cond(raw)


# -- masked-image ---------------------------------------------------------------------------------
class PoolFirstStage(FirstStage):
    """A stand-in first stage: 4x average pooling, recording what it encodes."""

    name = "pool-test"
    latent_channels = 3
    downsample = 4

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        self.seen.append(images)
        return F.avg_pool2d(images, 4)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return F.interpolate(latents, scale_factor=4.0)


def _inpaint_request() -> tuple[torch.Tensor, torch.Tensor]:
    image = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    mask = torch.zeros(2, 1, 16, 16)
    mask[:, :, 4:12, 0:8] = 1.0
    return image, mask


def test_masked_image_paper_convention():
    from ldmkit_conditioners.first_stage_concat import MaskedImage

    first_stage = PoolFirstStage()
    cond = create("masked-image", {"scale_factor": 0.5, "latent_size": [4, 4]})
    cond.attach(first_stage)
    image, mask = _inpaint_request()
    out = cond(MaskedImage(image=image, mask=mask)).concat
    assert out.shape == (2, 4, 4, 4) and cond.state_dict() == {}
    masked = first_stage.seen[-1]
    torch.testing.assert_close(masked, torch.where(mask.bool(), -1.0, image))  # the hole is black
    torch.testing.assert_close(out[:, :3], F.avg_pool2d(masked, 4) * 0.5)
    torch.testing.assert_close(out[:, 3:], F.interpolate(mask, size=(4, 4)) * 2 - 1)
    assert cond.unconditional(3).concat.shape == (3, 4, 4, 4)


def test_masked_image_zero_convention_mask_first():
    first_stage = PoolFirstStage()
    cond = create("masked-image", {"convention": "zero", "mask_first": True, "mask_resize": "area"})
    cond.attach(first_stage)
    image, mask = _inpaint_request()
    out = cond({"image": image, "mask": mask}).concat
    torch.testing.assert_close(first_stage.seen[-1], image * (1 - mask))
    torch.testing.assert_close(out[:, :1], F.interpolate(mask, size=(4, 4), mode="area"))
    torch.testing.assert_close(out[:, 1:], F.avg_pool2d(image * (1 - mask), 4))


def test_masked_image_errors():
    image, mask = _inpaint_request()
    cond = create("masked-image", {})
    with pytest.raises(InputError, match="attach"):
        cond({"image": image, "mask": mask})
    cond.attach(PoolFirstStage())
    with pytest.raises(InputError, match="latent_size"):
        cond.unconditional(1)
    for raw, message in [
        ({"image": image}, "keys"),
        ({"image": image * 3, "mask": mask}, r"\[-1, 1\]"),
        ({"image": image, "mask": mask * 2}, r"\[0, 1\]"),
        ({"image": image, "mask": mask[:, :, :8]}, "does not match"),
        ({"image": image[:, :1], "mask": mask}, "3 channels"),
        ((image, mask), "MaskedImage"),
    ]:
        with pytest.raises(InputError, match=message):
            cond(raw)


# -- composite ------------------------------------------------------------------------------------
def _composite(dropout: float = 0.0, **extra) -> Conditioner:
    parts = {
        "label": {"type": "class-embedder", "params": {"embed_dim": 8, "n_classes": 4, "null_class": 3}},
        "text": {
            "type": "transformer-text",
            "params": {"n_embed": 8, "n_layer": 1, "vocab_size": 10, "max_seq_len": 3},
            "dropout": dropout,
        },
        **extra,
    }
    return create("composite", {"parts": parts})


def test_composite_merges_parts_and_fills_missing_ones():
    cond = _composite()
    assert cond.slots == ("crossattn",)
    assert {k.split(".")[1] for k in cond.state_dict()} == {"label", "text"}
    assert all(k.startswith("parts.") for k in cond.state_dict())
    labels, tokens = torch.tensor([0, 2]), torch.tensor([[1, 2, 3], [4, 5, 6]])
    out = cond({"label": labels, "text": tokens}).crossattn
    assert out.shape == (2, 4, 8)  # 1 class token + 3 text tokens
    torch.testing.assert_close(out[:, :1], cond.parts["label"](labels).crossattn)
    torch.testing.assert_close(out[:, 1:], cond.parts["text"](tokens).crossattn)
    only_label = cond({"label": labels, "text": None}).crossattn
    torch.testing.assert_close(only_label[:, 1:], cond.parts["text"].unconditional(2).crossattn)
    torch.testing.assert_close(cond({"label": labels}).crossattn, only_label)
    torch.testing.assert_close(
        cond.unconditional(2).crossattn[:, :1], cond.parts["label"](torch.tensor([3, 3])).crossattn
    )


def test_composite_concat_and_attach():
    parts = {
        "hole": {"type": "masked-image", "params": {"latent_size": [4, 4]}},
        "map": {"type": "spatial-rescaler", "params": {"n_stages": 2, "in_channels": 1, "out_size": [4, 4]}},
    }
    cond = create("composite", {"parts": parts})
    cond.attach(PoolFirstStage())
    image, mask = _inpaint_request()
    out = cond({"hole": {"image": image, "mask": mask}, "map": mask}).concat
    assert out.shape == (2, 5, 4, 4) and cond.slots == ("concat",)
    assert cond.unconditional(2).concat.shape == (2, 5, 4, 4)


def test_composite_dropout_statistics_and_seeding():
    cond = _composite(dropout=0.3)
    batch = 4000
    tokens = torch.randint(1, 10, (batch, 3), generator=torch.Generator().manual_seed(1))
    raw = {"label": torch.zeros(batch, dtype=torch.long), "text": tokens}
    with torch.no_grad():
        full = cond(raw).crossattn
        uncond_text = cond.parts["text"].unconditional(1).crossattn
        trained = cond.forward_train(raw, generator=torch.Generator().manual_seed(0)).crossattn
        again = cond.forward_train(raw, generator=torch.Generator().manual_seed(0)).crossattn
    assert torch.equal(trained, again)
    torch.testing.assert_close(trained[:, :1], full[:, :1])  # the label part has no dropout
    # a batch of 4000 and a batch of 1 take different float paths (CPU kernels block by batch size): each sample
    # must sit within float noise (1e-4) of exactly one of the two, while the two are far apart
    to_dropped = (trained[:, 1:] - uncond_text).abs().amax(dim=(1, 2))
    to_kept = (trained[:, 1:] - full[:, 1:]).abs().amax(dim=(1, 2))
    dropped, kept = to_dropped < 1e-4, to_kept < 1e-4
    assert bool((dropped ^ kept).all())  # every sample is either dropped or untouched
    assert float(torch.minimum(to_dropped, to_kept).max()) < 1e-4 < float(torch.maximum(to_dropped, to_kept).min())
    assert abs(dropped.float().mean().item() - 0.3) < 0.03  # ~5 standard deviations


def test_composite_dropout_extremes():
    raw = {"label": torch.tensor([1, 2]), "text": torch.tensor([[1, 2, 3], [4, 5, 6]])}
    never = _composite(dropout=0.0)
    torch.testing.assert_close(never.forward_train(raw).crossattn, never(raw).crossattn)
    always = _composite(dropout=1.0)
    torch.testing.assert_close(always.forward_train(raw).crossattn, always({"label": raw["label"]}).crossattn)


def test_composite_errors():
    with pytest.raises(UnknownComponentError, match="part 'x'"):
        create("composite", {"parts": {"x": {"type": "no-such-conditioner"}}})
    vector = {"type": "class-embedder", "params": {"embed_dim": 4, "n_classes": 3, "target": "vector"}}
    with pytest.raises(SpecError, match="vector"):
        create("composite", {"parts": {"a": vector, "b": vector}})
    with pytest.raises(SpecError, match="part 'a'"):
        create("composite", {"parts": {"a": {"type": "class-embedder", "params": {"n_classes": 3}}}})
    with pytest.raises(SpecError, match="dropout"):
        _composite(dropout=1.5)
    cond = _composite()
    with pytest.raises(InputError, match="unknown part"):
        cond({"labels": torch.tensor([0])})
    with pytest.raises(InputError, match="no part"):
        cond({"label": None})
    with pytest.raises(InputError, match="batch sizes"):
        cond({"label": torch.tensor([0]), "text": torch.tensor([[1, 2, 3], [1, 2, 3]])})
    with pytest.raises(InputError, match="dict"):
        cond(torch.tensor([0]))


def test_unconditional_rejects_bad_batch():
    cond = create("class-embedder", {"embed_dim": 4, "n_classes": 3, "null_class": 2})
    for batch in (0, -1, 1.5, True):
        with pytest.raises(InputError, match="batch"):
            cond.unconditional(batch)
    assert isinstance(cond.unconditional(1), Conditioning)


# -- the shared conformance checks ----------------------------------------------------------------
class TestClassEmbedderConformance(ConditionerConformance):
    component_cls = ClassEmbedder
    params = {"embed_dim": 8, "n_classes": 5, "null_class": 4}

    def make_raw(self, batch: int) -> torch.Tensor:
        return torch.arange(batch) % 4


class TestClassEmbedderVectorConformance(TestClassEmbedderConformance):
    params = {"embed_dim": 8, "n_classes": 5, "null_class": 4, "target": "vector"}


class TestTransformerTextConformance(ConditionerConformance):
    component_cls = TransformerTextConditioner
    params = {**WORDS, "vocabulary": ["red", "blue", "circle", "square"]}

    def make_raw(self, batch: int) -> list[str]:
        return ["red circle blue square"] * batch


class TestCLIPTextConformance(ConditionerConformance):
    component_cls = CLIPTextConditioner
    params = TINY_CLIP

    def make_raw(self, batch: int) -> list[str]:
        return ["a photo of a cat"] * batch


class TestLayoutConformance(ConditionerConformance):
    component_cls = LayoutConditioner
    params = LAYOUT

    def make_raw(self, batch: int) -> list[list[dict]]:
        return [[{"label": i % 3, "box": [0.1, 0.2, 0.6, 0.9]}] for i in range(batch)]


class TestSpatialRescalerConformance(ConditionerConformance):
    component_cls = SpatialRescaler
    params = {"n_stages": 2, "out_channels": 2, "out_size": [4, 4]}

    def make_raw(self, batch: int) -> torch.Tensor:
        return torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(batch))


class TestMaskedImageConformance(ConditionerConformance):
    component_cls = MaskedImageConditioner
    params = {"latent_size": [4, 4]}

    def make_first_stage(self) -> FirstStage:
        return PoolFirstStage()

    def make_raw(self, batch: int) -> dict:
        image, mask = _inpaint_request()
        return {"image": image[:1].repeat(batch, 1, 1, 1), "mask": mask[:1].repeat(batch, 1, 1, 1)}


class TestCompositeConformance(ConditionerConformance):
    component_cls = CompositeConditioner
    params = {
        "parts": {
            "label": {"type": "class-embedder", "params": {"embed_dim": 8, "n_classes": 4, "null_class": 3}},
            "map": {"type": "spatial-rescaler", "params": {"in_channels": 1, "out_size": [8, 8]}, "dropout": 0.1},
        }
    }

    def make_raw(self, batch: int) -> dict:
        return {"label": torch.zeros(batch, dtype=torch.long), "map": torch.ones(batch, 1, 16, 16)}


def test_composite_one_part_training_keeps_exactly_one_part_per_sample():
    parts = {
        name: {"type": "class-embedder", "params": {"embed_dim": 8, "n_classes": 5, "null_class": 4}}
        for name in ("a", "b")
    }
    cls = ldmkit.get_registry().get("conditioner", "composite")
    comp = cls.from_params({"training_mode": "one-part", "uncond_rate": 0.2, "parts": parts})
    n = 4000
    raw = {"a": torch.zeros(n, dtype=torch.long), "b": torch.ones(n, dtype=torch.long)}
    out = comp.forward_train(raw, torch.Generator().manual_seed(0)).crossattn  # (n, 2, 8)
    kept_a = (out[:, 0] == comp.parts["a"](raw["a"][:1]).crossattn[0, 0]).all(-1)
    kept_b = (out[:, 1] == comp.parts["b"](raw["b"][:1]).crossattn[0, 0]).all(-1)
    assert not bool((kept_a & kept_b).any())  # never two parts at once
    assert abs(kept_a.float().mean().item() - 0.4) < 0.03
    assert abs(kept_b.float().mean().item() - 0.4) < 0.03
    assert abs((~kept_a & ~kept_b).float().mean().item() - 0.2) < 0.03


def test_spatial_rescaler_one_hot_accepts_class_id_maps():
    cls = ldmkit.get_registry().get("conditioner", "spatial-rescaler")
    resc = cls.from_params({"in_channels": 4, "n_stages": 2, "method": "area", "multiplier": 0.5, "one_hot": True})
    ids = torch.randint(0, 4, (2, 16, 16))
    onehot = F.one_hot(ids, 4).permute(0, 3, 1, 2).float()
    assert torch.equal(resc(ids).concat, resc(onehot).concat)
    assert resc(ids).concat.shape == (2, 4, 4, 4)
    with pytest.raises(ldmkit.InputError, match="class ids"):
        resc(torch.full((1, 16, 16), 4))


def test_layout_separate_coordinates_tokens():
    cls = ldmkit.get_registry().get("conditioner", "layout")
    lay = cls.from_params(
        {"n_classes": 4, "class_names": ["a", "b", "c", "d"], "coord_bins": 11, "max_objects": 2}
        | {"n_embed": 16, "n_layer": 1, "coordinates": "separate"}
    )
    assert lay.vocab_size == 4 + 11 + 1 and lay.max_seq_len == 10
    tokens = lay.tokenize([[{"label": "c", "box": [0.0, 0.5, 0.3, 1.0]}]])
    assert tokens.tolist() == [[2, 4 + 0, 4 + 5, 4 + 3, 4 + 10] + [lay.none_token] * 5]
    assert lay([[{"label": 1, "box": [0.1, 0.1, 0.2, 0.2]}]]).crossattn.shape == (1, 10, 16)
    with pytest.raises(SpecError, match="encode_crop"):
        cls.from_params({"n_classes": 4, "n_embed": 16, "n_layer": 1, "coordinates": "separate", "encode_crop": True})


def test_host_tensors_reach_the_device_unchanged():
    from ldmkit.checks import host_to_device

    ids = torch.tensor([[3, 1, 4], [1, 5, 9]])
    assert host_to_device(ids, None) is ids and host_to_device(ids, torch.device("cpu")) is ids
    moved = host_to_device(ids, torch.device("meta"))  # any device but the CPU
    assert moved.device.type == "meta" and moved.shape == ids.shape and moved.dtype == ids.dtype


def test_masked_image_blur_hole_is_painted_from_known_pixels():
    from ldmkit.masking import blur_fill

    first_stage = PoolFirstStage()
    cond = create("masked-image", {"hole": "blur", "blur_sigma": 1.5})
    cond.attach(first_stage)
    image, mask = _inpaint_request()
    out = cond({"image": image, "mask": mask}).concat
    painted = first_stage.seen[-1]
    torch.testing.assert_close(painted * (1 - mask), image * (1 - mask))  # known pixels kept
    torch.testing.assert_close(out[:, 3:], F.interpolate(mask, size=(4, 4)) * 2 - 1)  # the paper's mask channel
    # a flat known region paints a flat hole, whatever was under it
    flat = torch.full_like(image, 0.3)
    flat[:, :, 4:12, 0:8] = -0.9
    torch.testing.assert_close(blur_fill(flat, mask, 2.0), torch.full_like(image, 0.3))
    # nothing known near a pixel: the mean of the known pixels
    wide = torch.ones(1, 1, 16, 16)
    wide[..., :, 15:] = 0.0
    picture = torch.zeros(1, 3, 16, 16)
    picture[..., :, 15:] = torch.tensor([0.5, -0.5, 0.25]).view(1, 3, 1, 1)
    torch.testing.assert_close(blur_fill(picture, wide, 0.5)[..., 0, 0], torch.tensor([[0.5, -0.5, 0.25]]))
