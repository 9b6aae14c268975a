"""Animal-Pose release -> COCO: exact on mmpose's two samples, mmpose-style split, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clamp_pl.data.metainfo import get_meta
from clamp_pl.data.sources import DatasetNotFoundError, missing_dataset_error, require_path
from clamp_pl.formats.animalpose import (
    MMPOSE_FROM_RELEASE,
    TRAINVAL_ANN_START,
    convert_animalpose,
    image_id_from_file_name,
    prepare_animalpose,
    split_trainval,
)

REPO = Path(__file__).resolve().parents[2]
RAW = REPO / "tests" / "fixtures" / "animalpose_raw" / "keypoints.json"
SAMPLES = REPO / "tests" / "fixtures" / "animalpose"


def test_mmpose_samples_round_trip():
    """Every field of mmpose's test_animalpose.json is reproduced, except the category (we keep the species)
    and the annotation id (mmpose numbers by os.listdir order, see the module docstring)."""
    ref = json.loads((SAMPLES / "test_animalpose.json").read_text())
    out = convert_animalpose(RAW, SAMPLES).splits
    assert out["train"]["annotations"] == out["val"]["annotations"] == []
    test = out["test"]
    assert test["images"] == ref["images"]
    assert len(test["annotations"]) == len(ref["annotations"])
    for ours, theirs in zip(test["annotations"], ref["annotations"]):
        assert set(ours) == set(theirs)
        for key in theirs:
            if key not in ("id", "category_id"):
                assert ours[key] == theirs[key], key
                assert type(ours[key]) is type(theirs[key]), key
    species = get_meta("animalpose").species
    assert [species[a["category_id"]] for a in test["annotations"]] == ["cat", "horse"]
    cat = test["categories"][0]
    assert cat["keypoints"] == ref["categories"][0]["keypoints"]
    assert cat["skeleton"] == ref["categories"][0]["skeleton"]
    assert {c["name"]: c["supercategory"] for c in test["categories"]}["horse"] == "Equidae"


def test_converted_samples_load_with_species(tmp_path):
    from clamp_pl.formats.coco import load_coco_instances

    path = tmp_path / "animalpose_test.json"
    path.write_text(json.dumps(convert_animalpose(RAW, SAMPLES).splits["test"]))
    insts, _, _ = load_coco_instances(path, SAMPLES, get_meta("animalpose"), train=False)
    assert [(i.species, i.family) for i in insts] == [("cat", "Felidae"), ("horse", "Equidae")]


def test_keypoint_order_is_a_permutation():
    assert sorted(MMPOSE_FROM_RELEASE) == list(range(20))
    assert image_id_from_file_name("2007_000063.jpg") == (2007000063, True)
    assert image_id_from_file_name("sh7.jpeg") == (4007, False)
    with pytest.raises(ValueError, match="img_1.png"):
        image_id_from_file_name("img_1.png")


def _synthetic_release(root: Path, n_voc: int = 40) -> dict:
    """A release-format file with VOC and part-2 images; 1-3 instances per VOC image."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    images, anns = {}, []
    names = [f"2008_{i:06d}.jpg" for i in range(n_voc)] + [f"{p}{i}.jpeg" for p in ("ca", "do") for i in (1, 2)]
    for rid, name in enumerate(names, start=10):
        Image.new("RGB", (64 + rid, 48)).save(root / "images" / name)
        images[str(rid)] = name
        for _ in range(int(rng.integers(1, 4)) if name.startswith("2008") else 1):
            kps = [[int(rng.integers(0, 60)), int(rng.integers(0, 40)), int(rng.integers(0, 2))] for _ in range(20)]
            anns.append({"image_id": rid, "bbox": [1, 2, 30, 40], "keypoints": kps, "num_keypoints": 0,
                         "category_id": int(rng.integers(1, 6))})
    # Release-specific species numbering: resolved by name.
    cats = [{"id": i, "name": n} for i, n in enumerate(["dog", "cat", "sheep", "horse", "cow"], start=1)]
    release = {"images": images, "annotations": anns, "categories": cats}
    (root / "keypoints.json").write_text(json.dumps(release))
    return release


