"""The labelling loop end to end: train on a project, propose the frames worth labelling from a video
(``clamp_pl.tools.outliers``), "correct" the proposals by script as a user would in their tool, and retrain with
``init_from=<run>`` on the same project: the conversion notices the changed labels and trains on the new frames.
DeepLabCut, lightning-pose and SLEAP projects."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.projects import (
    BODYPARTS,
    SIZE,
    TINY_OWN_DATA,
    make_dlc_project,
    make_lightning_pose_project,
    make_slp_project,
)
from helpers.qc import make_video

from clamp_pl.tools.outliers import outliers
from clamp_pl.train import train

TINY = [*TINY_OWN_DATA, "data.val_fraction=0.2", "data.test_fraction=0.2"]
N_PROPOSED = 3


def _train(overrides: list[str], run_dir: Path, data_dir: Path):
    from conftest import compose_cfg
    from hydra.core.global_hydra import GlobalHydra

    cfg = compose_cfg("train", [*TINY, *overrides], run_dir, data_dir)
    try:
        return train(cfg)
    finally:
        GlobalHydra.instance().clear()


def _propose(run: Path, video: Path, project: Path, out: Path, data_dir: Path) -> list[int]:
    from conftest import compose_cfg
    from hydra.core.global_hydra import GlobalHydra

    cfg = compose_cfg("outliers", [f"ckpt_path={run}", f"input={video}", f"project={project}", f"n={N_PROPOSED}",
                                   f"output_dir={out}", "device=cpu"], out, data_dir)
    try:
        return outliers(cfg)["videos"][video.stem]["picked"]
    finally:
        GlobalHydra.instance().clear()


def _train_files(dm) -> list[str]:
    return [im["file_name"] for split in ("train", "val", "test")
            for im in json.loads(dm.files()[split][0].read_text())["images"]]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> tuple[Path, Path]:
    """A run trained on a ten-frame DeepLabCut project (six training frames), and the data dir it used."""
    base = tmp_path_factory.mktemp("first")
    make_dlc_project(base / "seed", {"walk": 10})
    _train(["data=dlc", f"data.project={base / 'seed'}"], base / "run", base / "data")
    return base / "run", base / "data"


def _corrected(xy: np.ndarray) -> np.ndarray:
    """A user's correction of proposed keypoints ``[..., 2]``: moved by a pixel, and into the 64 x 48 frame
    (an untrained model may put them outside)."""
    return np.clip(np.asarray(xy, dtype=np.float64) + 1.0, 0.0, [SIZE[0] - 1, SIZE[1] - 1])


def _corrected_rows(table: pd.DataFrame) -> list[str]:
    """Machine-label rows as label-file lines (x, y per body part; the likelihoods dropped), corrected."""
    lines = []
    for index, row in table.iterrows():
        xy = _corrected(np.array([[row[(bp, "x")], row[(bp, "y")]] for bp in BODYPARTS]))
        values = [f"{v:.2f}" for v in xy.ravel()]
        lines.append(",".join([str(index), *values]))
    return lines


def test_pose_prior_recorded_by_training(first_run):
    run, _ = first_run
    spec = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)[
        "hyper_parameters"]["spec"]
    prior = spec["pose_prior"]
    assert prior["method"] == "procrustes_pca" and prior["n_train"] == 6 and len(prior["mean"]) == 4


def test_refine_dlc(first_run, tmp_path):
    run, _ = first_run
    root = tmp_path / "openfield"
    make_dlc_project(root, {"walk": 10})
    labels = root / "labeled-data" / "walk" / "CollectedData_me.csv"
    video = make_video(tmp_path / "walk.avi", n=20)
    data_dir = tmp_path / "data"
    _, objs = _train(["data=dlc", f"data.project={root}"], tmp_path / "before", data_dir)
    stamp = objs["datamodule"].root / "conversion.json"
    before = stamp.read_text()
    picked = _propose(run, video, root, tmp_path / "qc", data_dir)
    assert len(picked) == N_PROPOSED and min(picked) >= 10
    machine = pd.read_csv(root / "labeled-data" / "walk" / "machinelabels-iter0.csv", header=[0, 1, 2], index_col=0)
    machine.columns = machine.columns.droplevel(0)
    labels.write_text(labels.read_text() + "\n".join(_corrected_rows(machine)) + "\n")  # the user's correction
    metrics, objs = _train(["data=dlc", f"data.project={root}", f"init_from={run}"], tmp_path / "after", data_dir)
    assert "test/AP" in metrics
    assert stamp.read_text() != before  # the changed label file was converted again
    files = _train_files(objs["datamodule"])
    assert len(files) == 10 + N_PROPOSED
    assert {f"walk/img{f:03d}.png" for f in picked} <= set(files)


def test_refine_lightning_pose(first_run, tmp_path):
    run, _ = first_run
    collected = make_lightning_pose_project(tmp_path / "lp", {"walk": 10})
    video = make_video(tmp_path / "walk.avi", n=20)
    picked = _propose(run, video, collected, tmp_path / "qc", tmp_path / "data")
    machine = pd.read_csv(tmp_path / "lp" / "proposals.csv", header=[0, 1, 2], index_col=0)
    machine.columns = machine.columns.droplevel(0)
    collected.write_text(collected.read_text() + "\n".join(_corrected_rows(machine)) + "\n")
    _, objs = _train(["data=lightning_pose", f"data.project={collected}", f"init_from={run}"], tmp_path / "after",
                     tmp_path / "data")
    files = _train_files(objs["datamodule"])
    assert {f"walk/img{f:08d}.png" for f in picked} <= set(files) and len(files) == 10 + N_PROPOSED


def test_refine_sleap(first_run, tmp_path):
    sio = pytest.importorskip("sleap_io")
    run, _ = first_run
    slp = make_slp_project(tmp_path / "sleap", {"walk": 5})
    video = make_video(tmp_path / "sleap" / "cam.avi", n=20)
    picked = _propose(run, video, slp, tmp_path / "qc", tmp_path / "data")
    proposals = slp.with_name("project.proposals.slp")
    labels = sio.load_slp(str(proposals))
    skeleton = labels.skeletons[0]
    for lf in labels.labeled_frames:  # the user accepts each proposal, moved by a pixel
        if lf.video.filename == str(video.resolve()):
            lf.instances = [sio.Instance.from_numpy(_corrected(p.numpy()), skeleton) for p in lf.predicted_instances]
    sio.save_slp(labels, str(proposals), verbose=False)
    _, objs = _train(["data=sleap", f"data.project={proposals}", f"init_from={run}"], tmp_path / "after",
                     tmp_path / "data")
    files = _train_files(objs["datamodule"])
    assert len(files) == 5 + N_PROPOSED  # the project's own frames and the corrected ones
    assert sorted(name for name in files if "cam" in name) == sorted(f"01_cam/{f:06d}.png" for f in picked)
