"""Keypoints on videos: ``python -m clamp_pl.predict ckpt_path=<run> input=<video file> [track=follow]
[frame_step=1] [max_frames=null] [boxes=<detections.json>] [detector.enabled=true] [smoothing.method=median]``.

Frames are decoded with OpenCV (its FFmpeg backend: mp4, avi, mov, mkv, ...), in order, every ``frame_step``-th
one. Where each frame's boxes come from:

* ``track=follow`` (one animal, no detector needed): the box of each frame is made from the previous frame's
  confident keypoints, and the animal is searched for again when it is lost (:mod:`clamp_pl.inference.tracking`; with a
  detector, the search uses its boxes). Frames are predicted one after the other, since each box depends on the
  frame before.
* ``boxes=<file>``: a COCO detections list whose ``image_id`` is the 0-based frame index (frames without a
  detection get no prediction);
* a detector (:mod:`clamp_pl.inference.detector`): its animal boxes in every frame;
* otherwise one whole-frame box per frame.

The last three predict frames in batches of ``batch_size``.

Outputs (``output_dir``):

* ``predictions.json``: COCO keypoint results, ``image_id`` = frame index, plus ``file_name`` (the video's
  name), ``frame``, ``time_s``, ``bbox`` and, when following, ``reacquired``;
* ``<stem>_<scorer>.csv`` (and ``.h5`` where pandas and PyTables are installed): DeepLabCut's analysis layout
  (:mod:`clamp_pl.formats.dlc`): one row per frame read, ``x, y, likelihood`` per body part; single-animal when
  following or with whole-frame boxes, multi-animal (an ``individuals`` header row) with boxes or a detector;
* ``<stem>_<scorer>_filtered.csv`` (``.h5``) with ``smoothing``: the same, smoothed over frames;
* ``<stem>_boxes.csv``: per frame and instance ``frame, time_s, instance, box_x, box_y, box_w, box_h, score,
  reacquired`` (``reacquired`` = 1 where following searched the frame and took the box found);
* with ``visualize``, ``<stem>_pose.mp4`` (the frames read, boxes and skeletons drawn, at ``fps / frame_step``;
  the boxes of re-acquired frames in amber, the others white).
"""

from __future__ import annotations

import csv
import logging
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from clamp_pl.core.errors import DataError
from clamp_pl.core.viz import draw_instances
from clamp_pl.data.metainfo import DatasetMeta
from clamp_pl.formats.coco import write_results
from clamp_pl.formats.dlc import table_from_instances
from clamp_pl.inference.detector import Detector
from clamp_pl.inference.estimator import PoseEstimator, coco_result
from clamp_pl.inference.progress import progress
from clamp_pl.inference.smoothing import write_pose_table
from clamp_pl.inference.tracking import FollowConfig, Follower

log = logging.getLogger("clamp_pl")

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".webm", ".wmv")
TRACK_MODES = ("none", "follow")
#: box colour (RGB) of the frames where following searched and re-acquired the animal, in ``<stem>_pose.mp4``
REACQUIRED_COLOR = (255, 200, 0)


