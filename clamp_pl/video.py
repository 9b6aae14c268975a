"""Keypoints on videos: ``python -m clamp_pl.predict ckpt_path=<run> input=<video file> [frame_step=1]
[max_frames=null] [boxes=<detections.json>]``.

Frames are decoded with OpenCV (its FFmpeg backend: mp4, avi, mov, mkv, ...), in order, every ``frame_step``-th
one, and predicted in batches. Boxes: one whole-frame box per frame, or a COCO detections list whose
``image_id`` is the 0-based frame index (frames without a detection get no prediction).

Outputs (``output_dir``): ``predictions.json`` (COCO keypoint results, ``image_id`` = frame index, plus
``file_name`` = the video's name, ``frame``, ``time_s`` and ``bbox``), ``<stem>_keypoints.csv`` (one row per
frame and instance: ``frame, time_s, instance, box_x, box_y, box_w, box_h, score`` then ``<keypoint>_x``,
``<keypoint>_y``, ``<keypoint>_score`` for each keypoint, image pixels; the flat table DeepLabCut users analyse)
and, with ``visualize``, ``<stem>_pose.mp4`` (the frames read, skeletons drawn, at ``fps / frame_step``).
"""

from __future__ import annotations

import csv
import logging
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from clamp_pl.api import PoseEstimator, coco_result
from clamp_pl.evaluation import write_results
from clamp_pl.visualization import draw_instances

log = logging.getLogger("clamp_pl")

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".webm", ".wmv")


class VideoReadError(ValueError):
    """A video file that cannot be opened or decoded; the message names the file."""


def is_video(path: str | Path) -> bool:
    p = Path(str(path))
    return p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES


def video_info(path: str | Path) -> dict[str, Any]:
    """``{"fps", "frames", "width", "height"}`` from the container (``frames`` may be an estimate or 0)."""
    cap = _open(path)
    try:
        return {
            "fps": float(cap.get(cv2.CAP_PROP_FPS) or 0.0),
            "frames": int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0),
            "width": int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            "height": int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
        }
    finally:
        cap.release()


def _open(path: str | Path) -> cv2.VideoCapture:
    p = Path(str(path)).expanduser()
    if not p.is_file():
        raise VideoReadError(f"video not found: {p}")
    cap = cv2.VideoCapture(str(p))
    if not cap.isOpened():
        raise VideoReadError(f"{p}: cannot be opened as a video (not a video, or a codec OpenCV lacks)")
    return cap


