"""Follow one animal through a video without a detector (DeepLabCut's "dynamic cropping").

A top-down model needs a box around the animal. In a video the animal moves little from one frame to the next, so
the box of frame ``t + 1`` is made from frame ``t``'s confident keypoints, the same way training boxes are made
from labelled keypoints (:func:`clamp_pl.core.geometry.keypoint_box`: the keypoints' extent, pushed out on every side
by ``margin`` x its larger side) and widened to the network's aspect ratio. Its centre follows the keypoints
exactly (averaging it with earlier boxes makes it lag behind a running animal); its size is averaged with the
previous box's (``smoothing``) and changes by at most ``max_resize`` per frame, so that a few misplaced or
unseen keypoints neither collapse nor blow it up.

When the frame's mean keypoint score drops below ``score_threshold`` (the animal left the box, or the box
drifted) the animal is searched for again in that frame: every candidate box (a coarse grid of overlapping boxes
at a few sizes plus the whole frame, or a detector's boxes) is predicted in one batch, the best-scoring instance
wins and is refined once from its own keypoints. The mean over all keypoints ranks boxes rather than the rescored
instance ``score`` (which averages only keypoints above 0.2, so one spurious confident keypoint in an empty box
rates as high as a whole animal). The first frame is always a search. Frames whose box came from a search
are reported as *re-acquired*.

No torch here: the pose model is reached through a ``predict(frame, boxes) -> instances`` callable (instances as
:meth:`clamp_pl.api.PoseEstimator.predict` gives them: ``keypoints [K, 2]`` image pixels, ``scores [K]``,
``score``); boxes are ``[x, y, w, h]`` image pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from clamp_pl.core.geometry import fix_box_aspect, keypoint_box

Instance = dict[str, Any]
PredictFn = Callable[[np.ndarray, list[list[float]]], list[Instance]]
CandidatesFn = Callable[[np.ndarray], list[list[float]]]

__all__ = ["FollowConfig", "FollowStep", "Follower", "grid_boxes", "quality"]


@dataclass(frozen=True)
class FollowConfig:
    """Settings of :class:`Follower` (``conf/predict.yaml``'s ``follow`` group).

    Attributes:
        margin: each side of the confident keypoints' extent is pushed out by ``margin`` x its larger side
            (the training boxes' margin); at least ``min_margin`` pixels.
        keypoint_threshold: keypoints scoring above it define the next box.
        min_keypoints: a box is made from at least this many keypoints (confident now, or earlier and moved
            along with the others: see :meth:`Follower._remember`); with fewer the box stays where it was.
        max_resize: from one frame to the next the box's side grows or shrinks by at most this factor (an
            animal's size in a video changes slowly; a few misplaced keypoints must not blow up or collapse
            the box). Not applied to a re-acquired box.
        refine_shift: when the keypoints found in a frame put the animal's centre more than this fraction of the
            box's side away from the box's centre (it moved fast), the frame is predicted again in the box they
            make and the better of the two is kept; None = never (one pass per followed frame).
        score_threshold: a mean keypoint score below it means the animal is lost: search again.
        smoothing: weight of the previous box's size in the next one (exponential average); 0 = the size
            the keypoints make. The centre is never averaged.
        search_scales: candidate box sides of the coarse search, as fractions of the frame's shorter side (the
            whole frame is always a candidate too).
        search_overlap: overlap of neighbouring candidates of one scale (0.5 = stride of half a box).
    """

    margin: float = 0.25
    min_margin: float = 4.0
    keypoint_threshold: float = 0.3
    min_keypoints: int = 2
    max_resize: float = 1.25
    refine_shift: float | None = 0.15
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
        if self.max_resize < 1.0:
            raise ValueError(f"follow.max_resize must be >= 1, got {self.max_resize}")
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
        candidates: number of boxes predicted in this frame (1 when following, 2 when recentred, more when
            searching).
    """

    instance: Instance
    reacquired: bool
    searched: bool
    candidates: int


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
        search_predict: ``predict`` for the many candidates of a search (e.g. without flip test: only their
            ranking matters, the winner is predicted again with ``predict``); None = ``predict``.
    """

    def __init__(
        self, predict: PredictFn, aspect: float = 1.0, config: FollowConfig | None = None,
        candidates: CandidatesFn | None = None, search_predict: PredictFn | None = None,
    ) -> None:
        self.predict = predict
        self.search_predict = search_predict or predict
        self.aspect = float(aspect)
        self.config = config or FollowConfig()
        self.candidates = candidates
        self.box: np.ndarray | None = None  # the box for the next frame [x, y, w, h]
        self._memory: np.ndarray | None = None  # where each keypoint is believed to be [K, 2] (see _remember)
        self._grid: dict[tuple[int, int], list[list[float]]] = {}

    def step(self, frame: np.ndarray) -> FollowStep:
        """Predict ``frame`` (RGB ``[H, W, 3]``) in the followed box (searching when lost) and make the next box."""
        cfg = self.config
        searched = reacquired = False
        n = 0
        inst: Instance | None = None
        if self.box is not None:
            inst = self.predict(frame, [self.box.tolist()])[0]
            n = 1
            again = self._recentre(frame, inst)
            if again is not None:
                n += 1
                if quality(again) > quality(inst):
                    inst = again
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
        preds = self.search_predict(frame, [list(map(float, b[:4])) for b in boxes])
        winner = max(preds, key=quality)
        n = len(boxes)
        best = winner
        if self.search_predict is not self.predict:  # the winner as the followed boxes are predicted
            best = self.predict(frame, [list(map(float, winner["bbox"]))])[0]
            n += 1
        refined = self._next_box(self._remember(best, None))
        if refined is not None:
            again = self.predict(frame, [refined.tolist()])[0]
            n += 1
            if quality(again) >= quality(best):
                best = again
        return best, n

    def _recentre(self, frame: np.ndarray, inst: Instance) -> Instance | None:
        """``inst`` predicted again in the box its keypoints make, when that box's centre is more than
        ``refine_shift`` of the side away from the followed box's; else None."""
        shift = self.config.refine_shift
        if shift is None or self.box is None:
            return None
        box = self._next_box(self._remember(inst, self._memory))
        if box is None:
            return None
        moved = np.linalg.norm((box[:2] + box[2:] / 2) - (self.box[:2] + self.box[2:] / 2))
        if moved <= shift * float(self.box[2:].max()):
            return None
        return self.predict(frame, [box.tolist()])[0]

    def _confident(self, inst: Instance) -> tuple[np.ndarray, np.ndarray]:
        """Keypoints ``[K, 2]`` of ``inst`` and which of them are confident ``[K]``."""
        kpts = np.asarray(inst["keypoints"], dtype=np.float64)
        return kpts, (np.asarray(inst["scores"]) > self.config.keypoint_threshold) & np.isfinite(kpts).all(1)

    def _remember(self, inst: Instance, memory: np.ndarray | None) -> np.ndarray:
        """Where each keypoint is believed to be after ``inst``: ``[K, 2]``, NaN = not seen since the last search.

        Confident keypoints are taken as they are; the others keep their last confident position, moved by how
        far the keypoints confident in both moved. So a box keeps the whole animal while, say, only its head is
        seen: made from the head alone it would shrink to the head.
        """
        kpts, ok = self._confident(inst)
        mem = np.full_like(kpts, np.nan) if memory is None else memory.copy()
        known = np.isfinite(mem).all(1)
        both = ok & known
        if both.any():
            mem[known & ~ok] += (kpts[both] - mem[both]).mean(0)
        mem[ok] = kpts[ok]
        return mem

    def _next_box(self, memory: np.ndarray) -> np.ndarray | None:
        """The box (aspect fixed) around the remembered keypoints, or None when fewer than ``min_keypoints`` are
        known."""
        cfg = self.config
        known = np.isfinite(memory).all(1)
        if known.sum() < cfg.min_keypoints:
            return None
        return fix_box_aspect(keypoint_box(memory[known], cfg.margin, cfg.min_margin), self.aspect)

    def _update(self, inst: Instance, width: int, height: int, reset: bool) -> None:
        if quality(inst) < self.config.score_threshold and not self._confident(inst)[1].any():
            self.box, self._memory = None, None  # nothing to follow: search the next frame from scratch
            return
        memory = self._remember(inst, None if reset else self._memory)
        new = self._next_box(memory)
        if new is None:
            new = np.asarray(inst["bbox"], dtype=np.float64)  # too few points to measure: stay
        self._memory = memory
        if self.box is not None and not reset:
            a, r = self.config.smoothing, self.config.max_resize
            size = np.clip(a * self.box[2:] + (1 - a) * new[2:], self.box[2:] / r, self.box[2:] * r)
            new = np.concatenate([new[:2] + new[2:] / 2 - size / 2, size])
        # keep the centre inside the frame so that the crop always holds some of it
        c = np.clip(new[:2] + new[2:] / 2, 0.0, [width, height])
        self.box = np.concatenate([c - new[2:] / 2, new[2:]])
