"""Temporal smoothing of predicted keypoint trajectories (scipy).

Points scoring at or below a threshold are dropped and linearly interpolated over time, then each coordinate is
filtered over frames (running median or Savitzky-Golay). :func:`write_pose_table` writes the
smoothed table beside the raw one (``<name>_filtered.csv``, DeepLabCut's name for it), never over it; its
likelihoods are the raw ones, so interpolated points keep their low score.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from clamp_pl.formats.dlc import PoseTable, write_dlc_csv, write_dlc_h5

log = logging.getLogger("clamp_pl")

__all__ = ["SMOOTHING_METHODS", "smooth_table", "smooth_trajectories", "write_pose_table"]

SMOOTHING_METHODS = ("median", "savgol")


def smooth_trajectories(
    xy: np.ndarray,
    likelihood: np.ndarray,
    method: str = "median",
    window: int = 5,
    polyorder: int = 2,
    threshold: float = 0.3,
) -> np.ndarray:
    """Smooth keypoint trajectories over frames.

    Args:
        xy: ``[T, K, 2]`` image pixels (NaN = missing), rows in time order.
        likelihood: ``[T, K]``; points at or below ``threshold`` (or NaN) are dropped and linearly interpolated
            between their neighbours in time (held constant before the first and after the last kept point).
        method: ``"median"`` (running median, robust to single-frame jumps) or ``"savgol"`` (Savitzky-Golay:
            a local polynomial of degree ``polyorder``, keeps peaks).
        window: odd number of frames of the filter (shortened to the sequence when it is longer).

    Returns:
        ``[T, K, 2]`` smoothed; a keypoint never scored above ``threshold`` stays NaN.
    """
    from scipy.ndimage import median_filter
    from scipy.signal import savgol_filter

    if method not in SMOOTHING_METHODS:
        raise ValueError(f"smoothing method must be one of {SMOOTHING_METHODS}, got {method!r}")
    if window < 3 or window % 2 == 0:
        raise ValueError(f"smoothing window must be an odd number of frames >= 3, got {window}")
    if method == "savgol" and not 0 <= polyorder < window:
        raise ValueError(f"savgol polyorder must be in [0, window), got {polyorder} for window {window}")
    xy = np.asarray(xy, dtype=np.float64)
    lk = np.asarray(likelihood, dtype=np.float64)
    t_len = xy.shape[0]
    out = np.full_like(xy, np.nan)
    t = np.arange(t_len)
    win = min(window, t_len if t_len % 2 else t_len - 1)
    for k in range(xy.shape[1]):
        keep = np.isfinite(xy[:, k]).all(1) & (np.nan_to_num(lk[:, k], nan=-1.0) > threshold)
        if not keep.any():
            continue
        filled = np.stack([np.interp(t, t[keep], xy[keep, k, c]) for c in range(2)], axis=1)
        if win < 3:
            out[:, k] = filled
        elif method == "median":
            out[:, k] = median_filter(filled, size=(win, 1), mode="nearest")
        else:
            out[:, k] = savgol_filter(filled, win, min(polyorder, win - 1), axis=0, mode="interp")
    return out


def smooth_table(table: PoseTable, method: str = "median", window: int = 5, polyorder: int = 2,
                 threshold: float = 0.3) -> PoseTable:
    """:func:`smooth_trajectories` on every individual of ``table``: a new table (likelihoods kept)."""
    xy = np.stack([smooth_trajectories(table.xy[:, i], table.likelihood[:, i], method, window, polyorder,
                                       threshold) for i in range(table.xy.shape[1])], axis=1)
    return replace(table, xy=xy, likelihood=table.likelihood.copy())


def write_pose_table(
    table: PoseTable, stem: str | Path, smoothing: dict[str, Any] | None = None
) -> dict[str, Path | None]:
    """Write ``<stem>.csv`` and ``<stem>.h5`` (when possible) and, with ``smoothing`` (keyword arguments of
    :func:`smooth_trajectories`, ``method`` among them), ``<stem>_filtered.csv`` /
    ``.h5`` beside them.

    Multi-animal tables are not smoothed: their individuals are ranks by score, not identities followed over
    time. Returns ``{"csv", "h5", "filtered_csv", "filtered_h5"}`` (None for what was not written)."""
    stem = Path(stem)
    out: dict[str, Path | None] = {
        "csv": write_dlc_csv(table, stem.with_name(stem.name + ".csv")),
        "h5": write_dlc_h5(table, stem.with_name(stem.name + ".h5")),
        "filtered_csv": None,
        "filtered_h5": None,
    }
    if smoothing:
        if table.individuals is not None:
            log.warning("%s: not smoothed: several animals per frame are ranked by score, not followed, so a "
                        "trajectory may jump between animals", out["csv"])
        else:
            smoothed = smooth_table(table, **smoothing)
            out["filtered_csv"] = write_dlc_csv(smoothed, stem.with_name(stem.name + "_filtered.csv"))
            out["filtered_h5"] = write_dlc_h5(smoothed, stem.with_name(stem.name + "_filtered.h5"))
    return out
