"""``python -m clamp_pl.tools.outliers``: a DeepLabCut project's video checked, the frames picked written back as
machine labels (never a labelled one, human labels byte for byte), a second run appending other frames; videos
without a project give COCO proposals; a signal the model cannot give is an error that says why."""

from __future__ import annotations

import csv

import pandas as pd
import pytest
from helpers.projects import make_dlc_project
from helpers.qc import make_model_file, make_video

from clamp_pl.tools.outliers import outliers


@pytest.fixture
def model(tmp_path):
    return make_model_file(tmp_path / "mouse.pt")


def test_outliers_into_a_dlc_project(make_cfg, model, tmp_path):
    root = tmp_path / "openfield"
    make_dlc_project(root, {"walk": 4})  # frames 0-3 of walk are labelled
    human = (root / "labeled-data" / "walk" / "CollectedData_me.csv").read_bytes()
    video = make_video(tmp_path / "walk.avi", n=14)
    out = tmp_path / "qc"
    cfg = make_cfg(f"ckpt_path={model}", f"input={video}", f"project={root}", "n=3", f"output_dir={out}",
                   "batch_size=5", "device=cpu", "candidates=2", config_name="outliers", fast=False)
    report = outliers(cfg)
    picked = report["videos"]["walk"]["picked"]
    assert len(picked) == 3 and not set(picked) & {0, 1, 2, 3}
    rows = list(csv.DictReader(open(out / "walk_qc.csv")))
    assert [int(r["frame"]) for r in rows] == list(range(14))
    assert [int(r["frame"]) for r in rows if r["picked"] == "1"] == sorted(picked)
    assert [int(r["frame"]) for r in rows if r["labelled"] == "1"] == [0, 1, 2, 3]
    assert (out / "walk_qc.png").is_file()
    table = pd.read_csv(root / "labeled-data" / "walk" / "machinelabels-iter0.csv", header=[0, 1, 2], index_col=0)
    assert sorted(table.index) == [f"labeled-data/walk/img{f:03d}.png" for f in sorted(picked)]
    # a second run proposes three other frames and appends them
    cfg = make_cfg(f"ckpt_path={model}", f"input={video}", f"project={root}", "n=3", f"output_dir={out}",
                   "device=cpu", "signal=flip", config_name="outliers", fast=False)
    second = outliers(cfg)["videos"]["walk"]["picked"]
    assert len(second) == 3 and not set(second) & (set(picked) | {0, 1, 2, 3})
    table = pd.read_csv(root / "labeled-data" / "walk" / "machinelabels-iter0.csv", header=[0, 1, 2], index_col=0)
    assert len(table) == 6
    assert (root / "labeled-data" / "walk" / "CollectedData_me.csv").read_bytes() == human


def test_outliers_without_a_project_write_coco(make_cfg, model, tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    make_video(folder / "a.avi", n=6)
    make_video(folder / "b.avi", n=5)
    cfg = make_cfg(f"ckpt_path=[{model},{model}]", f"input={folder}", "n=4", f"output_dir={tmp_path / 'qc'}",
                   "device=cpu", config_name="outliers", fast=False)
    report = outliers(cfg)
    assert sum(len(v["picked"]) for v in report["videos"].values()) == 4
    assert "ensemble" in report["signals"] and "pose" not in report["signals"]  # two runs; no prior in this model
    assert (tmp_path / "qc" / "proposals" / "proposals.json").is_file()
    cfg = make_cfg(f"ckpt_path={model}", f"input={folder / 'a.avi'}", "signal=pose", "device=cpu",
                   config_name="outliers", fast=False)
    with pytest.raises(ValueError, match="pose prior"):
        outliers(cfg)
