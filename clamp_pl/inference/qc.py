"""Label-free quality checks of predicted poses, and the frames worth labelling next.

Every signal is computed per frame without labels, and reads "higher = more suspicious":

* ``confidence``: ``1 - score`` per keypoint (the heatmap maximum); per frame, ``1 -`` the lowest score.
* ``flip``: the distance between the keypoints of the original crop and of the mirrored crop (decoded
  separately, the mirrored one flipped back with the left/right swap), divided by the box's longer side. The flip
  test averages both passes anyway; where they disagree the network is unsure of the place or of left and right.
* ``jump``: the distance from a keypoint to the midpoint of its positions in the neighbouring frames (at either
  end of the video, to where the next two frames extrapolate), divided by the box's longer side and then by a
  robust threshold of that keypoint over the video, ``median + k * 1.4826 * MAD``: above 1 = beyond the
  threshold. A glitch leaves and comes back; steady motion, fast or slow, stays near the midpoint.
* ``pose``: the distance of each keypoint from the reconstruction of the pose in a shape model of the model's own
  training labels (:func:`fit_pose_prior`, stored in the model spec as ``pose_prior``): the pose is centred,
  scaled to unit RMS radius and rotated onto the mean shape (Procrustes), and what its principal components do
  not explain is the error, in units of the pose's RMS radius. Models without a prior lack this signal.
* ``ensemble``: with several models, the mean distance of their keypoints (on the same boxes) from the mean of
  them, divided by the box's longer side.

Per frame each signal is the maximum over keypoints (one bad keypoint makes a bad frame). ``combined`` is the
mean of the available signals after ranking each over the frames (rank / number of frames, in (0, 1]): the
signals live on different scales and a rank mean needs no weights.

The frames to label next (:func:`select_frames`): the ``candidates x n`` highest-ranked frames not labelled yet,
clustered by their box-normalised poses with k-means into ``n`` groups, and the highest-ranked frame of each
group: DeepLabCut's way of keeping the picked frames diverse (a plain numpy k-means, :func:`kmeans`).

Plain torch + numpy + cv2 (+ matplotlib for the picture): no Lightning, Hydra or OmegaConf.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clamp_pl.inference.estimator import PoseEstimator
from clamp_pl.inference.postprocess import decode_heatmaps, flip_passes
from clamp_pl.inference.tracking import FollowConfig, Follower
from clamp_pl.inference.video import VIDEO_SUFFIXES, is_video, iter_batches, iter_frames, video_info

log = logging.getLogger("clamp_pl")

__all__ = [
    "COMBINED",
    "SIGNALS",
    "VideoQC",
    "box_size",
    "combine",
    "ensemble_spread",
    "find_outliers",
    "fit_pose_prior",
    "flip_disagreement",
    "frame_signals",
    "kmeans",
    "parse_signal",
    "plot_qc",
    "pose_errors",
    "predict_two_passes",
    "project_videos",
    "rank_normalize",
    "read_frames",
    "resolve_inputs",
    "run_video_qc",
    "select_frames",
    "summary",
    "temporal_jump",
    "write_qc_csv",
]

#: the single signals, in the order of the CSV columns and the picture's panels
SIGNALS = ("confidence", "flip", "jump", "pose", "ensemble")
#: the default ranking: the rank-normalised mean of every available signal
COMBINED = "combined"
_MAD_TO_SIGMA = 1.4826  # MAD x this = the standard deviation of a normal distribution


# ------------------------------------------------------------------------------------------------ pose prior
def _unit_shapes(keypoints: np.ndarray) -> np.ndarray:
    """Poses ``[N, K, 2]`` (or complex ``[N, K]``) -> complex shapes ``[N, K]``, centred and scaled to unit RMS
    radius (a pose whose keypoints all coincide stays at zero)."""
    z = keypoints if np.iscomplexobj(keypoints) else keypoints[..., 0] + 1j * keypoints[..., 1]
    z = z - z.mean(axis=-1, keepdims=True)
    radius = np.sqrt((np.abs(z) ** 2).mean(axis=-1, keepdims=True))
    return z / np.where(radius > 0, radius, 1.0)


def _align(shapes: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Rotate unit shapes ``[N, K]`` (complex) onto ``reference`` ``[K]``: the rotation minimising the squared
    distance is the phase of ``sum(conj(shape) * reference)``; no reflection (left and right must stay apart)."""
    inner = (np.conj(shapes) * reference).sum(axis=-1, keepdims=True)
    return shapes * np.exp(1j * np.angle(inner))


def _as_vectors(z: np.ndarray) -> np.ndarray:
    """Complex ``[N, K]`` -> real ``[N, 2K]`` (x0, y0, x1, y1, ...)."""
    return np.stack([z.real, z.imag], axis=-1).reshape(z.shape[0], -1)


