"""ldmkit.testing conformance classes, the example plugin distribution, and broken plugins.

The conformance classes are exercised on small stand-in components (which must pass) and on
deliberately broken variants (which must fail the matching check). The example distribution is
installed once into a temporary folder; plugin discovery runs in subprocesses with that folder
and hand-made ``*.dist-info`` folders on PYTHONPATH.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

import ldmkit
from ldmkit import Conditioning, InputError, Params, hookimpl
from ldmkit.interfaces import PointMass
from ldmkit.registry import PluginInfo, Registry
from ldmkit.testing import (
    ConditionerConformance,
    DenoiserConformance,
    FirstStageConformance,
    SamplerConformance,
    TaskConformance,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "ldmkit-plugin-example"
FAILED = (AssertionError, pytest.fail.Exception)


# -- stand-in components ------------------------------------------------------------------------
class _Gaussian:
    def __init__(self, mean: Tensor, logvar: Tensor) -> None:
        self.mean, self.std = mean, torch.exp(0.5 * logvar)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        return self.mean + self.std * torch.randn(self.mean.shape, generator=generator)

    def mode(self) -> Tensor:
        return self.mean

    def kl(self) -> Tensor:
        return 0.5 * (self.mean**2 + self.std**2 - 1 - 2 * self.std.log()).flatten(1).sum(1)


class TinyAE(ldmkit.FirstStage):
    name = "tiny-ae"
    latent_channels = 2
    downsample = 2

    class Params(Params):
        hidden: int = 4

    def __init__(self, params: Params) -> None:
        super().__init__(params)
        self.enc = nn.Conv2d(3, 2 * self.latent_channels, 2, stride=2)
        self.dec = nn.ConvTranspose2d(self.latent_channels, 3, 2, stride=2)

    def encode_distribution(self, images: Tensor) -> _Gaussian:
        mean, logvar = self.enc(images).chunk(2, dim=1)  # (B, C, h, w) each
        return _Gaussian(mean, logvar)

    def encode(self, images: Tensor) -> Tensor:
        return self.encode_distribution(images).mode()

    def decode(self, latents: Tensor) -> Tensor:
        return self.dec(latents)


class TinyDenoiser(ldmkit.Denoiser):
    name = "tiny-denoiser"

    class Params(Params):
        channels: int = 4

    def __init__(self, params: Params) -> None:
        super().__init__(params)
        self.conv_in = nn.Conv2d(params.channels, 8, 3, padding=1)
        self.norm = nn.GroupNorm(2, 8)
        self.conv_out = nn.Conv2d(8, params.channels, 3, padding=1)

    def forward(self, x_t: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        h = self.conv_in(x_t) + torch.sin(t.float() / 100).view(-1, 1, 1, 1)  # (B, 8, h, w)
        return self.conv_out(torch.relu(self.norm(h)))


class BatchMixingDenoiser(TinyDenoiser):
    def forward(self, x_t: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        return super().forward(x_t - x_t.mean(0, keepdim=True), t, cond)


class TinyClasses(ldmkit.Conditioner):
    name = "tiny-classes"
    slots = ("crossattn",)

    class Params(Params):
        n_classes: int = 5
        dim: int = 8

    def __init__(self, params: Params) -> None:
        super().__init__(params)
        self.embedding = nn.Embedding(params.n_classes + 1, params.dim)  # the last id is "no class"

    def forward(self, raw: Tensor) -> Conditioning:
        return Conditioning(crossattn=self.embedding(raw)[:, None])  # (B, 1, D)

    def unconditional(self, batch: int) -> Conditioning:
        return self(torch.full((batch,), self.params.n_classes, dtype=torch.long))


class WrongUncondClasses(TinyClasses):
    def unconditional(self, batch: int) -> Conditioning:
        return Conditioning(crossattn=torch.zeros(batch, 2, self.params.dim))  # length 2, not 1


class ExtraSlotClasses(TinyClasses):
    def forward(self, raw: Tensor) -> Conditioning:
        return Conditioning(crossattn=self.embedding(raw)[:, None], vector=raw)


class TinyDDIM(ldmkit.Sampler):
    """DDIM (Song et al. 2021) with the CompVis inpainting rule: re-noise the known region before each step."""

    name = "tiny-ddim"

    class Params(Params):
        pass

    def sample(self, model_fn, schedule, x_T, *, steps, eta=0.0, generator=None, callback=None, mask=None, x0=None,
               progress=False):  # fmt: skip
        T = schedule.num_timesteps
        if not 1 <= steps <= T:
            raise InputError(f"steps must be in [1, {T}]")
        ts = list(range(0, T, T // steps))[:steps][::-1]
        ac = schedule.alphas_cumprod.double()
        x = x_T
        for i, t in enumerate(ts):
            a = float(ac[t])
            a_prev = float(ac[ts[i + 1]]) if i + 1 < len(ts) else float(ac[0])
            if mask is not None:
                x = (
                    mask * schedule.add_noise(x0, self.noise(x, generator), torch.full((x.shape[0],), t))
                    + (1 - mask) * x
                )
            eps = model_fn(x, torch.full((x.shape[0],), t, dtype=torch.long))
            pred_x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
            sigma = eta * math.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
            x = math.sqrt(a_prev) * pred_x0 + math.sqrt(1 - a_prev - sigma**2) * eps
            if sigma > 0:
                x = x + sigma * self.noise(x, generator)
            if callback is not None and callback(i, t, x, pred_x0):
                break
        return x

    @staticmethod
    def noise(x: Tensor, generator) -> Tensor:
        if isinstance(generator, list):
            return torch.stack([torch.randn(x.shape[1:], generator=g) for g in generator])
        return torch.randn(x.shape, generator=generator)


class NoMaskDDIM(TinyDDIM):
    def sample(self, *args, mask=None, x0=None, **kwargs):
        return super().sample(*args, **kwargs)


class SharedNoiseDDIM(TinyDDIM):
    @staticmethod
    def noise(x: Tensor, generator) -> Tensor:
        g = generator[0] if isinstance(generator, list) else generator
        return torch.randn(x.shape, generator=g)


class StatefulDDIM(TinyDDIM):
    def sample(self, model_fn, schedule, x_T, **kwargs):
        self.calls = getattr(self, "calls", 0) + 1
        return super().sample(model_fn, schedule, x_T * (1 + 0.1 * (self.calls > 1)), **kwargs)


class NoStopDDIM(TinyDDIM):
    def sample(self, *args, callback=None, **kwargs):
        wrapped = None if callback is None else (lambda *a: bool(callback(*a)) and False)
        return super().sample(*args, callback=wrapped, **kwargs)


class UncheckedStepsDDIM(TinyDDIM):
    def sample(self, model_fn, schedule, x_T, *, steps, **kwargs):
        return (
            x_T.clone()
            if steps < 1 or steps > schedule.num_timesteps
            else super().sample(model_fn, schedule, x_T, steps=steps, **kwargs)
        )


class TinyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: int


class TinyTask(ldmkit.Task):
    name = "tiny-task"
    Request = TinyRequest

    class Params(Params):
        pass

    def run(self, pipeline, request, options) -> Tensor:
        return torch.zeros(options.n, 3, 8, 8)


class TupleParamsSampler(TinyDDIM):
    name = "tuple-params"

    class Params(Params):
        sizes: tuple[int, int] = (1, 2)


class _StandIns:
    @hookimpl
    def register_first_stages(self, register) -> None:
        register(TinyAE)

    @hookimpl
    def register_denoisers(self, register) -> None:
        register(TinyDenoiser)

    @hookimpl
    def register_conditioners(self, register) -> None:
        register(TinyClasses)

    @hookimpl
    def register_samplers(self, register) -> None:
        register(TinyDDIM)
        register(TupleParamsSampler)

    @hookimpl
    def register_tasks(self, register) -> None:
        register(TinyTask)


STANDIN_REGISTRY = Registry(strict=True)
STANDIN_REGISTRY.add_plugin(_StandIns(), PluginInfo("standins", "(tests)", "0"))


class _StandInRegistry:
    def registry(self) -> Registry:
        return STANDIN_REGISTRY


# -- the conformance classes pass on correct components --------------------------------------------
class TestTinyAE(_StandInRegistry, FirstStageConformance):
    component_cls = TinyAE
    params = {"hidden": 4}
    image_size = 8


class TestTinyDenoiser(_StandInRegistry, DenoiserConformance):
    component_cls = TinyDenoiser
    params = {"channels": 4}


class TestTinyClasses(_StandInRegistry, ConditionerConformance):
    component_cls = TinyClasses
    params = {"n_classes": 5, "dim": 8}

    def make_raw(self, batch: int) -> Tensor:
        return torch.arange(batch) % 5


class TestTinyDDIM(_StandInRegistry, SamplerConformance):
    component_cls = TinyDDIM


class TestTinyTask(_StandInRegistry, TaskConformance):
    component_cls = TinyTask
    valid_request = {"label": 3}
    invalid_requests = [{"label": "three"}, {}]
    cli_inputs = {"label": "3"}
    bad_inputs = [{"label": "three"}, {}]
    image_size = (8, 8)

    def make_pipeline(self) -> None:
        return None  # TinyTask draws nothing from a pipeline


# -- ... and fail on broken ones -----------------------------------------------------------------
def _check(base: type, check: str, **attrs) -> None:
    """Run one conformance check of ``base`` configured with ``attrs``; it must fail."""
    case = type("Case", (_StandInRegistry, base), attrs)()
    with pytest.raises(FAILED):
        getattr(case, check)()


@pytest.mark.parametrize(
    ("component", "check"),
    [
        (NoMaskDDIM, "test_masked_sampling_keeps_known_region"),
        (SharedNoiseDDIM, "test_per_sample_generators"),
        (StatefulDDIM, "test_stateless"),
        (NoStopDDIM, "test_callback_stops_early"),
        (UncheckedStepsDDIM, "test_steps_out_of_range"),
        (TupleParamsSampler, "test_params_round_trip_through_json"),
        (TinyDDIM, "test_registered_elsewhere"),
    ],
)
def test_sampler_checks_catch_faults(component, check) -> None:
    if check == "test_registered_elsewhere":  # a registry without the component
        case = type("Case", (SamplerConformance,), {"component_cls": component, "registry": lambda self: Registry()})()
        with pytest.raises(ldmkit.UnknownComponentError):
            case.test_registered()
        return
    _check(SamplerConformance, check, component_cls=component)


def test_deterministic_sampler_must_ignore_nothing() -> None:
    # an eta the sampler does not honour is caught: seeds would not change the result
    _check(SamplerConformance, "test_generator_is_used", component_cls=TinyDDIM, noise_eta=0.0)


def test_denoiser_batch_mixing_caught() -> None:
    _check(DenoiserConformance, "test_batch_independence", component_cls=BatchMixingDenoiser)


@pytest.mark.parametrize(
    ("component", "check"),
    [(WrongUncondClasses, "test_unconditional_matches"), (ExtraSlotClasses, "test_forward_fills_declared_slots")],
)
def test_conditioner_checks_catch_faults(component, check) -> None:
    _check(ConditionerConformance, check, component_cls=component, make_raw=lambda self, b: torch.arange(b))


def test_first_stage_checks_catch_faults() -> None:
    wrong_factor = type("WrongFactor", (TinyAE,), {"downsample": 4})
    _check(FirstStageConformance, "test_encode_shape", component_cls=wrong_factor, image_size=8)
    sampling = type("SamplingEncode", (TinyAE,), {"encode": lambda self, x: self.encode_distribution(x).sample()})
    _check(FirstStageConformance, "test_encode_deterministic", component_cls=sampling, image_size=8)
    unseeded = type(
        "Unseeded", (TinyAE,), {"encode_distribution": lambda self, x: _Unseeded(self.enc(x).chunk(2, dim=1)[0])}
    )
    _check(FirstStageConformance, "test_encode_distribution_seeded", component_cls=unseeded, image_size=8)


class _Unseeded(PointMass):
    def sample(self, generator=None) -> Tensor:
        return self.value + torch.randn(self.value.shape)


def test_task_checks_catch_faults() -> None:
    class LooseRequest(BaseModel):
        label: int

    loose = type("LooseTask", (TinyTask,), {"Request": LooseRequest})
    _check(TaskConformance, "test_unknown_request_key_rejected", component_cls=loose, valid_request={"label": 1})
    _check(TaskConformance, "test_valid_request", component_cls=TinyTask, valid_request={"label": "x"})


def test_missing_configuration_is_reported() -> None:
    with pytest.raises(pytest.fail.Exception, match="component_cls"):
        SamplerConformance().test_output_shape_and_dtype()
    with pytest.raises(pytest.fail.Exception, match="make_raw"):
        type("C", (_StandInRegistry, ConditionerConformance), {"component_cls": TinyClasses})().test_deterministic()


# -- the example distribution and broken plugins, discovered in a subprocess ---------------------
SAMPLER_SOURCE = """
import ldmkit