def iter_frames(
    path: str | Path, frame_step: int = 1, max_frames: int | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """``(frame index, RGB uint8 [H, W, 3])`` for every ``frame_step``-th frame (0, step, 2*step, ...), at most
    ``max_frames`` of them. Raises :class:`VideoReadError` when the first frame cannot be decoded."""
    if frame_step < 1:
        raise ValueError(f"frame_step must be >= 1, got {frame_step}")
    cap = _open(path)
    try:
        index, emitted = 0, 0
        while max_frames is None or emitted < max_frames:
            if not cap.grab():
                break
            if index % frame_step == 0:
                ok, bgr = cap.retrieve()
                if not ok:
                    raise VideoReadError(f"{path}: frame {index} could not be decoded")
                yield index, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                emitted += 1
            index += 1
        if index == 0:
            raise VideoReadError(f"{path}: no frame could be decoded")
    finally:
        cap.release()


def _csv_header(keypoint_names: Sequence[str]) -> list[str]:
    head = ["frame", "time_s", "instance", "box_x", "box_y", "box_w", "box_h", "score"]
    for name in keypoint_names:
        key = name.replace(" ", "_")
        head += [f"{key}_x", f"{key}_y", f"{key}_score"]
    return head


def run_video_prediction(
    est: PoseEstimator,
    video: str | Path,
    output_dir: Path,
    *,
    detections: Sequence[dict[str, Any]] | None = None,
    frame_step: int = 1,
    max_frames: int | None = None,
    score_threshold: float = 0.3,
    flip_test: bool = True,
    batch_size: int = 16,
    category_id: int = 1,
    visualize: bool = True,
) -> dict[str, Any]:
    """Predict the frames of ``video``; write ``predictions.json``, ``<stem>_keypoints.csv`` and
    ``<stem>_pose.mp4`` (see the module docstring). ``detections``: COCO detections, ``image_id`` = frame index;
    None = whole-frame boxes. Returns ``{"frames", "instances", "predictions", "csv", "video", "fps"}``."""
    video = Path(str(video)).expanduser()
    info = video_info(video)
    fps = info["fps"] if info["fps"] > 0 else 25.0
    output_dir.mkdir(parents=True, exist_ok=True)
    dets_of: dict[int, list[dict[str, Any]]] | None = None
    if detections is not None:
        dets_of = defaultdict(list)
        for n, d in enumerate(detections):
            frame = d["image_id"]
            if isinstance(frame, bool) or not str(frame).lstrip("-").isdigit() or int(frame) < 0:
                raise ValueError(f"{video}: detection {n}: field 'image_id' must be a frame index (0, 1, ...) "
                                 f"for a video input, got {frame!r}")
            dets_of[int(frame)].append(d)
    names = est.meta["keypoint_names"] or [f"kp{i}" for i in range(len(est.meta["prompts"]))]
    csv_path = output_dir / f"{video.stem}_keypoints.csv"
    vis_path = output_dir / f"{video.stem}_pose.mp4"
    writer: cv2.VideoWriter | None = None
    results: list[dict[str, Any]] = []
    frames = 0
    total = -(-info["frames"] // frame_step) if info["frames"] > 0 else None  # frames 0, step, 2 step, ...
    if max_frames is not None and total is not None:
        total = min(total, max_frames)

    def flush(batch: list[tuple[int, np.ndarray]], table: csv.writer) -> None:
        nonlocal writer
        boxes = None if dets_of is None else [dets_of.get(i, []) for i, _ in batch]
        preds = est.predict([f for _, f in batch], boxes, flip_test=flip_test, batch_size=batch_size)
        for (index, frame), instances in zip(batch, preds):
            t = index / fps
            for n, inst in enumerate(instances):
                res = coco_result(inst, index, category_id, file_name=video.name, frame=index, time_s=round(t, 4))
                results.append(res)
                table.writerow([index, f"{t:.4f}", n, *(f"{v:.2f}" for v in inst["bbox"]),
                                f"{inst['score']:.4f}", *res["keypoints"]])
            if visualize:
                if writer is None:
                    h, w = frame.shape[:2]
                    writer = cv2.VideoWriter(str(vis_path), cv2.VideoWriter_fourcc(*"mp4v"), fps / frame_step,
                                             (w, h))
                    if not writer.isOpened():
                        raise RuntimeError(f"{vis_path}: OpenCV cannot write mp4v video here (visualize=false skips it)")
                drawn = draw_instances(frame, instances, est.meta["skeleton"], score_threshold)
                writer.write(cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))

    try:
        with open(csv_path, "w", newline="") as fh, tqdm(total=total, desc=video.name, unit="frame",
                                                          dynamic_ncols=True) as bar:
            table = csv.writer(fh)
            table.writerow(_csv_header(names))
            batch: list[tuple[int, np.ndarray]] = []
            for index, frame in iter_frames(video, frame_step, max_frames):
                batch.append((index, frame))
                frames += 1
                if len(batch) == batch_size:
                    flush(batch, table)
                    bar.update(len(batch))
                    batch = []
            if batch:
                flush(batch, table)
                bar.update(len(batch))
    finally:
        if writer is not None:
            writer.release()
    pred_path = write_results(output_dir / "predictions.json", results)
    return {"frames": frames, "instances": len(results), "predictions": pred_path, "csv": csv_path,
            "video": vis_path if visualize and frames else None, "fps": fps}
