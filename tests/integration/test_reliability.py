"""Reliability: exact resume, preemption by SIGTERM/SIGUSR1, non-finite losses, a bad COCO record end to
end. Runs are the toy set with the tiny CLIP on CPU, cut to two 4-image batches per epoch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import FAST_OVERRIDES, compose_cfg
from pytorch_lightning.utilities.exceptions import SIGTERMException

from clamp_pl.data.datamodule import ToyAP10KDataModule
from clamp_pl.formats.coco import DataError
from clamp_pl.train import train
from clamp_pl.training.callbacks.safety import NonFiniteLossError
from clamp_pl.training.module import PoseLitModule

REPO = Path(__file__).resolve().parents[2]
SHORT = [*FAST_OVERRIDES, "experiment=supervised_toy", "data.batch_size=4", "trainer.limit_train_batches=2",
         "trainer.limit_val_batches=1", "trainer.limit_test_batches=1"]
EXACT = ["trainer.deterministic=true", "trainer.check_val_every_n_epoch=1", "data.num_workers=0"]


def run(run_dir: Path, data_dir: Path, *overrides: str) -> tuple[dict, dict]:
    return train(compose_cfg("train", [*SHORT, *overrides], run_dir, data_dir))


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same(a, b, where: str = "") -> None:
    """Bit-identical nested checkpoint content (tensors, dicts, lists, numbers)."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def nonfinite_tensors(state: dict[str, torch.Tensor]) -> list[str]:
    return [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]


# ---------------------------------------------------------------- resume
def test_resume_is_exact_and_keeps_the_wandb_run(tmp_path, data_dir):
    """2 epochs in one go == 1 epoch, then resumed from its run dir into a new run dir (as ``ckpt_path=<run
    dir>`` on the CLI does): same weights, optimiser and schedule, same metrics, same best checkpoint tested, same
    W&B run id."""
    m_a, _ = run(tmp_path / "A", data_dir, *EXACT, "trainer.max_epochs=2")
    run(tmp_path / "B1", data_dir, *EXACT, "trainer.max_epochs=1", "test=false", "logger=wandb")
    m_b, _ = run(tmp_path / "B2", data_dir, *EXACT, "trainer.max_epochs=2", f"ckpt_path={tmp_path / 'B1'}",
                 "logger=wandb")

    a, b = load(tmp_path / "A/checkpoints/last.ckpt"), load(tmp_path / "B2/checkpoints/last.ckpt")
    # last.ckpt must be the latest epoch even when it did not improve val/AP (what a resume starts from)
    assert (a["epoch"], a["global_step"]) == (1, 4), "last.ckpt is not the last epoch"
    assert (b["epoch"], b["global_step"]) == (1, 4)
    assert_same(a["state_dict"], b["state_dict"], "state_dict")
    assert_same(a["optimizer_states"], b["optimizer_states"], "optimizer")
    assert_same(a["lr_schedulers"], b["lr_schedulers"], "scheduler")
    keys = sorted(k for k in m_a if k.startswith(("train/", "val/", "test/")))
    assert any(k.startswith("test/PCK") for k in keys)
    assert {k: m_b[k] for k in keys} == {k: m_a[k] for k in keys}

    run_id = (tmp_path / "B1/wandb_run_id.txt").read_text().strip()
    assert (tmp_path / "B2/wandb_run_id.txt").read_text().strip() == run_id
    assert list((tmp_path / "B2/wandb").glob(f"offline-run-*-{run_id}"))


# ---------------------------------------------------------------- preemption
def _has_trained(metrics_csv: Path) -> bool:
    # the CSV logger writes metrics.csv after the first optimiser step (log_every_n_steps=1)
    return metrics_csv.is_file() and len(metrics_csv.read_text().splitlines()) >= 2


