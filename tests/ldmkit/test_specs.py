"""Pipeline specs: parsing is safe, validation names the field, component types are registry names only."""

from __future__ import annotations

import json
import sys

import pytest

import ldmkit
from ldmkit import Params, SpecError, UnknownComponentError, hookimpl
from ldmkit.registry import PluginInfo, Registry
from ldmkit.specs import MAX_SPEC_BYTES, dump_spec, load_spec, parse_document, validate_spec


class KL(ldmkit.FirstStage):
    name = "kl-autoencoder"
    latent_channels, downsample = 4, 8

    class Params(Params):
        embed_dim: int = 4

    def encode(self, images):
        return images

    def decode(self, latents):
        return latents


class UNet(ldmkit.Denoiser):
    name = "unet"

    class Params(Params):
        model_channels: int
        channel_mult: list[int] = [1, 2]

    def forward(self, x_t, t, cond):
        return x_t


class DDIM(ldmkit.Sampler):
    name = "ddim"

    class Params(Params):
        pass

    def sample(self, *args, **kwargs):
        return None


class _StandIns:
    @hookimpl
    def register_first_stages(self, register):
        register(KL)

    @hookimpl
    def register_denoisers(self, register):
        register(UNet)

    @hookimpl
    def register_samplers(self, register):
        register(DDIM)


@pytest.fixture(scope="module")
def registry() -> Registry:
    reg = Registry(strict=True)
    reg.add_plugin(_StandIns(), PluginInfo("standins", "(tests)", "0"))
    return reg


VALID_YAML = """\
version: 1
first_stage:
  type: kl-autoencoder
  params: {embed_dim: 4}
denoiser:
  type: unet
  params:
    model_channels: 32
    channel_mult: [1, 2, 4]
scale_factor: 0.18215
latent_size: [8, 8]
sampling: {sampler: ddim, steps: 20}
"""


def _spec(**overrides) -> dict:
    spec = {"first_stage": {"type": "kl-autoencoder"}, "denoiser": {"type": "unet", "params": {"model_channels": 32}}}
    spec.update(overrides)
    return spec


def _write(tmp_path, text: str | bytes, name: str = "spec.yaml"):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def test_valid_yaml_spec(tmp_path, registry) -> None:
    spec = load_spec(_write(tmp_path, VALID_YAML), registry=registry)
    assert spec.first_stage.type == "kl-autoencoder" and spec.denoiser.params["channel_mult"] == [1, 2, 4]
    assert spec.scale_factor == pytest.approx(0.18215) and spec.latent_size == [8, 8]
    assert spec.sampling.sampler == "ddim" and spec.sampling.steps == 20 and spec.conditioner is None


def test_valid_json_spec_and_round_trip(tmp_path, registry) -> None:
    spec = load_spec(_write(tmp_path, json.dumps(_spec()), "spec.json"), registry=registry)
    again = load_spec(_write(tmp_path, dump_spec(spec), "again.yaml"), registry=registry)
    assert again == spec


def test_unknown_type_suggests_and_lists(registry) -> None:
    with pytest.raises(UnknownComponentError) as info:
        validate_spec(_spec(first_stage={"type": "kl-autoencodr"}), registry=registry, source="my.yaml")
    message = str(info.value)
    assert message.startswith("my.yaml: first_stage.type:")
    assert "Did you mean 'kl-autoencoder'?" in message and "Registered: kl-autoencoder" in message
    with pytest.raises(UnknownComponentError, match=r"sampling\.sampler: .*Did you mean 'ddim'"):
        validate_spec(_spec(sampling={"sampler": "ddin"}), registry=registry)
    with pytest.raises(UnknownComponentError, match=r"denoiser\.type: .*Registered: unet"):
        validate_spec(_spec(denoiser={"type": "transformer"}), registry=registry)


