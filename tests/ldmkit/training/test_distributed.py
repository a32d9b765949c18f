"""Distributed training and generation: 2 CPU processes (gloo) compute what one process computes."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from ldmkit.errors import InputError
from ldmkit.training import load_train_spec, train
from ldmkit.training.data import IndexStream

ROOT = Path(__file__).resolve().parents[3]
AE_SPEC = ROOT / "examples" / "train" / "tiny-autoencoder.yaml"
LDM_SPEC = ROOT / "examples" / "train" / "tiny-ldm.yaml"
ATOL = 1e-6


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stop(Exception):
    """Raised by a callback to end a run as a crash would, after that step's checkpoint."""


def _stop_at(step: int):
    def callback(done: int, stage) -> None:
        if done == step:
            raise Stop(done)

    return callback


def _worker(rank: int, size: int, port: int, jobs: list[tuple]) -> None:
    import torch.distributed as dist

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(size)
    )
    torch.set_num_threads(1)
    dist.init_process_group("gloo")  # one group for all jobs: train() joins it and leaves it up
    try:
        for job in jobs:
            if job[0] == "copy":  # keep a run's folder as it is now (rank 0 copies, the others wait)
                if rank == 0:
                    shutil.copytree(job[1], job[2])
                dist.barrier()
                continue
            _, spec, stop_at, *extra = job
            callbacks = [_stop_at(stop_at)] if stop_at is not None else []
            if extra and extra[0] is not None:  # (make_callback, arg): a per-rank observer of the run
                make_callback, arg = extra[0]
                callbacks.insert(0, make_callback(rank, arg))
            try:
                train(spec, callbacks=callbacks)
            except Stop:
                pass
    finally:
        dist.destroy_process_group()


def train_ranks(*jobs: tuple, size: int = 2) -> None:
    """Run jobs one after another in ``size`` spawned processes (starting processes is the slow part).

    A job is ``("train", spec, stop_at)`` (a run, ended by an exception after step ``stop_at`` when given),
    optionally with a fourth item ``(make_callback, arg)`` that gives each rank an extra callback
    ``make_callback(rank, arg)``, or ``("copy", src, dst)``.
    """
    mp.spawn(_worker, args=(size, free_port(), list(jobs)), nprocs=size, join=True)


def ldm_dict(out_dir: Path, weights: Path, **overrides) -> dict:
    spec = load_train_spec(
        LDM_SPEC,
        {
            "out_dir": str(out_dir),
            "first_stage_weights": str(weights),
            "progress": False,
            "max_steps": 4,
            "checkpoint_every": 2,
            **overrides,
        },
    )
    return spec.model_dump(mode="json")


def trained(out_dir: Path) -> dict[str, torch.Tensor]:
    """Denoiser, conditioner, EMA and optimizer moments of a run's last checkpoint, flat."""
    state = torch.load(out_dir / "last.ckpt", map_location="cpu", weights_only=True)
    stage = state["stage"]
    flat = {f"denoiser.{k}": v for k, v in stage["denoiser"].items()}
    flat.update({f"conditioner.{k}": v for k, v in stage["conditioner"].items()})
    flat.update({f"ema.{k}": v for k, v in stage["ema"]["shadow"].items()})
    for i, moments in stage["optimizer"]["state"].items():
        flat[f"adam.{i}.exp_avg"] = moments["exp_avg"]
    flat["scale_factor"] = torch.tensor(stage["scale_factor"])
    assert state["step"] == 4
    return flat


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=ATOL, rtol=0, msg=lambda m, k=key: f"{k}: {m}")


@pytest.fixture(scope="module")
def single(tmp_path_factory, first_stage_weights) -> Path:
    """The reference: 4 steps of the tiny LDM (global batch 4, dropout, scale_by_std, EMA) in one process."""
    out = tmp_path_factory.mktemp("single")
    torch.set_num_threads(1)
    train(ldm_dict(out, first_stage_weights))
    return out


def test_shards_cover_the_global_batch():
    whole = IndexStream(100, 8, seed=3)
    for step in (0, 12, 13):
        shards = [IndexStream(100, 8, seed=3, rank=r, world_size=2).indices(step) for r in range(2)]
        assert shards[0] + shards[1] == whole.indices(step)


