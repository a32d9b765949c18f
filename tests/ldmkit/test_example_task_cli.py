"""A third-party task's new input from the command line: the example plugin, installed with pip.

``colour2img-example`` reads ``colour``, an input no built-in task has: ``ldmkit tasks`` lists it,
``ldmkit generate --input colour=red`` makes pictures that replay byte for byte, bad values exit 2
naming the field, and the example's sampler takes ``--sampler-param``. The CLI runs in one
subprocess with the installed example on PYTHONPATH (as ``tests/ldmkit/test_plugin_example.py`` does).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_plugin_example import COLOUR_SPEC, EXAMPLE

ROOT = Path(__file__).resolve().parents[2]
ONE = ["-n", "2", "--steps", "2", "--no-progress"]
COLOUR_RED = ["generate", "--spec", "{spec}", "--task", "colour2img-example", "--input", "colour=red", *ONE]
HEUN = ["--sampler", "heun-example", "--sampler-param"]

# each entry: a name and the argv of one ``ldmkit`` call; {spec} and {out} are filled in
CALLS = {
    "tasks_json": ["tasks", "--json"],
    "task_text": ["tasks", "colour2img-example"],
    "red": COLOUR_RED,
    "red_replay": ["generate", "--replay", "{out}/red/000001.png", "--spec", "{spec}"],
    "blue": ["generate", "--spec", "{spec}", "--task", "colour2img-example", "--input", "colour=#0000ff", *ONE],
    "mauve": ["generate", "--spec", "{spec}", "--task", "colour2img-example", "--input", "colour=mauve", *ONE],
    "misspelled": ["generate", "--spec", "{spec}", "--task", "colour2img-example", "--input", "color=red", *ONE],
    "missing": ["generate", "--spec", "{spec}", "--task", "colour2img-example", *ONE],
    "quad": [*COLOUR_RED, *HEUN, "discretize=quad"],
    "quad_replay": ["generate", "--replay", "{out}/quad/000001.png", "--spec", "{spec}"],
    "bogus": [*COLOUR_RED, *HEUN, "discretize=bogus"],
}

SCRIPT = """
import contextlib, io, json, sys
from ldmkit.cli import main
from ldmkit.generation import read_metadata

calls, spec, out_root, result = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
out = {}
for name, argv in calls.items():
    argv = [a.format(spec=spec, out=out_root) for a in argv]
    if argv[0] == "generate":
        argv += ["--out", f"{out_root}/{name}"]
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(argv)
    out[name] = [code, stdout.getvalue(), stderr.getvalue()]
out["quad_meta"] = read_metadata(f"{out_root}/quad/000001.png")
out["red_meta"] = read_metadata(f"{out_root}/red/000000.png")
with open(result, "w") as f:
    json.dump(out, f)
"""


@pytest.fixture(scope="module")
def cli(tmp_path_factory) -> dict:
    """The example installed with pip, and every call of CALLS run once in one subprocess."""
    tmp = tmp_path_factory.mktemp("example_cli")
    source, target = tmp / "src", tmp / "site"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
    subprocess.run(
        [*pip, "--disable-pip-version-check", "--root-user-action=ignore", "--target", str(target), str(source)],
        check=True,
    )
    (tmp / "colour.yaml").write_text(json.dumps(COLOUR_SPEC))  # JSON is YAML
    env = {k: v for k, v in os.environ.items() if not k.startswith("LDMKIT_")}
    env["PYTHONPATH"] = os.pathsep.join([str(target), str(ROOT), str(ROOT / "plugins")])
    result = tmp / "result.json"
    args = [json.dumps(CALLS), str(tmp / "colour.yaml"), str(tmp / "out"), str(result)]
    proc = subprocess.run([sys.executable, "-c", SCRIPT, *args], env=env, cwd=tmp, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {**json.loads(result.read_text()), "out": tmp / "out"}


def test_tasks_lists_the_plugin_task_and_its_input(cli):
    code, stdout, stderr = cli["tasks_json"]
    assert code == 0, stderr
    tasks = {task["name"]: task for task in json.loads(stdout)}
    assert tasks["colour2img-example"]["distribution"] == "ldmkit-plugin-example"
    (colour,) = tasks["colour2img-example"]["inputs"]
    assert (colour["name"], colour["kind"], colour["required"], colour["takes_file"]) == ("colour", "text", True, False)
    assert "#rrggbb" in colour["description"]
    code, stdout, stderr = cli["task_text"]
    assert code == 0 and "colour" in stdout and "--input colour=VALUE" in stdout, stdout + stderr


def test_generate_takes_the_plugin_input_and_replays_it(cli):
    code, stdout, stderr = cli["red"]
    assert code == 0, stderr
    assert sorted(p.name for p in (cli["out"] / "red").iterdir()) == ["000000.png", "000001.png"]
    assert cli["red_meta"]["inputs"] == {"colour": "red"} and cli["red_meta"]["task"] == "colour2img-example"
    code, stdout, stderr = cli["red_replay"]
    assert code == 0 and "identical" in stdout and "DIFFERS" not in stdout, stdout + stderr
    red = (cli["out"] / "red" / "000000.png").read_bytes()
    assert cli["blue"][0] == 0 and (cli["out"] / "blue" / "000000.png").read_bytes() != red, "the input matters"


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        ("mauve", "task 'colour2img-example': colour: "),
        ("mauve", "unknown colour 'mauve'"),
        ("misspelled", "does not read color (did you mean 'colour'?); its inputs: colour"),
        ("missing", "task 'colour2img-example' needs --input colour=VALUE"),
        ("bogus", "--sampler-param discretize='bogus'"),
    ],
)
def test_bad_values_exit_2_naming_the_field(cli, call, expected):
    code, stdout, stderr = cli[call]
    assert code == 2, (stdout, stderr)
    assert stderr.startswith("ldmkit: error:") and expected in stderr and "Traceback" not in stderr, stderr
    assert not (cli["out"] / call).exists() or not any((cli["out"] / call).iterdir())


def test_the_plugin_sampler_takes_its_params_from_the_cli(cli):
    code, _, stderr = cli["quad"]
    assert code == 0, stderr
    assert cli["quad_meta"]["options"]["sampler"] == {"type": "heun-example", "params": {"discretize": "quad"}}
    code, stdout, stderr = cli["quad_replay"]
    assert code == 0 and "identical" in stdout, stdout + stderr
