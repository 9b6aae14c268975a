"""Bring-your-own data through the train entry point, one tiny epoch each: a COCO file with a 0-based skeleton and
compact side markers (DeepPoseKit fly naming), a two-video DeepLabCut project and a multi-animal one; and the
inspect_data entry that shows the derived keypoint table before training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.projects import TINY_OWN_DATA

from clamp_pl.train import train


def _compose(overrides, tmp_path: Path):
    from conftest import compose_cfg

    return compose_cfg("train", [*TINY_OWN_DATA, *overrides], tmp_path / "run", tmp_path / "data")


def _check_run(metrics, objs, run_dir: Path, n_keypoints: int) -> dict:
    assert objs["trainer"].state.finished and "test/AP" in metrics
    preds = json.loads((run_dir / "predictions" / "test_predictions.json").read_text())
    assert preds and len(preds[0]["keypoints"]) == 3 * n_keypoints
    table = json.loads((run_dir / "keypoints.json").read_text())  # the derived choice is written with the run
    assert len(table["keypoints"]) == n_keypoints
    return table


def test_train_coco_zero_based_compact_names(test_data, tmp_path):
    wild = test_data / "wild"
    cfg = _compose(["data=coco", f"data.train_ann={wild / 'fly.json'}", f"data.val_ann={wild / 'fly.json'}",
                    f"data.img_dir={wild / 'images'}"], tmp_path)
    metrics, objs = train(cfg)
    table = _check_run(metrics, objs, tmp_path / "run", 32)
    assert table["provenance"]["skeleton"] == "0-based"
    rows = {r["name"]: r for r in table["keypoints"]}
    assert rows["forelegR1"]["prompt"] == "right fore leg 1" and rows["forelegR1"]["flip"] == "forelegL1"
    meta = objs["datamodule"].meta
    assert len(meta.flip_pairs) == 14 and meta.skeleton[0] == (1, 0)


def test_train_dlc_two_videos(tmp_path):
    from helpers.projects import make_dlc_project

    make_dlc_project(tmp_path / "openfield", {"videoA": 10, "videoB": 8})
    cfg = _compose(["data=dlc", f"data.project={tmp_path / 'openfield'}", "data.val_fraction=0.2",
                    "data.test_fraction=0.2"], tmp_path)
    metrics, objs = train(cfg)
    _check_run(metrics, objs, tmp_path / "run", 4)
    dm = objs["datamodule"]
    assert dm.root == tmp_path / "data" / "dlc" / "openfield"  # data.root per project name
    record = json.loads((dm.root / "split.json").read_text())
    assert record["counts"]["test"]["videos"] == ["videoA", "videoB"]
    assert {s: len(dm.instances[s]) for s in ("train", "val", "test")} == {"train": 10, "val": 4, "test": 4}


def test_train_dlc_multi_animal(tmp_path):
    from helpers.projects import make_dlc_project

    make_dlc_project(tmp_path / "cage", {"cage1": 8}, individuals=["mouse1", "mouse2"], single_bodyparts=["led"])
    cfg = _compose(["data=dlc", f"data.project={tmp_path / 'cage'}", "data.val_fraction=0.2",
                    "data.test_fraction=0.2", "data.category_name=mouse"], tmp_path)
    metrics, objs = train(cfg)
    _check_run(metrics, objs, tmp_path / "run", 4)
    dm = objs["datamodule"]
    # frames 6-7 test, 4-5 val, 0-3 train; two animals per frame except frame 1 (one out of view)
    assert {s: len(dm.instances[s]) for s in ("train", "val", "test")} == {"train": 7, "val": 4, "test": 4}
    assert dm.meta.flip_pairs == ((1, 2),)


def test_inspect_data_prints_and_saves_the_table(test_data, tmp_path, capsys):
    from conftest import compose_cfg

    from clamp_pl.tools.inspect_data import inspect_data

    wild = test_data / "wild"
    cfg = compose_cfg("inspect_data", ["data=coco", f"data.train_ann={wild / 'horse10.json'}",
                                       f"data.val_ann={wild / 'horse10.json'}", f"data.img_dir={wild / 'images'}"],
                      tmp_path / "run", tmp_path / "data")
    result = inspect_data(cfg)
    out = capsys.readouterr().out
    assert "| 3 | Nearfrontfetlock | near front fetlock | - | upper | 0.072 |" in out
    assert "train: 8 instances of 8 annotations" in out
    assert (tmp_path / "run" / "keypoints.md").read_text().strip() == result["table"]
    saved = json.loads((tmp_path / "run" / "keypoints.json").read_text())
    assert saved["provenance"]["flip_pairs"] == "derived from left/right in the names"
    assert all(r["flip"] is None for r in saved["keypoints"])  # Horse-10: no pairs (near/off)


def test_own_data_configs_compose():
    """conf/inspect_data.yaml composes with every own-data config."""
    from clamp_pl.cli.config import compose_config

    for data in ("coco", "dlc", "sleap", "lightning_pose"):
        cfg = compose_config("inspect_data", [f"data={data}"], Path("/tmp/unused"))
        assert cfg.data._target_.startswith("clamp_pl.data.datamodule.")


def test_train_sleap(tmp_path):
    pytest.importorskip("sleap_io")
    from helpers.projects import make_slp_project

    slp = make_slp_project(tmp_path / "lab", {"arenaA": 6, "arenaB": 6})
    cfg = _compose(["data=sleap", f"data.project={slp}", "data.val_fraction=0.2", "data.test_fraction=0.2"],
                   tmp_path)
    metrics, objs = train(cfg)
    table = _check_run(metrics, objs, tmp_path / "run", 4)
    assert table["provenance"]["flip_pairs"] == "declared by the file (category 'symmetries')"
    assert objs["datamodule"].root == tmp_path / "data" / "sleap" / "lab-project"