def fit_pose_prior(
    keypoints: np.ndarray, visible: np.ndarray | None = None, variance: float = 0.9, min_instances: int = 5,
    iterations: int = 10,
) -> dict[str, Any] | None:
    """A Procrustes shape model of labelled poses, as primitives for the model spec's ``pose_prior``.

    Args:
        keypoints: ``[N, K, 2]`` labelled poses (image pixels).
        visible: ``[N, K]`` labelled flags; only fully labelled poses are used. None = all labelled.
        variance: fraction of the aligned shapes' variance the kept principal components explain; at most
            ``2K - 5`` components are kept (the shape space of K points in the plane has ``2K - 4`` dimensions),
            so some of it is always left for the error.
        min_instances: fewer fully labelled poses than this give no prior (None).
        iterations: generalised Procrustes iterations (the mean shape converges in a few).

    Returns:
        ``{"method": "procrustes_pca", "mean": [[x, y]] * K (unit RMS radius), "components": [[2K floats]] * C,
        "explained": [C floats], "n_train", "train_error_p95"}`` or None.
    """
    kpts = np.asarray(keypoints, dtype=np.float64)
    if kpts.ndim != 3 or kpts.shape[-1] != 2:
        raise ValueError(f"fit_pose_prior: keypoints must be [N, K, 2], got {kpts.shape}")
    ok = np.isfinite(kpts).all(axis=(1, 2))
    if visible is not None:
        ok &= np.asarray(visible, dtype=bool).all(axis=1)
    kpts = kpts[ok]
    k = kpts.shape[1]
    if len(kpts) < min_instances or k < 3:
        return None
    shapes = _unit_shapes(kpts)
    shapes = shapes[np.abs(shapes).sum(axis=1) > 0]
    if len(shapes) < min_instances:
        return None
    mean = shapes[0]
    for _ in range(iterations):
        aligned = _align(shapes, mean)
        new = _unit_shapes(aligned.mean(axis=0, keepdims=True))[0]
        new = _align(new[None], mean)[0]
        if np.abs(new - mean).max() < 1e-9:
            mean = new
            break
        mean = new
    aligned = _align(shapes, mean)
    x = _as_vectors(aligned) - _as_vectors(mean[None])
    _, sing, vt = np.linalg.svd(x, full_matrices=False)
    var = sing ** 2
    total = var.sum()
    frac = np.cumsum(var) / total if total > 0 else np.ones_like(var)
    n_comp = int(min(np.searchsorted(frac, variance) + 1, max(2 * k - 5, 0), len(var)))
    prior = {"method": "procrustes_pca", "mean": [[float(z.real), float(z.imag)] for z in mean],
             "components": vt[:n_comp].tolist(),
             "explained": (var[:n_comp] / total if total > 0 else var[:n_comp]).tolist(),
             "n_train": int(len(shapes))}
    prior["train_error_p95"] = float(np.percentile(pose_errors(prior, kpts).max(axis=1), 95))
    return prior


def pose_errors(prior: dict[str, Any], keypoints: np.ndarray) -> np.ndarray:
    """Per keypoint, the distance of poses ``[T, K, 2]`` from their reconstruction in ``prior``
    (:func:`fit_pose_prior`), in units of each pose's RMS radius: ``[T, K]`` (NaN for a pose with a NaN)."""
    kpts = np.asarray(keypoints, dtype=np.float64)
    mean = np.asarray(prior["mean"], dtype=np.float64)
    if kpts.shape[1:] != mean.shape:
        raise ValueError(f"pose prior of {mean.shape[0]} keypoints, poses of {kpts.shape[1]}")
    comps = np.asarray(prior["components"], dtype=np.float64).reshape(-1, mean.size)
    finite = np.isfinite(kpts).all(axis=(1, 2))
    out = np.full(kpts.shape[:2], np.nan)
    if not finite.any():
        return out
    z_mean = mean[:, 0] + 1j * mean[:, 1]
    x = _as_vectors(_align(_unit_shapes(kpts[finite]), z_mean)) - _as_vectors(z_mean[None])
    resid = x - (x @ comps.T) @ comps
    out[finite] = np.linalg.norm(resid.reshape(len(x), -1, 2), axis=-1)
    return out


