"""A plugin's failure is that plugin's: reported with its name, never a hang, a silent exit or a hijacked name.

Each case installs hand-made ``*.dist-info`` plugins on PYTHONPATH and runs the CLI in a subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ldmkit
from ldmkit import Params, PluginError, hookimpl
from ldmkit.registry import discover

ROOT = Path(__file__).resolve().parents[2]

IMPOSTOR_DDIM = """
import ldmkit
from ldmkit import hookimpl

class Impostor(ldmkit.Sampler):
    name = "ddim"
    class Params(ldmkit.Params):
        pass
    def sample(self, model_fn, schedule, x_T, **kwargs):
        raise RuntimeError("the impostor ran")

@hookimpl
def register_samplers(register):
    register(Impostor)
"""

CASES = {
    # entry-point name (loads before "samplers" by name), distribution, module source
    "aaa-registry": ("aaa-registry", "import ldmkit\nldmkit.get_registry()\n"),
    "aab-exit": ("aab-exit", "import sys\nsys.exit(3)\n"),
    "aac-hook-exit": (
        "aac-hook-exit",
        "import sys\nfrom ldmkit import hookimpl\n\n@hookimpl\ndef register_samplers(register):\n    sys.exit(4)\n",
    ),
    "aad-impostor": ("aad-impostor", IMPOSTOR_DDIM),
}


def _dist_info(root: Path, ep_name: str, dist: str, source: str) -> None:
    module = ep_name.replace("-", "_") + "_plugin"
    (root / f"{module}.py").write_text(source)
    info = root / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[ldmkit]\n{ep_name} = {module}\n")


@pytest.fixture(scope="module")
def broken_env(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("broken")
    for ep_name, (dist, source) in CASES.items():
        _dist_info(root, ep_name, dist, source)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LDMKIT_")}
    env["PYTHONPATH"] = os.pathsep.join([str(root), str(ROOT), str(ROOT / "plugins")])
    return env


def _ldmkit(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    code = "import sys; from ldmkit.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )


def test_broken_plugins_are_reported_by_name_and_the_rest_works(broken_env):
    proc = _ldmkit(broken_env, "plugins")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out
    # a plugin that asks for the registry while plugins load fails instead of deadlocking every command
    assert "aaa-registry" in out and "while the plugins were loading" in out
    assert "aab-exit" in out and "SystemExit" in out  # sys.exit() at import: that plugin's failure
    assert "aac-hook-exit" in out  # sys.exit() in a hook too
    assert "aad-impostor" in out and "'ddim' is registered by both" in out  # the newcomer is skipped
    assert "ddim " in proc.stdout and "samplers (ldmkit" in proc.stdout  # the built-in samplers still load


def test_a_built_in_name_cannot_be_taken_over(broken_env, tmp_path):
    proc = _ldmkit(
        broken_env, "generate", "--task", "class2img", "--label", "0", "-n", "1", "--steps", "2",
        "--sampler", "ddim", "--out", str(tmp_path),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "the impostor ran" not in proc.stderr and list(tmp_path.glob("*.png"))


class _BadSampler(ldmkit.Sampler):
    name = "returns-a-list"

    class Params(Params):
        pass

    def sample(self, model_fn, schedule, x_T, **kwargs):
        return [x_T]


class _BadPlugin:
    @hookimpl
    def register_samplers(self, register):
        register(_BadSampler)


def test_a_sampler_returning_no_tensor_is_a_plugin_error():
    from tests.tiny import TINY_SPEC

    registry = discover()
    assert registry.add_plugin(_BadPlugin())
    pipe = ldmkit.Pipeline.from_spec(TINY_SPEC, registry)
    with pytest.raises(PluginError, match=r"sampler 'returns-a-list' .* returned list"):
        pipe.sample(sampler="returns-a-list", steps=2, batch_size=1, generator=torch.Generator().manual_seed(0))
