"""Documentation: the site builds strictly, generated pages are current, and help texts carry examples."""

from __future__ import annotations

import importlib.util
import inspect
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import ldmkit
from ldmkit.cli import COMMANDS, build_parser

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
TASKS = ("uncond", "class2img", "text2img", "layout2img", "semantic2img", "superres", "inpaint")
SAMPLERS = ("ddim", "plms", "ddpm", "dpmpp-2m", "euler-a")
IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)")


def _script(name: str):
    """Import a file of scripts/ as a module."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- the site -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_mkdocs_build_strict(tmp_path):
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        pytest.importorskip(module)
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    api = (tmp_path / "reference" / "api" / "index.html").read_text()
    for name in ("Pipeline", "Conditioning", "NoiseSchedule", "load_spec", "get_registry", "SamplerConformance"):
        assert name in api, f"the API page does not document {name}"


def test_spec_reference_is_up_to_date():
    make = _script("make_specs_reference")
    page = DOCS / "reference" / "specs.md"
    assert page.is_file(), "docs/reference/specs.md is missing: run python scripts/make_specs_reference.py"
    assert page.read_text() == make.render(ROOT / "schemas"), (
        "docs/reference/specs.md differs from the schemas: run python scripts/make_specs_reference.py"
    )


def test_spec_reference_lists_every_registered_component():
    text = (DOCS / "reference" / "specs.md").read_text()
    registry = ldmkit.get_registry()
    for kind in ("first_stage", "denoiser", "conditioner"):
        for name in registry.names(kind):
            assert f"### {kind}: `{name}`" in text, f"{kind} {name!r} has no section in the spec reference"


def test_every_image_referenced_by_the_docs_exists():
    pages = sorted(DOCS.rglob("*.md"))
    seen = 0
    for page in pages:
        for target in IMAGE.findall(page.read_text()):
            if re.match(r"[a-z]+://", target):
                continue
            assert (page.parent / target).is_file(), f"{page.relative_to(ROOT)} shows a missing image {target}"
            seen += 1
    assert seen >= len(TASKS)


def test_gallery_has_every_task_and_sampler():
    """Each task's table: a row per sampler, its input beside the pictures, each picture 64x64 shown larger."""
    import numpy as np
    from PIL import Image

    make = _script("make_gallery")
    page = (DOCS / "gallery.md").read_text()
    assert make.COMMAND in page, "the gallery page does not show the command that made it"
    assert tuple(make.TASKS) == TASKS and tuple(make.SAMPLERS) == SAMPLERS
    sections = dict(re.findall(r"^## (\w+)\n(.*?)(?=^## |\Z)", page, re.M | re.S))
    assert list(sections) == list(TASKS)
    for task, body in sections.items():
        words = re.search(r"^Input: (.*)\.$", body, re.M).group(1)
        rows = [line for line in body.splitlines() if line.startswith("| `")]
        assert [re.match(r"\| `([\w-]+)`", row).group(1) for row in rows] == list(SAMPLERS), task
        for row in rows:
            input_cell, *pictures = [c.strip() for c in row.strip("|").split(" | ")][1:]
            # beside the pictures: the input's words (a label, a prompt) or its picture (a map, boxes ...)
            assert input_cell == words or input_cell.startswith("![input: "), (task, input_cell)
            if task in ("class2img", "text2img"):
                assert '"' in input_cell, f"{task}: the row does not show its label or prompt"
            assert len(pictures) >= 1
            for cell in pictures:
                target = IMAGE.match(cell).group(1)
                with Image.open(DOCS / target) as picture:
                    pixels = np.asarray(picture.convert("RGB"))
                assert pixels.shape == (make.CELL, make.CELL, 3), target
                # nearest-neighbour upscaling of a 64x64 picture: each 2x2 block holds one colour
                small = pixels[:: make.CELL // 64, :: make.CELL // 64]
                factor = make.CELL // 64
                assert np.array_equal(small.repeat(factor, 0).repeat(factor, 1), pixels), target


def test_diagrams_render_offline():
    """A mermaid block needs a script from a CDN to show as a figure; the docs draw their figures as text."""
    pages = [p for p in DOCS.rglob("*.md") if "```mermaid" in p.read_text()]
    assert not pages, f"mermaid diagrams (raw text offline): {pages}"
    assert "```text\n spec.yaml / JSON" in (DOCS / "concepts.md").read_text()


# -- help texts -----------------------------------------------------------------------------------
def _help(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(argv)
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def test_ldmkit_help_exits_zero_with_examples():
    exe = shutil.which("ldmkit")
    argv = [exe, "--help"] if exe else [sys.executable, "-m", "ldmkit.cli", "--help"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "example" in result.stdout.lower()
    assert re.search(r"^\s+ldmkit \w+", result.stdout, re.M)


@pytest.mark.parametrize("command", (*COMMANDS, *sorted(ldmkit.get_registry().commands)))  # plugins' too
def test_subcommand_help_exits_zero_with_an_example(command, capsys):
    out = _help([command, "--help"], capsys)
    assert "example" in out.lower(), f"ldmkit {command} --help shows no example"
    assert re.search(rf"(^|\s)ldmkit {command}\b", out.split("xample", 1)[-1]), out


# -- docstrings -----------------------------------------------------------------------------------
def _own_doc(obj) -> str | None:
    return obj.__dict__.get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)


def test_public_names_have_docstrings():
    missing = []
    for name in ldmkit.__all__:
        obj = getattr(ldmkit, name)
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue  # constants and the hookimpl marker
        if not (_own_doc(obj) or "").strip():
            missing.append(name)
    assert not missing, f"public names without a docstring: {missing}"


def test_registered_component_classes_have_docstrings():
    registry = ldmkit.get_registry()
    infos = list(registry.components.values())
    assert {info.kind for info in infos} >= {"first_stage", "denoiser", "conditioner", "sampler", "task"}
    missing = [f"{info.kind}:{info.name}" for info in infos if not (_own_doc(info.cls) or "").strip()]
    assert not missing, f"registered classes without their own docstring: {missing}"
