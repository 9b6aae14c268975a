"""Proposals written into the user's own project (clamp_pl.formats.proposals), read back by each tool's own
reader: pandas for DeepLabCut / lightning-pose tables, sleap_io for SLEAP, the COCO API for COCO. Human labels
stay byte for byte; a second run appends; a labelled frame is never proposed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.projects import BODYPARTS, make_dlc_project, make_lightning_pose_project, make_slp_project
from helpers.qc import make_video

from clamp_pl.formats.proposals import Proposal, detect_format, labelled_frames, write_proposals


def _proposals(video: Path, frames: list[int], seed: int = 0) -> list[Proposal]:
    rng = np.random.default_rng(seed)
    return [Proposal(video, f, rng.integers(0, 255, (48, 64, 3), dtype=np.uint8),
                     rng.uniform(0, 48, (4, 2)).round(3), rng.uniform(0, 1, 4).round(4)) for f in frames]


def _bytes(root: Path, pattern: str) -> dict[Path, bytes]:
    files = {p: p.read_bytes() for p in sorted(root.glob(pattern))}
    assert files
    return files


def test_dlc_machine_labels_append_and_leave_collected_data(tmp_path):
    root = tmp_path / "openfield"
    make_dlc_project(root, {"walk": 3, "other": 2})
    human = _bytes(root, "labeled-data/*/CollectedData_*")
    video = make_video(tmp_path / "walk.avi", n=12)
    assert detect_format(root) == "dlc"
    assert labelled_frames(root) == {"walk": {0, 1, 2}, "other": {0, 1}}
    first = _proposals(video, [7, 4])
    out = write_proposals(root, first, BODYPARTS, scorer="clamp")
    folder = root / "labeled-data" / "walk"
    assert [p.name for p in out["frames"]] == ["img004.png", "img007.png"]  # the folder's 3-digit names
    assert all(p.is_file() for p in out["frames"])
    table = pd.read_csv(folder / "machinelabels-iter0.csv", header=[0, 1, 2], index_col=0)
    assert list(table.index) == ["labeled-data/walk/img004.png", "labeled-data/walk/img007.png"]
    assert list(table.columns.get_level_values(1)[::3]) == BODYPARTS
    np.testing.assert_allclose(table.xs("x", axis=1, level=2).loc["labeled-data/walk/img007.png"],
                               first[0].keypoints[:, 0], atol=1e-3)
    np.testing.assert_allclose(table.xs("likelihood", axis=1, level=2).iloc[0], first[1].scores, atol=1e-4)
    h5 = pd.read_hdf(folder / "machinelabels-iter0.h5")
    np.testing.assert_allclose(h5.to_numpy(), table.to_numpy(), atol=1e-3)
    assert labelled_frames(root)["walk"] == {0, 1, 2, 4, 7}
    # a second run appends and keeps the first run's rows as they were
    write_proposals(root, _proposals(video, [10], seed=1), BODYPARTS)
    again = pd.read_csv(folder / "machinelabels-iter0.csv", header=[0, 1, 2], index_col=0)
    assert list(again.index)[-1] == "labeled-data/walk/img010.png"
    pd.testing.assert_frame_equal(again.iloc[:2], table)
    assert _bytes(root, "labeled-data/*/CollectedData_*") == human
    with pytest.raises(ValueError, match="frame 1 of walk.avi is already labelled"):
        write_proposals(root, _proposals(video, [1]), BODYPARTS)
    with pytest.raises(ValueError, match="frame 7 of walk.avi is already labelled or proposed"):
        write_proposals(root, _proposals(video, [7]), BODYPARTS)


def test_dlc_new_video_gets_its_folder_and_the_config_iteration(tmp_path):
    root = tmp_path / "openfield"
    make_dlc_project(root, {"walk": 2})
    (root / "config.yaml").write_text((root / "config.yaml").read_text() + "iteration: 2\n")
    video = make_video(tmp_path / "new.avi", n=150)
    out = write_proposals(root, _proposals(video, [5]), BODYPARTS)
    assert out["frames"][0] == root / "labeled-data" / "new" / "img005.png"  # 150 frames: DeepLabCut's 3 digits
    assert (root / "labeled-data" / "new" / "machinelabels-iter2.h5").is_file()


def test_lightning_pose_proposals_csv(tmp_path):
    collected = make_lightning_pose_project(tmp_path / "lp", {"walk": 3})
    human = collected.read_bytes()
    video = make_video(tmp_path / "walk.avi", n=12)
    assert detect_format(collected) == detect_format(tmp_path / "lp") == "lightning-pose"
    props = _proposals(video, [5, 9])
    write_proposals(collected, props, BODYPARTS)
    assert (tmp_path / "lp" / "labeled-data" / "walk" / "img00000005.png").is_file()
    table = pd.read_csv(tmp_path / "lp" / "proposals.csv", header=[0, 1, 2], index_col=0)
    assert list(table.index) == ["labeled-data/walk/img00000005.png", "labeled-data/walk/img00000009.png"]
    np.testing.assert_allclose(table.xs("y", axis=1, level=2).iloc[1], props[1].keypoints[:, 1], atol=1e-3)
    write_proposals(collected, _proposals(video, [11], seed=2), BODYPARTS)
    assert len(pd.read_csv(tmp_path / "lp" / "proposals.csv", header=[0, 1, 2], index_col=0)) == 3
    assert labelled_frames(collected)["walk"] == {0, 1, 2, 5, 9, 11}
    assert collected.read_bytes() == human


def test_sleap_proposals_file_beside_the_project(tmp_path):
    sio = pytest.importorskip("sleap_io")
    slp = make_slp_project(tmp_path / "sleap", {"walk": 2})
    human = slp.read_bytes()
    video = make_video(tmp_path / "sleap" / "cam.avi", n=12)
    props = _proposals(video, [3, 8])
    out = write_proposals(slp, props, BODYPARTS)
    path = out["labels"][0]
    assert path == slp.with_name("project.proposals.slp")
    got, orig = sio.load_slp(str(path)), sio.load_slp(str(slp))
    user = [(lf.frame_idx, inst.numpy()) for lf in got.labeled_frames for inst in lf.user_instances]
    theirs = [(lf.frame_idx, inst.numpy()) for lf in orig.labeled_frames for inst in lf.user_instances]
    assert len(user) == len(theirs) == 4
    for (fa, a), (fb, b) in zip(user, theirs):
        assert fa == fb and np.array_equal(a, b, equal_nan=True)
    new = {lf.frame_idx: lf for lf in got.labeled_frames if Path(str(lf.video.filename)).name == "cam.avi"}
    assert sorted(new) == [3, 8]
    pred = new[8].predicted_instances[0]
    np.testing.assert_allclose(pred.numpy(), props[1].keypoints, atol=1e-4)  # skeleton order = BODYPARTS
    assert labelled_frames(slp)["cam"] == {3, 8}
    write_proposals(slp, _proposals(video, [10], seed=3), BODYPARTS)
    again = sio.load_slp(str(path))
    assert sorted(lf.frame_idx for lf in again.labeled_frames if lf.video.filename == str(video.resolve())) == [3, 8, 10]
    assert slp.read_bytes() == human


def test_coco_proposals_read_by_the_coco_api(tmp_path):
    coco_api = pytest.importorskip("xtcocotools.coco")
    video = make_video(tmp_path / "walk.avi", n=12)
    out_dir = tmp_path / "coco"
    out_dir.mkdir()
    props = _proposals(video, [2, 6])
    write_proposals(out_dir, props, BODYPARTS, fmt="coco", skeleton=[(0, 3)])
    write_proposals(out_dir, _proposals(video, [9], seed=4), BODYPARTS, fmt="coco")
    coco = coco_api.COCO(str(out_dir / "proposals.json"))
    assert sorted(coco.getImgIds()) == [1, 2, 3]
    img = coco.loadImgs(2)[0]
    assert (img["video"], img["frame_idx"]) == ("walk", 6) and (out_dir / "images" / img["file_name"]).is_file()
    ann = coco.loadAnns(coco.getAnnIds(imgIds=[2]))[0]
    np.testing.assert_allclose(np.reshape(ann["keypoints"], (4, 3))[:, :2], props[1].keypoints, atol=1e-3)
    assert coco.loadCats(1)[0]["skeleton"] == [[1, 4]]
    assert labelled_frames(out_dir, "coco") == {"walk": {2, 6, 9}}
