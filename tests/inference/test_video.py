"""``clamp_pl.predict`` on a video file: frame order and stepping, the DeepLabCut-layout CSV and COCO results
agree with the image API on the same decoded frames, the annotated video, per-frame boxes, following one animal
(re-acquired frames marked, smoothed trajectories beside the raw ones), a detector, and unreadable files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from clamp_pl.api import load_model
from clamp_pl.inference.tracking import grid_boxes
from clamp_pl.inference.video import VideoReadError, iter_batches, iter_frames, run_video_prediction
from clamp_pl.predict import predict

pd = pytest.importorskip("pandas")

N_FRAMES = 7


@pytest.fixture(scope="module")
def video(tmp_path_factory, data_dir, tiny_run) -> Path:
    """An MJPG .avi (OpenCV writes it without FFmpeg) of toy test images moving 3 px per frame."""
    img_file = next(p for p in sorted((data_dir / "toy_ap10k").rglob("*.jpg")))
    img = cv2.imread(str(img_file))
    h, w = img.shape[:2]
    path = tmp_path_factory.mktemp("video") / "walk.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (w, h))
    assert writer.isOpened()
    for i in range(N_FRAMES):
        writer.write(np.roll(img, 3 * i, axis=1))
    writer.release()
    return path


def test_iter_frames_order_step_and_limit(video):
    assert [i for i, _ in iter_frames(video)] == list(range(N_FRAMES))
    assert [i for i, _ in iter_frames(video, frame_step=3)] == [0, 3, 6]
    assert [i for i, _ in iter_frames(video, frame_step=2, max_frames=2)] == [0, 2]
    _, frame = next(iter_frames(video))
    assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3


def test_cli_video_outputs_match_the_image_api(make_cfg, tiny_run, video, tmp_path):
    out = tmp_path / "pred"
    cfg = make_cfg(f"ckpt_path={tiny_run}", f"input={video}", f"output_dir={out}", "frame_step=2",
                   "batch_size=3", "device=cpu", config_name="predict", fast=False)
    summary = predict(cfg)
    assert summary["frames"] == 4 and summary["instances"] == 4  # frames 0, 2, 4, 6; one whole-frame box each
    preds = json.loads((out / "predictions.json").read_text())
    assert [p["frame"] for p in preds] == [0, 2, 4, 6] and [p["image_id"] for p in preds] == [0, 2, 4, 6]
    assert abs(preds[1]["time_s"] - 0.2) < 1e-6  # 10 fps
    # the same decoded frames through the image API give the same keypoints
    est = load_model(tiny_run, device="cpu")
    frames = [f for _, f in iter_frames(video, frame_step=2)]
    direct = est.predict(frames, flip_test=True)
    for p, d in zip(preds, direct):
        kp = np.array(p["keypoints"]).reshape(-1, 3)
        np.testing.assert_allclose(kp[:, :2], d[0]["keypoints"], atol=2e-3)
    k = est.meta.num_keypoints
    df = pd.read_csv(out / "walk_clamp.csv", header=[0, 1, 2], index_col=0)  # DeepLabCut's analysis layout
    assert df.shape == (4, 3 * k) and df.index.tolist() == [0, 2, 4, 6]
    assert list(df.columns.get_level_values("bodyparts").unique()) == list(est.meta.keypoint_names)
    np.testing.assert_allclose(df.to_numpy()[0], preds[0]["keypoints"], atol=2e-3)
    with open(out / "walk_boxes.csv") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["frame", "time_s", "instance", "box_x", "box_y", "box_w", "box_h", "score", "reacquired"]
    assert [int(r[0]) for r in rows[1:]] == [0, 2, 4, 6] and {r[-1] for r in rows[1:]} == {"0"}
    assert not (out / "walk_clamp_filtered.csv").exists()  # smoothing is off by default
    drawn = cv2.VideoCapture(str(out / "walk_pose.mp4"))
    assert drawn.isOpened() and int(drawn.get(cv2.CAP_PROP_FRAME_COUNT)) == 4
    drawn.release()


def test_video_with_per_frame_boxes(tiny_run, video, tmp_path):
    est = load_model(tiny_run, device="cpu")
    dets = [{"image_id": 1, "bbox": [10, 10, 80, 60], "score": 0.9},
            {"image_id": 1, "bbox": [40, 30, 60, 60], "score": 0.8},
            {"image_id": 4, "bbox": [5, 5, 50, 50], "score": 0.7}]
    summary = run_video_prediction(est, video, tmp_path, detections=dets, visualize=False)
    preds = json.loads((tmp_path / "predictions.json").read_text())
    assert summary["frames"] == N_FRAMES and summary["video"] is None
    assert [p["frame"] for p in preds] == [1, 1, 4]  # frames without a detection: no prediction
    assert preds[0]["bbox"] == [10, 10, 80, 60]
    df = pd.read_csv(summary["csv"], header=[0, 1, 2, 3], index_col=0)  # several boxes: individuals row
    assert list(df.columns.get_level_values("individuals").unique()) == ["animal1", "animal2"]
    assert df.index.tolist() == list(range(N_FRAMES)) and df.loc[0].isna().all() and df.loc[4].notna().sum() == 51
    with pytest.raises(ValueError, match=r"detection 1: field 'image_id' must be a frame index .* 'frame_3.jpg'"):
        run_video_prediction(est, video, tmp_path, detections=[dets[0], {**dets[0], "image_id": "frame_3.jpg"}])


def test_unreadable_video_names_the_file(tmp_path):
    fake = tmp_path / "broken.mp4"
    fake.write_bytes(b"not a video at all" * 100)
    with pytest.raises(VideoReadError, match="broken.mp4"):
        list(iter_frames(fake))
    with pytest.raises(ValueError, match="frame_step"):
        list(iter_frames(fake, frame_step=0))


def test_iter_batches():
    assert [[i for i, _ in b] for b in iter_batches(((i, None) for i in range(7)), 3)] == [[0, 1, 2], [3, 4, 5], [6]]


def test_follow_through_the_cli(make_cfg, tiny_run, video, tmp_path):
    out = tmp_path / "follow"
    cfg = make_cfg(f"ckpt_path={tiny_run}", f"input={video}", f"output_dir={out}", "track=follow",
                   "follow.search_scales=[0.5]", "smoothing.method=median", "smoothing.window=3", "device=cpu",
                   "visualize=false", config_name="predict", fast=False)
    summary = predict(cfg)
    assert summary["frames"] == N_FRAMES and summary["instances"] == N_FRAMES  # one animal in every frame
    assert summary["reacquired"][0] == 0 and summary["ms_per_frame"] > 0  # the first frame is always a search
    preds = json.loads((out / "predictions.json").read_text())
    assert [p["reacquired"] for p in preds] == [i in summary["reacquired"] for i in range(N_FRAMES)]
    with open(out / "walk_boxes.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["reacquired"]) for r in rows] == [int(p["reacquired"]) for p in preds]
    assert [float(r["box_x"]) for r in rows] == pytest.approx([p["bbox"][0] for p in preds], abs=0.01)
    raw = pd.read_csv(out / "walk_clamp.csv", header=[0, 1, 2], index_col=0)
    filt = pd.read_csv(out / "walk_clamp_filtered.csv", header=[0, 1, 2], index_col=0)
    assert raw.shape == filt.shape == (N_FRAMES, 51)
    np.testing.assert_allclose(raw.to_numpy().reshape(N_FRAMES, 17, 3)[..., :2],
                               np.array([p["keypoints"] for p in preds]).reshape(N_FRAMES, 17, 3)[..., :2],
                               atol=2e-3)  # the raw file holds the raw predictions
    assert summary["h5"] is None or summary["h5"].is_file()


class _StubDetector:
    """Answers one known box per frame."""

    def __init__(self):
        self.calls = 0

    def __call__(self, images):
        self.calls += 1
        return [[{"bbox": [20.0, 10.0, 60.0, 50.0], "score": 0.8, "label": "dog"}] for _ in images]


def test_detector_boxes_every_frame(tiny_run, video, tmp_path):
    est = load_model(tiny_run, device="cpu")
    det = _StubDetector()
    summary = run_video_prediction(est, video, tmp_path, detector=det, batch_size=4, visualize=False)
    assert det.calls == 2  # one call per batch of frames
    preds = json.loads((tmp_path / "predictions.json").read_text())
    assert len(preds) == N_FRAMES and all(p["bbox"] == [20.0, 10.0, 60.0, 50.0] for p in preds)
    assert all(p["label"] == "dog" for p in preds)  # the detector's class travels with its box
    assert pd.read_csv(summary["csv"], header=[0, 1, 2, 3], index_col=0).shape == (N_FRAMES, 51)


def test_follow_searches_with_the_detector(tiny_run, video, tmp_path):
    est = load_model(tiny_run, device="cpu")
    det = _StubDetector()
    summary = run_video_prediction(est, video, tmp_path, track="follow", detector=det, visualize=False)
    assert det.calls == summary["searched"] >= 1  # asked only when following searched
    preds = json.loads((tmp_path / "predictions.json").read_text())
    assert preds[0]["reacquired"] and len(preds) == N_FRAMES
    # at most 5 crops a frame (followed, recentred, detector's box, it again with flip test, refined): the
    # coarse grid, which is not used, alone has more
    _, frame = next(iter_frames(video))
    assert summary["boxes_predicted"] <= 5 * N_FRAMES < len(grid_boxes(frame.shape[1], frame.shape[0]))


def test_follow_rejects_a_boxes_file_and_unknown_modes(tiny_run, video, tmp_path):
    est = load_model(tiny_run, device="cpu")
    with pytest.raises(ValueError, match="track=follow makes its own boxes"):
        run_video_prediction(est, video, tmp_path, track="follow", detections=[])
    with pytest.raises(ValueError, match="track must be one of"):
        run_video_prediction(est, video, tmp_path, track="sort")


def test_reacquired_boxes_are_drawn_in_their_colour():
    from clamp_pl.core.viz import draw_instances
    from clamp_pl.inference.video import REACQUIRED_COLOR

    inst = {"bbox": [10.0, 10.0, 30.0, 20.0], "keypoints": np.full((2, 2), 20.0, np.float32),
            "scores": np.zeros(2, np.float32)}
    img = np.zeros((50, 60, 3), np.uint8)
    white = draw_instances(img, [inst])[10, 25].astype(float)  # top edge of the box (anti-aliased)
    amber = draw_instances(img, [inst], box_color=REACQUIRED_COLOR)[10, 25].astype(float)
    assert white.min() > 200 and np.ptp(white) == 0
    np.testing.assert_allclose(amber / amber[0], np.array(REACQUIRED_COLOR) / REACQUIRED_COLOR[0], atol=0.02)
