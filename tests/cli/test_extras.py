"""``conf/extras``: every documented switch is read (ignore_warnings by the task wrapper of train and eval), and the
sweep objective of ``clamp_pl.train`` says what is missing instead of returning None."""

from __future__ import annotations

import math
import warnings

import pytest
from conftest import REPO
from omegaconf import OmegaConf

from clamp_pl.cli.run import task_wrapper
from clamp_pl.train import objective_value


def test_every_extras_switch_is_read_by_the_code():
    keys = set(OmegaConf.load(REPO / "conf" / "extras" / "default.yaml"))
    source = "\n".join(p.read_text() for p in (REPO / "clamp_pl").rglob("*.py"))
    assert keys == {"print_config", "ignore_warnings"}
    for key in keys:
        assert f'get("{key}")' in source, key


@pytest.mark.parametrize("ignore", [True, False])
def test_ignore_warnings_hides_warnings_only_during_the_task(ignore, tmp_path):
    cfg = OmegaConf.create({"extras": {"ignore_warnings": ignore}, "paths": {"output_dir": str(tmp_path)}})

    @task_wrapper
    def task(cfg):
        warnings.warn("a hint nobody needs", UserWarning, stacklevel=1)
        return "done"

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert task(cfg) == "done"
        assert len(seen) == (0 if ignore else 1)
        warnings.warn("after the task", UserWarning, stacklevel=1)  # the filter did not outlive the task
        assert [str(w.message) for w in seen][-1] == "after the task"


def test_objective_value():
    metrics = {"val/AP": 0.25, "test/AP": 0.5, "train/loss": float("nan")}
    assert objective_value(metrics, "val/AP", multirun=True) == 0.25
    assert math.isnan(objective_value(metrics, "train/loss", multirun=True))  # Optuna marks the trial failed
    assert objective_value(metrics, None, multirun=True) is None
    assert objective_value(metrics, "val/AR", multirun=False) is None  # a single run: nobody reads it
    with pytest.raises(ValueError, match=r"optimized_metric='val/AR' was not logged.*'test/AP', 'train/loss', "
                                         r"'val/AP'"):
        objective_value(metrics, "val/AR", multirun=True)
