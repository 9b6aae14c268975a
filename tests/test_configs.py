"""Every experiment file composes (a glob: a new experiment is covered automatically); config mistakes give
errors that list the choices."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf

from clamp_pl.utils.config import config_dir, group_choices

EXPERIMENTS = sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml"))


def test_experiment_files_exist():
    for name in ["supervised_ap10k", "fewshot_ap10k", "zeroshot_ap10k", "supervised_animalpose",
                 "fewshot_animalpose", "zeroshot_animalpose", "supervised_toy", "fewshot_toy", "zeroshot_toy",
                 "demo"]:
        assert name in EXPERIMENTS


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_resolves(make_cfg, experiment):
    cfg = make_cfg(f"experiment={experiment}", fast=False)
    resolved = OmegaConf.to_container(cfg, resolve=False)
    assert resolved["experiment_name"] == experiment
    # every interpolation outside hydra's own node resolves
    for key in ("data", "model", "protocol", "trainer", "callbacks", "logger", "paths"):
        OmegaConf.to_container(cfg[key], resolve=True)
    assert cfg.model.net.image_size == cfg.data.input_size[0]


@pytest.mark.parametrize("group,bad", [("experiment", "no_such_experiment"), ("model", "clamp_vitb99"),
                                       ("data", "imagenet")])
def test_unknown_choice_lists_the_options(make_cfg, group, bad):
    with pytest.raises(MissingConfigException) as err:
        make_cfg(f"{group}={bad}", fast=False)
    message = str(err.value)
    assert bad in message
    for choice in group_choices(group)[:3]:
        assert choice in message


def test_cli_cfg_job_composes():
    """The entry point itself composes (`--cfg job` prints the job config and exits)."""
    out = subprocess.run([sys.executable, "-m", "clamp_pl.train", "experiment=fewshot_ap10k", "--cfg", "job"],
                         capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[1])
    assert out.returncode == 0, out.stderr[-2000:]
    cfg = OmegaConf.create(out.stdout)
    assert cfg.protocol.name == "fewshot" and cfg.model.net.clip_model == "ViT-B-16"


@pytest.mark.parametrize("override", ["hydra/launcher=slurm", "hydra/launcher=local_parallel",
                                      "hparams_search=optuna_fewshot"])
def test_launchers_and_search_space_compose(make_cfg, override):
    cfg = make_cfg("experiment=fewshot_toy", override, fast=False)
    if "slurm" in override:
        launcher = cfg.hydra.launcher
        assert "SlurmLauncher" in launcher._target_
        assert launcher.tasks_per_node == launcher.gpus_per_node  # one process per GPU: no DDP re-launch
        assert launcher.max_num_timeout > 0  # requeue on preemption
    elif "local_parallel" in override:
        assert "JoblibLauncher" in cfg.hydra.launcher._target_ and cfg.hydra.launcher.n_jobs == 2
    else:
        assert "OptunaSweeper" in cfg.hydra.sweeper._target_
        assert set(cfg.hydra.sweeper.params) >= {"model.optimizer.lr", "model.net.n_ctx"}
        assert cfg.optimized_metric == "val/AP"
