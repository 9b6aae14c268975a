"""Two-process DDP on two GPUs (``trainer=ddp``: NCCL, sync batch norm, bf16-mixed) through the training entry
point, as a user starts it. Skipped, with the reason, unless 2 CUDA devices are visible."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from gpu_support import GPU

pytestmark = [
    *GPU,
    pytest.mark.skipif(torch.cuda.device_count() < 2,
                       reason=f"needs 2 CUDA devices, {torch.cuda.device_count()} visible"),
]
REPO = Path(__file__).resolve().parents[2]


def test_ddp_two_gpus_smoke(tmp_path, data_dir):
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "clamp_pl.train", "experiment=supervised_toy", "trainer=ddp", "trainer.devices=2",
           "debug=tiny", f"paths.log_dir={tmp_path}", f"paths.data_dir={data_dir}",
           f"hydra.run.dir={tmp_path / 'run'}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert out.returncode == 0, f"{' '.join(cmd)}\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
