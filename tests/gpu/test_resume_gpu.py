"""Resuming on the GPU is exact: 2 epochs in one go == 1 epoch + a resume from its checkpoint, in bf16-mixed with
the same settings (weights, optimiser and scheduler states bit-identical), and the checkpoint holds the CUDA
generator states (drop path and dropout draw from them)."""

from __future__ import annotations

from pathlib import Path

import torch
from conftest import FAST_OVERRIDES, compose_cfg
from gpu_support import DEVICE, GPU

from clamp_pl.train import train

pytestmark = GPU

SHORT = [*FAST_OVERRIDES, "experiment=supervised_toy", "data.batch_size=4", "trainer.limit_train_batches=2",
         "trainer.limit_val_batches=1", "trainer.limit_test_batches=1", "trainer.check_val_every_n_epoch=1",
         "data.num_workers=0", "test=false", "trainer.precision=bf16-mixed", "trainer.benchmark=false",
         # deterministic kernels where torch has them; "warn" names the others instead of failing, and the
         # comparison below says whether they broke exactness
         "trainer.deterministic=warn",
         "trainer=gpu" if DEVICE.type == "cuda" else "trainer.accelerator=cpu"]


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _same(a, b, where: str) -> list[str]:
    """The paths where two nested checkpoint entries differ (tensors bit for bit)."""
    if isinstance(a, torch.Tensor):
        return [] if torch.equal(a, b) else [where]
    if isinstance(a, dict):
        if a.keys() != b.keys():
            return [f"{where} (keys)"]
        return [d for k in a for d in _same(a[k], b[k], f"{where}/{k}")]
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return [f"{where} (length)"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _same(x, y, f"{where}[{i}]")]
    return [] if a == b else [where]


def test_resume_on_the_gpu_is_bit_exact(tmp_path, data_dir):
    def run(name: str, *overrides: str) -> None:
        train(compose_cfg("train", [*SHORT, *overrides], tmp_path / name, data_dir))

    run("A", "trainer.max_epochs=2")
    run("B1", "trainer.max_epochs=1")
    run("B2", "trainer.max_epochs=2", f"ckpt_path={tmp_path / 'B1'}")
    a, b = _load(tmp_path / "A/checkpoints/last.ckpt"), _load(tmp_path / "B2/checkpoints/last.ckpt")
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"]) == (1, 4)
    if DEVICE.type == "cuda":
        assert len(_load(tmp_path / "B1/checkpoints/last.ckpt")["rng_states"]["cuda"]) == torch.cuda.device_count()
    diffs = [d for key in ("state_dict", "optimizer_states", "lr_schedulers") for d in _same(a[key], b[key], key)]
    assert not diffs, f"{len(diffs)} entries differ after the resume, e.g. {diffs[:5]}"
