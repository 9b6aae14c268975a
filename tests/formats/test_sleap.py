"""SLEAP ``.slp`` -> COCO through sleap-io (an optional extra: these tests skip without it, except the one that
checks the message a user without it gets)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from clamp_pl.data.metainfo import meta_from_coco


def test_missing_extra_names_it(monkeypatch, tmp_path):
    from clamp_pl.formats.sleap import slp_to_coco

    monkeypatch.setitem(sys.modules, "sleap_io", None)  # import sleap_io -> ImportError
    with pytest.raises(ImportError, match=r'pip install -e "\.\[sleap\]"'):
        slp_to_coco(tmp_path / "labels.slp", tmp_path / "out")


def test_slp_project_to_coco(tmp_path):
    pytest.importorskip("sleap_io")
    from helpers.projects import BODYPARTS, make_slp_project

    from clamp_pl.formats.sleap import slp_to_coco

    slp = make_slp_project(tmp_path / "proj", {"arenaA": 6, "arenaB": 5})
    paths = slp_to_coco(slp, tmp_path / "out", val_fraction=0.2, test_fraction=0.2, category_name="mouse")
    record = json.loads(paths["split"].read_text())
    assert record["frames_per_video"] == {"00_arenaA": 6, "01_arenaB": 5}
    assert record["blocks"] == {"00_arenaA": {"test": [5, 6], "val": [4, 5]},
                                "01_arenaB": {"test": [4, 5], "val": [3, 4]}}
    test = json.loads(paths["test"].read_text())
    assert [(im["video"], im["frame_idx"]) for im in test["images"]] == [("00_arenaA", 5), ("01_arenaB", 4)]
    train = json.loads(paths["train"].read_text())
    cat = train["categories"][0]
    assert cat["keypoints"] == BODYPARTS and cat["name"] == "mouse"
    assert cat["skeleton"] == [[1, 2], [1, 4]] and cat["symmetries"] == [["leftear", "rightear"]]
    # two user instances per frame; the predicted one on frame 0 is not a label
    assert len(train["annotations"]) == 2 * len(train["images"])
    second = np.array(train["annotations"][1]["keypoints"]).reshape(4, 3)
    assert second[3].tolist() == [0, 0, 0] and np.all(second[:3, 2] == 2)
    im = train["images"][0]
    assert (paths["images"] / im["file_name"]).is_file() and (im["width"], im["height"]) == (64, 48)
    meta = meta_from_coco(paths["train"])
    assert meta.flip_pairs == ((1, 2),) and meta.provenance["flip_pairs"].startswith("declared by the file")
    assert meta.prompts == ("snout", "left ear", "right ear", "tail base")


def test_sleap_datamodule_meta_and_root(tmp_path):
    pytest.importorskip("sleap_io")
    from helpers.projects import make_slp_project

    from clamp_pl.data.datamodule import SLEAPDataModule

    slp = make_slp_project(tmp_path / "lab", {"arena": 6})
    dm = SLEAPDataModule(project=str(slp), converted_dir=str(tmp_path / "converted"), val_fraction=0.2,
                         test_fraction=0.2, report_dir=str(tmp_path / "run"))
    meta = dm.ensure_meta()
    assert dm.root == tmp_path / "converted" / "lab-project"
    assert meta.keypoint_names == ("snout", "leftear", "rightear", "tailbase") and meta.flip_pairs == ((1, 2),)
    assert {s: len(json.loads(p.read_text())["images"]) for s, (p, _) in dm.files().items()} == \
        {"train": 4, "val": 1, "test": 1}
    assert "| 1 | leftear | left ear | rightear |" in (tmp_path / "run" / "keypoints.md").read_text()


def test_blocks_naming_an_unknown_video_are_an_error(tmp_path):
    """As for DeepLabCut: a typo in a video name would otherwise hold nothing out of training."""
    pytest.importorskip("sleap_io")
    from helpers.projects import make_slp_project

    from clamp_pl.formats.sleap import slp_to_coco

    slp = make_slp_project(tmp_path / "proj", {"arenaA": 4})
    with pytest.raises(ValueError, match=r"blocks name videos \['arenaA'\] .*\(videos: \['00_arenaA'\]\)"):
        slp_to_coco(slp, tmp_path / "out", blocks={"arenaA": {"test": (3, 4)}})