# ------------------------------------------------------------------------------------------------ predictions
@torch.no_grad()
def predict_two_passes(
    est: PoseEstimator, crops: np.ndarray, centers: np.ndarray, scales: np.ndarray, batch_size: int = 16
) -> dict[str, np.ndarray]:
    """The flip test with both passes kept: normalised crops ``[N, 3, H, W]`` with their box centres/scales
    ``[N, 2]`` -> ``keypoints`` (the flip-test average, as :meth:`PoseEstimator.predict_crops` gives),
    ``original``, ``flipped`` (each pass decoded alone; the flipped one flipped back) ``[N, K, 2]`` image pixels,
    and ``scores`` ``[N, K]`` of the average."""
    out: dict[str, list[np.ndarray]] = {"keypoints": [], "scores": [], "original": [], "flipped": []}
    spec = est.spec
    for s in range(0, len(crops), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(crops[s:s + batch_size])).to(est.device)
        b = batch.shape[0]
        hm_orig, hm_flip = flip_passes(lambda x: est.net(x)["heatmaps"], batch, spec.flip_indices,
                                       spec.shift_heatmap)
        c, sc = centers[s:s + b], scales[s:s + b]
        k, score = decode_heatmaps(est.codec, 0.5 * (hm_orig + hm_flip), c, sc)
        out["keypoints"].append(k)
        out["scores"].append(score)
        out["original"].append(decode_heatmaps(est.codec, hm_orig, c, sc)[0])
        out["flipped"].append(decode_heatmaps(est.codec, hm_flip, c, sc)[0])
    return {key: np.concatenate(v) for key, v in out.items()}


def _predict_boxes(est: PoseEstimator, images: Sequence[np.ndarray], boxes: Sequence[Sequence[float]],
                   batch_size: int) -> dict[str, np.ndarray]:
    """One box ``[x, y, w, h]`` per RGB image -> :func:`predict_two_passes` of their crops."""
    cut = [est.crop(img, box) for img, box in zip(images, boxes)]
    return predict_two_passes(est, np.stack([c[0] for c in cut]), np.stack([c[1] for c in cut]),
                              np.stack([c[2] for c in cut]), batch_size)


def _instances(pred: dict[str, np.ndarray], boxes: Sequence[Sequence[float]]) -> list[dict[str, Any]]:
    """:func:`predict_two_passes` rows as :meth:`PoseEstimator.predict` instances plus ``original``/``flipped``."""
    return [{"bbox": [float(v) for v in box[:4]], "keypoints": pred["keypoints"][n], "scores": pred["scores"][n],
             "score": float(np.mean(pred["scores"][n])), "original": pred["original"][n],
             "flipped": pred["flipped"][n], "category_id": None} for n, box in enumerate(boxes)]


# ------------------------------------------------------------------------------------------------ signals
def box_size(boxes: np.ndarray) -> np.ndarray:
    """The longer side of boxes ``[T, 4]`` (xywh) -> ``[T]`` (at least 1 px)."""
    return np.maximum(np.asarray(boxes, dtype=np.float64)[:, 2:4].max(axis=1), 1.0)


def flip_disagreement(original: np.ndarray, flipped: np.ndarray, size: np.ndarray) -> np.ndarray:
    """``|original - flipped|`` per keypoint ``[T, K]`` over the box size ``[T]``."""
    return np.linalg.norm(np.asarray(original) - np.asarray(flipped), axis=-1) / np.asarray(size)[:, None]


def temporal_jump(keypoints: np.ndarray, size: np.ndarray, k: float = 3.0, floor: float = 1e-3) -> np.ndarray:
    """Jump ratios ``[T, K]`` of a trajectory ``[T, K, 2]`` (consecutive rows = neighbouring frames): the distance
    to the midpoint of the neighbours (at the ends, the extrapolation of the next two) over the box size ``[T]``,
    divided by ``median + k * 1.4826 * MAD`` of that keypoint's distances (at least ``floor``); above 1 = beyond the threshold. One frame gives zeros."""
    kp = np.asarray(keypoints, dtype=np.float64)
    t = len(kp)
    if t < 2:
        return np.zeros(kp.shape[:2])
    ref = np.empty_like(kp)
    ref[1:-1] = 0.5 * (kp[:-2] + kp[2:])
    if t > 2:  # the ends: the position the next two frames extrapolate to
        ref[0], ref[-1] = 2 * kp[1] - kp[2], 2 * kp[-2] - kp[-3]
    else:
        ref[0], ref[-1] = kp[1], kp[0]
    dist = np.linalg.norm(kp - ref, axis=-1) / np.asarray(size)[:, None]
    med = np.nanmedian(dist, axis=0)
    mad = np.nanmedian(np.abs(dist - med), axis=0)
    return dist / np.maximum(med + k * _MAD_TO_SIGMA * mad, floor)


def ensemble_spread(members: np.ndarray, size: np.ndarray) -> np.ndarray:
    """Mean distance of the models' keypoints ``[M, T, K, 2]`` from their mean, over the box size: ``[T, K]``."""
    m = np.asarray(members, dtype=np.float64)
    return np.linalg.norm(m - m.mean(axis=0), axis=-1).mean(axis=0) / np.asarray(size)[:, None]