@pytest.mark.slow
def test_two_ranks_equal_one_resume_and_autoencoder(tmp_path, first_stage_weights, single):
    def ae(out: Path) -> dict:
        # Adam turns any gradient into a step of about lr, also the float noise of gradients that are zero
        # in exact arithmetic (biases in front of a GroupNorm); a larger eps keeps those steps negligible
        overrides = {"out_dir": str(out), "progress": False, "max_steps": 2, "optimizer.eps": 0.1}
        return load_train_spec(AE_SPEC, overrides).model_dump(mode="json")

    reference = trained(single)
    train_ranks(
        ("train", ldm_dict(tmp_path / "two", first_stage_weights), None),  # uninterrupted
        ("train", ldm_dict(tmp_path / "stopped", first_stage_weights), 2),  # stopped after step 2's checkpoint ...
        ("copy", tmp_path / "stopped", tmp_path / "stopped-one"),
        ("train", ldm_dict(tmp_path / "stopped", first_stage_weights), None),  # ... resumed by 2 processes
        ("train", ae(tmp_path / "ae-two"), None),
    )
    assert_same(trained(tmp_path / "two"), reference)
    assert (tmp_path / "two" / "pipeline" / "denoiser.safetensors").is_file()
    logged = (tmp_path / "two" / "log.csv").read_text().splitlines()
    assert len(logged) == 5  # header + one row per step, from rank 0 only
    single_rows = (single / "log.csv").read_text().splitlines()
    loss = [float(r.split(",")[1]) for r in logged[1:]]
    assert loss == pytest.approx([float(r.split(",")[1]) for r in single_rows[1:]], abs=1e-5)

    ckpt = torch.load(tmp_path / "stopped-one" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["step"] == 2
    assert not any(k.startswith("module.") for k in ckpt["stage"]["denoiser"])  # unwrapped state
    assert_same(trained(tmp_path / "stopped"), reference)
    train(ldm_dict(tmp_path / "stopped-one", first_stage_weights))  # the 2-process checkpoint resumed by 1 process
    assert_same(trained(tmp_path / "stopped-one"), reference)

    train(ae(tmp_path / "ae-one"))
    one = torch.load(tmp_path / "ae-one" / "last.ckpt", weights_only=True)["stage"]["first_stage"]
    two = torch.load(tmp_path / "ae-two" / "last.ckpt", weights_only=True)["stage"]["first_stage"]
    assert_same(one, two)


def test_batch_that_does_not_split_is_refused():
    from ldmkit.errors import SpecError
    from ldmkit.training.distributed import World

    with pytest.raises(SpecError, match="batch_size 3 does not split evenly over 2 processes"):
        World(rank=1, size=2).part(3)
    with pytest.raises(SpecError, match="does not split evenly"):
        IndexStream(100, 3, seed=0, rank=0, world_size=2)


def _cli(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "ldmkit.cli", *args], capture_output=True, text=True, env=env, timeout=180
    )


@pytest.mark.slow
def test_cli_nproc_two(tmp_path, first_stage_weights, single):
    spec = tmp_path / "spec.yaml"
    import yaml

    spec.write_text(yaml.safe_dump(ldm_dict(tmp_path / "cli", first_stage_weights)))
    done = _cli("train", str(spec), "--nproc", "2", "--no-progress")
    assert done.returncode == 0, done.stderr[-2000:]
    assert_same(trained(tmp_path / "cli"), trained(single))
    bad = _cli("train", str(spec), "--nproc", "0")
    assert bad.returncode == 2 and "--nproc" in bad.stderr


@pytest.mark.slow
def test_generate_across_two_ranks_equals_one(tmp_path):
    import yaml
    from PIL import Image

    pipeline = yaml.safe_load(LDM_SPEC.read_text())["pipeline"]
    pipeline["latent_size"] = [8, 8]
    spec = tmp_path / "pipeline.yaml"
    spec.write_text(yaml.safe_dump(pipeline))  # random (seeded) weights: the same in every process
    args = ["generate", "--spec", str(spec), "--task", "uncond", "-n", "3", "--seed", "5", "--steps", "2"]
    args += ["--eta", "1.0"]  # fresh noise in every step, drawn per picture
    one = _cli(*args, "--out", str(tmp_path / "one"), "--no-progress")
    assert one.returncode == 0, one.stderr[-2000:]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "ldmkit.cli"]
        + args
        + ["--out", str(tmp_path / "two"), "--no-progress"],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert two.returncode == 0, two.stderr[-2000:]
    names = sorted(p.name for p in (tmp_path / "one").glob("*.png"))
    assert names == sorted(p.name for p in (tmp_path / "two").glob("*.png")) and len(names) == 3
    for name in names:
        with Image.open(tmp_path / "one" / name) as a, Image.open(tmp_path / "two" / name) as b:
            # CPU kernels block by batch size and thread count, so a picture made in a batch of 3 on two threads
            # and one made in a batch of 2 (or 1) on one thread differ in the last float bits; after rounding to
            # 8 bits at most a few values move by one level (docs/quickstart.md states this tolerance)
            pa = torch.frombuffer(bytearray(a.tobytes()), dtype=torch.uint8).int()
            pb = torch.frombuffer(bytearray(b.tobytes()), dtype=torch.uint8).int()
            moved = (pa - pb).abs()
            assert int(moved.max()) <= 1, name
            assert float((moved > 0).float().mean()) <= 0.01, name
            assert a.text["ldmkit"] == b.text["ldmkit"]  # the same replay record (full batch, global index)


@pytest.mark.parametrize(
    ("device", "env", "expected"),
    [
        ("cuda", {"WORLD_SIZE": "2", "LOCAL_RANK": "1"}, "cuda:1"),  # each rank on its own GPU
        ("cuda:0", {"WORLD_SIZE": "2", "LOCAL_RANK": "1"}, "cuda:0"),  # an explicit index is kept
        ("cpu", {"WORLD_SIZE": "2", "LOCAL_RANK": "1"}, "cpu"),
        ("cuda", {"WORLD_SIZE": "1"}, "cuda"),  # one process: the current CUDA device
    ],
)
def test_generate_rank_device(monkeypatch, device: str, env: dict, expected: str) -> None:
    from ldmkit.distributed_generate import rank_device

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert rank_device(torch.device(device)) == torch.device(expected)


def test_generate_rank_without_a_gpu_of_its_own_is_refused(monkeypatch) -> None:
    from ldmkit.distributed_generate import rank_device

    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(InputError, match="local rank 3 has no GPU of its own"):
        rank_device(torch.device("cuda"))
