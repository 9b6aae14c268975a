"""DeepLabCut import: CSV parsing (single/multi-animal, 1/3 index columns), COCO conversion of the 116 real
embedded openfield frames, per-video held-out blocks or videos, multi-animal projects, lightning-pose CSVs."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from helpers.projects import BODYPARTS as FIXTURE_BODYPARTS
from helpers.projects import make_dlc_project, make_lightning_pose_project
from xtcocotools.coco import COCO

from clamp_pl.core.geometry import keypoint_box
from clamp_pl.data.metainfo import meta_from_coco
from clamp_pl.formats import dlc as dlc_module
from clamp_pl.formats.dlc import (
    RESOURCE_DIR,
    dlc_to_coco,
    ensure_mouse_openfield,
    read_dlc_csv,
    read_dlc_labels,
    split_frames,
)

EMBEDDED_CSV = RESOURCE_DIR / "labeled-data" / "m4s1" / "CollectedData_Pranav.csv"
BODYPARTS = ["snout", "leftear", "rightear", "tailbase"]


def test_read_embedded_csv():
    frames, bodyparts, coords = read_dlc_csv(EMBEDDED_CSV)
    assert bodyparts == BODYPARTS
    assert len(frames) == 116 and frames[0] == "labeled-data/m4s1/img0000.jpg"
    assert frames == sorted(frames)
    assert coords.shape == (116, 4, 2) and not np.isnan(coords).any()
    assert np.all((coords >= 0) & (coords <= [319, 239]))
    # Half of the original labels (pixel-centre convention): 0.5 * 21.521 - 0.25 for img0000's snout x.
    assert coords[0, 0, 0] == pytest.approx(10.5105)


def test_read_variants(tmp_path):
    """Empty cells are unlabelled; DLC >= 2.3 three-column frame index; multi-animal header."""
    single = tmp_path / "CollectedData_a.csv"
    single.write_text(
        "scorer,,,me,me,me,me\n"
        "bodyparts,,,nose,nose,tail,tail\n"
        "coords,,,x,y,x,y\n"
        "labeled-data,v1,img2.png,1,2,,\n"
        "labeled-data,v1,img1.png,3,4,5,6\n"
    )
    frames, bodyparts, coords = read_dlc_csv(single)
    assert frames == ["labeled-data/v1/img1.png", "labeled-data/v1/img2.png"] and bodyparts == ["nose", "tail"]
    assert np.isnan(coords[1, 1]).all() and coords[1, 0].tolist() == [1, 2] and coords[0, 1].tolist() == [5, 6]

    multi = tmp_path / "CollectedData_b.csv"
    multi.write_text(
        "scorer,me,me,me,me,me,me\n"
        "individuals,m1,m1,m2,m2,single,single\n"
        "bodyparts,nose,nose,nose,nose,led,led\n"
        "coords,x,y,x,y,x,y\n"
        "labeled-data/v/img0.png,1,2,3,4,9,9\n"
    )
    labels = read_dlc_labels(multi)
    assert labels.individuals == ["m1", "m2"] and labels.bodyparts == ["nose"]  # maDLC "single" dropped
    assert labels.coords.shape == (1, 2, 1, 2) and labels.coords[0, 1, 0].tolist() == [3, 4]
    with pytest.raises(ValueError, match="multi-animal"):
        read_dlc_csv(multi)
    bad = tmp_path / "CollectedData_c.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="CollectedData_c.csv"):
        read_dlc_csv(bad)


def test_keypoint_box_margin_and_clip():
    xy = np.array([[10.0, 20.0], [50.0, 30.0], [np.nan, np.nan]])
    assert keypoint_box(xy, margin=0.25, clip_to=(100, 100)).tolist() == [0.0, 10.0, 60.0, 30.0]  # pad 10, clipped at x=0
    assert keypoint_box(np.array([[5.0, 5.0]]), margin=0.25, min_margin=4, clip_to=(100, 100)).tolist() == [1.0, 1.0, 8.0, 8.0]
    assert keypoint_box(np.full((2, 2), np.nan), clip_to=(100, 100)) is None


def test_mouse_openfield_conversion(tmp_path, monkeypatch):
    paths = ensure_mouse_openfield(tmp_path)
    frames, _, coords = read_dlc_csv(EMBEDDED_CSV)
    seen = {}
    for split, block in (("train", range(0, 90)), ("val", range(90, 100)), ("test", range(100, 116))):
        coco = COCO(str(paths[split]))
        assert [c["keypoints"] for c in coco.cats.values()] == [BODYPARTS]
        names = sorted(img["file_name"] for img in coco.imgs.values())
        # A contiguous block of the video: exactly these frame indices.
        assert names == [f"m4s1/img{i:04d}.jpg" for i in block]
        assert len(coco.anns) == len(block)
        for ann in coco.anns.values():
            img = coco.imgs[ann["image_id"]]
            assert (img["width"], img["height"]) == (320, 240)
            assert (paths["images"] / img["file_name"]).is_file()
            k = np.array(ann["keypoints"], float).reshape(4, 3)
            assert ann["num_keypoints"] == 4 and np.all(k[:, 2] == 2)
            i = int(img["file_name"][-8:-4])
            assert np.allclose(k[:, :2], coords[i], atol=1e-3)
            x, y, w, h = ann["bbox"]
            assert x >= 0 and y >= 0 and x + w <= 320 and y + h <= 240
            assert np.all((k[:, 0] > x) & (k[:, 0] < x + w) & (k[:, 1] > y) & (k[:, 1] < y + h))
            assert ann["area"] == pytest.approx(w * h, abs=0.01)
            seen[ann["id"]] = split
    assert len(seen) == 116
    meta = meta_from_coco(paths["train"])
    assert meta.prompts == ("snout", "left ear", "right ear", "tail base")
    assert meta.flip_indices == (0, 2, 1, 3)

    mtime = paths["test"].stat().st_mtime_ns
    with monkeypatch.context() as m:  # converted already: the converter may not run again
        m.setattr(dlc_module, "dlc_to_coco", lambda *a, **k: pytest.fail("converted an up-to-date project again"))
        assert ensure_mouse_openfield(tmp_path) == paths
    assert paths["test"].stat().st_mtime_ns == mtime


def test_dlc_to_coco_blocks_and_errors(tmp_path):
    paths = dlc_to_coco(EMBEDDED_CSV, tmp_path / "o", blocks={"m4s1": {"test": (0, 10)}}, margin=0.0,
                        min_margin=2.0, category_name="lab mouse")
    assert set(paths) == {"train", "test", "images", "split"}
    test = json.loads(paths["test"].read_text())
    assert [im["file_name"] for im in test["images"]] == [f"m4s1/img{i:04d}.jpg" for i in range(10)]
    assert test["categories"][0]["name"] == "lab mouse"
    with pytest.raises(ValueError, match="overlap at frame 100"):
        dlc_to_coco(EMBEDDED_CSV, tmp_path / "p", blocks={"m4s1": {"test": (100, 116), "val": (90, 101)}})
    with pytest.raises(ValueError, match="116"):
        dlc_to_coco(EMBEDDED_CSV, tmp_path / "p", blocks={"m4s1": {"test": (100, 117)}})
    with pytest.raises(ValueError, match=r"videos \['m5'\]"):
        dlc_to_coco(EMBEDDED_CSV, tmp_path / "p", blocks={"m5": {"test": (0, 1)}})
    with pytest.raises(FileNotFoundError, match="nowhere"):
        dlc_to_coco(tmp_path / "nowhere", tmp_path / "p")


def test_project_folder_with_skeleton_and_unlabelled(tmp_path):
    proj = tmp_path / "proj"
    video = proj / "labeled-data" / "v1"
    video.mkdir(parents=True)
    (proj / "config.yaml").write_text("bodyparts: [nose, tail]\nskeleton:\n- [nose, tail]\n")
    for i in range(3):
        cv2.imwrite(str(video / f"img{i}.png"), np.zeros((40, 60, 3), np.uint8))
    (video / "CollectedData_me.csv").write_text(
        "scorer,me,me,me,me\nbodyparts,nose,nose,tail,tail\ncoords,x,y,x,y\n"
        "labeled-data/v1/img0.png,10,10,20,20\n"
        "labeled-data/v1/img1.png,30,5,,\n"
        "labeled-data/v1/img2.png,,,,\n"
    )
    paths = dlc_to_coco(proj, tmp_path / "out", blocks={"v1": {"test": (2, 3)}}, category_name="rat")
    train = json.loads(paths["train"].read_text())
    assert train["categories"][0]["skeleton"] == [[1, 2]]
    assert train["annotations"][1]["keypoints"] == [30.0, 5.0, 2, 0, 0, 0]
    assert train["annotations"][1]["num_keypoints"] == 1
    test = json.loads(paths["test"].read_text())
    assert len(test["images"]) == 1 and test["annotations"] == []  # a frame without labels has no instance
    assert (paths["images"] / "v1" / "img0.png").is_file()


# ---------------------------------------------------------------- several videos, several animals, lightning-pose
def _frames_by_split(paths):
    out = {}
    for split in ("train", "val", "test"):
        if split in paths:
            coco = json.loads(paths[split].read_text())
            out[split] = sorted(im["file_name"] for im in coco["images"])
    return out


def test_split_frames_blocks_and_videos():
    blocks = split_frames({"a": 20, "b": 10, "c": 2}, val_fraction=0.1, test_fraction=0.2)
    assert blocks == {"a": {"test": (16, 20), "val": (14, 16)}, "b": {"test": (8, 10), "val": (7, 8)}, "c": {}}
    held = split_frames({f"v{i}": 5 for i in range(6)}, mode="videos", val_fraction=0.2, test_fraction=0.2, seed=3)
    test_v = [v for v, b in held.items() if "test" in b]
    val_v = [v for v, b in held.items() if "val" in b]
    assert len(test_v) == 1 and len(val_v) == 1 and test_v != val_v
    assert held[test_v[0]]["test"] == (0, 5)
    assert held == split_frames({f"v{i}": 5 for i in range(6)}, mode="videos", val_fraction=0.2,
                                test_fraction=0.2, seed=3)  # reproducible
    with pytest.raises(ValueError, match="holds out 1 test \\+ 1 val videos but the project has 2"):
        split_frames({"a": 5, "b": 5}, mode="videos")
    with pytest.raises(ValueError, match="'blocks' or 'videos'"):
        split_frames({"a": 5}, mode="random")


def test_two_video_project_is_split_per_video(tmp_path):
    """Every video is converted and split: the end of EACH video is held out (was: blocks computed from the first
    CSV found, applied to the concatenation)."""
    truth = make_dlc_project(tmp_path / "proj", {"videoA": 12, "videoB": 8})
    paths = dlc_to_coco(tmp_path / "proj", tmp_path / "out", val_fraction=0.15, test_fraction=0.25)
    frames = _frames_by_split(paths)
    assert frames["test"] == [f"videoA/img{i:03d}.png" for i in (9, 10, 11)] + \
        [f"videoB/img{i:03d}.png" for i in (6, 7)]
    assert frames["val"] == ["videoA/img007.png", "videoA/img008.png", "videoB/img005.png"]
    assert len(frames["train"]) == 20 - 5 - 3
    record = json.loads(paths["split"].read_text())
    assert record["frames_per_video"] == {"videoA": 12, "videoB": 8}
    assert record["counts"]["test"] == {"frames": 5, "instances": 5, "videos": ["videoA", "videoB"]}
    train = json.loads(paths["train"].read_text())
    ann = train["annotations"][0]
    image = next(im for im in train["images"] if im["id"] == ann["image_id"])
    video, name = image["file_name"].split("/")
    assert image["video"] == video
    assert np.allclose(np.array(ann["keypoints"]).reshape(4, 3)[:, :2], truth[video][name][0])
    again = dlc_to_coco(tmp_path / "proj", tmp_path / "out2", val_fraction=0.15, test_fraction=0.25)
    assert _frames_by_split(again) == frames  # reproducible
    held = _frames_by_split(dlc_to_coco(tmp_path / "proj", tmp_path / "out3", split="videos", val_fraction=0,
                                        test_fraction=0.5))
    assert {f.split("/")[0] for f in held["test"]}.isdisjoint({f.split("/")[0] for f in held["train"]})


def test_multi_animal_project_one_instance_per_individual(tmp_path, caplog):
    truth = make_dlc_project(tmp_path / "ma", {"cage1": 6}, individuals=["mouse1", "mouse2"],
                             single_bodyparts=["led"])
    paths = dlc_to_coco(tmp_path / "ma", tmp_path / "out", val_fraction=0.2, test_fraction=0.2)
    coco = json.loads(paths["train"].read_text())
    assert coco["categories"][0]["keypoints"] == FIXTURE_BODYPARTS  # maDLC's unique "led" is not an animal's part
    assert any("['led'] belong to no animal" in r.getMessage() for r in caplog.records)
    per_image = {}
    for a in coco["annotations"]:
        per_image.setdefault(a["image_id"], []).append(a)
    names = {im["id"]: im["file_name"].split("/")[1] for im in coco["images"]}
    for image_id, anns in per_image.items():
        coords = truth["cage1"][names[image_id]]
        expected = [c for c in coords if not np.isnan(c).all()]
        assert len(anns) == len(expected)
        for ann, xy in zip(anns, expected):
            k = np.array(ann["keypoints"]).reshape(4, 3)
            assert np.allclose(k[:, :2], xy) and np.all(k[:, 2] == 2)
            x, y, w, h = ann["bbox"]  # the box holds this animal's points (and its margin), clipped to the frame
            assert np.all((xy[:, 0] >= x) & (xy[:, 0] <= x + w) & (xy[:, 1] >= y) & (xy[:, 1] <= y + h))
    assert len(per_image[names_id(names, "img001.png")]) == 1  # the second mouse is not labelled there
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])


def names_id(names: dict[int, str], name: str) -> int:
    return next(i for i, n in names.items() if n == name)


def test_lightning_pose_csv(tmp_path):
    csv_file = make_lightning_pose_project(tmp_path / "lp", {"session1": 6, "session2": 6})
    paths = dlc_to_coco(csv_file, tmp_path / "out", val_fraction=0.2, test_fraction=0.2)
    frames = _frames_by_split(paths)
    assert frames["test"] == ["session1/img005.png", "session2/img005.png"]
    assert frames["val"] == ["session1/img004.png", "session2/img004.png"]
    assert (paths["images"] / "session2" / "img000.png").is_file()


def test_mouse_loads_through_the_validating_loader(tmp_path):
    from clamp_pl.formats.coco import load_coco_instances

    paths = ensure_mouse_openfield(tmp_path)
    meta = meta_from_coco(paths["train"])
    sizes = {}
    for split in ("train", "val", "test"):
        insts, _, report = load_coco_instances(paths[split], paths["images"], meta, train=split == "train")
        sizes[split] = len(insts)
        assert not report.skipped and {i.species for i in insts} == {"mouse"}
    assert sizes == {"train": 90, "val": 10, "test": 16}
