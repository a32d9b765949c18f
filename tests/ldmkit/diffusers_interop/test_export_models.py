"""``convert --to diffusers`` on the models a newcomer has: the two CompVis fixtures and the shipped Shapes model.

Each folder must load with ``diffusers.DiffusionPipeline.from_pretrained(folder)`` and nothing else, its
models must compute what ldmkit's compute (and, for the fixtures, what the paper's code computed), what
diffusers cannot hold must be named in the folder, and ``convert --from diffusers`` must give the
ldmkit pipeline back.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import ldmkit
from ldmkit import compvis
from ldmkit import diffusers_interop as di
from tests.tiny import tiny_sd_spec

diffusers = pytest.importorskip("diffusers")

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "compvis"
SHAPES = Path(__file__).resolve().parents[3] / "plugins" / "ldmkit_shapes" / "model"
TOL = 1e-4  # relative error; the fixtures' README states this for float32 on the CPU


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def load_fixture(name: str) -> tuple[ldmkit.Pipeline, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    folder = FIXTURES / name
    pipe = compvis.load(folder / "config.yaml", folder / "model.ckpt")
    return pipe, load_file(str(folder / "expected.safetensors"))


def from_pretrained(folder: Path):
    """The folder as diffusers loads it, with no arguments beyond the path."""
    return diffusers.DiffusionPipeline.from_pretrained(folder)


@pytest.fixture(scope="module")
def txt2img(tmp_path_factory):
    pipe, expected = load_fixture("txt2img-kl")
    out = di.to_diffusers(pipe, tmp_path_factory.mktemp("txt2img") / "diffusers")
    return pipe, expected, out, from_pretrained(out)


@pytest.fixture(scope="module")
def cin(tmp_path_factory):
    pipe, expected = load_fixture("cin-vq")
    out = di.to_diffusers(pipe, tmp_path_factory.mktemp("cin") / "diffusers")
    return pipe, expected, out, from_pretrained(out)


# -- the paper's BERT: LDMBertModel -----------------------------------------------------------------
def test_bert_fixture_is_an_ldm_text_to_image_pipeline(txt2img):
    _, _, out, dp = txt2img
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "LDMTextToImagePipeline" == type(dp).__name__
    assert set(index) - {"_class_name", "_diffusers_version"} == {"vqvae", "bert", "tokenizer", "unet", "scheduler"}
    assert all((out / name).is_dir() for name in ("vqvae", "bert", "tokenizer", "unet", "scheduler"))
    assert type(dp.bert).__name__ == "LDMBertModel"
    assert not list(out.rglob("*.bin"))  # safetensors only
    record = json.loads((out / "ldmkit_export.json").read_text())
    assert record["left_out"] == [] and record["pipeline"] == "LDMTextToImagePipeline"


def test_bert_fixture_computes_what_the_paper_and_ldmkit_compute(txt2img):
    pipe, expected, _, dp = txt2img
    with torch.no_grad():
        for tokens in (expected["tokens"], expected["uncond_tokens"]):
            ours = pipe.conditioner(tokens).crossattn
            theirs = dp.bert(tokens)[0]
            assert rel_err(theirs, ours) <= TOL
        assert rel_err(dp.bert(expected["tokens"])[0], expected["cond"]) <= TOL
        x_t, t, cond = expected["x_t"], expected["timesteps"], expected["cond"]
        theirs = dp.unet(x_t, t, encoder_hidden_states=cond).sample
        assert rel_err(theirs, pipe.denoiser(x_t, t, ldmkit.Conditioning(crossattn=cond))) <= TOL
        assert rel_err(theirs, expected["model_output"]) <= TOL
        assert rel_err(dp.vqvae.encode(expected["image"]).latent_dist.mode(), expected["latent_mode"]) <= TOL
        scale = dp.vqvae.config.scaling_factor
        assert scale == pytest.approx(pipe.scale_factor)
        assert rel_err(dp.vqvae.decode(x_t / scale).sample, expected["decoded"]) <= TOL


def test_token_id_model_gets_a_tokenizer_of_ids(txt2img):
    pipe, _, _, dp = txt2img
    ids = dp.tokenizer(["5 17 3", "99"], padding="max_length", max_length=12, return_tensors="pt").input_ids
    assert ids.tolist() == [[5, 17, 3] + [0] * 9, [99] + [0] * 11]  # 0 pads, as ldmkit's unconditional input
    assert dp.tokenizer.model_max_length == pipe.conditioner.params.max_seq_len
    with pytest.raises(Exception, match="UNK"):  # a model of ids knows no words: the tokenizer refuses them
        dp.tokenizer(["a red circle"])


def test_bert_fixture_round_trip(txt2img):
    pipe, _, out, _ = txt2img
    back = di.from_diffusers(out)
    assert back.conditioner.name == "transformer-text"
    assert back.conditioner.params == pipe.conditioner.params
    for name, module in pipe.modules().items():
        assert same_weights(module, back.modules()[name]), name
    assert back.scale_factor == pytest.approx(pipe.scale_factor)
    assert torch.equal(back.schedule.alphas_cumprod, pipe.schedule.alphas_cumprod)


def test_ldmbert_configs_ldmkit_cannot_build_are_refused(txt2img):
    from ldmkit.errors import SpecError

    _, _, out, _ = txt2img
    config = json.loads((out / "bert" / "config.json").read_text())
    assert di.conditioner_params_from_diffusers(config).n_layer == 2
    for key, value in (("encoder_attention_heads", 12), ("head_dim", 32), ("encoder_ffn_dim", 100)):
        with pytest.raises(SpecError, match=key):
            di.conditioner_params_from_diffusers({**config, key: value})


WORDS = ["a", "red", "blue", "circle", "square", "and"]


def word_model(max_seq_len: int) -> ldmkit.Pipeline:
    words = dict(n_embed=32, n_layer=2, vocab_size=10, max_seq_len=max_seq_len, tokenizer="words", vocabulary=WORDS)
    conditioner = {"type": "transformer-text", "params": words}
    spec = tiny_sd_spec(conditioner, unet={"attention_resolutions": [2]}, scale_factor=0.5)
    pipe = ldmkit.Pipeline.from_spec(spec)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in pipe.modules().values():
            for p in module.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return pipe


def test_word_tokenizer_vocabulary_is_written_and_read_back(tmp_path):
    pipe = word_model(max_seq_len=8)
    out = di.to_diffusers(pipe, tmp_path / "df")
    dp = from_pretrained(out)
    prompts = ["A red circle, and a BLUE square!", "blue", ""]
    ids = dp.tokenizer(prompts, padding="max_length", max_length=8, truncation=True, return_tensors="pt").input_ids
    assert torch.equal(ids, pipe.conditioner.tokenize(prompts))
    with torch.no_grad():
        assert rel_err(dp.bert(ids)[0], pipe.conditioner(prompts).crossattn) <= TOL
    back = di.from_diffusers(out)
    assert back.conditioner.params.vocabulary == WORDS and back.conditioner.params.tokenizer == "words"
    assert same_weights(back.conditioner, pipe.conditioner)


def test_ldm_text_to_image_pipeline_runs_a_77_token_model(tmp_path):
    pipe = word_model(max_seq_len=77)  # LDMTextToImagePipeline.__call__ pads every prompt to 77 tokens
    out = di.to_diffusers(pipe, tmp_path / "df")
    dp = from_pretrained(out)
    with torch.no_grad():
        ids = dp.tokenizer(["a red circle"], padding="max_length", max_length=77, return_tensors="pt").input_ids
        ctx = dp.bert(ids)
        assert rel_err(ctx[0], pipe.conditioner(["a red circle"]).crossattn) <= TOL
    generator = torch.Generator().manual_seed(0)
    # the pipeline sizes latents as height // 8: 64 pixels ask for an 8x8 latent, which this f2 autoencoder
    # decodes to 16 pixels
    images = dp("a red circle", num_inference_steps=2, guidance_scale=2.0, generator=generator, output_type="pt",
                height=64, width=64).images  # fmt: skip
    assert images.shape == (1, 3, 16, 16) and torch.isfinite(torch.as_tensor(images)).all()


# -- class ids into cross-attention: left out, kept for ldmkit ----------------------------------------
def test_class_embedder_fixture_exports_the_rest_and_says_what_is_left_out(cin):
    _, _, out, dp = cin
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "LDMPipeline" == type(dp).__name__
    assert set(index) - {"_class_name", "_diffusers_version"} == {"vqvae", "unet", "scheduler"}
    assert type(dp.vqvae).__name__ == "VQModel" and type(dp.unet).__name__ == "UNet2DConditionModel"
    record = json.loads((out / "ldmkit_export.json").read_text())
    [item] = record["left_out"]
    assert item["component"] == "conditioner" and item["type"] == "class-embedder"
    assert "cross-attention" in item["reason"]
    assert "class-embedder" in (out / "README.md").read_text()


def test_class_embedder_fixture_computes_what_the_paper_computes(cin):
    from safetensors.torch import load_file

    pipe, expected, out, dp = cin
    # what the README tells a diffusers user: the kept table gives the one-token context
    table = load_file(str(out / "ldmkit_conditioner.safetensors"))["embedding.weight"]
    with torch.no_grad():
        context = table[expected["class_label"]][:, None]  # (B, 1, D)
        assert rel_err(context, expected["cond"]) <= TOL
        x_t, t = expected["x_t"], expected["timesteps"]
        theirs = dp.unet(x_t, t, encoder_hidden_states=context).sample
        assert rel_err(theirs, expected["model_output"]) <= TOL
        assert rel_err(theirs, pipe.denoiser(x_t, t, pipe.conditioner(expected["class_label"]))) <= TOL
        assert rel_err(dp.vqvae.encode(expected["image"]).latents, expected["latent_mode"]) <= TOL
        # VQ decoding snaps to the codebook: compare on codebook vectors so no near-tie can flip a code
        codes = pipe.first_stage.quantize.embedding.weight[torch.tensor([[[1, 5], [7, 2]]])]  # (1, 2, 2, C)
        z = codes.permute(0, 3, 1, 2).repeat(2, 1, 4, 4)  # (2, C, 8, 8)
        assert rel_err(dp.vqvae.decode(z).sample, pipe.first_stage.decode(z)) <= TOL


def test_class_embedder_fixture_round_trip(cin):
    pipe, expected, out, _ = cin
    back = di.from_diffusers(out)
    assert back.conditioner.name == "class-embedder" and back.conditioner.params == pipe.conditioner.params
    for name, module in pipe.modules().items():
        assert same_weights(module, back.modules()[name]), name
    with torch.no_grad():
        labels = expected["class_label"]
        assert torch.equal(back.conditioner(labels).crossattn, pipe.conditioner(labels).crossattn)


def test_left_out_weights_are_read_as_safetensors_only(cin, tmp_path):
    import shutil

    _, _, out, _ = cin
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "ldmkit_conditioner.safetensors").write_bytes(b"\x80\x02}q\x00.")  # a pickle
    with pytest.raises(ldmkit.CheckpointError, match="safetensors"):
        di.from_diffusers(copy)


# -- the shipped Shapes model ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    pipe = ldmkit.Pipeline.load(SHAPES)
    out = di.to_diffusers(pipe, tmp_path_factory.mktemp("shapes") / "diffusers")
    return pipe, out, from_pretrained(out)


def test_shapes_model_loads_in_diffusers_and_computes_the_same(shapes):
    pipe, out, dp = shapes
    assert type(dp).__name__ == "LDMPipeline"
    assert type(dp.unet).__name__ == "UNet2DConditionModel" and type(dp.vqvae).__name__ == "AutoencoderKL"
    record = json.loads((out / "ldmkit_export.json").read_text())
    [item] = record["left_out"]
    assert item["type"] == "composite" and "29 conditioning channels" in item["reason"]
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        cond = pipe.conditioner({"label": torch.tensor([3, 14])})  # what the left-out conditioner gives
        x_t = torch.randn(2, 3, 16, 16, generator=g)
        t = torch.tensor([10, 700])
        ours = pipe.denoiser(x_t, t, cond)
        theirs = dp.unet(torch.cat([x_t, cond.concat], dim=1), t, encoder_hidden_states=cond.crossattn).sample
        assert rel_err(theirs, ours) <= TOL
        z = torch.randn(1, 3, 16, 16, generator=g)
        assert rel_err(dp.vqvae.decode(z / dp.vqvae.config.scaling_factor).sample, pipe.decode(z)) <= TOL
        image = torch.rand(1, 3, 64, 64, generator=g) * 2 - 1
        assert rel_err(dp.vqvae.encode(image).latent_dist.mode(), pipe.first_stage.encode(image)) <= TOL


def test_shapes_model_round_trip_keeps_conditioner_and_tasks(shapes):
    pipe, out, _ = shapes
    back = di.from_diffusers(out)
    assert back.conditioner.name == "composite"
    for name, module in pipe.modules().items():
        assert same_weights(module, back.modules()[name]), name
    assert back.spec.tasks == pipe.spec.tasks and back.spec.sampling == pipe.spec.sampling
    assert back.spec.conditioner == pipe.spec.conditioner
    assert back.scale_factor == pytest.approx(pipe.scale_factor)


@pytest.mark.slow  # the Shapes model is written and read twice
def test_cli_exports_the_shapes_model_and_warns(tmp_path, capsys, caplog):
    from ldmkit.cli import main

    assert main(["convert", "--to", "diffusers", str(SHAPES), str(tmp_path / "df")]) == 0
    captured = capsys.readouterr()
    assert "LDMPipeline" in captured.out and "left out conditioner 'composite'" in captured.out
    assert any("left out" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    assert main(["convert", "--from", "diffusers", str(tmp_path / "df"), str(tmp_path / "back")]) == 0
    assert ldmkit.Pipeline.load(tmp_path / "back").conditioner.name == "composite"
