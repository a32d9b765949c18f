"""Training: both stages run and learn, export loadable results, resume exactly, checkpoint atomically."""

from __future__ import annotations

import csv
import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import ldmkit
from ldmkit.checkpoints import load_into, save_state_dict
from ldmkit.errors import CheckpointError, SpecError, TrainingError, UnknownComponentError
from ldmkit.training import load_train_spec, train, validate_train_spec
from ldmkit.training.data import IndexStream, Preloaded, build_dataset
from ldmkit.training.ema import EMA
from ldmkit.training.losses import PerceptualLoss
from ldmkit.training.spec import DatasetSpec

ROOT = Path(__file__).resolve().parents[3]
AE_SPEC = ROOT / "examples" / "train" / "tiny-autoencoder.yaml"
LDM_SPEC = ROOT / "examples" / "train" / "tiny-ldm.yaml"


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def ae_spec(out_dir: Path, **overrides):
    return load_train_spec(AE_SPEC, {"out_dir": str(out_dir), "progress": False, **overrides})


def ldm_spec(out_dir: Path, weights: Path, **overrides):
    return load_train_spec(
        LDM_SPEC, {"out_dir": str(out_dir), "first_stage_weights": str(weights), "progress": False, **overrides}
    )


def losses(out_dir: Path) -> list[float]:
    with (out_dir / "log.csv").open() as fh:
        return [float(row["loss"]) for row in csv.DictReader(fh)]


def load_ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


# -- the two stages -------------------------------------------------------------------------------------


