"""The paper experiment: its specs (one UNet family, equal batch and steps), the report, and ``ldmkit paper``."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ldmkit.cli import main
from ldmkit.errors import SpecError
from ldmkit.training import validate_train_spec
from ldmkit_shapes.paper_plan import load_experiment
from ldmkit_shapes.paper_report import (
    END,
    START,
    claim_checks,
    equal_time,
    markdown_report,
    read_results,
    update_page,
)

ROOT = Path(__file__).resolve().parents[3]
SPECS = ROOT / "examples" / "paper"


@pytest.fixture(scope="module")
def full():
    return load_experiment(SPECS)


def test_the_factors_share_batch_steps_optimizer_and_unet_family(full):
    assert full.plan.factors == [1, 2, 4, 8, 16]
    ldms = full.ldms
    for key in ("batch_size", "max_steps", "optimizer", "ema", "precision", "seed", "dataset", "conditioning"):
        assert len({json.dumps(spec[key], sort_keys=True) for spec in ldms.values()}) == 1, key
    assert ldms[1]["max_steps"] == full.plan.checkpoints[-1]
    unets = {f: spec["pipeline"]["denoiser"]["params"] for f, spec in ldms.items()}
    for key in ("model_channels", "num_res_blocks", "context_dim", "num_head_channels", "transformer_depth"):
        assert len({u[key] for u in unets.values()}) == 1, key
    depths = [len(unets[f]["channel_mult"]) for f in full.plan.factors]
    assert depths == sorted(depths, reverse=True) and depths[0] > depths[-1]  # fewer downsamplings for larger f
    for f, spec in ldms.items():
        assert spec["pipeline"]["latent_size"] == [64 // f, 64 // f]
        assert unets[f]["image_size"] == 64 // f


def test_each_ldm_uses_the_first_stage_its_autoencoder_trains(full):
    assert full.ldms[1]["pipeline"]["first_stage"]["type"] == "identity"
    for f, ae in full.autoencoders.items():
        params = ae["first_stage"]["params"]
        assert 2 ** (len(params["ch_mult"]) - 1) == f
        written = load_experiment(SPECS).ldms[f]["pipeline"]["first_stage"]
        assert written == ae["first_stage"]
        from ldmkit.specs import read_document

        assert read_document(SPECS / f"ldm-f{f}.yaml")["pipeline"]["first_stage"] == ae["first_stage"]
    for spec in [*full.autoencoders.values(), *full.ldms.values()]:
        validate_train_spec(spec)


def test_tiny_keeps_the_factors_and_shrinks_the_run(full):
    tiny = load_experiment(SPECS, tiny=True)
    assert tiny.plan.factors == full.plan.factors
    assert tiny.max_steps < full.max_steps and tiny.plan.evaluation.samples < full.plan.evaluation.samples
    for f in full.plan.factors:
        mult = tiny.ldms[f]["pipeline"]["denoiser"]["params"]["channel_mult"]
        assert mult == full.ldms[f]["pipeline"]["denoiser"]["params"]["channel_mult"]


def test_bad_plans_fail_with_spec_errors(tmp_path):
    with pytest.raises(SpecError, match="experiment.yaml"):
        load_experiment(tmp_path)
    (tmp_path / "experiment.yaml").write_text("factors: [1, 3]\ncheckpoints: [10]\n")
    with pytest.raises(SpecError, match="powers of two"):
        load_experiment(tmp_path)
    (tmp_path / "experiment.yaml").write_text("factors: [1]\ncheckpoints: [10]\n")
    with pytest.raises(SpecError, match="ldm-f1.yaml"):
        load_experiment(tmp_path)


def _results() -> dict:
    cps = [
        {"f": f, "step": s, "fd": fd, "accuracy": acc, "classifier_accuracy": acc}
        for f, rows in {
            1: [(10, 9.0, 0.1), (20, 5.0, 0.3), (40, 2.0, 0.6)],
            4: [(10, 4.0, 0.4), (40, 1.0, 0.9)],
        }.items()
        for s, fd, acc in rows
    ]
    return {
        "experiment": {
            "factors": [1, 4],
            "checkpoints": [10, 20, 40],
            "evaluation": {"samples": 8, "reference": 16, "sampler": "ddim", "steps": 50, "steps_sweep": [10]},
        },
        "batch_size": {"1": 10, "4": 10},
        "latent": {"1": "64x64x3", "4": "16x16x3"},
        "checkpoints": cps,
        "sweep": [{"f": 4, "step": 40, "sampling_steps": 10, "fd": 1.5, "accuracy": 0.8}],
        "throughput": {
            "1": {"train_samples_per_s": 100.0, "sample_pictures_per_s@10": 50.0, "sample_pictures_per_s@50": 10.0},
            "4": {"train_samples_per_s": 400.0, "sample_pictures_per_s@10": 500.0, "sample_pictures_per_s@50": 100.0},
        },
    }


def test_equal_time_takes_each_factors_latest_checkpoint_within_the_fastest_full_run():
    eq = equal_time(_results())
    # f=4 needs 40 * 10 / 400 = 1 s for its 40 steps; in 1 s f=1 makes 1 * 100 / 10 = 10 steps
    assert eq["budget_s"] == pytest.approx(1.0)
    assert eq["rows"]["1"]["checkpoint"] == 10 and eq["rows"]["1"]["fd"] == 9.0
    assert eq["rows"]["4"]["checkpoint"] == 40 and eq["rows"]["4"]["fd"] == 1.0
    assert equal_time({**_results(), "throughput": {}}) is None


def test_claim_checks_state_the_evidence_of_each_claim_the_data_cover():
    checks = dict(claim_checks(_results()))
    assert sorted(checks) == [1, 3, 4]  # claim 2 needs a factor above 4 to compare with f=4
    assert "higher FD than the best of f=4 at 2 of 2 checkpoints, and a lower accuracy at 2 of 2" in checks[1]
    assert "best FD is f=4's; in order: f=4 1.00, f=1 9.00" in checks[3]
    assert "f=1 10, f=4 100 (rising" in checks[4]
    slower = {**_results(), "throughput": {**_results()["throughput"], "4": {"train_samples_per_s": 400.0}}}
    assert 4 not in dict(claim_checks(slower))  # no sampling speed for f=4: no evidence for claim 4


def test_markdown_report_shows_every_measured_number(tmp_path):
    text = markdown_report(_results())
    assert "| 1 | pixels 64x64x3 | 9.00 / 0.10 | 5.00 / 0.30 | 2.00 / 0.60 |" in text
    assert "| 4 | 16x16x3 | 4.00 / 0.40 | - | 1.00 / 0.90 |" in text
    assert "| 4 | 400 | 500, 1.50 | 100, 1.00 |" in text
    assert "| 1 | 100 | 50, - | 10, 2.00 |" in text
    page = tmp_path / "paper.md"
    page.write_text(f"intro\n{START}\nold\n{END}\nverdicts\n")
    update_page(page, _results())
    filled = page.read_text()
    assert filled.startswith("intro\n") and filled.endswith(f"{END}\nverdicts\n")
    assert "old" not in filled and "9.00 / 0.10" in filled


def test_the_page_shows_the_committed_results():
    # docs/paper.md's tables are generated from docs/paper-results.json: regenerate them after a new run
    results = read_results(ROOT / "docs" / "paper-results.json")
    page = (ROOT / "docs" / "paper.md").read_text()
    assert f"{START}\n\n{markdown_report(results)}\n{END}" in page


def test_report_and_plot_errors_exit_2(tmp_path, capsys):
    assert main(["paper", "report", str(tmp_path / "missing.json")]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "r.json").write_text(json.dumps(_results()))
    (tmp_path / "page.md").write_text("no markers\n")
    assert main(["paper", "report", str(tmp_path / "r.json"), "--page", str(tmp_path / "page.md")]) == 2
    assert "markers" in capsys.readouterr().err
    assert main(["paper", "run", "--out", str(tmp_path / "o"), "--specs", str(tmp_path)]) == 2
    assert "experiment.yaml" in capsys.readouterr().err


def test_plot_draws_both_figures_or_names_the_extra(tmp_path, capsys):
    (tmp_path / "r.json").write_text(json.dumps(_results()))
    code = main(["paper", "plot", str(tmp_path / "r.json"), "--out", str(tmp_path / "plots")])
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert code == 2 and "ldmkit[paper]" in capsys.readouterr().err
        return
    assert code == 0
    for name in ("paper-steps.png", "paper-speed.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "r2.json").write_text(json.dumps({**_results(), "throughput": {}}))
    assert main(["paper", "plot", str(tmp_path / "r2.json"), "--out", str(tmp_path / "p2")]) == 0
    assert sorted(p.name for p in (tmp_path / "p2").iterdir()) == ["paper-steps.png"]  # no speeds: no speed figure


@pytest.mark.slow
def test_tiny_experiment_runs_end_to_end(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins"), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [sys.executable, "-m", "ldmkit.cli", "paper", "run", "--tiny", "--out", str(out), "--work", str(work)]
    cmd += ["--specs", str(SPECS)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    tiny = load_experiment(SPECS, tiny=True)
    assert results["tiny"] is True and not results["errors"] and not results["stopped"]
    assert results["finished"] == tiny.plan.factors
    got = {(r["f"], r["step"]) for r in results["checkpoints"]}
    assert got == {(f, s) for f in tiny.plan.factors for s in tiny.plan.checkpoints}
    for row in results["checkpoints"] + results["sweep"]:
        assert 0 <= row["accuracy"] <= 1 and math.isfinite(row["fd"]) and row["fd"] >= 0
    assert sorted(int(f) for f in results["autoencoders"]) == [f for f in tiny.plan.factors if f > 1]
    for f in tiny.plan.factors:
        speed = results["throughput"][str(f)]
        assert speed["train_samples_per_s"] > 0
        assert speed[f"sample_pictures_per_s@{tiny.plan.evaluation.steps}"] > 0
    assert equal_time(results) is not None
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "results.md"]
    assert "Quality against training steps" in (out / "results.md").read_text()
