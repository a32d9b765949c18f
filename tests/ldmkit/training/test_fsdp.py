"""FSDP training: 2 CPU processes (gloo) with sharded weights compute what one process computes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_distributed import AE_SPEC, ldm_dict, single, train_ranks, trained  # noqa: F401

from ldmkit.training import load_train_spec, train

ATOL = 1e-5
FSDP = {"distributed.strategy": "fsdp"}
GAN = {"loss.disc_start": 0, "ema": {"decay": 0.9, "start": 0}}  # the discriminator and the EMA from step 0


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _record_shards(rank: int, record: Path):
    """A callback that notes, after the first step, how much of the weights and moments this rank holds."""
    path = Path(f"{record}.{rank}")

    def callback(done: int, stage) -> None:
        if done != 1:
            return
        from torch.distributed.tensor import DTensor

        params = list(stage.denoiser.parameters())
        moments = [s["exp_avg"] for s in stage.opt.state.values()]
        shadows = list(stage.ema.shadow.values())
        local = sum(p.to_local().numel() for p in params if isinstance(p, DTensor))
        all_sharded = all(isinstance(t, DTensor) for t in params + moments + shadows)
        path.write_text(f"{local} {sum(p.numel() for p in params)} {all_sharded}")

    return callback


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], rtol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=ATOL, rtol=rtol, msg=lambda m, k=key: f"{k}: {m}")


def ae_dict(out: Path, **overrides) -> dict:
    # a larger Adam eps keeps float noise in gradients that are zero in exact arithmetic from mattering
    base = {"out_dir": str(out), "progress": False, "max_steps": 2, "optimizer.eps": 0.1}
    return load_train_spec(AE_SPEC, {**base, **overrides}).model_dump(mode="json")


@pytest.mark.slow
def test_fsdp_equals_one_process_and_resumes_anywhere(tmp_path, first_stage_weights, single):  # noqa: F811
    weights = first_stage_weights
    reference = trained(single)
    record = tmp_path / "shards"
    train_ranks(
        ("train", ldm_dict(tmp_path / "two", weights, **FSDP), None, (_record_shards, record)),  # uninterrupted
        ("train", ldm_dict(tmp_path / "stopped", weights, **FSDP), 2, None),  # stopped after step 2's checkpoint ...
        ("copy", tmp_path / "stopped", tmp_path / "stopped-one"),
        ("copy", tmp_path / "stopped", tmp_path / "stopped-ddp"),
        ("train", ldm_dict(tmp_path / "stopped", weights, **FSDP), None, None),  # ... resumed by 2 fsdp processes
        ("train", ldm_dict(tmp_path / "stopped-ddp", weights), None, None),  # ... resumed by 2 ddp processes
        ("train", ae_dict(tmp_path / "ae-two", **FSDP), None, None),
        ("train", ae_dict(tmp_path / "gan-fsdp", **GAN, **FSDP), None, None),
        ("train", ae_dict(tmp_path / "gan-ddp", **GAN), None, None),
    )
    # each rank held half the denoiser's weights, and the moments and EMA shadows were shards too
    for rank in range(2):
        local, total, all_sharded = (record.parent / f"shards.{rank}").read_text().split()
        assert all_sharded == "True"
        assert 0.4 * int(total) < int(local) < 0.6 * int(total)

    assert_close(trained(tmp_path / "two"), reference)
    logged = (tmp_path / "two" / "log.csv").read_text().splitlines()
    assert len(logged) == 5  # header + one row per step, from rank 0 only
    ckpt = torch.load(tmp_path / "stopped-one" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["step"] == 2
    single_ckpt = torch.load(single / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["stage"]["denoiser"].keys() == single_ckpt["stage"]["denoiser"].keys()  # full, unwrapped names
    assert all(type(v) is torch.Tensor for v in ckpt["stage"]["denoiser"].values())

    # the exported pipeline holds the full EMA weights, as the checkpoint's EMA shadows
    from ldmkit.checkpoints import load_state_dict

    exported = load_state_dict(tmp_path / "two" / "pipeline" / "denoiser.safetensors")
    final = torch.load(tmp_path / "two" / "last.ckpt", map_location="cpu", weights_only=True)["stage"]
    assert exported.keys() == final["denoiser"].keys()
    for key, value in final["ema"]["shadow"].items():
        if key.startswith("denoiser."):
            torch.testing.assert_close(exported[key.removeprefix("denoiser.")], value, atol=0, rtol=0)

    assert_close(trained(tmp_path / "stopped"), reference)  # resumed by fsdp
    assert_close(trained(tmp_path / "stopped-ddp"), reference)  # resumed by ddp
    train(ldm_dict(tmp_path / "stopped-one", weights))  # the fsdp checkpoint resumed by 1 process
    assert_close(trained(tmp_path / "stopped-one"), reference)

    train(ae_dict(tmp_path / "ae-one"))
    one = torch.load(tmp_path / "ae-one" / "last.ckpt", weights_only=True)["stage"]
    two = torch.load(tmp_path / "ae-two" / "last.ckpt", weights_only=True)["stage"]
    assert_close(one["first_stage"], two["first_stage"])
    assert_close(
        {str(i): s["exp_avg"] for i, s in one["optimizer"]["state"].items()},
        {str(i): s["exp_avg"] for i, s in two["optimizer"]["state"].items()},
        rtol=1e-5,  # gradients of a summed loss are large: compare them relative to their size
    )

    # with the GAN on, rank shards see their own BatchNorm statistics on the CPU: fsdp must match ddp there
    for part in ("first_stage", "discriminator"):
        ddp = torch.load(tmp_path / "gan-ddp" / "last.ckpt", weights_only=True)["stage"]
        sharded = torch.load(tmp_path / "gan-fsdp" / "last.ckpt", weights_only=True)["stage"]
        assert_close(sharded[part], ddp[part])
    assert_close(sharded["ema"]["shadow"], ddp["ema"]["shadow"])