def rank_normalize(values: np.ndarray) -> np.ndarray:
    """Ranks of ``[T]`` over its finite entries, divided by their number: (0, 1], the largest 1 (ties get their
    mean rank); NaN stays NaN."""
    v = np.asarray(values, dtype=np.float64)
    out = np.full(v.shape, np.nan)
    ok = np.isfinite(v)
    n = int(ok.sum())
    if n == 0:
        return out
    vals = v[ok]
    order = np.argsort(vals, kind="stable")
    ranks = np.empty(n)
    ranks[order] = np.arange(1, n + 1)
    uniq, inverse = np.unique(vals, return_inverse=True)  # ties: the mean of their ranks
    sums = np.bincount(inverse, weights=ranks)
    ranks = (sums / np.bincount(inverse))[inverse]
    out[ok] = ranks / n
    return out


def parse_signal(signal: str | Sequence[str]) -> list[str]:
    """``"combined"``, one signal name, ``"flip+pose"`` or a list of names -> the signal names to rank by."""
    names = [signal] if isinstance(signal, str) else list(signal)
    names = [p.strip() for n in names for p in str(n).split("+") if p.strip()]
    if names == [COMBINED]:
        return list(SIGNALS)
    unknown = [n for n in names if n not in SIGNALS]
    if unknown or not names:
        raise ValueError(f"signal: unknown {unknown or names}; use {COMBINED!r}, one of {list(SIGNALS)} or names "
                         "joined by '+' (flip+pose)")
    return names


def combine(signals: dict[str, np.ndarray], names: Sequence[str]) -> np.ndarray:
    """The frame ranking of ``names``: one signal as it is; several, the mean of their :func:`rank_normalize`
    (signals missing from ``signals`` or NaN in a frame are left out of that frame's mean)."""
    present = [n for n in names if n in signals]
    if not present:
        raise ValueError(f"none of the signals {list(names)} is available (available: {sorted(signals)})")
    if len(present) == 1:
        return np.asarray(signals[present[0]], dtype=np.float64)
    ranks = np.stack([rank_normalize(signals[n]) for n in present])
    with np.errstate(invalid="ignore"):
        return np.nanmean(np.where(np.isfinite(ranks), ranks, np.nan), axis=0)


# ------------------------------------------------------------------------------------------------ a video
@dataclass
class VideoQC:
    """The predictions of one video and their quality signals.

    Attributes:
        video: the video file.
        frames: ``[T]`` frame indices read.
        fps: the container's frame rate.
        boxes: ``[T, 4]`` the box of each frame (xywh image pixels).
        keypoints, original, flipped: ``[T, K, 2]`` image pixels (the flip-test average, each pass alone).
        scores: ``[T, K]`` keypoint scores of the average.
        bodyparts: the ``K`` keypoint names.
        members: ``[M, T, K, 2]`` every model's keypoints on the same boxes (the first is ``keypoints``), or None
            with one model.
        per_keypoint: signal -> ``[T, K]`` (:func:`frame_signals` fills it).
        per_frame: signal -> ``[T]`` (the maximum over keypoints).
    """

    video: Path
    frames: np.ndarray
    fps: float
    boxes: np.ndarray
    keypoints: np.ndarray
    original: np.ndarray
    flipped: np.ndarray
    scores: np.ndarray
    bodyparts: list[str]
    members: np.ndarray | None = None
    per_keypoint: dict[str, np.ndarray] = field(default_factory=dict)
    per_frame: dict[str, np.ndarray] = field(default_factory=dict)

    def normalized_poses(self) -> np.ndarray:
        """``[T, K * 2]`` keypoints relative to the box centre over the box's longer side (for clustering)."""
        centre = self.boxes[:, :2] + 0.5 * self.boxes[:, 2:4]
        rel = (self.keypoints - centre[:, None]) / box_size(self.boxes)[:, None, None]
        return rel.reshape(len(rel), -1)


def frame_signals(qc: VideoQC, pose_prior: dict[str, Any] | None = None, jump_k: float = 3.0) -> VideoQC:
    """Fill ``qc.per_keypoint`` and ``qc.per_frame`` with every signal the inputs allow (``pose`` needs a prior,
    ``ensemble`` several models); returns ``qc``."""
    size = box_size(qc.boxes)
    per_kp = {"confidence": 1.0 - qc.scores.astype(np.float64),
              "flip": flip_disagreement(qc.original, qc.flipped, size),
              "jump": temporal_jump(qc.keypoints, size, jump_k)}
    if pose_prior is not None:
        per_kp["pose"] = pose_errors(pose_prior, qc.keypoints)
    if qc.members is not None and len(qc.members) > 1:
        per_kp["ensemble"] = ensemble_spread(qc.members, size)
    qc.per_keypoint = per_kp
    qc.per_frame = {name: np.nanmax(v, axis=1) for name, v in per_kp.items()}
    return qc


