"""Malformed SLEAP projects, each made from the real openfield frames and labels that ship with the package (an
image-sequence video of the JPEGs, one user-labelled mouse per frame): an unreadable ``.slp`` is an error naming
the file and what sleap-io reported; an instance whose every node is missing is skipped and counted; a frame
whose image is gone is an error naming it, or a listed skip with ``on_error="skip"``."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

from clamp_pl.core.errors import DataError

sio = pytest.importorskip("sleap_io")

from helpers.projects import openfield_slp_project  # noqa: E402  (needs sleap-io)

from clamp_pl.formats.sleap import slp_to_coco  # noqa: E402

N_FRAMES = 12


@pytest.fixture
def slp(tmp_path):
    return openfield_slp_project(tmp_path / "proj", N_FRAMES)


def _unreadable(slp, message, tmp_path):
    with pytest.raises(DataError, match=re.escape(str(slp)) + rf": sleap-io {sio.__version__} cannot read this "
                                        rf"\.slp file \({message}"):
        slp_to_coco(slp, tmp_path / "out")


def test_truncated_slp(slp, tmp_path):
    slp.write_bytes(slp.read_bytes()[: slp.stat().st_size // 2])
    _unreadable(slp, r"\w+Error: .*truncated file", tmp_path)


@pytest.mark.parametrize("content", [b"", b"labels,x,y\n1,2,3\n"], ids=["empty", "text"])
def test_not_an_hdf5_file(tmp_path, content):
    slp = tmp_path / "labels.slp"
    slp.write_bytes(content)
    _unreadable(slp, r"\w+Error: .*file signature not found", tmp_path)


def test_format_newer_than_sleap_io_reads(slp, tmp_path):
    import h5py

    with h5py.File(slp, "r+") as f:
        f["metadata"].attrs["format_id"] = 3.0
    _unreadable(slp, r"ValueError: .*uses SLP format 3, which is newer than this version of sleap-io", tmp_path)


def test_hdf5_that_is_not_a_sleap_file(tmp_path):
    import h5py

    slp = tmp_path / "other.slp"
    with h5py.File(slp, "w") as f:
        f["data"] = np.zeros(3)
    _unreadable(slp, r"\w+Error: ", tmp_path)


def test_instance_with_every_node_missing_is_skipped_and_counted(slp, tmp_path, caplog):
    labels = sio.load_slp(str(slp))
    skeleton = labels.skeletons[0]
    for idx in (3, 7):
        labels.labeled_frames[idx].instances.append(sio.Instance.from_numpy(np.full((4, 2), np.nan), skeleton))
    sio.save_slp(labels, str(slp))
    paths = slp_to_coco(slp, tmp_path / "out", val_fraction=0.2, test_fraction=0.2)
    record = json.loads(paths["split"].read_text())
    assert [(s["record"], s["column"], s["reason"]) for s in record["skipped"]] == [
        ("frame 3 of video 00_m4s1", "instance 1", "every node is missing"),
        ("frame 7 of video 00_m4s1", "instance 1", "every node is missing")]
    assert sum(c["frames"] for c in record["counts"].values()) == N_FRAMES  # the frames stay, with their mouse
    assert sum(c["instances"] for c in record["counts"].values()) == N_FRAMES
    assert any("skipped 2 records" in r.getMessage() for r in caplog.records)


def test_partly_labelled_instance_is_harmless(slp, tmp_path):
    labels = sio.load_slp(str(slp))
    points = labels.labeled_frames[0].instances[0].numpy()
    points[1:] = np.nan  # only the snout placed
    labels.labeled_frames[0].instances[0] = sio.Instance.from_numpy(points, labels.skeletons[0])
    sio.save_slp(labels, str(slp))
    paths = slp_to_coco(slp, tmp_path / "out", val_fraction=0.2, test_fraction=0.2)
    train = json.loads(paths["train"].read_text())
    first = next(a for a in train["annotations"] if a["image_id"] == 1)
    assert first["num_keypoints"] == 1 and first["keypoints"][3:] == [0, 0, 0] * 3
    assert "skipped" not in json.loads(paths["split"].read_text())


def test_missing_frame_image_names_the_frame(slp, tmp_path):
    (slp.parent / "m4s1" / "img0004.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(slp)) + r": frame 4 of video 00_m4s1 \(.*\) cannot "
                                                "be read"):
        slp_to_coco(slp, tmp_path / "out")
    paths = slp_to_coco(slp, tmp_path / "skip", on_error="skip", val_fraction=0.2, test_fraction=0.2)
    record = json.loads(paths["split"].read_text())
    assert [s["record"] for s in record["skipped"]] == ["frame 4 of video 00_m4s1"]
    assert sum(c["frames"] for c in record["counts"].values()) == N_FRAMES - 1


def test_only_predictions_is_an_error(slp, tmp_path):
    labels = sio.load_slp(str(slp))
    skeleton = labels.skeletons[0]
    for lf in labels.labeled_frames:
        lf.instances = [sio.PredictedInstance.from_numpy(lf.instances[0].numpy(), skeleton=skeleton,
                                                         point_scores=np.ones(4), score=1.0)]
    sio.save_slp(labels, str(slp))
    with pytest.raises(ValueError, match=re.escape(str(slp)) + ": no user-labelled instances"):
        slp_to_coco(slp, tmp_path / "out")


def test_missing_slp_and_a_folder_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.slp: no such SLEAP labels file"):
        slp_to_coco(tmp_path / "nowhere.slp", tmp_path / "out")
    folder = tmp_path / "folder.slp"
    folder.mkdir()
    with pytest.raises(FileNotFoundError, match="folder.slp: no such SLEAP labels file"):
        slp_to_coco(folder, tmp_path / "out")


def test_the_datamodule_reports_the_file(slp, tmp_path):
    from clamp_pl.data.datamodule import SLEAPDataModule

    shutil.copyfile(slp, tmp_path / "cut.slp")
    cut = tmp_path / "cut.slp"
    cut.write_bytes(cut.read_bytes()[:2048])
    dm = SLEAPDataModule(project=str(cut), converted_dir=str(tmp_path / "converted"))
    with pytest.raises(DataError, match=re.escape(str(cut)) + ": sleap-io"):
        dm.prepare_data()
