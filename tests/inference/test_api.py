"""The Python API: ``load_model`` from a run dir or a checkpoint, ``PoseEstimator.predict`` on paths and arrays,
box formats, and the context-token interpretation."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from clamp_pl.api import ImageReadError, PoseEstimator, load_model, nearest_context_tokens, read_image


@pytest.fixture(scope="module")
def est(tiny_run) -> PoseEstimator:
    return load_model(tiny_run, device="cpu")


@pytest.fixture(scope="module")
def sample(tiny_run, data_dir) -> tuple[np.ndarray, dict]:
    ann_file = next((data_dir / "toy_ap10k").rglob("*test*.json"))
    gt = json.loads(ann_file.read_text())
    ann = gt["annotations"][0]
    im = next(i for i in gt["images"] if i["id"] == ann["image_id"])
    return read_image(next((data_dir / "toy_ap10k").rglob(Path(im["file_name"]).name))), ann


def test_load_model(est, tiny_run):
    assert not est.net.training and est.spec.num_keypoints == 17
    assert Path(est.checkpoint).parent == tiny_run / "checkpoints"
    assert est.checkpoint.endswith(".ckpt") and "epoch_" in est.checkpoint  # best, not last
    assert est.meta.to_dict() == est.spec.meta and est.meta.num_keypoints == 17 and est.meta.skeleton
    assert est.spec.trained_vocabulary == est.meta.keypoint_names and est.spec.normalization == "imagenet"
    again = load_model(tiny_run / "checkpoints" / "last.ckpt", device="cpu")
    assert again.meta.prompts == est.meta.prompts


def test_array_equals_png(est, sample, tmp_path):
    image, ann = sample
    path = tmp_path / "x.png"
    cv2.imwrite(str(path), image[..., ::-1])
    a = est.predict([image], boxes=[[ann]])[0][0]
    b = est.predict([path], boxes=[[ann]])[0][0]
    np.testing.assert_array_equal(a["keypoints"], b["keypoints"])
    np.testing.assert_array_equal(a["scores"], b["scores"])
    assert a["score"] == b["score"] and a["category_id"] == ann["category_id"]
    assert a["keypoints"].shape == (17, 2) and a["scores"].shape == (17,)


def test_box_formats_and_defaults(est, sample):
    image, ann = sample
    h, w = image.shape[:2]
    whole = est.predict(image)[0]  # one array, no boxes: one whole-image instance
    assert len(whole) == 1 and whole[0]["bbox"] == [0, 0, w, h] and whole[0]["category_id"] is None
    x, y, bw, bh = ann["bbox"]
    out = est.predict([image, image, image],
                      boxes=[[[x, y, bw, bh, 0.5, 3]], [{"bbox": ann["bbox"], "score": 0.5}], []],
                      flip_test=False, batch_size=1)
    assert [len(o) for o in out] == [1, 1, 0]
    np.testing.assert_array_equal(out[0][0]["keypoints"], out[1][0]["keypoints"])
    assert out[0][0]["category_id"] == 3 and out[0][0]["box_score"] == 0.5
    kept = out[0][0]["scores"][out[0][0]["scores"] > 0.2]
    assert out[0][0]["score"] == pytest.approx(0.5 * kept.mean() if kept.size else 0.0, rel=1e-5)
    with pytest.raises(ValueError, match="image 0, box 0"):
        est.predict([image], boxes=[[[0, 0, 0, 5]]])


def test_crop_matches_test_pipeline(est, sample, data_dir):
    """The API's crop is the test-time dataset's crop: one function, the very same tensor."""
    from clamp_pl.data.metainfo import get_meta
    from clamp_pl.data.transforms import TopDownTransform
    from clamp_pl.formats.coco import load_coco_instances

    ann_file = next((data_dir / "toy_ap10k").rglob("*test*.json"))
    meta = get_meta("ap10k")
    insts, _, _ = load_coco_instances(ann_file, ann_file.parent.parent / "images", meta, train=False)
    inst = insts[0]
    ref = TopDownTransform(meta, est.input_size, normalization=(est.spec.mean, est.spec.std),
                           padding=est.spec.padding)(inst)
    crop, center, scale = est.crop(read_image(inst.image_path), inst.bbox)
    np.testing.assert_array_equal(crop, ref["image"])
    np.testing.assert_array_equal(center.astype(np.float32), ref["center"])
    np.testing.assert_array_equal(scale.astype(np.float32), ref["scale"])


def test_unreadable_image(est, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    with pytest.raises(ImageReadError, match="bad.jpg"):
        est.predict([bad])


def test_score_maps_and_context_tokens(est, sample):
    image, ann = sample
    crop, _, _ = est.crop(image, ann["bbox"])
    maps = est.score_maps(crop[None])
    gh, gw = est.net.feature_grid
    assert maps.shape == (1, 17, gh, gw) and np.abs(maps).max() <= 1 + 1e-5
    rows = nearest_context_tokens(est, topk=3)
    assert len(rows) == est.net.prompt_learner.n_ctx and all(len(r) == 3 for r in rows)
    assert all(isinstance(t, str) and d >= 0 for r in rows for t, d in r)
    assert [d for _, d in rows[0]] == sorted(d for _, d in rows[0])
    cos = nearest_context_tokens(est, topk=2, metric="cosine")
    assert all(-1 - 1e-5 <= s <= 1 + 1e-5 for r in cos for _, s in r)
