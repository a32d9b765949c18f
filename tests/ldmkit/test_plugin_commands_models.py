"""The ``register_commands`` and ``register_models`` hooks: plugin subcommands and named pipelines.

A plugin's command shows in ``ldmkit --help`` and runs like a built-in one; a plugin's model opens with
``ldmkit generate --model NAME`` and replays by name; collisions skip the plugin; without the Shapes
plugin the CLI still starts and says what is missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cli_runner
import numpy as np
import pytest
from PIL import Image

from ldmkit import InputError, hookimpl
from ldmkit import registry as registry_module
from ldmkit.commands import BUILTIN_COMMANDS, Command
from ldmkit.errors import PluginError, SpecError, UnknownComponentError
from ldmkit.generation import default_model_dir, model_dir, open_model, read_metadata, weights_hash
from ldmkit.registry import PluginInfo, Registry, discover

ROOT = Path(__file__).resolve().parents[2]
ONE = ["--task", "uncond", "-n", "1", "--steps", "2", "--no-progress"]  # the cheapest generation that samples

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class Hello(Command):
    name = "hello-there"
    help = "greet someone (a plugin's command)"
    epilog = "example: ldmkit hello-there world"

    def add_arguments(self, parser):
        parser.add_argument("who")
        parser.add_argument("--times", type=int, default=1)

    def run(self, args) -> int:
        if args.times < 1:
            raise InputError(f"--times {args.times}: expected at least 1")
        for _ in range(args.times):
            print(f"hello {args.who}")
        return 0


class CommandPlugin:
    """A plugin object (not a module) that adds one command."""

    def __init__(self, *commands: type) -> None:
        self.commands = commands or (Hello,)

    @hookimpl
    def register_commands(self, register) -> None:
        for command in self.commands:
            register(command)


class ModelPlugin:
    """A plugin object that provides named pipeline folders: ``{name: (folder or callable, default)}``."""

    def __init__(self, models: dict) -> None:
        self.models = models

    @hookimpl
    def register_models(self, register) -> None:
        for name, (source, default) in self.models.items():
            register(name, source, description=f"the test model {name}", default=default)


def _info(name: str) -> PluginInfo:
    return PluginInfo(name, f"dist-{name}", "1.0")


@pytest.fixture
def installed():
    """Install a registry (the discovered plugins plus the ones a test adds) as the process's; restored after."""
    saved = registry_module._registry
    registry = discover()
    registry_module.reset_registry(registry)
    yield registry
    registry_module.reset_registry(saved)


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    return cli_runner.run_cli(argv, catch_exit=True)  # --help and argparse errors exit


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


# -- commands --------------------------------------------------------------------------------------


def test_a_plugin_command_is_listed_in_help_and_runs(installed: Registry) -> None:
    assert installed.add_plugin(CommandPlugin(), _info("greeter"))
    code, stdout, _ = run_cli(["--help"])
    assert code == 0
    assert "hello-there" in stdout and "greet someone (a plugin's command)" in stdout
    assert "bench" in stdout, "the Shapes plugin's command is listed too"
    code, stdout, _ = run_cli(["hello-there", "--help"])
    assert code == 0 and "--times" in stdout and "example: ldmkit hello-there world" in stdout
    assert run_cli(["hello-there", "world", "--times", "2"]) == (0, "hello world\nhello world\n", "")


def test_a_plugin_command_error_exits_2_with_its_message(installed: Registry) -> None:
    assert installed.add_plugin(CommandPlugin(), _info("greeter"))
    code, _, stderr = run_cli(["hello-there", "world", "--times", "0"])
    assert code == 2
    assert stderr == "ldmkit: error: --times 0: expected at least 1\n"
    code, _, stderr = run_cli(["hello-there"])  # argparse: a missing argument
    assert code == 2 and "the following arguments are required: who" in stderr


def test_a_command_that_cannot_declare_its_arguments_is_refused_when_run(installed: Registry) -> None:
    class Broken(Command):
        name = "broken"
        help = "declares its arguments badly"

        def add_arguments(self, parser):
            raise RuntimeError("no arguments today")

    assert installed.add_plugin(CommandPlugin(Broken), _info("broken"))
    code, stdout, _ = run_cli(["--help"])
    assert code == 0 and "broken" in stdout and "plugins" in stdout
    code, _, stderr = run_cli(["broken"])
    assert code == 2
    assert "command 'broken' could not declare its arguments: RuntimeError: no arguments today" in stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize("builtin", BUILTIN_COMMANDS)
