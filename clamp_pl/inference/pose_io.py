"""Pose tables in the layout DeepLabCut and lightning-pose analysis code reads, and their temporal smoothing.

A :class:`PoseTable` is one row per frame (or image) and, per individual and body part, ``x``, ``y`` (image
pixels) and ``likelihood`` (the keypoint score); NaN = no prediction. It is written as DeepLabCut writes its
analysis results:

* CSV (:func:`write_dlc_csv`), header rows ``scorer`` / ``bodyparts`` / ``coords`` (single animal) or
  ``scorer`` / ``individuals`` / ``bodyparts`` / ``coords`` (several), then one row per frame: the index (frame
  number, or an image's relative path) and ``x, y, likelihood`` per body part; missing values are ``NaN`` (not
  empty cells: pandas takes a first data row of empty cells for a row of index names and drops it).
  ``pandas.read_csv(path, header=[0, 1, 2], index_col=0)`` (``[0, 1, 2, 3]`` with individuals) reads it back.
* HDF5 (:func:`write_dlc_h5`, key ``df_with_missing``, the same columns as a pandas MultiIndex), when pandas and
  PyTables are installed (``pip install pandas tables``); skipped with a log line otherwise.

Smoothing (:func:`smooth_trajectories`, scipy): points scoring at or below a threshold are dropped and linearly
interpolated over time, then each coordinate is filtered over frames (running median or Savitzky-Golay). The
smoothed table is written beside the raw one (``<name>_filtered.csv``, DeepLabCut's name for it), never over it;
its likelihoods are the raw ones, so interpolated points keep their low score.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("clamp_pl")

__all__ = ["SMOOTHING_METHODS", "PoseTable", "smooth_table", "smooth_trajectories", "table_from_instances",
           "write_dlc_csv", "write_dlc_h5", "write_pose_table"]

SMOOTHING_METHODS = ("median", "savgol")
#: HDF5 key of DeepLabCut's analysis files
H5_KEY = "df_with_missing"


@dataclass
class PoseTable:
    """Per-frame keypoints of ``I`` individuals.

    Attributes:
        index: one label per row: frame numbers (videos) or relative image paths.
        xy: float ``[T, I, K, 2]`` image pixels; NaN = not predicted.
        likelihood: float ``[T, I, K]`` keypoint scores; NaN = not predicted.
        bodyparts: ``K`` keypoint names.
        scorer: the name in the ``scorer`` header row.
        individuals: ``I`` names for the multi-animal layout, or None for the single-animal layout (``I == 1``).
    """

    index: list[Any]
    xy: np.ndarray
    likelihood: np.ndarray
    bodyparts: list[str]
    scorer: str = "clamp"
    individuals: list[str] | None = None

    def __post_init__(self) -> None:
        t, i, k = self.likelihood.shape
        if self.xy.shape != (t, i, k, 2) or len(self.index) != t or len(self.bodyparts) != k:
            raise ValueError(f"PoseTable: inconsistent shapes: index {len(self.index)}, xy {self.xy.shape}, "
                             f"likelihood {self.likelihood.shape}, {len(self.bodyparts)} bodyparts")
        if self.individuals is None and i != 1:
            raise ValueError(f"PoseTable: {i} individuals need names (the multi-animal layout)")
        if self.individuals is not None and len(self.individuals) != i:
            raise ValueError(f"PoseTable: {len(self.individuals)} individual names for {i} individuals")

    def columns(self) -> list[tuple[str, ...]]:
        """The column keys in file order: ``(scorer, [individual,] bodypart, coord)``."""
        inds = self.individuals if self.individuals is not None else [None]
        return [(self.scorer, *(() if ind is None else (ind,)), bp, c)
                for ind in inds for bp in self.bodyparts for c in ("x", "y", "likelihood")]

    def values(self) -> np.ndarray:
        """``[T, I * K * 3]`` in the order of :meth:`columns`."""
        t, i, k = self.likelihood.shape
        return np.concatenate([self.xy, self.likelihood[..., None]], axis=-1).reshape(t, i * k * 3)

    def header_names(self) -> list[str]:
        return ["scorer", "bodyparts", "coords"] if self.individuals is None else \
            ["scorer", "individuals", "bodyparts", "coords"]


def table_from_instances(
    index: Sequence[Any],
    instances: Sequence[Sequence[dict[str, Any]]],
    bodyparts: Sequence[str],
    scorer: str = "clamp",
    multi_animal: bool = False,
) -> PoseTable:
    """A :class:`PoseTable` from per-row lists of :meth:`clamp_pl.api.PoseEstimator.predict` instances.

    Single-animal layout: the row's best-scoring instance (rows with none are NaN). Multi-animal: individual
    ``animal<n>`` is each row's ``n``-th instance by score (``animal1`` = best), as many individuals as the most
    crowded row; identities are NOT followed across frames.
    """
    if len(index) != len(instances):
        raise ValueError(f"table_from_instances: {len(index)} index labels for {len(instances)} rows")
    k = len(bodyparts)
    ranked = [sorted(row, key=lambda d: -float(d["score"])) for row in instances]
    n_ind = max((len(r) for r in ranked), default=0) if multi_animal else 1
    n_ind = max(n_ind, 1)
    xy = np.full((len(index), n_ind, k, 2), np.nan)
    lk = np.full((len(index), n_ind, k), np.nan)
    for t, row in enumerate(ranked):
        for i, inst in enumerate(row[:n_ind]):
            xy[t, i] = np.asarray(inst["keypoints"], dtype=np.float64)
            lk[t, i] = np.asarray(inst["scores"], dtype=np.float64)
    individuals = [f"animal{i + 1}" for i in range(n_ind)] if multi_animal else None
    return PoseTable(list(index), xy, lk, list(bodyparts), scorer, individuals)


def write_dlc_csv(table: PoseTable, path: str | Path) -> Path:
    """Write ``table`` as a DeepLabCut analysis CSV (see the module docstring); returns the path."""
    path = Path(path)
    cols = table.columns()
    vals = table.values()
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        for level, name in enumerate(table.header_names()):
            w.writerow([name, *(c[level] for c in cols)])
        for label, row in zip(table.index, vals):
            w.writerow([label, *("NaN" if not np.isfinite(v) else f"{v:.3f}" if j % 3 < 2 else f"{v:.4f}"
                                 for j, v in enumerate(row))])
    return path


def write_dlc_h5(table: PoseTable, path: str | Path) -> Path | None:
    """Write ``table`` as DeepLabCut's HDF5 (pandas ``to_hdf``, key ``df_with_missing``); None (and a log line)
    when pandas or PyTables is not installed."""
    try:
        import pandas as pd
        import tables  # noqa: F401  (pandas needs PyTables for HDF5)
    except ImportError:
        log.info("%s not written: HDF5 output needs pandas and PyTables (pip install pandas tables)", path)
        return None
    columns = pd.MultiIndex.from_tuples(table.columns(), names=table.header_names())
    df = pd.DataFrame(table.values(), index=table.index, columns=columns)
    path = Path(path)
    df.to_hdf(path, key=H5_KEY, mode="w")
    return path


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
    :func:`smooth_trajectories`, ``method`` among them), ``<stem>_filtered.csv`` / ``.h5`` beside them.

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