def test_sigterm_saves_last_exits_cleanly_and_resumes(tmp_path, data_dir):
    run_dir = tmp_path / "run"
    short = ["data.batch_size=4", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1"]
    cmd = [sys.executable, "-m", "clamp_pl.train", "experiment=supervised_toy", "debug=tiny", *short,
           "trainer.max_epochs=1000", f"paths.log_dir={tmp_path}", f"paths.data_dir={data_dir}",
           f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    out_file = tmp_path / "out.txt"
    with open(out_file, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        try:
            deadline = time.monotonic() + 180
            while not _has_trained(run_dir / "metrics.csv"):
                assert proc.poll() is None, out_file.read_text()[-3000:]
                assert time.monotonic() < deadline, "no training step within 180 s"
                time.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = out_file.read_text()
    last = run_dir / "checkpoints" / "last.ckpt"
    assert rc == 0, text[-3000:]
    assert f"SIGTERM received: checkpoint saved to {last}" in text
    assert not (run_dir / "results.json").exists()  # stopped: no test on a preempted run
    ckpt = load(last)
    assert ckpt["global_step"] >= 1

    # at least one more epoch, wherever in its epoch the signal landed
    metrics, objs = run(tmp_path / "resumed", data_dir, f"ckpt_path={run_dir}", f"trainer.max_epochs={ckpt['epoch'] + 2}",
                        "test=false")
    assert objs["trainer"].global_step > ckpt["global_step"]
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))


def test_sigusr1_saves_last_and_exits_with_status_0(tmp_path, data_dir, monkeypatch, caplog):
    def signal_at_second_batch(self, batch, batch_idx):
        if batch_idx == 1:
            os.kill(os.getpid(), signal.SIGUSR1)

    monkeypatch.setattr(PoseLitModule, "on_train_batch_start", signal_at_second_batch, raising=False)
    previous = signal.getsignal(signal.SIGUSR1)
    with pytest.raises(SystemExit) as exc:  # SIGTERMException: Lightning's clean stop
        run(tmp_path / "run", data_dir, "trainer.max_epochs=5")
    assert isinstance(exc.value, SIGTERMException) and exc.value.code is None  # exit status 0
    assert signal.getsignal(signal.SIGUSR1) == previous  # the callback's handler is gone again
    last = tmp_path / "run/checkpoints/last.ckpt"
    assert f"SIGUSR1 received: checkpoint saved to {last}" in caplog.text
    assert load(last)["global_step"] == 2  # after the step in flight


def test_sigterm_during_validation_still_saves_and_resumes(tmp_path, data_dir, monkeypatch):
    """Lightning's evaluation loop stops on SIGTERM before any training-batch hook: the checkpoint is saved on the
    way out, and the run resumes from the middle of its validation."""

    def sigterm_once(self, batch, batch_idx, dataloader_idx=0):
        if self.trainer.state.fn == "fit" and not self.trainer.received_sigterm:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(PoseLitModule, "on_validation_batch_start", sigterm_once, raising=False)
    with pytest.raises(SIGTERMException):
        run(tmp_path / "run", data_dir, "trainer.max_epochs=5", "trainer.limit_val_batches=2")
    monkeypatch.undo()
    ckpt = load(tmp_path / "run/checkpoints/last.ckpt")
    assert (ckpt["epoch"], ckpt["global_step"]) == (0, 2)
    _, objs = run(tmp_path / "resumed", data_dir, f"ckpt_path={tmp_path / 'run'}", "trainer.max_epochs=1",
                  "test=false")
    assert objs["trainer"].state.finished and objs["trainer"].global_step == 2


# ---------------------------------------------------------------- non-finite losses
@pytest.fixture
def poison_batches(monkeypatch):
    """``poison_batches({1, 2})``: a NaN pixel in those training batches (counted over the run, from 0)."""

    def install(which: set[int]) -> None:
        seen = [0]

        def hook(self, batch, dataloader_idx):
            if self.trainer is not None and self.trainer.training:
                if seen[0] in which:
                    batch["image"][0, 0, 0, 0] = float("nan")
                seen[0] += 1
            return batch

        monkeypatch.setattr(ToyAP10KDataModule, "on_after_batch_transfer", hook)

    return install


def test_nonfinite_loss_skips_the_step(tmp_path, data_dir, poison_batches):
    poison_batches({1, 2})
    metrics, objs = run(tmp_path / "run", data_dir, "trainer.max_epochs=2")
    model = objs["model"]
    assert model.nonfinite_steps == 2  # not rewound by testing the best checkpoint
    assert json.loads((tmp_path / "run/run.json").read_text())["nonfinite_steps"] == 2
    # skipping a step must not leave NaN anywhere: weights, nor batch-norm statistics of the NaN forward
    assert not nonfinite_tensors(model.state_dict())
    assert not nonfinite_tensors(load(tmp_path / "run/checkpoints/last.ckpt")["state_dict"])
    assert objs["trainer"].global_step == 4 and torch.isfinite(torch.tensor(metrics["train/loss"]))
    assert "test/AP" in metrics


@pytest.mark.parametrize("mode, poisoned", [("stop", {1}), ("skip", {0, 1})])
def test_nonfinite_loss_stops_after_a_checkpoint(tmp_path, data_dir, poison_batches, mode, poisoned):
    """``on_nonfinite=stop`` stops at the first one; ``skip`` stops once more than ``max_nonfinite`` were skipped."""
    poison_batches(poisoned)
    with pytest.raises(NonFiniteLossError, match=r"checkpoint saved to .*checkpoints/nonfinite\.ckpt") as exc:
        run(tmp_path / "run", data_dir, "trainer.max_epochs=2", f"callbacks.run_safety.on_nonfinite={mode}",
            "callbacks.run_safety.max_nonfinite=1")
    assert "non-finite" in str(exc.value)
    ckpt = load(tmp_path / "run/checkpoints/nonfinite.ckpt")
    assert ckpt["nonfinite_steps"] == len(poisoned) and ckpt["global_step"] == 2  # skipped steps count too
    assert not nonfinite_tensors(ckpt["state_dict"])


# ---------------------------------------------------------------- bad inputs
def test_bad_coco_record_skipped_or_raised(tmp_path, data_dir):
    """One annotation with 10 keypoint values instead of 3*17, in a copy of the toy set's train file."""
    from clamp_pl.data.toy import ensure_toy_ap10k

    toy = ensure_toy_ap10k(data_dir / "toy_ap10k", n_train=96, n_val=24, n_test=24)  # = debug=tiny, no regeneration
    coco = json.loads(toy["train"].read_text())
    bad = coco["annotations"][3]
    bad["keypoints"] = bad["keypoints"][:10]
    train_ann = tmp_path / "train_bad.json"
    train_ann.write_text(json.dumps(coco))
    data = ["data=coco", f"data.train_ann={train_ann}", f"data.val_ann={toy['val']}", f"data.img_dir={toy['images']}",
            "~data.n_train", "~data.n_val", "~data.n_test"]  # debug=tiny's toy-only keys

    metrics, _ = run(tmp_path / "skip", data_dir, *data, "data.on_error=skip")
    assert "test/AP" in metrics
    skipped = json.loads((tmp_path / "skip/skipped_records.json").read_text())
    assert [(r["ann_id"], r["field"]) for r in skipped["train"]] == [(bad["id"], "keypoints")]
    assert json.loads((tmp_path / "skip/run.json").read_text())["skipped_records"] == {"train": 1, "val": 0, "test": 0}

    with pytest.raises(DataError) as exc:
        run(tmp_path / "raise", data_dir, *data, "data.on_error=raise")
    msg = str(exc.value)
    assert str(train_ann) in msg and f"annotation {bad['id']}" in msg and "'keypoints'" in msg
    assert not list((tmp_path / "raise").glob("checkpoints/*.ckpt"))