@pytest.mark.parametrize("field", ["first_stage", "denoiser", "sampler", "task"])
@pytest.mark.parametrize("dotted", ["{mod}.Evil", "{mod}:Evil", "os.system", "ldm.models.autoencoder.AutoencoderKL"])
def test_import_paths_are_refused_and_never_imported(tmp_path, monkeypatch, registry, field, dotted) -> None:
    module = f"ldmkit_spec_sentinel_{field}"
    sentinel = tmp_path / "imported"
    (tmp_path / f"{module}.py").write_text(f"open({str(sentinel)!r}, 'w').close()\nclass Evil: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    name = dotted.format(mod=module)
    data = {
        "first_stage": _spec(first_stage={"type": name}),
        "denoiser": _spec(denoiser={"type": name}),
        "sampler": _spec(sampling={"sampler": name}),
        "task": _spec(tasks={"t2i": {"type": name}}),
    }[field]
    with pytest.raises(SpecError, match="not a (component|sampler) name"):
        validate_spec(data, registry=registry)
    assert module not in sys.modules and "ldm" not in sys.modules
    assert not sentinel.exists()


def test_wrong_type_names_the_field_path(registry) -> None:
    with pytest.raises(SpecError) as info:
        validate_spec(_spec(denoiser={"type": "unet", "params": {"model_channels": "64"}}), registry=registry)
    assert "denoiser.params.model_channels" in str(info.value)
    with pytest.raises(SpecError, match=r"denoiser\.params\.channel_mult\.1"):
        validate_spec(
            _spec(denoiser={"type": "unet", "params": {"model_channels": 8, "channel_mult": [1, "2"]}}),
            registry=registry,
        )
    with pytest.raises(SpecError, match=r"sampling\.steps"):
        validate_spec(_spec(sampling={"steps": 2.5}), registry=registry)
    with pytest.raises(SpecError, match=r"denoiser\.params\.model_channels: Field required"):
        validate_spec(_spec(denoiser={"type": "unet"}), registry=registry)


def test_builtin_unet_names_the_field_path() -> None:
    registry = ldmkit.get_registry()
    if not {"kl-autoencoder"} <= set(registry.names("first_stage")) or "unet" not in registry.names("denoiser"):
        pytest.skip("the built-in autoencoder and unet plugins are not installed")
    with pytest.raises(SpecError, match=r"denoiser\.params\.model_channels"):
        validate_spec(_spec(denoiser={"type": "unet", "params": {"model_channels": "64"}}))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_component_params_take_finite_numbers_only(value) -> None:
    registry = ldmkit.get_registry()
    if "unet" not in registry.names("denoiser"):
        pytest.skip("the built-in unet plugin is not installed")
    params = {"model_channels": 8, "dropout": value}
    with pytest.raises(SpecError, match=r"denoiser\.params\.dropout: Input should be a finite number"):
        validate_spec(_spec(denoiser={"type": "unet", "params": params}))


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (_spec(extra_field=1), "extra_field"),
        (_spec(first_stage={"type": "kl-autoencoder", "parms": {}}), "first_stage.parms"),
        (_spec(denoiser={"type": "unet", "params": {"model_channels": 8, "model_channel": 8}}), "model_channel"),
        (_spec(sampling={"sampler": "ddim", "step": 5}), "sampling.step"),
    ],
)
def test_unknown_key_rejected(registry, data, field) -> None:
    with pytest.raises(SpecError, match=rf"{field}: Extra inputs are not permitted"):
        validate_spec(data, registry=registry)


def test_yaml_python_tags_are_not_executed(tmp_path, monkeypatch, registry) -> None:
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "X"
    text = VALID_YAML + f'scale: !!python/object/apply:os.system ["touch {marker}"]\n'
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(_write(tmp_path, text), registry=registry)
    with pytest.raises(SpecError):
        parse_document(f"!!python/object/apply:os.system ['touch {marker}']")
    assert not marker.exists()


def test_duplicate_keys(tmp_path, registry) -> None:
    with pytest.raises(SpecError, match="duplicate key 'denoiser'"):
        load_spec(_write(tmp_path, VALID_YAML + "denoiser: {type: unet}\n"), registry=registry)
    nested = VALID_YAML.replace("params: {embed_dim: 4}", "params: {embed_dim: 4, embed_dim: 8}")
    with pytest.raises(SpecError, match="duplicate key 'embed_dim'"):
        load_spec(_write(tmp_path, nested), registry=registry)
    text = '{"first_stage": {"type": "kl-autoencoder"}, "denoiser": {"type": "unet"}, "denoiser": {"type": "unet"}}'
    with pytest.raises(SpecError, match="duplicate key 'denoiser'"):
        load_spec(_write(tmp_path, text, "spec.json"), registry=registry)


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n"])
def test_empty_file(tmp_path, registry, text) -> None:
    with pytest.raises(SpecError, match="empty"):
        load_spec(_write(tmp_path, text), registry=registry)


@pytest.mark.parametrize(("text", "kind"), [("- a\n- b\n", "list"), ("42\n", "int"), ("just text\n", "str")])
def test_non_mapping_file(tmp_path, registry, text, kind) -> None:
    with pytest.raises(SpecError, match=f"must be a mapping, not a {kind}"):
        load_spec(_write(tmp_path, text), registry=registry)
    with pytest.raises(SpecError, match="mapping"):
        load_spec(_write(tmp_path, json.dumps([1, 2]), "spec.json"), registry=registry)


def test_invalid_utf8(tmp_path, registry) -> None:
    with pytest.raises(SpecError, match="UTF-8"):
        load_spec(_write(tmp_path, VALID_YAML.encode() + b"# \xff\xfe broken\n"), registry=registry)


def test_oversized_file(tmp_path, registry) -> None:
    padding = "#" + "x" * 1000 + "\n"
    path = _write(tmp_path, VALID_YAML + padding * (MAX_SPEC_BYTES // len(padding) + 1))
    with pytest.raises(SpecError, match="larger than"):
        load_spec(path, registry=registry)
    with pytest.raises(SpecError, match="larger than"):
        parse_document("a: " + "x" * MAX_SPEC_BYTES)


def test_missing_file_and_malformed_text(tmp_path, registry) -> None:
    with pytest.raises(SpecError, match="no such file"):
        load_spec(tmp_path / "absent.yaml", registry=registry)
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(_write(tmp_path, "first_stage: [unclosed\n"), registry=registry)
    with pytest.raises(SpecError, match="not valid YAML/JSON"):
        load_spec(_write(tmp_path, '{"first_stage": ', "spec.json"), registry=registry)
    with pytest.raises(SpecError):
        parse_document("[" * 3000)  # deep nesting must not escape as RecursionError