def test_a_plugin_may_not_replace_a_builtin_command(builtin: str) -> None:
    impostor = type("Impostor", (Hello,), {"name": builtin})
    registry = Registry()
    assert registry.add_plugin(CommandPlugin(impostor), _info("impostor")) is False
    assert registry.commands == {} and registry.plugins == []
    assert f"command {builtin!r} is a built-in ldmkit command" in registry.failures[0].error


def test_colliding_commands_skip_the_second_plugin_whole() -> None:
    registry = Registry()
    assert registry.add_plugin(CommandPlugin(), _info("first"))
    other = type("Other", (Hello,), {"name": "other"})
    assert registry.add_plugin(CommandPlugin(other, Hello), _info("second")) is False
    assert list(registry.commands) == ["hello-there"] and registry.command("hello-there").plugin.name == "first"
    error = registry.failures[0].error
    assert "command 'hello-there' is registered by both dist-first" in error and "dist-second" in error
    with pytest.raises(UnknownComponentError, match=r"unknown command 'hello-ther'\. Did you mean 'hello-there'"):
        registry.command("hello-ther")


class NotACommand:
    name = "nope"
    help = "not a Command subclass"


@pytest.mark.parametrize(
    ("cls", "needle"),
    [
        (NotACommand, "not a subclass of ldmkit.commands.Command"),
        (type("Upper", (Hello,), {"name": "Hello"}), "no valid command 'name'"),
        (type("Spaced", (Hello,), {"name": "two words"}), "no valid command 'name'"),
        (type("Dashed", (Hello,), {"name": "-x"}), "no valid command 'name'"),
        (type("Silent", (Hello,), {"help": ""}), "has no 'help' line"),
    ],
)
def test_invalid_commands_are_refused(cls: type, needle: str) -> None:
    registry = Registry()
    assert registry.add_plugin(CommandPlugin(cls), _info("bad")) is False
    assert needle in registry.failures[0].error and registry.commands == {}


# -- models ----------------------------------------------------------------------------------------


def test_a_plugin_model_is_opened_by_generate_model_and_replays_by_name(installed: Registry, tmp_path) -> None:
    shipped = default_model_dir()
    assert installed.add_plugin(ModelPlugin({"mini": (lambda: shipped, False)}), _info("models"))
    assert model_dir("mini") == shipped
    code, stdout, stderr = run_cli(["generate", "--model", "mini", *ONE, "--out", str(tmp_path / "mini")])
    assert code == 0, stderr
    code, _, stderr = run_cli(["generate", *ONE, "--out", str(tmp_path / "default")])
    assert code == 0, stderr
    picture = tmp_path / "mini" / "000000.png"
    assert np.array_equal(_pixels(picture), _pixels(tmp_path / "default" / "000000.png")), "same folder, same picture"
    assert read_metadata(picture)["model"] == {
        "name": "mini",
        "source": "mini",
        "weights_sha256": weights_hash(shipped),
    }
    assert read_metadata(tmp_path / "default" / "000000.png")["model"]["source"] == "default"
    code, stdout, stderr = run_cli(["generate", "--replay", str(picture), "--out", str(tmp_path / "replay")])
    assert code == 0, stderr
    assert "identical" in stdout


def test_unknown_model_exits_2_with_a_suggestion_and_the_known_names(installed: Registry, tmp_path) -> None:
    code, _, stderr = run_cli(["generate", "--model", "shape", *ONE, "--out", str(tmp_path)])
    assert code == 2
    assert stderr == "ldmkit: error: unknown model 'shape'. Did you mean 'shapes'? Registered: shapes.\n"
    code, _, stderr = run_cli(["generate", "--model", "shapes", "--spec", "x", *ONE, "--out", str(tmp_path)])
    assert code == 2 and "--spec and --model both pick the pipeline" in stderr
    assert not any(tmp_path.iterdir())


def test_a_model_whose_folder_holds_no_spec_is_refused_by_name(installed: Registry, tmp_path) -> None:
    assert installed.add_plugin(ModelPlugin({"empty": (tmp_path, False)}), _info("models"))
    with pytest.raises(SpecError, match=r"model 'empty' of plugin 'models' \(dist-models\).*holds no spec"):
        open_model("empty")