class Fixed(ldmkit.Sampler):
    name = {name!r}

    class Params(ldmkit.Params):
        pass

    def sample(self, model_fn, schedule, x_T, **kwargs):
        return x_T.clone()
"""
BROKEN = {  # entry point name: (distribution, version, module source)
    "broken-import": ("ldmkit-broken-import", "0.1", "raise RuntimeError('boom: a dependency is missing')\n"),
    "bad-signature": (
        "ldmkit-bad-signature",
        "0.2",
        "from ldmkit import hookimpl\n\n@hookimpl\ndef register_samplers(reg, extra):\n    pass\n",
    ),
    "misspelled": (
        "ldmkit-misspelled",
        "0.3",
        "from ldmkit import hookimpl\n\n@hookimpl\ndef register_sampler(register):\n    pass\n",
    ),
    "future-api": (
        "ldmkit-future-api",
        "0.4",
        'LDMKIT_API_VERSION = "2.0"\n'
        + SAMPLER_SOURCE.format(name="future-sampler")
        + "@ldmkit.hookimpl\ndef register_samplers(register):\n    register(Fixed)\n",
    ),
    **{
        f"twin-{x}": (
            f"ldmkit-twin-{x}",
            version,
            SAMPLER_SOURCE.format(name="twin")
            + "@ldmkit.hookimpl\ndef register_samplers(register):\n    register(Fixed)\n",
        )
        for x, version in (("a", "1.0"), ("b", "2.0"))
    },
}
UNET = {"image_size": 8, "in_channels": 4, "model_channels": 32, "out_channels": 4, "num_res_blocks": 1}
MIXED_SPEC = {
    "first_stage": {"type": "kl-autoencoder"},
    "denoiser": {"type": "unet", "params": {**UNET, "attention_resolutions": [], "num_heads": 1}},
    "sampling": {"sampler": "heun-example", "steps": 20},
}
COLOUR_SPEC = {  # the example's conditioner and task in a pipeline of built-in components
    "first_stage": {"type": "identity", "params": {"channels": 3}},
    "denoiser": {
        "type": "unet",
        "params": {**UNET, "in_channels": 3, "out_channels": 3, "attention_resolutions": [1], "num_heads": 1}
        | {"use_spatial_transformer": True, "context_dim": 16},
    },
    "conditioner": {"type": "colour-example", "params": {"embed_dim": 16}},
    "latent_size": [8, 8],
    "sampling": {"sampler": "heun-example", "steps": 3},
    "tasks": {"colour2img-example": {"type": "colour2img-example"}},
}
DISCOVERY_SCRIPT = """
import contextlib, io, json, os, sys
import ldmkit.testing.pytest_plugin
out = {"lazy": "ldmkit.testing.sampler" not in sys.modules}
import pytest, torch, ldmkit
from ldmkit import registry as R
from ldmkit.specs import validate_spec
from ldmkit.testing import gaussian_eps_fn

