"""Distributed training on 2 GPUs (NCCL): the same weights as one GPU with the same global batch.

Skipped without 2 CUDA devices. TF32 is switched off (``NVIDIA_TF32_OVERRIDE=0``) so that both runs
compute in float32 and only the order of summation differs between them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[3]
TWO_GPUS = torch.cuda.is_available() and torch.cuda.device_count() >= 2
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not TWO_GPUS, reason="needs 2 CUDA devices")]


def _spec(tmp: Path, name: str, strategy: str) -> Path:
    spec = yaml.safe_load((ROOT / "examples" / "train" / "tiny-ldm.yaml").read_text())
    spec.update(
        first_stage_weights=None,
        device="cuda",
        precision="fp32",
        max_steps=6,
        batch_size=8,
        ema=None,
        out_dir=str(tmp / name),
        distributed={"strategy": strategy},
    )
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _train(spec: Path, nproc: int) -> dict[str, torch.Tensor]:
    cmd = [sys.executable, "-m", "ldmkit.cli", "train", str(spec), "--fresh", "--nproc", str(nproc)]
    env = {**os.environ, "NVIDIA_TF32_OVERRIDE": "0", "OMP_NUM_THREADS": "2"}
    subprocess.run(cmd, check=True, env=env, cwd=ROOT, timeout=600)
    out_dir = Path(yaml.safe_load(spec.read_text())["out_dir"])
    return load_file(str(out_dir / "pipeline" / "denoiser.safetensors"))


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_gpus_equal_one_gpu(tmp_path, strategy):
    one = _train(_spec(tmp_path, "one", strategy), 1)
    two = _train(_spec(tmp_path, "two", strategy), 2)
    assert one.keys() == two.keys()
    worst = max((one[k] - two[k]).abs().max().item() for k in one)
    assert worst < 1e-5, f"largest weight difference {worst:.3g}"