def test_colliding_models_skip_the_second_plugin_whole(tmp_path) -> None:
    registry = Registry()
    assert registry.add_plugin(ModelPlugin({"one": (tmp_path, True)}), _info("first"))
    assert (
        registry.add_plugin(ModelPlugin({"two": (tmp_path, False), "one": (tmp_path, False)}), _info("second")) is False
    )
    assert list(registry.models) == ["one"]
    assert "model 'one' is registered by both dist-first (plugin 'first') and dist-second" in registry.failures[0].error
    assert registry.add_plugin(ModelPlugin({"three": (tmp_path, True)}), _info("third")) is False
    assert "the default model is claimed by both dist-first" in registry.failures[1].error
    assert list(registry.models) == ["one"] and registry.default_model().name == "one"
    with pytest.raises(UnknownComponentError, match=r"unknown model 'on'\. Did you mean 'one'\? Registered: one\."):
        registry.model("on")


@pytest.mark.parametrize(
    ("models", "needle"),
    [
        ({"default": ("x", False)}, "the model name 'default' is reserved"),
        ({"a.b": ("x", False)}, "model name 'a.b' is not valid"),
        ({"a b": ("x", False)}, "model name 'a b' is not valid"),
        ({"num": (42, False)}, "neither a folder path nor a callable"),
        ({"flag": ("x", "yes")}, "default must be True or False"),
    ],
)
def test_invalid_models_are_refused(models: dict, needle: str) -> None:
    registry = Registry()
    assert registry.add_plugin(ModelPlugin(models), _info("bad")) is False
    assert needle in registry.failures[0].error and registry.models == {}


def test_a_model_source_that_fails_is_reported_with_its_plugin() -> None:
    def unreachable() -> Path:
        raise OSError("the weights are elsewhere")

    registry = Registry()
    assert registry.add_plugin(ModelPlugin({"far": (unreachable, False)}), _info("remote"))
    with pytest.raises(PluginError, match="model 'far' of plugin 'remote'.*OSError: the weights are elsewhere"):
        registry.model("far").folder()


def test_plugins_lists_commands_and_models(installed: Registry) -> None:
    assert installed.add_plugin(CommandPlugin(), _info("greeter"))
    code, stdout, _ = run_cli(["plugins", "--json"])
    assert code == 0
    data = json.loads(stdout)
    commands = {c["name"]: c for c in data["commands"]}
    assert commands["hello-there"]["plugin"] == "greeter" and commands["bench"]["plugin"] == "shapes"
    assert data["models"] == [
        {
            "name": "shapes",
            "description": installed.model("shapes").description,
            "default": True,
            "plugin": "shapes",
            "distribution": installed.model("shapes").plugin.distribution,
            "version": installed.model("shapes").plugin.version,
        }
    ]
    code, stdout, _ = run_cli(["plugins"])
    assert "commands:\n" in stdout and "hello-there" in stdout and "(default)" in stdout


# -- without the Shapes plugin -------------------------------------------------------------------


def _cli_without_shapes(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, LDMKIT_LOAD_PLUGINS="autoencoders,conditioners,samplers,tasks,unet")
    env.pop("LDMKIT_STRICT_PLUGINS", None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "plugins"), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "ldmkit.cli", *argv], capture_output=True, text=True, cwd=cwd, env=env, timeout=120
    )


def test_without_the_shapes_plugin_the_cli_starts_and_generate_says_what_is_missing(tmp_path) -> None:
    helped = _cli_without_shapes("--help", cwd=tmp_path)
    assert helped.returncode == 0, helped.stderr
    assert "generate" in helped.stdout and "bench" not in helped.stdout
    listed = _cli_without_shapes("plugins", "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert '"models": []' in listed.stdout and '"commands": []' in listed.stdout
    made = _cli_without_shapes("generate", *ONE, "--out", "out", cwd=tmp_path)
    assert made.returncode == 2
    assert made.stderr.startswith("ldmkit: error: no default model is installed"), made.stderr
    assert "pass --spec FOLDER or --model NAME" in made.stderr and "Traceback" not in made.stderr
    benched = _cli_without_shapes("bench", "shapes", cwd=tmp_path)
    assert benched.returncode == 2 and "invalid choice: 'bench'" in benched.stderr