def snapshot(reg):
    return {
        "plugins": [[p.name, p.distribution, p.version] for p in reg.plugins],
        "failed": {f.plugin.name: [f.plugin.distribution, f.plugin.version, f.error] for f in reg.failures},
        "components": {k: {n: reg.info(k, n).plugin.distribution for n in reg.names(k)} for k in R.KIND_NAMES},
    }

reg = ldmkit.get_registry()
out["default"] = snapshot(reg)
out["spec_sampler"] = validate_spec(json.loads(sys.argv[2]), source="mixed").sampling.sampler
schedule = ldmkit.NoiseSchedule.from_spec(ldmkit.ScheduleSpec(timesteps=100))
sampler = reg.create("sampler", "heun-example", {})
x = sampler.sample(gaussian_eps_fn(schedule, 0.5, 0.5), schedule, torch.randn(1, 2, 4, 4), steps=4)
out["sampled"] = [list(x.shape), bool(torch.isfinite(x).all())]
pipe = ldmkit.Pipeline.from_spec(json.loads(sys.argv[4]))
task = pipe.task("colour2img-example")
options = ldmkit.SampleOptions(n=2, steps=3, sampler="heun-example", guidance_scale=2.0)
pics = task.run(pipe, task.parse_request({"colour": "#ff8000"}), options)
out["colour_task"] = [list(pics.shape), bool(torch.isfinite(pics).all() and pics.abs().max() <= 1)]
try:
    task.parse_request({"colour": "mauve"})
    out["colour_refused"] = None
