"""Hydra multirun, DDP on CPU (gloo) and W&B offline, as a user runs them: real subprocesses of the entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clamp_pl.tools.aggregate import aggregate, collect

REPO = Path(__file__).resolve().parents[2]


def run_cli(args: list[str], tmp_path: Path, data_dir: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    # tests/ on the path: runs can load test-only callbacks (tests/helpers)
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "tests"), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "clamp_pl.train", *args, "debug=tiny", f"paths.log_dir={tmp_path}",
           f"paths.data_dir={data_dir}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)
    assert out.returncode == 0, f"{' '.join(cmd)}\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    return out


def test_multirun_2x2_and_aggregate(tmp_path, data_dir):
    run_cli(["-m", "experiment=fewshot_toy", "protocol.shots=2,4", "seed=1,2"], tmp_path, data_dir)
    (sweep,) = list((tmp_path / "train" / "multiruns").iterdir())
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0_experiment=fewshot_toy,protocol.shots=2,seed=1", "1_experiment=fewshot_toy,protocol.shots=2,seed=2",
                    "2_experiment=fewshot_toy,protocol.shots=4,seed=1", "3_experiment=fewshot_toy,protocol.shots=4,seed=2"]
    rows, missing = collect(sweep)
    assert len(rows) == 4 and not missing
    table = aggregate(rows, ["test/AP"])
    assert [(r["shots"], r["seeds"]) for r in table] == [("2", 2), ("4", 2)]
    for r in table:
        expected = sum(x["test/AP"] for x in rows if x["shots"] == r["shots"]) / 2
        assert r["test/AP mean"] == pytest.approx(expected)
    # the few-shot split of each (shots, seed) was saved as annotation ids and differs across seeds
    splits = {p.name: json.loads(p.read_text())["ann_ids"] for p in (data_dir / "splits" / "toy_ap10k").glob("*")}
    assert splits["fewshot_k2_seed1.json"] != splits["fewshot_k2_seed2.json"]


def test_ddp_cpu_single_run(tmp_path, data_dir):
    run_cli(["experiment=supervised_toy", "trainer=ddp_cpu"], tmp_path, data_dir)
    (run,) = list((tmp_path / "train" / "runs").iterdir())
    results = json.loads((run / "results.json").read_text())
    assert "test/AP" in results


def test_ddp_cpu_nonfinite_loss_on_one_rank_skips_the_step_on_all(tmp_path, data_dir):
    """A NaN batch on rank 1 only: both ranks skip the same optimiser step and the run goes on (returning None
    from training_step, as before, made Lightning stop the run under DDP; a rank-local skip would hang)."""
    import torch

    out = run_cli(["experiment=supervised_toy", "trainer=ddp_cpu", "+callbacks.poison._target_=helpers.poison.PoisonBatches",
                   "+callbacks.poison.batches=[1]", "+callbacks.poison.ranks=[1]"], tmp_path, data_dir)
    (run,) = list((tmp_path / "train" / "runs").iterdir())
    assert json.loads((run / "run.json").read_text())["nonfinite_steps"] == 1
    assert (out.stdout + out.stderr).count("non-finite training loss or gradients in 1 step(s)") == 2  # each rank
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 3 and ckpt["nonfinite_steps"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    assert "test/AP" in json.loads((run / "results.json").read_text())


def test_ddp_cpu_multirun_one_result_per_job(tmp_path, data_dir):
    out = run_cli(["-m", "experiment=supervised_toy", "trainer=ddp_cpu", "seed=1,2"], tmp_path, data_dir)
    (sweep,) = list((tmp_path / "train" / "multiruns").iterdir())
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert len(jobs) == 2, out.stdout[-2000:]
    for job in jobs:
        assert (job / "results.json").is_file()
    # the children did not start sweeps of their own
    assert len(list((tmp_path / "train" / "multiruns").iterdir())) == 1


def test_wandb_offline_run_holds_images(tmp_path, data_dir):
    run_cli(["experiment=supervised_toy", "logger=wandb", "callbacks.keypoint_vis.every_n_epochs=1"], tmp_path,
            data_dir)
    (run,) = list((tmp_path / "train" / "runs").iterdir())
    run_id = (run / "wandb_run_id.txt").read_text().strip()
    (wandb_run,) = list((run / "wandb").glob(f"offline-run-*-{run_id}"))
    media = list(wandb_run.rglob("*.png"))
    assert media, f"no images logged under {wandb_run}"
