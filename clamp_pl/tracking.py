"""Follow one animal through a video without a detector (DeepLabCut's "dynamic cropping").

A top-down model needs a box around the animal. In a video the animal moves little from one frame to the next, so
the box of frame ``t + 1`` is made from frame ``t``'s confident keypoints, the same way training boxes are made
from labelled keypoints (:func:`clamp_pl.data.dlc.keypoint_box`: the keypoints' extent, pushed out on every side
by ``margin`` x its larger side), widened to the network's aspect ratio and averaged with the previous box
(``smoothing``) so that it does not jitter with the keypoints.

When the frame's mean keypoint score drops below ``score_threshold`` (the animal left the box, or the box
drifted) the animal is searched for again in that frame: every candidate box (a coarse grid of overlapping boxes at a few
sizes plus the whole frame, or a detector's boxes) is predicted in one batch, the best-scoring instance wins and
is refined once from its own keypoints. The mean over all keypoints ranks boxes rather than the rescored
instance ``score`` (which averages only keypoints above 0.2, so one spurious confident keypoint in an empty box
rates as high as a whole animal). The first frame is always a search. Frames whose box came from a search
are reported as *re-acquired*.

Numpy only: the pose model is reached through a ``predict(frame, boxes) -> instances`` callable (instances as
:meth:`clamp_pl.api.PoseEstimator.predict` gives them: ``keypoints [K, 2]`` image pixels, ``scores [K]``,
``score``); boxes are ``[x, y, w, h]`` image pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Instance = dict[str, Any]
PredictFn = Callable[[np.ndarray, list[list[float]]], list[Instance]]
CandidatesFn = Callable[[np.ndarray], list[list[float]]]

__all__ = ["FollowConfig", "FollowStep", "Follower", "box_from_keypoints", "fix_aspect", "grid_boxes", "quality"]


@dataclass(frozen=True)
class FollowConfig:
    """Settings of :class:`Follower` (``conf/predict.yaml``'s ``follow`` group).

    Attributes:
        margin: each side of the confident keypoints' extent is pushed out by ``margin`` x its larger side
            (the training boxes' margin); at least ``min_margin`` pixels.
        keypoint_threshold: keypoints scoring above it define the next box.
        min_keypoints: fewer confident keypoints than this: the box only moves to their mean (size kept), or
            stays where it was when there is none.
        score_threshold: a mean keypoint score below it means the animal is lost: search again.
        smoothing: weight of the previous box in the next one (exponential average of centre and size);
            0 = the box follows the keypoints exactly.
        search_scales: candidate box sides of the coarse search, as fractions of the frame's shorter side (the
            whole frame is always a candidate too).
        search_overlap: overlap of neighbouring candidates of one scale (0.5 = stride of half a box).
    """

    margin: float = 0.25
    min_margin: float = 4.0
    keypoint_threshold: float = 0.3
    min_keypoints: int = 2
    score_threshold: float = 0.2
    smoothing: float = 0.3
    search_scales: tuple[float, ...] = (0.3, 0.5, 0.8)
    search_overlap: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.smoothing < 1.0:
            raise ValueError(f"follow.smoothing must be in [0, 1), got {self.smoothing}")
        if not 0.0 <= self.search_overlap < 1.0:
            raise ValueError(f"follow.search_overlap must be in [0, 1), got {self.search_overlap}")
        if self.margin < 0 or self.min_margin < 0:
            raise ValueError(f"follow.margin and follow.min_margin must be >= 0, got {self.margin}, "
                             f"{self.min_margin}")
        if self.min_keypoints < 1:
            raise ValueError(f"follow.min_keypoints must be >= 1, got {self.min_keypoints}")
        if any(not 0.0 < s <= 1.0 for s in self.search_scales):
            raise ValueError(f"follow.search_scales must be fractions in (0, 1], got {list(self.search_scales)}")


@dataclass
class FollowStep:
    """What :meth:`Follower.step` did on one frame.

    Attributes:
        instance: the frame's prediction (a :meth:`~clamp_pl.api.PoseEstimator.predict` instance; its ``bbox``
            is the box that was predicted).
        reacquired: the box came from a search (first frame, or the followed box scored below the threshold
            and a candidate scored better).
        searched: a search ran on this frame (it may have found nothing better than the followed box).
        candidates: number of boxes predicted in this frame (1 when following, more when searching).
    """

    instance: Instance
    reacquired: bool
    searched: bool
    candidates: int


def fix_aspect(box: np.ndarray, aspect: float) -> np.ndarray:
    """Grow the shorter side of ``box`` ``[x, y, w, h]`` so that ``w / h == aspect``, centre kept."""
    x, y, w, h = (float(v) for v in box)
    cx, cy = x + w / 2, y + h / 2
    if w > aspect * h:
        h = w / aspect
    else:
        w = h * aspect
    return np.array([cx - w / 2, cy - h / 2, w, h])


def box_from_keypoints(
    keypoints: np.ndarray, margin: float = 0.25, min_margin: float = 4.0
) -> np.ndarray:
    """The box ``[x, y, w, h]`` of keypoints ``[N, 2]`` (N >= 1): their extent pushed out on every side by
    ``max(margin * larger side, min_margin)`` pixels (as training boxes from labels; not clipped to the frame)."""
    lo, hi = keypoints.min(0), keypoints.max(0)
    pad = max(margin * float((hi - lo).max()), min_margin)
    return np.array([lo[0] - pad, lo[1] - pad, hi[0] - lo[0] + 2 * pad, hi[1] - lo[1] + 2 * pad])


def grid_boxes(
    width: int, height: int, scales: Sequence[float] = (0.3, 0.5, 0.8), overlap: float = 0.5
) -> list[list[float]]:
    """Candidate boxes ``[x, y, w, h]`` covering a ``width`` x ``height`` frame: for each scale, square boxes of
    side ``scale * min(width, height)`` on a regular grid whose neighbours overlap by ``overlap`` (the last row
    and column touch the frame's edges), then the whole frame."""

    def starts(extent: float, side: float, stride: float) -> np.ndarray:
        n = max(int(np.ceil((extent - side) / stride)) + 1, 1)
        return np.linspace(0.0, max(extent - side, 0.0), n)

    out: list[list[float]] = []
    for s in scales:
        side = s * min(width, height)
        stride = max(side * (1.0 - overlap), 1.0)
        out += [[float(x), float(y), side, side] for y in starts(height, side, stride)
                for x in starts(width, side, stride)]
    out.append([0.0, 0.0, float(width), float(height)])
    return out


def quality(instance: Instance) -> float:
    """How surely an instance holds the animal: the mean of its keypoint scores ``[K]``."""
    return float(np.mean(instance["scores"]))


class Follower:
    """Follows one animal frame by frame (see the module docstring); call :meth:`step` on consecutive frames.

    Args:
        predict: ``predict(frame RGB [H, W, 3], boxes [[x, y, w, h], ...]) -> instances`` in box order.
        aspect: the network input's ``W / H`` (boxes are widened to it, as the crop would be).
        config: :class:`FollowConfig`.
        candidates: ``candidates(frame) -> boxes`` to search in (e.g. a detector's boxes); None or an empty
            answer = the coarse grid (:func:`grid_boxes`).
    """

    def __init__(
        self, predict: PredictFn, aspect: float = 1.0, config: FollowConfig | None = None,
        candidates: CandidatesFn | None = None,
    ) -> None:
        self.predict = predict
        self.aspect = float(aspect)
        self.config = config or FollowConfig()
        self.candidates = candidates
        self.box: np.ndarray | None = None  # the box for the next frame [x, y, w, h]
        self._grid: dict[tuple[int, int], list[list[float]]] = {}

    def reset(self) -> None:
        """Forget the followed box: the next frame is searched."""
        self.box = None

    def step(self, frame: np.ndarray) -> FollowStep:
        """Predict ``frame`` (RGB ``[H, W, 3]``) in the followed box (searching when lost) and make the next box."""
        cfg = self.config
        searched = reacquired = False
        n = 0
        inst: Instance | None = None
        if self.box is not None:
            inst = self.predict(frame, [self.box.tolist()])[0]
            n = 1
        if inst is None or quality(inst) < cfg.score_threshold:
            found, m = self._search(frame)
            searched, n = True, n + m
            if inst is None or quality(found) > quality(inst):
                inst, reacquired = found, True
        self._update(inst, frame.shape[1], frame.shape[0], reset=reacquired)
        return FollowStep(inst, reacquired, searched, n)

    def _search(self, frame: np.ndarray) -> tuple[Instance, int]:
        """Best instance over the candidate boxes, refined once from its keypoints; (instance, boxes predicted)."""
        h, w = frame.shape[:2]
        boxes = self.candidates(frame) if self.candidates is not None else []
        if not boxes:
            key = (w, h)
            if key not in self._grid:
                self._grid[key] = grid_boxes(w, h, self.config.search_scales, self.config.search_overlap)
            boxes = self._grid[key]
        preds = self.predict(frame, [list(map(float, b[:4])) for b in boxes])
        best = max(preds, key=quality)
        n = len(boxes)
        refined = self._box_of(best, previous=np.asarray(best["bbox"], dtype=np.float64))
        if refined is not None:
            again = self.predict(frame, [refined.tolist()])[0]
            n += 1
            if quality(again) >= quality(best):
                best = again
        return best, n

    def _box_of(self, inst: Instance, previous: np.ndarray | None) -> np.ndarray | None:
        """The box that the confident keypoints of ``inst`` make (aspect fixed), or None when too few are
        confident and there is no previous box to move."""
        cfg = self.config
        kpts = np.asarray(inst["keypoints"], dtype=np.float64)
        ok = (np.asarray(inst["scores"]) > cfg.keypoint_threshold) & np.isfinite(kpts).all(1)
        if ok.sum() >= cfg.min_keypoints:
            return fix_aspect(box_from_keypoints(kpts[ok], cfg.margin, cfg.min_margin), self.aspect)
        if ok.any() and previous is not None:
            # too few points to measure the animal's size: keep the size, move to where they are
            x, y, bw, bh = previous
            cx, cy = kpts[ok].mean(0)
            return np.array([cx - bw / 2, cy - bh / 2, bw, bh])
        return None

    def _update(self, inst: Instance, width: int, height: int, reset: bool) -> None:
        previous = np.asarray(inst["bbox"], dtype=np.float64)
        new = self._box_of(inst, previous)
        if new is None:
            # nothing confident: stay if the instance is still believed, else search the next frame
            self.box = previous if quality(inst) >= self.config.score_threshold else None
            return
        if self.box is not None and not reset and self.config.smoothing > 0:
            a = self.config.smoothing
            c_old, c_new = self.box[:2] + self.box[2:] / 2, new[:2] + new[2:] / 2
            c = a * c_old + (1 - a) * c_new
            size = a * self.box[2:] + (1 - a) * new[2:]
            new = np.concatenate([c - size / 2, size])
        # keep the centre inside the frame so that the crop always holds some of it
        c = np.clip(new[:2] + new[2:] / 2, 0.0, [width, height])
        self.box = np.concatenate([c - new[2:] / 2, new[2:]])