except ldmkit.InputError as exc:
    out["colour_refused"] = str(exc)
builtins = sorted(p.name for p in reg.plugins if p.distribution == "ldmkit")
for key, only in (("builtins_only", ",".join(builtins)), ("only_samplers", "samplers"), ("only_example", "example")):
    os.environ["LDMKIT_LOAD_PLUGINS"] = only
    out[key] = snapshot(R.discover())
del os.environ["LDMKIT_LOAD_PLUGINS"]
os.environ["LDMKIT_STRICT_PLUGINS"] = "1"
try:
    R.discover()
    out["strict"] = None
except ldmkit.PluginError as exc:
    out["strict"] = str(exc)
try:
    from ldmkit.cli import main
except ImportError:
    out["cli"] = None
else:
    for key, strict in (("cli_strict", "1"), ("cli", "0")):
        os.environ["LDMKIT_STRICT_PLUGINS"] = strict
        R.reset_registry()
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = main(["plugins", "--json"])
        out[key] = [code, stdout.getvalue(), stderr.getvalue()]
# the example's own conformance tests, against the installed distribution
R.reset_registry()
with contextlib.redirect_stdout(io.StringIO()) as log:
    out["example_tests"] = [int(pytest.main([sys.argv[3], "-q", "-p", "no:cacheprovider"])), ""]
