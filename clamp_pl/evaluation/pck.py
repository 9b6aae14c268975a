"""Per-keypoint accuracy measures that complement OKS AP: PCK, left/right swap rate and the keypoint confusion
matrix.

All coordinates are (x, y) image pixels; ``visible`` marks labelled ground-truth keypoints (COCO v > 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pck(pred: np.ndarray, gt: np.ndarray, visible: np.ndarray, norm: np.ndarray, thr: float) -> float:
    """Percentage of correct keypoints, normalised by box size.

    A labelled keypoint is correct when ``||pred - gt|| / norm < thr`` (strict, as mmpose's
    ``keypoint_pck_accuracy``). ``norm`` is the box size, ``max(w, h)`` of the ground-truth box: the usual
    animal-pose choice (mmpose ``PCKAccuracy(norm_item='bbox')``), robust to elongated animals.

    Unlike mmpose, which averages per-keypoint accuracies (macro), this averages over all labelled keypoints
    (micro), so a keypoint type that is rarely labelled weighs as much as its labels.

    Args:
        pred: (N, K, 2) predictions.
        gt: (N, K, 2) ground truth.
        visible: (N, K) bool or {0, 1}: which ground-truth keypoints are labelled.
        norm: (N,) normalisation length per instance; instances with norm <= 0 are left out.
        thr: threshold as a fraction of ``norm`` (0.05, 0.1, ...).

    Returns:
        Fraction in [0, 1]; NaN when nothing is labelled.
    """
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    norm = np.asarray(norm, dtype=np.float64)
    mask = (np.asarray(visible) > 0) & (norm > 0)[:, None]
    if not mask.any():
        return float("nan")
    dist = np.linalg.norm(pred - gt, axis=-1) / np.where(norm > 0, norm, 1.0)[:, None]
    return float((dist[mask] < thr).mean())


def pck_per_keypoint(
    pred: np.ndarray, gt: np.ndarray, visible: np.ndarray, norm: np.ndarray, thr: float
) -> np.ndarray:
    """:func:`pck` for each keypoint type separately: (K,) fractions, NaN for a keypoint never labelled."""
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    norm = np.asarray(norm, dtype=np.float64)
    mask = (np.asarray(visible) > 0) & (norm > 0)[:, None]
    dist = np.linalg.norm(pred - gt, axis=-1) / np.where(norm > 0, norm, 1.0)[:, None]
    hits = ((dist < thr) & mask).sum(0)
    n = mask.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, hits / n, np.nan)


def swap_rate(
    pred: np.ndarray, gt: np.ndarray, visible: np.ndarray, flip_pairs: Sequence[tuple[int, int]]
) -> dict[str, float]:
    """How often a prediction lands on its mirror partner (left/right confusion), per flip pair.

    For a pair (k1, k2) and an instance where both are labelled, keypoint k counts as swapped when its
    prediction is closer to the ground truth of its partner than to its own. The pair's rate is the fraction
    of such (instance, keypoint) events over both members, so a full swap counts 1 and both predictions on one
    side count 1/2.

    Args:
        pred, gt: (N, K, 2); visible: (N, K) labelled mask; flip_pairs: (k1, k2) index pairs.

    Returns:
        ``{"k1-k2": rate}`` for pairs labelled at least once, and ``"mean"`` over them (absent when none).
    """
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    vis = np.asarray(visible) > 0
    out: dict[str, float] = {}
    for k1, k2 in flip_pairs:
        both = vis[:, k1] & vis[:, k2]
        if not both.any():
            continue
        p1, p2, g1, g2 = pred[both, k1], pred[both, k2], gt[both, k1], gt[both, k2]
        swapped1 = np.linalg.norm(p1 - g2, axis=-1) < np.linalg.norm(p1 - g1, axis=-1)
        swapped2 = np.linalg.norm(p2 - g1, axis=-1) < np.linalg.norm(p2 - g2, axis=-1)
        out[f"{k1}-{k2}"] = float((swapped1.sum() + swapped2.sum()) / (2 * both.sum()))
    if out:
        out["mean"] = float(np.mean(list(out.values())))
    return out


def keypoint_confusion(pred: np.ndarray, gt: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """Which true keypoint each prediction lands nearest to: a (K, K) count matrix.

    For every instance and every labelled keypoint k, the prediction for k is assigned to the nearest labelled
    ground-truth keypoint j of the same instance; ``counts[k, j] += 1``. The diagonal counts predictions nearest
    to their own keypoint; off-diagonal mass shows confusions beyond the left/right pairs of :func:`swap_rate`
    (a paw predicted on the other paw of the same side, a tail root on a hip...). Rows of keypoints never
    labelled are zero.

    Args:
        pred, gt: (N, K, 2); visible: (N, K) labelled mask.
    """
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    vis = np.asarray(visible) > 0
    k = pred.shape[1]
    counts = np.zeros((k, k), dtype=np.int64)
    # distances [N, K_pred, K_gt]; unlabelled ground truth can never be the nearest
    d = np.linalg.norm(pred[:, :, None] - gt[:, None], axis=-1)
    d = np.where(vis[:, None, :], d, np.inf)
    nearest = d.argmin(-1)
    n_idx, k_idx = np.nonzero(vis)
    np.add.at(counts, (k_idx, nearest[n_idx, k_idx]), 1)
    return counts
