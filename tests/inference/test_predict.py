"""``python -m clamp_pl.predict``: whole-image boxes, COCO detection files, corrupt and missing inputs, outputs.
``tiny_run`` (conftest.py) is the session's tiny training run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from clamp_pl.predict import AllImagesFailed, list_images, match_detections, predict


@pytest.fixture(scope="module")
def test_image(tiny_run, data_dir) -> tuple[Path, dict]:
    """A toy test image and its first annotation."""
    ann_file = next((data_dir / "toy_ap10k").rglob("*test*.json"))
    gt = json.loads(ann_file.read_text())
    ann = gt["annotations"][0]
    im = next(i for i in gt["images"] if i["id"] == ann["image_id"])
    path = next((data_dir / "toy_ap10k").rglob(Path(im["file_name"]).name))
    return path, ann


def _predict_cfg(make_cfg, tiny_run: Path, out: Path, *overrides: str):
    return make_cfg(f"ckpt_path={tiny_run}", f"output_dir={out}", "device=cpu", *overrides,
                    config_name="predict", fast=False)


def test_folder_with_corrupt_image(make_cfg, tiny_run, test_image, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(test_image[0], folder / "good.jpg")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    (folder / "notes.txt").write_text("not an image: ignored")
    out = tmp_path / "out"
    summary = predict(_predict_cfg(make_cfg, tiny_run, out, f"input={folder}"))
    assert (summary["images"], summary["predicted"], summary["failed"]) == (2, 1, 1)
    assert "broken.jpg" in summary["errors"][0]["error"]
    assert json.loads((out / "errors.json").read_text())[0]["file"].endswith("broken.jpg")
    preds = json.loads((out / "predictions.json").read_text())
    assert [p["file_name"] for p in preds] == ["good.jpg"]
    p = preds[0]
    assert set(p) >= {"file_name", "image_id", "category_id", "keypoints", "score", "bbox"}
    assert len(p["keypoints"]) == 17 * 3 and p["category_id"] == 1
    w, h = cv2.imread(str(folder / "good.jpg")).shape[1::-1]
    assert p["bbox"] == [0.0, 0.0, float(w), float(h)]  # whole-image box by default
    assert (out / "vis" / "good.jpg").is_file() and not (out / "vis" / "broken.jpg").exists()


def test_all_failed_and_missing_input(make_cfg, tiny_run, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"garbage")
    with pytest.raises(AllImagesFailed, match="all 1 images"):
        predict(_predict_cfg(make_cfg, tiny_run, tmp_path / "o1", f"input={bad}"))
    with pytest.raises(FileNotFoundError, match="nope"):
        predict(_predict_cfg(make_cfg, tiny_run, tmp_path / "o2", f"input={tmp_path / 'nope'}"))


def test_boxes_file(make_cfg, tiny_run, test_image, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(test_image[0], folder / "000000000139.jpg")
    shutil.copy(test_image[0], folder / "other.jpg")
    box = [float(v) for v in test_image[1]["bbox"]]
    dets = [
        {"image_id": 139, "bbox": box, "score": 0.9, "category_id": 7},
        {"image_id": 139, "bbox": [0, 0, 10, 10], "score": 0.05},  # below box_threshold
        {"image_id": 5, "bbox": box, "score": 0.8},  # no such file
    ]
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    out = tmp_path / "out"
    predict(_predict_cfg(make_cfg, tiny_run, out, f"input={folder}", f"boxes={tmp_path / 'dets.json'}",
                         "box_threshold=0.1", "visualize=false"))
    preds = json.loads((out / "predictions.json").read_text())
    assert len(preds) == 1  # other.jpg has no detection
    p = preds[0]
    assert (p["file_name"], p["image_id"], p["category_id"]) == ("000000000139.jpg", 139, 7)
    assert p["bbox"] == pytest.approx(box, abs=0.01)
    kp = np.asarray(p["keypoints"]).reshape(17, 3)
    assert p["score"] <= 0.9 + 1e-6 and np.isfinite(kp).all()
    assert not (out / "vis").exists()


def test_match_by_images_list(tmp_path):
    (tmp_path / "sub").mkdir()
    files = [tmp_path / "a.jpg", tmp_path / "sub" / "b.jpg"]
    dets = [{"image_id": 1, "bbox": [0, 0, 5, 5]}, {"image_id": 2, "bbox": [0, 0, 5, 5]},
            {"image_id": 3, "bbox": [0, 0, 5, 5]}]
    jobs, unmatched = match_detections(tmp_path, files, dets, {1: "x/a.jpg", 2: "sub/b.jpg", 3: "c.jpg"})
    assert [len(j.detections) for j in jobs] == [1, 1] and [j.image_id for j in jobs] == [1, 2]
    assert unmatched == 1


def test_list_images_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no images"):
        list_images(tmp_path)
    with pytest.raises(FileNotFoundError, match="no images .* match"):
        list_images(tmp_path / "*.jpg")


def _breeds(root: Path, image: Path) -> list[str]:
    """A folder of breed subfolders (two levels) with the same image under different names."""
    names = ["beagle/1.jpg", "beagle/2.jpg", "pug/young/1.png", "top.jpg"]
    for n in names:
        (root / n).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / n), cv2.imread(str(image)))
    (root / "pug" / "notes.txt").write_text("not an image")
    return names


def test_list_images_recursive_and_glob(tmp_path, test_image):
    names = _breeds(tmp_path / "dogs", test_image[0])
    root, files = list_images(tmp_path / "dogs")
    assert root == tmp_path / "dogs" and [f.relative_to(root).as_posix() for f in files] == sorted(names)
    root, files = list_images(tmp_path / "dogs" / "**" / "*.jpg")
    assert root == tmp_path / "dogs"
    assert [f.relative_to(root).as_posix() for f in files] == ["beagle/1.jpg", "beagle/2.jpg", "top.jpg"]
    root, files = list_images(tmp_path / "dogs" / "pug" / "*" / "*.png")
    assert root == tmp_path / "dogs" / "pug" and [f.name for f in files] == ["1.png"]


def test_recursive_folder_keeps_relative_paths(make_cfg, tiny_run, test_image, tmp_path):
    names = _breeds(tmp_path / "dogs", test_image[0])
    out = tmp_path / "out"
    summary = predict(_predict_cfg(make_cfg, tiny_run, out, f"input={tmp_path / 'dogs'}"))
    assert summary["predicted"] == 4
    preds = json.loads((out / "predictions.json").read_text())
    assert [p["file_name"] for p in preds] == sorted(names)  # same stems in two folders stay apart
    assert len({p["image_id"] for p in preds}) == 4
    for n in names:
        assert (out / "vis" / Path(n).with_suffix(".jpg")).is_file()
    pd = pytest.importorskip("pandas")
    df = pd.read_csv(summary["csv"], header=[0, 1, 2], index_col=0)  # DeepLabCut layout, one row per image
    assert df.index.tolist() == sorted(names) and df.shape == (4, 51)
    np.testing.assert_allclose(df.to_numpy()[0], preds[0]["keypoints"], atol=2e-3)


class _StubDetector:
    """Two known boxes in every image, best first."""

    def __call__(self, images):
        return [[{"bbox": [5.0, 6.0, 40.0, 30.0], "score": 0.9, "label": "cat"},
                 {"bbox": [20.0, 20.0, 30.0, 30.0], "score": 0.6, "label": "dog"}] for _ in images]


def test_detector_boxes_are_predicted_top_down(tiny_run, test_image, tmp_path):
    from clamp_pl.api import load_model
    from clamp_pl.predict import ImageJob, run_prediction

    est = load_model(tiny_run, device="cpu")
    jobs = [ImageJob(test_image[0], "a.jpg", 1), ImageJob(test_image[0], "b.jpg", 2)]
    summary = run_prediction(est, jobs, tmp_path, detector=_StubDetector(), visualize=False)
    preds = json.loads((tmp_path / "predictions.json").read_text())
    assert summary["instances"] == 4
    assert [(p["file_name"], p["bbox"], p["label"]) for p in preds] == [
        ("a.jpg", [5.0, 6.0, 40.0, 30.0], "cat"), ("a.jpg", [20.0, 20.0, 30.0, 30.0], "dog"),
        ("b.jpg", [5.0, 6.0, 40.0, 30.0], "cat"), ("b.jpg", [20.0, 20.0, 30.0, 30.0], "dog")]
    assert all(p["category_id"] == 1 for p in preds)  # a COCO class is not one of the pose model's categories
    # the same box passed by hand gives the same keypoints
    direct = est.predict([cv2.cvtColor(cv2.imread(str(test_image[0])), cv2.COLOR_BGR2RGB)],
                         [[[5.0, 6.0, 40.0, 30.0, 0.9]]])[0][0]
    np.testing.assert_allclose(np.reshape(preds[0]["keypoints"], (-1, 3))[:, :2], direct["keypoints"], atol=2e-3)
    pd = pytest.importorskip("pandas")
    df = pd.read_csv(summary["csv"], header=[0, 1, 2, 3], index_col=0)
    assert list(df.columns.get_level_values("individuals").unique()) == ["animal1", "animal2"]


def test_detector_without_weights_and_follow_on_images(make_cfg, tiny_run, test_image, tmp_path):
    with pytest.raises(FileNotFoundError, match="detector.download=true"):
        predict(_predict_cfg(make_cfg, tiny_run, tmp_path / "o", f"input={test_image[0]}", "detector.enabled=true"))
    with pytest.raises(ValueError, match="track=follow follows an animal through a video"):
        predict(_predict_cfg(make_cfg, tiny_run, tmp_path / "o", f"input={test_image[0]}", "track=follow"))