class VideoReadError(DataError):
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
    ``max_frames`` of them. Raises :class:`VideoReadError` when the first frame cannot be decoded; warns, naming
    the file, when decoding stops before the frame count the container declares (a file cut short or damaged)."""
    if frame_step < 1:
        raise ValueError(f"frame_step must be >= 1, got {frame_step}")
    cap = _open(path)
    declared = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    try:
        index, emitted = 0, 0
        while max_frames is None or emitted < max_frames:
            if not cap.grab():
                if index and index < declared:
                    log.warning("%s: decoding stopped after %d of the %d frames the file declares (cut short or "
                                "damaged?): frames %d and later are not predicted", path, index, declared, index)
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


def iter_batches(
    frames: Iterator[tuple[int, np.ndarray]], batch_size: int
) -> Iterator[list[tuple[int, np.ndarray]]]:
    """Consecutive ``(index, frame)`` pairs in lists of ``batch_size`` (the last one shorter)."""
    batch: list[tuple[int, np.ndarray]] = []
    for item in frames:
        batch.append(item)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _detections_by_frame(video: Path, detections: Sequence[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    dets_of: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for n, d in enumerate(detections):
        frame = d["image_id"]
        if isinstance(frame, bool) or not str(frame).lstrip("-").isdigit() or int(frame) < 0:
            raise ValueError(f"{video}: detection {n}: field 'image_id' must be a frame index (0, 1, ...) "
                             f"for a video input, got {frame!r}")
        dets_of[int(frame)].append(d)
    return dets_of


class _Outputs:
    """Collects what every frame gave and writes the files of the module docstring."""

    def __init__(self, est: PoseEstimator, meta: DatasetMeta, video: Path, output_dir: Path, fps: float,
                 frame_step: int, category_id: int, score_threshold: float, visualize: bool) -> None:
        self.est, self.meta, self.video, self.fps, self.frame_step = est, meta, video, fps, frame_step
        self.category_id, self.score_threshold = category_id, score_threshold
        self.output_dir = output_dir
        self.vis_path = output_dir / f"{video.stem}_pose.mp4" if visualize else None
        self.writer: cv2.VideoWriter | None = None
        self.results: list[dict[str, Any]] = []
        self.box_rows: list[list[Any]] = []
        self.index: list[int] = []
        self.instances: list[list[dict[str, Any]]] = []

    def add(self, index: int, frame: np.ndarray, instances: list[dict[str, Any]], reacquired: bool | None = None,
            labels: list[str | None] | None = None) -> None:
        t = index / self.fps
        extra: dict[str, Any] = {} if reacquired is None else {"reacquired": bool(reacquired)}
        for n, inst in enumerate(instances):
            # the detector's class is a COCO name, not one of the pose model's categories: kept as a label
            label = {} if labels is None or labels[n] is None else {"label": labels[n]}
            self.results.append(coco_result(inst, index, self.category_id, file_name=self.video.name, frame=index,
                                            time_s=round(t, 4), **extra, **label))
            self.box_rows.append([index, f"{t:.4f}", n, *(f"{v:.2f}" for v in inst["bbox"]), f"{inst['score']:.4f}",
                                  int(bool(reacquired))])
        self.index.append(index)
        self.instances.append(instances)
        if self.vis_path is not None:
            if self.writer is None:
                h, w = frame.shape[:2]
                self.writer = cv2.VideoWriter(str(self.vis_path), cv2.VideoWriter_fourcc(*"mp4v"),
                                              self.fps / self.frame_step, (w, h))
                if not self.writer.isOpened():
                    raise RuntimeError(f"{self.vis_path}: OpenCV cannot write mp4v video here "
                                       "(visualize=false skips it)")
            drawn = draw_instances(frame, instances, self.meta.skeleton, self.score_threshold,
                                   REACQUIRED_COLOR if reacquired else (255, 255, 255))
            self.writer.write(cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
            self.writer = None

    def write(self, multi_animal: bool, scorer: str, smoothing: dict[str, Any] | None) -> dict[str, Any]:
        stem = self.video.stem
        pred_path = write_results(self.output_dir / "predictions.json", self.results)
        boxes_path = self.output_dir / f"{stem}_boxes.csv"
        with open(boxes_path, "w", newline="") as fh:
            table = csv.writer(fh)
            table.writerow(["frame", "time_s", "instance", "box_x", "box_y", "box_w", "box_h", "score",
                            "reacquired"])
            table.writerows(self.box_rows)
        pose = table_from_instances(self.index, self.instances, list(self.meta.keypoint_names), scorer, multi_animal)
        files = write_pose_table(pose, self.output_dir / f"{stem}_{scorer}", smoothing)
        return {"predictions": pred_path, "boxes_csv": boxes_path, **files,
                "video": self.vis_path if self.vis_path is not None and self.index else None}


def run_video_prediction(
    est: PoseEstimator,
    video: str | Path,
    output_dir: Path,
    *,
    track: str = "none",
    follow: FollowConfig | None = None,
    detector: Detector | None = None,
    detections: Sequence[dict[str, Any]] | None = None,
    frame_step: int = 1,
    max_frames: int | None = None,
    score_threshold: float = 0.3,
    flip_test: bool = True,
    batch_size: int = 16,
    category_id: int = 1,
    visualize: bool = True,
    smoothing: dict[str, Any] | None = None,
    scorer: str = "clamp",
    keypoints: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Predict the frames of ``video`` and write the files of the module docstring.

    Args:
        track: ``"follow"`` (one animal, boxes from the previous frame; ``follow`` its settings) or ``"none"``.
        detector: finds the boxes of every frame (``track="none"``) or the candidates of a search (``"follow"``).
        detections: COCO detections, ``image_id`` = frame index (``track="none"`` only).
        score_threshold: keypoints at or below it are not drawn.
        keypoints: the keypoint names to predict (None: the model's trained vocabulary; see
            :meth:`PoseEstimator.predict`).
        smoothing: keyword arguments of :func:`clamp_pl.inference.smoothing.smooth_trajectories` (``method``, ``window``,
            ...) for the ``_filtered`` files; None = none written.

    Returns:
        ``{"frames", "instances", "reacquired" (frame indices), "searched" (frames searched when following),
        "boxes_predicted" (crops, flip test not counted), "seconds" (prediction time, decoding and writing
        excluded), "ms_per_frame", "fps", "predictions", "boxes_csv", "csv", "h5", "filtered_csv", "filtered_h5",
        "video", "keypoints" (the names predicted), "untrained_keypoints" (those never trained)}``.
    """
    if track not in TRACK_MODES:
        raise ValueError(f"track must be one of {TRACK_MODES}, got {track!r}")
    if track == "follow" and detections is not None:
        raise ValueError("track=follow makes its own boxes from the previous frame: give boxes= only with "
                         "track=none")
    meta = est.vocabulary(keypoints)  # before any work: a concat model asked for another count stops here
    video = Path(str(video)).expanduser()
    info = video_info(video)
    fps = info["fps"] if info["fps"] > 0 else 25.0
    output_dir.mkdir(parents=True, exist_ok=True)
    total = -(-info["frames"] // frame_step) if info["frames"] > 0 else None  # frames 0, step, 2 step, ...
    if max_frames is not None and total is not None:
        total = min(total, max_frames)
    out = _Outputs(est, meta, video, output_dir, fps, frame_step, category_id, score_threshold, visualize)
    stats = _Stats()
    frames = iter_frames(video, frame_step, max_frames)
    if track == "follow":
        steps = _follow(est, frames, follow, detector, flip_test, batch_size, stats, keypoints)
    else:
        dets_of = None if detections is None else _detections_by_frame(video, detections)
        steps = _batched(est, frames, dets_of, detector, flip_test, batch_size, stats, keypoints)
    try:
        with progress(total, video.name, "frame") as bar:
            for frame_step_out in steps:
                out.add(*frame_step_out)
                bar.update(1)
    finally:
        out.close()
    multi = track == "none" and (detections is not None or detector is not None)
    files = out.write(multi, scorer, smoothing)
    n = len(out.index)
    return {"frames": n, "instances": len(out.results), "reacquired": stats.reacquired, "searched": stats.searched,
            "boxes_predicted": stats.boxes_predicted, "seconds": stats.seconds,
            "ms_per_frame": 1000.0 * stats.seconds / max(n, 1), "fps": fps, **files,
            "keypoints": list(meta.keypoint_names), "untrained_keypoints": list(est.spec.untrained(keypoints))}


@dataclass
class _Stats:
    """What the prediction loops count: re-acquired frame indices, frames searched, crops predicted (flip test
    not counted) and the seconds spent predicting (decoding and writing excluded)."""

    reacquired: list[int] = field(default_factory=list)
    searched: int = 0
    boxes_predicted: int = 0
    seconds: float = 0.0


#: what each prediction loop yields per frame: index, frame, instances, re-acquired (None: not following),
#: the detector's class label of each instance (None: no detector)
FrameResult = tuple[int, np.ndarray, list[dict[str, Any]], bool | None, list[str | None] | None]


def _follow(est: PoseEstimator, frames: Iterator[tuple[int, np.ndarray]], follow: FollowConfig | None,
            detector: Detector | None, flip_test: bool, batch_size: int, stats: _Stats,
            keypoints: Sequence[str] | None = None) -> Iterator[FrameResult]:
    """One animal followed frame after frame: each box from the previous frame's keypoints (one frame at a time,
    since each box depends on the frame before), searched for again when lost."""

    def predict_boxes(frame: np.ndarray, boxes: list[list[float]], flip: bool = flip_test) -> list[dict[str, Any]]:
        return est.predict([frame], [boxes], keypoints=keypoints, flip_test=flip, batch_size=batch_size)[0]

    def rank_boxes(frame: np.ndarray, boxes: list[list[float]]) -> list[dict[str, Any]]:
        # the many candidates of a search are only ranked: no flip test (half the passes)
        return predict_boxes(frame, boxes, flip=False)

    def candidates(frame: np.ndarray) -> list[list[float]]:
        return [d["bbox"] for d in detector([frame])[0]] if detector is not None else []

    w_in, h_in = est.input_size
    follower = Follower(predict_boxes, w_in / h_in, follow, candidates if detector else None,
                        search_predict=rank_boxes if flip_test else None)
    for index, frame in frames:
        start = time.perf_counter()
        step = follower.step(frame)
        stats.seconds += time.perf_counter() - start
        if step.reacquired:
            stats.reacquired.append(index)
        stats.searched += step.searched
        stats.boxes_predicted += step.candidates
        yield index, frame, [step.instance], step.reacquired, None


def _batched(est: PoseEstimator, frames: Iterator[tuple[int, np.ndarray]],
             dets_of: dict[int, list[dict[str, Any]]] | None, detector: Detector | None, flip_test: bool,
             batch_size: int, stats: _Stats, keypoints: Sequence[str] | None = None) -> Iterator[FrameResult]:
    """Frames in batches of ``batch_size``: boxes from the detections file, the detector (its class labels kept)
    or one whole-frame box each."""
    for batch in iter_batches(frames, batch_size):
        images = [f for _, f in batch]
        start = time.perf_counter()
        labels: list[list[str | None]] | None = None
        if dets_of is not None:
            boxes = [dets_of.get(i, []) for i, _ in batch]
        elif detector is not None:
            found = detector(images)
            boxes = [[{"bbox": d["bbox"], "score": d["score"]} for d in dets] for dets in found]
            labels = [[d.get("label") for d in dets] for dets in found]
        else:
            boxes = None
        preds = est.predict(images, boxes, keypoints=keypoints, flip_test=flip_test, batch_size=batch_size)
        stats.seconds += time.perf_counter() - start
        stats.boxes_predicted += sum(len(p) for p in preds)
        for n, ((index, frame), instances) in enumerate(zip(batch, preds)):
            yield index, frame, instances, None, None if labels is None else labels[n]
