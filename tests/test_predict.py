"""``python -m clamp_pl.predict``: whole-image boxes, COCO detection files, corrupt and missing inputs, outputs.

Also home of ``tiny_run``, a session-wide tiny training run (clamp_tiny, toy set, a few batches) shared with
test_api.py, test_export.py and test_notebook.py (they import the fixture; the run is trained once)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from clamp_pl.predict import AllImagesFailed, list_images, match_detections, predict

TINY_RUN_OVERRIDES = [
    "experiment=supervised_toy",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
]
_CACHE: dict[str, Path] = {}


def train_tiny_run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """Train clamp_tiny on the toy set for a few batches (once per session) and leave a CLI-like run dir,
    ``.hydra/config.yaml`` included."""
    if "run" not in _CACHE:
        from conftest import FAST_OVERRIDES, compose_cfg
        from hydra.core.global_hydra import GlobalHydra
        from omegaconf import OmegaConf, open_dict

        from clamp_pl.train import train

        run_dir = tmp_path_factory.mktemp("tiny_run") / "run"
        cfg = compose_cfg("train", [*FAST_OVERRIDES, *TINY_RUN_OVERRIDES], run_dir, data_dir)
        train(cfg)
        saved = cfg.copy()
        with open_dict(saved):
            del saved["hydra"]
        (run_dir / ".hydra").mkdir(exist_ok=True)
        OmegaConf.save(saved, run_dir / ".hydra" / "config.yaml")
        GlobalHydra.instance().clear()
        _CACHE["run"] = run_dir
    return _CACHE["run"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, data_dir) -> Path:
    return train_tiny_run(tmp_path_factory, data_dir)


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