def run_video_qc(
    estimators: Sequence[PoseEstimator],
    video: str | Path,
    *,
    track: str = "none",
    follow: FollowConfig | None = None,
    boxes: np.ndarray | None = None,
    frame_step: int = 1,
    max_frames: int | None = None,
    batch_size: int = 16,
    jump_k: float = 3.0,
    progress: Callable[[int], None] | None = None,
) -> VideoQC:
    """Predict every ``frame_step``-th frame of ``video`` with ``estimators[0]`` (both flip passes kept) and the
    other models on the same boxes, and compute the signals (:func:`frame_signals`, the first model's
    ``spec.pose_prior``).

    Args:
        track: ``"none"`` = one whole-frame box per frame (or ``boxes``); ``"follow"`` = each box from the
            previous frame's keypoints (:class:`clamp_pl.inference.tracking.Follower`, settings ``follow``).
        boxes: ``[T, 4]`` one box (xywh image pixels) per frame read, with ``track="none"``.
        progress: called with the number of frames done after each step.
    """
    if not estimators:
        raise ValueError("run_video_qc: no model given")
    est, others = estimators[0], list(estimators[1:])
    names = list(est.spec.meta["keypoint_names"])
    for m, other in enumerate(others, start=2):
        theirs = list(other.spec.meta["keypoint_names"])
        if theirs != names:
            raise ValueError(f"model {m}: keypoints {theirs} differ from the first model's {names}: an ensemble "
                             "needs one keypoint layout")
    video = Path(str(video)).expanduser()
    info = video_info(video)
    rows: list[tuple[int, dict[str, Any]]] = []
    member_kpts: list[list[np.ndarray]] = [[] for _ in others]

    def add(batch: list[tuple[int, np.ndarray]], instances: list[dict[str, Any]]) -> None:
        rows.extend((i, inst) for (i, _), inst in zip(batch, instances))
        boxes = [inst["bbox"] for inst in instances]
        for m, other in enumerate(others):
            member_kpts[m].append(_predict_boxes(other, [f for _, f in batch], boxes, batch_size)["keypoints"])
        if progress is not None:
            progress(len(batch))

    frames = iter_frames(video, frame_step, max_frames)
    if track == "follow":
        if boxes is not None:
            raise ValueError("track=follow makes its own boxes: give boxes only with track='none'")
        w_in, h_in = est.input_size

        def predict(frame: np.ndarray, boxes: list[list[float]]) -> list[dict[str, Any]]:
            return _instances(_predict_boxes(est, [frame] * len(boxes), boxes, batch_size), boxes)

        follower = Follower(predict, w_in / h_in, follow)
        for index, frame in frames:
            add([(index, frame)], [follower.step(frame).instance])
    elif track == "none":
        done = 0
        for batch in iter_batches(frames, batch_size):
            if boxes is None:
                cut = [[0.0, 0.0, float(f.shape[1]), float(f.shape[0])] for _, f in batch]
            else:
                cut = [list(map(float, b)) for b in boxes[done:done + len(batch)]]
                if len(cut) < len(batch):
                    raise ValueError(f"{video}: {len(boxes)} boxes for more frames than that")
            done += len(batch)
            add(batch, _instances(_predict_boxes(est, [f for _, f in batch], cut, batch_size), cut))
    else:
        raise ValueError(f"track must be 'none' or 'follow', got {track!r}")
    if boxes is not None and len(boxes) != len(rows):
        raise ValueError(f"{video}: {len(boxes)} boxes for {len(rows)} frames read")
    insts = [inst for _, inst in rows]
    kpts = np.stack([np.asarray(i["keypoints"], dtype=np.float64) for i in insts])
    members = None
    if others:
        members = np.stack([kpts] + [np.concatenate(m).astype(np.float64) for m in member_kpts])
    qc = VideoQC(
        video=video, frames=np.array([i for i, _ in rows]), fps=info["fps"] if info["fps"] > 0 else 25.0,
        boxes=np.array([i["bbox"] for i in insts], dtype=np.float64), keypoints=kpts,
        original=np.stack([i["original"] for i in insts]).astype(np.float64),
        flipped=np.stack([i["flipped"] for i in insts]).astype(np.float64),
        scores=np.stack([i["scores"] for i in insts]).astype(np.float64), bodyparts=list(names), members=members,
    )
    return frame_signals(qc, est.spec.pose_prior, jump_k)