def test_split_ids_and_species(tmp_path):
    release = _synthetic_release(tmp_path)
    conversion = convert_animalpose(tmp_path / "keypoints.json", tmp_path / "images", val_instances=20)
    assert conversion == convert_animalpose(release, tmp_path / "images", val_instances=20)  # deterministic
    assert conversion.skipped == []
    out = conversion.splits
    val_n = len(out["val"]["annotations"])
    assert 17 <= val_n <= 20  # greedy fill up to the target (1-3 instances per image)
    assert len(out["train"]["annotations"]) + val_n == sum(1 for a in release["annotations"] if a["image_id"] < 50)
    assert [im["file_name"] for im in out["test"]["images"]] == ["ca1.jpeg", "ca2.jpeg", "do1.jpeg", "do2.jpeg"]
    assert {im["id"] for im in out["test"]["images"]} == {1, 2, 2001, 2002}
    train_imgs = {im["id"] for im in out["train"]["images"]}
    assert not train_imgs & {im["id"] for im in out["val"]["images"]}
    ids = [a["id"] for s in ("train", "val") for a in out[s]["annotations"]]
    assert sorted(ids) == list(range(TRAINVAL_ANN_START, TRAINVAL_ANN_START + len(ids)))
    assert sorted(a["id"] for a in out["test"]["annotations"]) == [0, 1, 2, 3]
    sizes = {im["file_name"]: (im["width"], im["height"]) for s in out.values() for im in s["images"]}
    assert sizes["2008_000000.jpg"] == (74, 48)
    # Species by name: release id 1 is "dog", ours is 3.
    release_name = {c["id"]: c["name"] for c in release["categories"]}
    species = get_meta("animalpose").species
    ours = sorted((a["image_id"], species[a["category_id"]]) for s in out.values() for a in s["annotations"])
    file_of = {int(k): v for k, v in release["images"].items()}
    theirs = sorted((image_id_from_file_name(file_of[a["image_id"]])[0], release_name[a["category_id"]])
                    for a in release["annotations"])
    assert ours == theirs
    # Keypoints: reordered, v 1 -> 2, unlabelled zeroed.
    a0 = release["annotations"][0]
    conv = next(a for a in out["train"]["annotations"] + out["val"]["annotations"] if a["image_id"] == 2008000000)
    k = np.array(conv["keypoints"]).reshape(20, 3)
    for m, r in enumerate(MMPOSE_FROM_RELEASE):
        x, y, v = a0["keypoints"][r]
        assert k[m].tolist() == ([x, y, 2] if v else [0, 0, 0])
    assert conv["num_keypoints"] == sum(kp[2] for kp in a0["keypoints"])
    assert conv["bbox"] == [1.0, 2.0, 29.0, 38.0] and conv["area"] == 29.0 * 38.0


def test_dangling_record_is_skipped_counted_and_listed(tmp_path):
    """The release's annotation 854 points at image 597, which 'images' does not list: that record is skipped and
    listed; every other instance converts."""
    release = _synthetic_release(tmp_path, n_voc=6)
    n = len(release["annotations"])
    dangling = dict(release["annotations"][2], image_id=597)
    release["annotations"].insert(3, dangling)
    (tmp_path / "keypoints.json").write_text(json.dumps(release))
    conversion = convert_animalpose(tmp_path / "keypoints.json", tmp_path / "images", val_instances=4)
    assert conversion.skipped == [{"file": str(tmp_path / "keypoints.json"), "annotation": 3, "image_id": 597,
                                   "reason": "image_id 597 is not in 'images'"}]
    assert sum(c["instances"] for c in conversion.counts.values()) == n  # nothing else lost
    reference = convert_animalpose(dict(release, annotations=[a for a in release["annotations"]
                                                             if a is not dangling]), tmp_path / "images",
                                   val_instances=4)
    assert conversion.splits == reference.splits and conversion.counts == reference.counts
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "prepare_animalpose.py"), str(tmp_path),
                          "--val-instances", "4"], capture_output=True, text=True, check=True)
    assert f"converted {n} instances; skipped 1 records" in res.stdout
    assert "annotation 3, image_id 597" in res.stdout
    for split, c in conversion.counts.items():
        assert f"{split}: {c['images']} images, {c['instances']} instances" in res.stdout
    listed = json.loads((tmp_path / "annotations" / "animalpose_skipped.json").read_text())
    assert listed["skipped"][0]["annotation"] == 3 and listed["counts"] == conversion.counts


def test_mmpose_split_procedure():
    ids = list(range(100, 130))
    per = {i: 1 + i % 3 for i in ids}
    train, val = split_trainval(ids, per, val_instances=25, seed=0)
    assert sorted(train + val) == ids and sum(per[i] for i in val) == 25
    assert (train, val) == split_trainval(list(reversed(ids)), per, val_instances=25, seed=0)
    assert val != split_trainval(ids, per, val_instances=25, seed=1)[1]


def test_errors(tmp_path):
    release = _synthetic_release(tmp_path, n_voc=2)
    bad = dict(release, categories=[{"id": 1, "name": "llama"}])
    with pytest.raises(ValueError, match="llama"):
        convert_animalpose(bad, tmp_path / "images")
    (tmp_path / "images" / "2008_000001.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="2008_000001.jpg"):
        convert_animalpose(release, tmp_path / "images")
    with pytest.raises(FileNotFoundError, match="keypoints.json.*animal-pose-dataset"):
        prepare_animalpose(tmp_path / "nothing")


def test_prepare_cli_writes_layout(tmp_path):
    _synthetic_release(tmp_path / "release")
    out = tmp_path / "data" / "animalpose"
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "prepare_animalpose.py"), str(tmp_path / "release"),
                          "--out", str(out), "--val-instances", "10"], capture_output=True, text=True, check=True)
    assert "test: 4 images, 4 instances" in res.stdout
    for split in ("train", "val", "test"):
        assert (out / "annotations" / f"animalpose_{split}.json").is_file()
    assert (out / "images" / "ca1.jpeg").is_file()  # symlinked release images


def test_missing_dataset_errors(tmp_path):
    err = missing_dataset_error(tmp_path / "ap10k" / "annotations" / "ap10k-train-split1.json", "ap10k")
    assert isinstance(err, FileNotFoundError)
    assert "ap10k-train-split1.json" in str(err) and "AlexTheBad/AP-10K" in str(err) and "data/" in str(err)
    err = missing_dataset_error(tmp_path / "animalpose", "animalpose")
    assert "scripts/prepare_animalpose.py" in str(err) and str(tmp_path / "animalpose") in str(err)
    with pytest.raises(DatasetNotFoundError, match="nope"):
        require_path(tmp_path / "nope", "coco")
    assert require_path(tmp_path, "coco") == tmp_path