out["example_tests"][1] = log.getvalue()[-3000:]
with open(sys.argv[1], "w") as f:
    json.dump(out, f)
"""


def _dist_info(root: Path, ep_name: str, dist: str, version: str, source: str) -> None:
    module = ep_name.replace("-", "_") + "_plugin"
    (root / f"{module}.py").write_text(source)
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[ldmkit]\n{ep_name} = {module}\n")


@pytest.fixture(scope="module")
def discovery(tmp_path_factory) -> dict:
    """Install the example with pip, add the broken plugins, and run DISCOVERY_SCRIPT once."""
    import shutil

    tmp = tmp_path_factory.mktemp("plugins")
    source, target, broken = tmp / "src", tmp / "site", tmp / "broken"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
    subprocess.run(
        [*pip, "--disable-pip-version-check", "--root-user-action=ignore", "--target", str(target), str(source)],
        check=True,
    )
    broken.mkdir()
    for ep_name, (dist, version, code) in BROKEN.items():
        _dist_info(broken, ep_name, dist, version, code)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LDMKIT_")}
    # the tree under test (core and built-in plugins) after the installed example and the broken plugins
    env["PYTHONPATH"] = os.pathsep.join([str(target), str(broken), str(ROOT), str(ROOT / "plugins")])
    result = tmp / "result.json"
    args = [str(result), json.dumps(MIXED_SPEC), str(source / "tests"), json.dumps(COLOUR_SPEC)]
    proc = subprocess.run(
        [sys.executable, "-c", DISCOVERY_SCRIPT, *args], env=env, cwd=tmp, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(result.read_text())


def test_pytest_plugin_is_import_light(discovery) -> None:
    assert discovery["lazy"]


def test_example_plugin_is_discovered(discovery) -> None:
    default = discovery["default"]
    assert ["example", "ldmkit-plugin-example", "0.1.0"] in default["plugins"]
    assert default["components"]["sampler"]["heun-example"] == "ldmkit-plugin-example"


def test_example_conditioner_and_task_are_discovered(discovery) -> None:
    components = discovery["default"]["components"]
    assert components["conditioner"]["colour-example"] == "ldmkit-plugin-example"
    assert components["task"]["colour2img-example"] == "ldmkit-plugin-example"
    assert discovery["only_example"]["components"]["task"] == {"colour2img-example": "ldmkit-plugin-example"}


def test_example_task_runs_in_a_pipeline_of_builtins(discovery) -> None:
    # the example's conditioner, task and sampler with the built-in identity first stage and UNet
    assert discovery["colour_task"] == [[2, 3, 8, 8], True]
    assert "unknown colour 'mauve'" in discovery["colour_refused"]


def test_spec_mixing_example_and_builtins_validates(discovery) -> None:
    assert discovery["spec_sampler"] == "heun-example"


def test_example_sampler_runs_through_the_registry(discovery) -> None:
    assert discovery["sampled"] == [[1, 2, 4, 4], True]


def test_example_conformance_tests_pass_when_installed(discovery) -> None:
    code, log = discovery["example_tests"]
    assert code == 0, log
    assert "passed" in log and "failed" not in log


@pytest.mark.parametrize(
    ("plugin", "dist", "version", "needles"),
    [
        ("broken-import", "ldmkit-broken-import", "0.1", ["import failed", "RuntimeError", "boom"]),
        ("bad-signature", "ldmkit-bad-signature", "0.2", ["register_samplers", "extra"]),
        ("misspelled", "ldmkit-misspelled", "0.3", ["'register_sampler'", "did you mean 'register_samplers'"]),
        ("future-api", "ldmkit-future-api", "0.4", ["2.0", ldmkit.API_VERSION]),
        ("twin-b", "ldmkit-twin-b", "2.0", ["'twin'", "ldmkit-twin-a", "ldmkit-twin-b"]),
    ],
)
def test_broken_plugin_is_reported(discovery, plugin, dist, version, needles) -> None:
    failed = discovery["default"]["failed"]
    assert plugin in failed, f"{plugin} not reported; failures: {sorted(failed)}"
    assert failed[plugin][:2] == [dist, version]
    for needle in needles:
        assert needle in failed[plugin][2]


def test_broken_plugins_register_nothing_and_builtins_still_work(discovery) -> None:
    default, clean = discovery["default"], discovery["builtins_only"]
    names = [p[0] for p in default["plugins"]]
    assert "twin-a" in names and not {"broken-import", "bad-signature", "misspelled", "future-api", "twin-b"} & set(
        names
    )
    samplers = default["components"]["sampler"]
    assert "future-sampler" not in samplers and samplers["twin"] == "ldmkit-twin-a"
    for kind, components in clean["components"].items():
        mine = {n: d for n, d in default["components"][kind].items() if d == "ldmkit"}
        assert mine == components, kind
    assert clean["failed"] == {}


def test_load_plugins_selects_entry_points(discovery) -> None:
    assert [p[0] for p in discovery["only_samplers"]["plugins"]] == ["samplers"]
    assert [p[0] for p in discovery["only_example"]["plugins"]] == ["example"]
    assert discovery["only_samplers"]["failed"] == discovery["only_example"]["failed"] == {}
    assert discovery["only_example"]["components"]["first_stage"] == {}


def test_strict_plugins_turns_failures_into_errors(discovery) -> None:
    # entry points load in name order: bad-signature is the first broken one
    assert discovery["strict"] is not None
    assert "bad-signature" in discovery["strict"] and "ldmkit-bad-signature" in discovery["strict"]


def test_cli_lists_plugins_and_failures(discovery) -> None:
    if discovery.get("cli") is None:
        pytest.skip("ldmkit.cli is not available")
    code, stdout, _ = discovery["cli"]
    listing = json.loads(stdout)
    assert code == 0
    assert any(c["name"] == "heun-example" for c in listing["components"]["sampler"])
    failed = {f["name"]: f for f in listing["failed"]}
    assert failed["future-api"]["distribution"] == "ldmkit-future-api" and failed["future-api"]["version"] == "0.4"
    assert "ldmkit-twin-a" in failed["twin-b"]["error"]
    code, _, stderr = discovery["cli_strict"]
    assert code == 2 and "bad-signature" in stderr


def test_pytest_plugin_fixtures(ldmkit_generator, ldmkit_empty_registry) -> None:
    assert torch.equal(
        torch.randn(3, generator=ldmkit_generator), torch.randn(3, generator=torch.Generator().manual_seed(0))
    )
    assert ldmkit.get_registry() is ldmkit_empty_registry and ldmkit_empty_registry.strict
    assert ldmkit_empty_registry.add_plugin(_StandIns(), PluginInfo("standins", "(tests)", "0"))
    assert ldmkit.get_registry().get("sampler", "tiny-ddim") is TinyDDIM