# ------------------------------------------------------------------------------------------------ selection
def kmeans(x: np.ndarray, k: int, seed: int = 0, iterations: int = 100) -> np.ndarray:
    """Cluster labels ``[N]`` of the rows of ``x`` ``[N, D]`` into ``min(k, N)`` groups: k-means++ seeding
    (``numpy.random.RandomState(seed)``) and Lloyd iterations until the labels stop changing."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    k = min(int(k), n)
    if k <= 1:
        return np.zeros(n, dtype=int)
    rng = np.random.RandomState(seed)
    centres = [x[rng.randint(n)]]
    for _ in range(1, k):
        d2 = ((x[:, None] - np.asarray(centres)[None]) ** 2).sum(-1).min(axis=1)
        total = d2.sum()
        centres.append(x[rng.choice(n, p=d2 / total)] if total > 0 else x[rng.randint(n)])
    c = np.asarray(centres)
    labels = np.full(n, -1)
    for _ in range(iterations):
        new = ((x[:, None] - c[None]) ** 2).sum(-1).argmin(axis=1)
        if (new == labels).all():
            break
        labels = new
        for j in range(k):
            if (labels == j).any():
                c[j] = x[labels == j].mean(axis=0)
    return labels


def select_frames(
    ranking: np.ndarray, poses: np.ndarray, n: int, exclude: np.ndarray | None = None, candidates: int = 3,
    seed: int = 0,
) -> np.ndarray:
    """Up to ``n`` row indices, highest ranking first, none in ``exclude``.

    Args:
        ranking: ``[T]`` higher = more worth labelling (NaN rows are never picked).
        poses: ``[T, D]`` the rows' normalised poses (:meth:`VideoQC.normalized_poses`).
        exclude: ``[T]`` True for frames already labelled or proposed.
        candidates: the ``candidates * n`` best rows are clustered into ``n`` groups (:func:`kmeans`), and each
            group gives its best row (fewer groups, as identical poses make, are filled up with the best of the
            other candidates); 1 = simply the ``n`` best.
    """
    r = np.asarray(ranking, dtype=np.float64)
    ok = np.isfinite(r)
    if exclude is not None:
        ok &= ~np.asarray(exclude, dtype=bool)
    avail = np.flatnonzero(ok)
    if n <= 0 or avail.size == 0:
        return np.zeros(0, dtype=int)
    order = avail[np.argsort(-r[avail], kind="stable")]
    pool = order[:max(n, n * max(int(candidates), 1))]
    if len(pool) <= n:
        return pool
    labels = kmeans(np.asarray(poses, dtype=np.float64)[pool], n, seed)
    best = [pool[labels == j][0] for j in np.unique(labels)]  # pool is sorted: the first of a group is its best
    # identical poses make fewer groups than n: the best of the rest fill up
    chosen = set(best)
    best += [i for i in pool if i not in chosen][:n - len(best)]
    return np.asarray(sorted(best, key=lambda i: -r[i]), dtype=int)


# ------------------------------------------------------------------------------------------------ outputs
def write_qc_csv(qc: VideoQC, path: str | Path, ranking: np.ndarray | None = None,
                 picked: Sequence[int] = (), labelled: np.ndarray | None = None) -> Path:
    """``<stem>_qc.csv``: one row per frame read: ``frame, time_s``, the box, per keypoint ``x/<name>, y/<name>,
    score/<name>`` and ``<signal>/<name>`` for every signal, then one column per frame signal (higher = more
    suspicious), ``ranking`` (what frames were ranked by, when given), ``picked`` (1 = proposed for labelling)
    and ``labelled`` (1 = already labelled or proposed before)."""
    path = Path(path)
    names = qc.bodyparts
    sigs = [s for s in SIGNALS if s in qc.per_keypoint]
    header = ["frame", "time_s", "box_x", "box_y", "box_w", "box_h"]
    header += [f"{c}/{n}" for n in names for c in ("x", "y", "score")]
    header += [f"{s}/{n}" for s in sigs for n in names]
    header += sigs + (["ranking"] if ranking is not None else []) + ["picked", "labelled"]
    chosen = set(int(i) for i in picked)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for t in range(len(qc.frames)):
            row: list[Any] = [int(qc.frames[t]), f"{qc.frames[t] / qc.fps:.4f}", *(f"{v:.2f}" for v in qc.boxes[t])]
            for k in range(len(names)):
                row += [f"{qc.keypoints[t, k, 0]:.3f}", f"{qc.keypoints[t, k, 1]:.3f}", f"{qc.scores[t, k]:.4f}"]
            row += [f"{qc.per_keypoint[s][t, k]:.5f}" for s in sigs for k in range(len(names))]
            row += [f"{qc.per_frame[s][t]:.5f}" for s in sigs]
            if ranking is not None:
                row.append(f"{ranking[t]:.5f}")
            row += [int(t in chosen), int(bool(labelled[t])) if labelled is not None else 0]
            w.writerow(row)
    return path


def plot_qc(qc: VideoQC, path: str | Path, ranking: np.ndarray | None = None, picked: Sequence[int] = (),
            title: str | None = None) -> Path:
    """One picture of the frame signals over the video (one panel each, and the ranking), the picked frames
    marked by red lines; written with matplotlib's Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(s, qc.per_frame[s]) for s in SIGNALS if s in qc.per_frame]
    if ranking is not None:
        panels.append(("ranking", ranking))
    fig, axes = plt.subplots(len(panels), 1, figsize=(7.5, 1.15 * len(panels) + 0.6), sharex=True, squeeze=False)
    picked_frames = qc.frames[np.asarray(list(picked), dtype=int)] if len(picked) else []
    for ax, (name, values) in zip(axes[:, 0], panels):
        ax.plot(qc.frames, values, lw=0.9, color="tab:blue")
        for f in picked_frames:
            ax.axvline(f, color="tab:red", lw=0.8, alpha=0.7)
        ax.set_ylabel(name, fontsize=8, rotation=0, ha="right", va="center")
        ax.tick_params(labelsize=7)
    axes[-1, 0].set_xlabel("frame", fontsize=8)
    axes[0, 0].set_title(title or f"{qc.video.name}: quality signals (red = frames picked)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def summary(qc: VideoQC, picked: Sequence[int] = (), threshold: dict[str, float] | None = None) -> str:
    """A few console lines: per signal its median and 95th percentile over the frames, the frames beyond a
    threshold (``threshold``: signal -> value; jump's own threshold is 1), and the frames picked."""
    thr = {"jump": 1.0, **(threshold or {})}
    lines = [f"{qc.video.name}: {len(qc.frames)} frames"]
    for s in SIGNALS:
        if s not in qc.per_frame:
            continue
        v = qc.per_frame[s]
        line = f"  {s:<10} median {np.nanmedian(v):.3f}  p95 {np.nanpercentile(v, 95):.3f}  max {np.nanmax(v):.3f}"
        if s in thr:
            line += f"  frames above {thr[s]:g}: {int((v > thr[s]).sum())}"
        lines.append(line)
    if len(picked):
        lines.append("  picked frames: " + " ".join(str(int(qc.frames[i])) for i in picked))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ the command
def project_videos(project: str | Path) -> list[Path]:
    """The video files of a labelling project: DeepLabCut's ``config.yaml`` ``video_sets`` that exist and its
    ``videos/`` folder; lightning-pose's ``videos/`` folder; a SLEAP file's videos that are video files."""
    from clamp_pl.formats.proposals import detect_format, project_root

    fmt = detect_format(project)
    root = project_root(project, fmt)
    found: list[Path] = []
    if fmt == "dlc":
        import yaml

        cfg = yaml.safe_load((root / "config.yaml").read_text()) or {}
        found += [Path(str(v)) for v in (cfg.get("video_sets") or {})]
    elif fmt == "sleap":
        from clamp_pl.formats.sleap import import_sleap_io

        videos = import_sleap_io().load_slp(str(project)).videos
        found += [Path(v.filename) for v in videos if isinstance(v.filename, str)]
    if (root / "videos").is_dir():
        found += sorted(p for p in (root / "videos").iterdir())
    return list(dict.fromkeys(p for p in found if is_video(p)))


def resolve_inputs(inputs: str | Path | Sequence[str | Path]) -> tuple[list[Path], Path | None]:
    """Videos and the labelling project (if one is given) of the command's ``input``: video files, folders of
    videos (searched recursively) and projects (a DeepLabCut folder, a lightning-pose folder or
    ``CollectedData.csv``, a SLEAP ``.slp``: their videos, :func:`project_videos`)."""
    from clamp_pl.formats.proposals import detect_format

    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    videos: list[Path] = []
    project: Path | None = None
    for item in items:
        p = Path(str(item)).expanduser()
        if not p.exists():
            raise FileNotFoundError(f"input {p}: no such video, folder or project")
        if p.is_file() and is_video(p):
            videos.append(p)
            continue
        if p.suffix.lower() in (".slp", ".csv") or (p.is_dir() and detect_format(p) != "coco"):
            project = p
            found = project_videos(p)
            if not found:
                raise FileNotFoundError(f"input {p}: the project lists no video file that exists; give the videos "
                                        f"as input=[...] and the project as project={p}")
            videos += found
            continue
        found = sorted(f for f in p.rglob("*") if is_video(f)) if p.is_dir() else []
        if not found:
            raise FileNotFoundError(f"input {p}: no video file ({' '.join(VIDEO_SUFFIXES)}) in it")
        videos += found
    return list(dict.fromkeys(videos)), project


def read_frames(video: Path, frames: Sequence[int]) -> dict[int, np.ndarray]:
    """RGB frames ``{index: [H, W, 3]}`` of ``video`` decoded in order (exact, unlike seeking)."""
    wanted = set(int(f) for f in frames)
    out: dict[int, np.ndarray] = {}
    if not wanted:
        return out
    for index, frame in iter_frames(video, 1, max(wanted) + 1):
        if index in wanted:
            out[index] = frame
    return out


def find_outliers(
    estimators: Sequence[PoseEstimator],
    videos: Sequence[Path],
    output_dir: Path,
    *,
    n: int = 20,
    signal: str | Sequence[str] = COMBINED,
    project: Path | None = None,
    fmt: str | None = None,
    candidates: int = 3,
    seed: int = 0,
    track: str = "none",
    follow: FollowConfig | None = None,
    frame_step: int = 1,
    max_frames: int | None = None,
    batch_size: int = 16,
    jump_k: float = 3.0,
    scorer: str = "clamp",
) -> dict[str, Any]:
    """Check every video, pick the ``n`` frames worth labelling next and write them as proposals.

    Per video ``output_dir/<stem>_qc.csv`` (:func:`write_qc_csv`) and ``<stem>_qc.png`` (:func:`plot_qc`), a
    console summary; the frames are ranked by ``signal`` over all videos together, frames the project labels
    or proposed before are left out, and the picked ones are written into ``project`` in its format
    (:mod:`clamp_pl.formats.proposals`), or as COCO into ``output_dir/proposals`` without a project.

    Returns:
        ``{"videos": {stem: {"csv", "png", "frames", "picked": [frame indices]}}, "signals": [names ranked by],
        "proposals": the writer's result}``.
    """
    from clamp_pl.formats.proposals import Proposal, labelled_frames, write_proposals

    names = parse_signal(signal)
    output_dir.mkdir(parents=True, exist_ok=True)
    done = labelled_frames(project, fmt) if project is not None else {}
    qcs = []
    for video in videos:
        qc = run_video_qc(estimators, video, track=track, follow=follow, frame_step=frame_step,
                          max_frames=max_frames, batch_size=batch_size, jump_k=jump_k)
        qcs.append(qc)
    missing = [s for s in names if s not in qcs[0].per_frame]
    if missing and names != list(SIGNALS):
        why = ("pose needs a model whose spec has a pose prior (trained by this version)" if "pose" in missing
               else "ensemble needs several runs in ckpt_path")
        raise ValueError(f"signal {missing} not available: {why}")
    names = [s for s in names if s in qcs[0].per_frame]
    pooled = {s: np.concatenate([q.per_frame[s] for q in qcs]) for s in names}
    ranking = combine(pooled, names)
    exclude = np.concatenate([np.isin(q.frames, list(done.get(q.video.stem, ()))) for q in qcs])
    poses = np.concatenate([q.normalized_poses() for q in qcs])
    picked = select_frames(ranking, poses, n, exclude, candidates, seed)
    owner = np.concatenate([np.full(len(q.frames), v) for v, q in enumerate(qcs)])
    starts = np.cumsum([0] + [len(q.frames) for q in qcs])
    report: dict[str, Any] = {"videos": {}, "signals": names}
    proposals = []
    for v, qc in enumerate(qcs):
        rows = sorted(int(i - starts[v]) for i in picked if owner[i] == v)
        rank_v = ranking[starts[v]:starts[v + 1]]
        stem = qc.video.stem
        csv_path = write_qc_csv(qc, output_dir / f"{stem}_qc.csv", rank_v, rows, exclude[starts[v]:starts[v + 1]])
        png = plot_qc(qc, output_dir / f"{stem}_qc.png", rank_v, rows)
        log.info("%s", summary(qc, rows))
        images = read_frames(qc.video, [int(qc.frames[r]) for r in rows])
        proposals += [Proposal(qc.video, int(qc.frames[r]), images[int(qc.frames[r])], qc.keypoints[r], qc.scores[r])
                      for r in rows]
        report["videos"][stem] = {"csv": csv_path, "png": png, "frames": len(qc.frames),
                                  "picked": [int(qc.frames[r]) for r in rows]}
    bodyparts = qcs[0].bodyparts
    skeleton = [tuple(p) for p in estimators[0].spec.meta.get("skeleton", [])]
    if proposals:
        if project is None:
            target, fmt = output_dir / "proposals", "coco"
            target.mkdir(parents=True, exist_ok=True)
        else:
            target = project
        report["proposals"] = write_proposals(target, proposals, bodyparts, fmt, scorer, skeleton)
    else:
        report["proposals"] = None
    return report