def test_autoencoder_stage_learns_and_exports(tmp_path):
    out = tmp_path / "ae"
    result = train(ae_spec(out, max_steps=20, checkpoint_every=100))
    values = losses(out)
    assert len(values) == 20
    first, last = sum(values[:5]) / 5, sum(values[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    # the export is the first stage's spec plus weights that load strictly into a fresh one
    assert result.export == out / "first_stage.safetensors"
    comp = ldmkit.specs.ComponentSpec.model_validate(ldmkit.specs.read_document(out / "first_stage.yaml"))
    fresh = ldmkit.get_registry().create("first_stage", comp.type, comp.params)
    load_into(fresh, result.export, what="first stage")
    state = load_ckpt(out / "last.ckpt")
    assert state["step"] == 20
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, state["stage"]["first_stage"][key]), key


def test_ldm_stage_writes_a_loadable_pipeline(tmp_path, first_stage_weights):
    out = tmp_path / "ldm"
    result = train(ldm_spec(out, first_stage_weights, max_steps=6, checkpoint_every=100))
    assert result.export == out / "pipeline"
    pipe = ldmkit.Pipeline.load(result.export)
    state = load_ckpt(out / "last.ckpt")["stage"]
    # scale_by_std measured 1/std of the latents and the pipeline keeps it
    assert state["scale_factor"] != 1.0
    assert pipe.scale_factor == pytest.approx(state["scale_factor"])
    assert pipe.latent_size == (8, 8)
    # the saved weights are the EMA weights, not the last trained ones
    shadow = state["ema"]["shadow"]
    saved = pipe.denoiser.state_dict()
    some = next(k for k in shadow if k.startswith("denoiser."))
    name = some.removeprefix("denoiser.")
    assert torch.equal(saved[name], shadow[some])
    assert not torch.equal(saved[name], state["denoiser"][name])
    # and the frozen first stage is the one it was given
    fs = ldmkit.get_registry().create("first_stage", pipe.spec.first_stage.type, pipe.spec.first_stage.params)
    load_into(fs, first_stage_weights)
    for key, value in fs.state_dict().items():
        assert torch.equal(pipe.first_stage.state_dict()[key], value), key
    latents = pipe.sample({"label": torch.tensor([1, 2])}, steps=2, generator=torch.Generator().manual_seed(0))
    images = pipe.decode(latents)
    assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()


def test_init_from_starts_from_saved_weights_except_skipped_ones(tmp_path, first_stage_weights):
    # another seed: the source's weights differ from this run's fresh initialisation
    source = train(ldm_spec(tmp_path / "a", first_stage_weights, max_steps=2, checkpoint_every=100, seed=1)).export
    saved = ldmkit.Pipeline.load(source)
    seen: dict[str, dict] = {}

    def grab(done, stage):  # the weights the run starts from, before its first update
        if "start" not in seen:
            seen["start"] = {k: v.clone() for k, v in stage.conditioner.state_dict().items()}
            seen["unet"] = {k: v.clone() for k, v in stage.denoiser.state_dict().items()}

    skip = ["conditioner.parts.label."]
    spec = ldm_spec(tmp_path / "b", first_stage_weights, max_steps=1, init_from=str(source), init_skip=skip)
    spec = spec.model_copy(update={"optimizer": spec.optimizer.model_copy(update={"lr": 1e-12})})
    train(spec, callbacks=[grab])
    for key, value in saved.denoiser.state_dict().items():
        assert torch.allclose(seen["unet"][key], value, atol=1e-9), key
    label = "parts.label.embedding.weight"
    assert label in seen["start"]
    assert not torch.allclose(seen["start"][label], saved.conditioner.state_dict()[label])

    for bad, words in [(["parts.label."], "must start with"), (["conditioner.parts.nothing"], "matches no weights")]:
        with pytest.raises(SpecError, match=words):
            train(ldm_spec(tmp_path / "c", first_stage_weights, max_steps=1, init_from=str(source), init_skip=bad))


def test_init_grow_adds_input_channels_that_start_at_zero(tmp_path, first_stage_weights):
    # the source has no concat input; the new model adds a layout part whose box map is 18 concat channels
    source = train(ldm_spec(tmp_path / "a", first_stage_weights, max_steps=2, checkpoint_every=100, seed=1)).export
    saved = ldmkit.Pipeline.load(source).denoiser.state_dict()
    layout = {"type": "layout", "params": {"n_classes": 18, "max_objects": 3, "coord_bins": 16, "n_embed": 32}}
    layout["params"] |= {"n_layer": 1, "coordinates": "separate", "spatial_map": [8, 8]}
    grow = ["denoiser.input_blocks.0.0.weight"]
    overrides = {
        "pipeline.denoiser.params.in_channels": 22,
        "pipeline.conditioner.params.parts.layout": layout,
        "conditioning": {"label": "class_label", "layout": "layout"},
        "init_from": str(source),
        "init_skip": ["conditioner.parts.layout."],
        "init_grow": grow,
        "optimizer.lr": 1e-12,
    }
    seen: dict[str, dict] = {}

    def grab(done, stage):
        seen.setdefault("unet", {k: v.clone() for k, v in stage.denoiser.state_dict().items()})

    train(ldm_spec(tmp_path / "b", first_stage_weights, max_steps=1, **overrides), callbacks=[grab])
    conv = seen["unet"]["input_blocks.0.0.weight"]  # (32, 22, 3, 3)
    assert conv.shape[1] == 22
    assert torch.allclose(conv[:, :4], saved["input_blocks.0.0.weight"], atol=1e-9)
    assert conv[:, 4:].abs().max() < 1e-9  # the box-map channels start with no effect
    for key, value in saved.items():
        if key != "input_blocks.0.0.weight":
            assert torch.allclose(seen["unet"][key], value, atol=1e-9), key
    with pytest.raises(SpecError, match="init_grow"):
        bad = overrides | {"init_grow": ["denoiser.input_blocks.0.0.nothing"]}
        train(ldm_spec(tmp_path / "c", first_stage_weights, max_steps=1, **bad))


# -- resume ---------------------------------------------------------------------------------------------

KILL_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    import torch
    from ldmkit.training import load_train_spec, train

    torch.set_num_threads(1)
    spec = load_train_spec(sys.argv[1], json.loads(sys.argv[2]))
    hang_at = int(sys.argv[3])

    def hang(done, stage):
        if done == hang_at:
            print("READY", flush=True)
            time.sleep(600)

    train(spec, callbacks=[hang])
    """
)


def test_killed_run_resumes_to_the_same_weights(tmp_path, first_stage_weights):
    steps, every = 6, 3
    settings = {"max_steps": steps, "checkpoint_every": every}
    whole = tmp_path / "whole"
    train(ldm_spec(whole, first_stage_weights, **settings))

    killed = tmp_path / "killed"
    overrides = {"out_dir": str(killed), "first_stage_weights": str(first_stage_weights), "progress": False}
    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(LDM_SPEC), json.dumps({**overrides, **settings}), str(every + 1)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    try:
        line = proc.stdout.readline()  # blocks until the run passed its checkpoint (or died)
        assert line.strip() == "READY", "the training subprocess ended before reaching its checkpoint"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert load_ckpt(killed / "last.ckpt")["step"] == every
    (killed / ".last.ckpt.0123abcd.tmp").write_bytes(b"half a checkpoint")  # as if killed while saving

    result = train(ldm_spec(killed, first_stage_weights, **settings))
    assert result.resumed_from == every
    a, b = load_ckpt(whole / "last.ckpt"), load_ckpt(killed / "last.ckpt")
    assert a["step"] == b["step"] == steps
    for part in ("denoiser", "conditioner"):
        for key, value in a["stage"][part].items():
            assert torch.equal(value, b["stage"][part][key]), f"{part}.{key}"
    for key, value in a["stage"]["ema"]["shadow"].items():
        assert torch.equal(value, b["stage"]["ema"]["shadow"][key]), key
    assert a["stage"]["scale_factor"] == b["stage"]["scale_factor"]
    # the log holds each step once, as in the uninterrupted run
    assert [int(r["step"]) for r in csv.DictReader((killed / "log.csv").open())] == list(range(1, steps + 1))
    assert losses(killed) == losses(whole)
    assert not list(killed.glob(".last.ckpt.*"))


def test_autoencoder_resume_with_discriminator_is_exact(tmp_path):
    settings = {"checkpoint_every": 100, "loss.disc_start": 2}
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    train(ae_spec(whole, max_steps=5, **settings))
    train(ae_spec(parts, max_steps=3, **settings))  # stops and saves at 3 ...
    result = train(ae_spec(parts, max_steps=5, **settings))  # ... and a longer run picks it up
    assert result.resumed_from == 3
    a, b = load_ckpt(whole / "last.ckpt")["stage"], load_ckpt(parts / "last.ckpt")["stage"]
    for part in ("first_stage", "discriminator"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), f"{part}.{key}"


def test_resume_refuses_other_model_settings(tmp_path):
    out = tmp_path / "ae"
    train(ae_spec(out, max_steps=1))
    changed = ae_spec(out, max_steps=2, **{"first_stage.params.embed_dim": 3})
    with pytest.raises(TrainingError, match="other model settings"):
        train(changed)


# -- checkpoints and out_dir failures -------------------------------------------------------------------


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, first_stage_weights, monkeypatch):
    out = tmp_path / "ldm"
    real_save = torch.save
    calls = []

    def disk_fills_up(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            return real_save(obj, f, *args, **kwargs)
        f.write(b"partial")  # some bytes reach the temp file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_fills_up)
    with pytest.raises(TrainingError, match="disk is full.*previous checkpoint is kept"):
        train(ldm_spec(out, first_stage_weights, max_steps=4, checkpoint_every=2))
    monkeypatch.undo()
    state = load_ckpt(out / "last.ckpt")
    assert state["step"] == 2
    # no temp file left behind (the lock file stays: the lock is the open file, released when the run ends)
    assert sorted(p.name for p in out.iterdir()) == [".ldmkit-train.lock", "last.ckpt", "log.csv"]


def test_out_dir_that_cannot_be_written(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(TrainingError, match="out_dir"):
        train(ae_spec(blocker / "run", max_steps=1))


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_out_dir(tmp_path):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    try:
        with pytest.raises(TrainingError, match="not writable"):
            train(ae_spec(out, max_steps=1))
    finally:
        out.chmod(0o700)


def test_resume_from_a_damaged_file_is_a_training_error(tmp_path):
    out = tmp_path / "ae"
    out.mkdir()
    (out / "last.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(TrainingError, match="last.ckpt"):
        train(ae_spec(out, max_steps=1))


# -- specs ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"optimizer": {"lr": -1.0}}, "optimizer.lr"),
        ({"batchsize": 4}, "batchsize"),
        ({"precision": "fp16"}, "precision"),
        ({"loss": {"kl_weight": "1e-6"}}, "loss.kl_weight"),
        ({"dataset": {"type": "shapes", "params": {}, "preload": 0}}, "dataset.preload"),
    ],
)
def test_bad_autoencoder_spec_names_the_field(change, field):
    data = ldmkit.specs.read_document(AE_SPEC)
    data.update(change)
    with pytest.raises(SpecError, match=rf"(^|\W){field}\b"):
        validate_train_spec(data)


def test_bad_ldm_spec_names_the_field():
    data = ldmkit.specs.read_document(LDM_SPEC)
    data["pipeline"]["denoiser"]["params"]["model_channels"] = "wide"
    with pytest.raises(SpecError, match=r"pipeline\.denoiser\.params\.model_channels"):
        validate_train_spec(data)
    data = ldmkit.specs.read_document(LDM_SPEC)
    del data["conditioning"]
    with pytest.raises(SpecError, match="conditioning"):
        validate_train_spec(data)
    data = ldmkit.specs.read_document(LDM_SPEC)
    data["stage"] = "vae"
    with pytest.raises(SpecError, match="stage"):
        validate_train_spec(data)


def test_vq_autoencoder_stage(tmp_path):
    vq = {
        "type": "vq-autoencoder",
        "params": {
            "embed_dim": 3,
            "z_channels": 3,
            "n_embed": 16,
            "resolution": 16,
            "ch": 32,
            "ch_mult": [1, 2],
            "num_res_blocks": 1,
        },
    }
    out = tmp_path / "vq"
    train(ae_spec(out, max_steps=3, first_stage=vq, **{"loss.disc_start": 2}))
    with (out / "log.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [float(r["codebook_loss"]) > 0 for r in rows] == [True] * 3
    assert float(rows[-1]["disc_loss"]) > 0 and float(rows[0]["disc_loss"]) == 0


def test_bad_dataset_params_name_the_field(tmp_path):
    with pytest.raises(SpecError, match=r"params\.size"):
        train(ae_spec(tmp_path / "x", **{"dataset.params.size": 0}))


def test_unknown_conditioning_part_and_dataset(tmp_path, first_stage_weights):
    with pytest.raises(SpecError, match=r"conditioning\.caption"):
        train(ldm_spec(tmp_path / "x", first_stage_weights, conditioning={"caption": "caption"}))
    with pytest.raises(UnknownComponentError, match="shapez"):
        build_dataset(DatasetSpec(type="shapez"))


def test_train_command_maps_errors_to_exit_2(tmp_path, capsys):
    from ldmkit.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("stage: autoencoder\nmax_steps: -3\n")
    assert main(["train", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "max_steps" in err and "dataset" in err


def test_train_command_runs(tmp_path, capsys):
    from ldmkit.cli import main

    out = tmp_path / "cli"
    code = main(["train", str(AE_SPEC), "--out-dir", str(out), "--max-steps", "2", "--no-progress"])
    assert code == 0
    assert (out / "first_stage.safetensors").is_file() and losses(out)[-1] > 0


# -- pieces ---------------------------------------------------------------------------------------------


def test_batches_depend_only_on_seed_and_step():
    stream = IndexStream(size=10, batch_size=4, seed=3)
    sequence = [stream.indices(k) for k in range(5)]
    assert IndexStream(10, 4, 3).indices(4) == sequence[4]  # a fresh stream (a resumed run) agrees
    flat = [i for batch in sequence for i in batch]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))  # epochs
    assert IndexStream(10, 4, 4).indices(0) != sequence[0] or IndexStream(10, 4, 4).indices(1) != sequence[1]


def test_preload_keeps_samples_on_the_given_device():
    dataset = build_dataset(DatasetSpec(type="shapes", params={"seed": 0, "size": 64}))
    on_cpu = Preloaded(dataset, 16)
    elsewhere = Preloaded(dataset, 16, device=torch.device("meta"))  # any device but the CPU
    a, b = on_cpu.batch([3, 1, 4]), elsewhere.batch([3, 1, 4])
    assert b["image"].device.type == "meta" and b["image"].shape == a["image"].shape == (3, 3, 64, 64)
    assert b["image"].dtype == a["image"].dtype and b["caption"] == a["caption"]


def test_preload_that_does_not_fit_the_device_is_a_training_error(monkeypatch):
    import ldmkit.training.data as data

    def out_of_memory(store, device):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(data, "_moved", out_of_memory)
    dataset = build_dataset(DatasetSpec(type="shapes", params={"seed": 0, "size": 64}))
    with pytest.raises(TrainingError, match="preload_device: cpu"):
        Preloaded(dataset, 8, device=torch.device("meta"))


def test_preload_keeps_samples_in_uint8(monkeypatch):
    import ldmkit.training.data as data

    dataset = build_dataset(DatasetSpec(type="shapes", params={"size": 16}))
    monkeypatch.setattr(data, "PRELOAD_CHUNK", 4)  # several chunks, rendered by a worker process
    pre = Preloaded(dataset, 10, num_workers=1)
    assert len(pre) == 10
    assert pre.store["image"].dtype == torch.uint8 and pre.store["mask"].dtype == torch.uint8
    got, want = pre.batch([9, 0, 4]), dataset.batch([9, 0, 4])
    for key in ("image", "mask", "segmentation", "class_label"):
        assert got[key].dtype == want[key].dtype
        assert torch.equal(got[key], want[key]), key
    assert (got["lowres"] - want["lowres"]).abs().max() <= 1 / 127.5
    assert got["caption"] == want["caption"]


def test_ema_follows_litema_decay():
    layer = torch.nn.Linear(2, 1, bias=False)
    ema = EMA({"m": layer}, decay=0.9, start=0)
    start = layer.weight.detach().clone()
    with torch.no_grad():
        layer.weight.add_(1.0)
    ema.update(0)
    d = min(0.9, 2 / 11)  # (1 + n) / (10 + n) after the first update
    assert torch.allclose(ema.shadow["m.weight"], start - (1 - d) * (start - layer.weight))
    with ema.applied():
        assert torch.equal(layer.weight, ema.shadow["m.weight"])
    assert torch.equal(layer.weight, start + 1.0)


def _feature_net_file(path: Path) -> Path:
    torch.manual_seed(0)
    state = {
        "net.slice1.0.weight": torch.randn(4, 3, 3, 3),
        "net.slice1.0.bias": torch.zeros(4),
        "net.slice2.3.weight": torch.randn(8, 4, 3, 3),
        "net.slice2.3.bias": torch.zeros(8),
        "lin0.model.1.weight": torch.rand(1, 4, 1, 1),
        "lin1.model.1.weight": torch.rand(1, 8, 1, 1),
    }
    save_state_dict(state, path)
    return path


def test_perceptual_loss_from_a_weights_file(tmp_path):
    net = PerceptualLoss.from_file(_feature_net_file(tmp_path / "feat.safetensors"))
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.equal(net(x, x), torch.zeros(2, 1, 1, 1))
    assert (net(x, x.flip(0)) > 0).all()
    bad = tmp_path / "bad.safetensors"
    save_state_dict({"net.slice1.1.weight": torch.randn(4, 3, 3, 3)}, bad)
    with pytest.raises(CheckpointError, match="slice1"):
        PerceptualLoss.from_file(bad)
    out = tmp_path / "ae"
    train(ae_spec(out, max_steps=2, **{"loss.perceptual_weights": str(tmp_path / "feat.safetensors")}))
    with (out / "log.csv").open() as fh:
        assert all(float(row["p_loss"]) > 0 for row in csv.DictReader(fh))


def test_tensorboard_needs_its_package(tmp_path):
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("tensorboard is installed")
    with pytest.raises(TrainingError, match="tensorboard"):
        train(ae_spec(tmp_path / "tb", max_steps=1, log="tensorboard"))


def test_finished_run_is_not_trained_again(tmp_path):
    """A finished run called again with the same spec does nothing new and keeps its result."""
    out = tmp_path / "ae"
    train(ae_spec(out, max_steps=2))
    before = (out / "last.ckpt").stat().st_mtime_ns
    time.sleep(0.01)
    result = train(ae_spec(out, max_steps=2))
    assert result.resumed_from == 2
    assert (out / "last.ckpt").stat().st_mtime_ns == before
    assert [int(r["step"]) for r in csv.DictReader((out / "log.csv").open())] == [1, 2]


# -- Ctrl-C and one run per folder ------------------------------------------------------------------------


def test_ctrl_c_saves_the_finished_step_and_says_which(tmp_path, first_stage_weights, caplog):
    from ldmkit.training.interrupt import TrainingInterrupted

    def press_ctrl_c(done: int, stage) -> None:
        if done == 2:
            signal.raise_signal(signal.SIGINT)  # as a terminal does; the step in flight is finished first

    out = tmp_path / "run"
    spec = ldm_spec(out, first_stage_weights, max_steps=6, checkpoint_every=100)
    with pytest.raises(TrainingInterrupted, match="step 2") as caught:
        train(spec, callbacks=[press_ctrl_c])
    assert caught.value.step == 2
    assert load_ckpt(out / "last.ckpt")["step"] == 2  # saved although checkpoint_every is 100
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back
    result = train(ldm_spec(out, first_stage_weights, max_steps=6, checkpoint_every=100))
    assert result.resumed_from == 2


def test_ctrl_c_from_the_cli_exits_130_with_the_saved_step(tmp_path, first_stage_weights, capsys, monkeypatch):
    from ldmkit import cli
    from ldmkit.training import loop

    real = loop._run_steps

    def interrupted_after_one_step(spec, stage, stream, start, logger, show, callbacks, last, world):
        def press(done: int, stage) -> None:
            if done == 1:
                signal.raise_signal(signal.SIGINT)

        return real(spec, stage, stream, start, logger, show, [*callbacks, press], last, world)

    monkeypatch.setattr(loop, "_run_steps", interrupted_after_one_step)
    out = tmp_path / "cli"
    code = cli.main(
        ["train", str(LDM_SPEC), "--out-dir", str(out), "--max-steps", "4", "--no-progress"]
        + ["--set", f"first_stage_weights={first_stage_weights}"]
    )
    assert code == 130
    assert "holds step 1" in capsys.readouterr().err
    assert load_ckpt(out / "last.ckpt")["step"] == 1


def test_a_second_run_into_the_same_out_dir_is_refused(tmp_path, first_stage_weights):
    from ldmkit.training.interrupt import exclusive_out_dir

    out = tmp_path / "busy"
    out.mkdir()
    with exclusive_out_dir(out):  # as if another process were training there
        probe = subprocess.run(
            [
                sys.executable,
                "-c",
                f"from ldmkit.training.interrupt import exclusive_out_dir as e\nwith e({str(out)!r}): pass",
            ],
            capture_output=True,
            text=True,
        )
        assert probe.returncode != 0 and "in use by another ldmkit train run" in probe.stderr
    train(ldm_spec(out, first_stage_weights, max_steps=1))  # free again once the holder is gone


# -- NaN and Inf ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("setting", ["loss.disc_weight=.inf", "optimizer.lr=.inf", "loss.logvar_init=.nan"])
def test_non_finite_settings_are_refused(tmp_path, capsys, setting):
    from ldmkit import cli

    code = cli.main(["train", str(AE_SPEC), "--out-dir", str(tmp_path / "ae"), "--set", setting, "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert setting.split("=")[0].split(".")[-1] in err and "finite" in err
    assert not (tmp_path / "ae" / "last.ckpt").exists()


def _nan_loss_from(monkeypatch, first_bad_step: int, last_bad_step: int = 10**9) -> None:
    from ldmkit.training import ldm

    real = ldm.F.mse_loss
    calls = []

    def mse(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if first_bad_step <= len(calls) <= last_bad_step else loss

    monkeypatch.setattr(ldm.F, "mse_loss", mse)


def test_a_non_finite_loss_stops_the_run_and_keeps_the_finite_checkpoint(tmp_path, first_stage_weights, monkeypatch):
    out = tmp_path / "nan"
    _nan_loss_from(monkeypatch, first_bad_step=3)
    with pytest.raises(TrainingError, match=r"step 3: the loss or a gradient is NaN or Inf"):
        train(ldm_spec(out, first_stage_weights, max_steps=6, checkpoint_every=2))
    state = load_ckpt(out / "last.ckpt")
    assert state["step"] == 2
    assert all(bool(torch.isfinite(v).all()) for v in state["stage"]["denoiser"].values())


def test_skipped_non_finite_steps_leave_the_weights_untouched(tmp_path, first_stage_weights, monkeypatch):
    out = tmp_path / "skip"
    _nan_loss_from(monkeypatch, first_bad_step=2, last_bad_step=3)
    seen = {}

    def grab(done: int, stage) -> None:
        seen[done] = {k: v.clone() for k, v in stage.denoiser.state_dict().items()}

    train(ldm_spec(out, first_stage_weights, max_steps=4, nonfinite_skips=2), callbacks=[grab])
    for key, value in seen[1].items():  # steps 2 and 3 were skipped: the weights after them are step 1's
        assert torch.equal(value, seen[3][key]), key
    assert any(not torch.equal(v, seen[4][k]) for k, v in seen[3].items())  # step 4 trained again
    assert all(bool(torch.isfinite(v).all()) for v in load_ckpt(out / "last.ckpt")["stage"]["denoiser"].values())


def test_a_full_disk_at_the_first_log_row_is_a_training_error(tmp_path, monkeypatch):
    from ldmkit.training import logging_

    class FullDisk:
        def __init__(self, real) -> None:
            self.real = real

        def write(self, text: str) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self) -> None:
            self.real.close()

    real_open = Path.open
    monkeypatch.setattr(Path, "open", lambda self, *a, **k: FullDisk(real_open(self, *a, **k)))
    with pytest.raises(TrainingError, match="No space left on device"):
        logging_.CSVLogger(tmp_path, ["loss"], 0)


def test_python_and_numpy_states_in_a_checkpoint_follow_the_seed(tmp_path, first_stage_weights):
    import random

    import numpy as np

    states = []
    for name in ("a", "b"):
        random.seed(name)  # whatever the process did before must not leak into the run
        np.random.seed(len(name) + ord(name))
        train(ldm_spec(tmp_path / name, first_stage_weights, max_steps=1))
        states.append(load_ckpt(tmp_path / name / "last.ckpt")["rng"])
    assert states[0]["python"] == states[1]["python"]
    assert torch.equal(states[0]["numpy"], states[1]["numpy"])
