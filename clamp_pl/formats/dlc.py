"""DeepLabCut / lightning-pose tables: label files read and converted to COCO, pose tables written.

A DeepLabCut (DLC) project keeps its labels per video in ``labeled-data/<video>/CollectedData_<scorer>.csv``:

* single-animal: three header rows ``scorer`` / ``bodyparts`` / ``coords`` (``x``, ``y`` per body part);
* multi-animal (maDLC): four header rows ``scorer`` / ``individuals`` / ``bodyparts`` / ``coords``; every
  individual becomes one instance. The ``single`` individual of maDLC (the project's unique body parts) is
  not an animal and is dropped.

Rows start with the frame path, either in one column (``labeled-data/m4s1/img0000.png``) or, since DLC 2.3, in
three index columns (``labeled-data``, ``m4s1``, ``img0000.png``). Empty cells mean "not labelled".
lightning-pose projects keep the same format in one ``CollectedData.csv`` at the project root, covering every
video: pass that file. DeepLabCut also keeps each table as ``CollectedData_<scorer>.h5`` (a pandas MultiIndex
table): it is read where there is no CSV, and compared with the CSV where there are both.

Reading (:func:`read_dlc_labels`) checks every cell as the COCO reader checks its records: a coordinate that is
not a finite number, half a point (x without y), a row whose cell count differs from the header's or a frame
listed twice is a :class:`~clamp_pl.core.errors.DataError` naming the file, the row (line and frame path) and the
column (``individual/bodypart/coord``), or with ``on_error="skip"`` a dropped row listed in ``skipped``. The CSV
is read cell by cell rather than with ``pandas.read_csv``, which pads a row cut short with NaN: its lost labels
would read as "not labelled".

Conversion (:func:`dlc_to_coco`): every label CSV of the project, one category (name configurable,
``keypoints`` = the body-part names, ``skeleton`` from ``config.yaml`` when it defines one), ``v = 2`` for
labelled and ``x = y = v = 0`` for unlabelled keypoints, one instance per labelled individual with a box from its
labelled keypoints plus a margin (``margin`` x the larger side of their extent on every side, at least
``min_margin`` px) clipped to the image. Frames of one video are nearly identical neighbours, so the split is
made per video (:func:`split_frames`): by default a CONTIGUOUS val and test block at the end of every video
(sorted by path), or whole held-out videos (``split="videos"``); never random frames, which would leak
near-duplicates into training (DeepLabCut's own ``create_training_dataset`` draws frames at random from all
videos; its test error then measures frames next to training ones). ``split.json`` next to the annotations
records the blocks and the counts.

Prompts for the body-part names come from :func:`clamp_pl.data.metainfo.name_to_prompt`
(``leftear`` -> "left ear", ``tailbase`` -> "tail base").

:func:`ensure_mouse_openfield` converts the 116 real frames of DLC's openfield example that ship with the
package (``clamp_pl/resources/dlc_openfield``, half size, see its README) with its fixed split: frames 100-115
test, 90-99 val, 0-89 train.

Writing (:class:`PoseTable`, :func:`write_dlc_csv`, :func:`write_dlc_h5`): predictions in the layout DeepLabCut writes its analysis
results, one row per frame (or image) and, per individual and body part, ``x``, ``y`` (image pixels) and
``likelihood`` (the keypoint score):

* CSV (:func:`write_dlc_csv`): the same header rows as the label files, then the index (frame number, or an
  image's relative path) and ``x, y, likelihood`` per body part; missing values are ``NaN`` (not empty cells:
  pandas takes a first data row of empty cells for a row of index names and drops it).
  ``pandas.read_csv(path, header=[0, 1, 2], index_col=0)`` (``[0, 1, 2, 3]`` with individuals) reads it back.
* HDF5 (:func:`write_dlc_h5`, key ``df_with_missing``, the same columns as a pandas MultiIndex), when PyTables is
  installed (``pip install tables``); skipped with a log line otherwise.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import yaml

from clamp_pl.core.errors import DataError
from clamp_pl.core.geometry import keypoint_box

__all__ = [
    "CocoBuilder",
    "DLCLabels",
    "MOUSE_OPENFIELD_BLOCKS",
    "PoseTable",
    "SplitSettings",
    "dlc_to_coco",
    "instances_to_annotations",
    "ensure_mouse_openfield",
    "read_dlc_csv",
    "read_dlc_labels",
    "split_frames",
    "split_labels",
    "summarize_split",
    "table_from_instances",
    "video_of",
    "write_coco_splits",
    "write_conversion",
    "write_dlc_csv",
    "write_dlc_h5",
]

log = logging.getLogger(__name__)

RESOURCE_DIR = Path(__file__).resolve().parent.parent / "resources" / "dlc_openfield"
#: Default split of the embedded openfield frames: half-open frame-index blocks.
MOUSE_OPENFIELD_BLOCKS = {"val": (90, 100), "test": (100, 116)}
_CONVERTER_VERSION = 2
#: what a reader does with a bad record: raise a DataError, or drop it and list it
ON_ERROR = ("raise", "skip")
#: HDF5 key of DeepLabCut's files
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

    def to_dataframe(self) -> pd.DataFrame:
        """The table as DeepLabCut holds it: one row per index label, a column MultiIndex named by
        :meth:`header_names`."""
        columns = pd.MultiIndex.from_tuples(self.columns(), names=self.header_names())
        return pd.DataFrame(self.values(), index=self.index, columns=columns)


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
    """Write ``table`` as a DeepLabCut analysis CSV (see the module docstring); returns the path.

    Coordinates are written to 3 decimals (a thousandth of a pixel), likelihoods to 4."""
    path = Path(path)
    df = table.to_dataframe()
    df.round({c: 4 if c[-1] == "likelihood" else 3 for c in df.columns}).to_csv(path, na_rep="NaN")
    return path


def write_dlc_h5(table: PoseTable, path: str | Path) -> Path | None:
    """Write ``table`` as DeepLabCut's HDF5 (pandas ``to_hdf``, key ``df_with_missing``); None (and a log line)
    when PyTables is not installed."""
    try:
        import tables  # noqa: F401  (pandas needs PyTables for HDF5)
    except ImportError:
        log.info("%s not written: HDF5 output needs PyTables (pip install tables)", path)
        return None
    path = Path(path)
    table.to_dataframe().to_hdf(path, key=H5_KEY, mode="w")
    return path


@dataclass
class DLCLabels:
    """Labels of one ``CollectedData_*.csv`` (or its ``.h5`` twin).

    ``coords`` is float64 ``(N, I, K, 2)``: frame, individual, body part, (x, y) in image pixels; NaN where
    the body part is not labelled. Single-animal files have one individual (``individuals == ["animal"]``).
    ``skipped`` lists the rows dropped with ``on_error="skip"``: ``{"file", "record", "column", "reason"}``.
    """

    csv_path: Path
    scorer: str
    frame_paths: list[str]
    individuals: list[str]
    bodyparts: list[str]
    coords: np.ndarray
    skipped: list[dict[str, str]] = field(default_factory=list)


def _fail(path: Path, msg: str) -> DataError:
    return DataError(f"{path}: {msg}")


class _Problems:
    """Raises a record's problem as a :class:`DataError` (``on_error="raise"``) or lists it (``"skip"``)."""

    def __init__(self, on_error: str) -> None:
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        self.raise_ = on_error == "raise"
        self.skipped: list[dict[str, str]] = []

    def __call__(self, path: Path, record: str, column: str | None, reason: str) -> None:
        if self.raise_:
            where = f"{record}, column {column}" if column else record
            raise DataError(f"{path}: {where}: {reason}")
        self.skipped.append({"file": str(path), "record": record, "column": column or "", "reason": reason})


@dataclass
class _Row:
    """One data row: where it is (``line 5`` of a CSV, ``row 2`` of an .h5 table) and its cells as text."""

    where: str
    cells: list[str]


def _csv_rows(path: Path) -> list[_Row]:
    """The non-blank rows of a CSV, named by line number."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            lines = list(enumerate(csv.reader(f), start=1))
    except (UnicodeDecodeError, csv.Error) as err:
        raise _fail(path, f"not a readable CSV text file ({err})") from err
    return [_Row(f"line {n}", r) for n, r in lines if any(c.strip() for c in r)]


def _h5_cell(value: Any) -> str:
    """A table value as a CSV cell: NaN empty, floats exactly (``repr``)."""
    if isinstance(value, float):
        return "" if np.isnan(value) else repr(value)
    return str(value)


def _h5_rows(path: Path) -> list[_Row]:
    """DeepLabCut's ``.h5`` table as the rows its CSV twin would have: the header rows (level name, then one
    cell per index column and per column) and one row per frame; NaN cells are empty, numbers are written
    exactly (``repr``)."""
    try:
        df = pd.read_hdf(path)
    except Exception as err:  # PyTables, h5py and pandas each raise their own; name the file whatever they are
        raise _fail(path, f"not a readable DeepLabCut .h5 label table (pandas reported: {type(err).__name__}: "
                          f"{err})") from err
    if not isinstance(df, pd.DataFrame):
        raise _fail(path, f"holds a {type(df).__name__}, not a DeepLabCut label table (a DataFrame)")
    n_index = df.index.nlevels
    header = [_Row(f"header level {i + 1}",
                   [str(name), *[""] * (n_index - 1), *map(str, df.columns.get_level_values(i))])
              for i, name in enumerate(df.columns.names)]
    index = [key if isinstance(key, tuple) else (key,) for key in df.index]
    cells = [[_h5_cell(v) for v in row] for row in df.to_numpy(dtype=object).tolist()]
    return header + [_Row(f"row {n}", [str(k) for k in key] + vals)
                     for n, (key, vals) in enumerate(zip(index, cells), start=1)]


@dataclass
class _Header:
    """What the header rows say: how many there are, how many index columns start each row, how many cells a row
    has, the scorer, and the x/y columns as ``(individual, bodypart, coord, cell index)``."""

    rows: int
    n_index: int
    width: int
    scorer: str
    columns: list[tuple[str, str, str, int]]
    multi: bool
    labels: dict[int, str]

    def name(self, col: int) -> str:
        """A cell's column by its header cells, ``individual/bodypart/coord`` (``bodypart/coord`` for one
        animal), or its number for an index column."""
        return self.labels.get(col, f"{col + 1} (frame index)")


_LAYOUTS = (["scorer", "bodyparts", "coords"], ["scorer", "individuals", "bodyparts", "coords"])


def _parse_header(path: Path, rows: list[_Row]) -> _Header:
    """Check the header rows (layout, one coord of x/y/likelihood per column, no duplicate column, x and y for
    every body part); header problems concern every row, so they always raise."""
    if not rows:
        raise _fail(path, "empty file: a DeepLabCut label file starts with the header rows scorer / bodyparts / "
                          "coords (scorer / individuals / bodyparts / coords for several animals)")
    heads = [r.cells[0].strip() if r.cells else "" for r in rows[:4]]
    if heads[0] != "scorer":
        raise _fail(path, f"not a DeepLabCut label file: the first header row must start with 'scorer', "
                          f"{rows[0].where} starts with {heads[0]!r}")
    layout = _LAYOUTS[1] if heads[1:2] == ["individuals"] else _LAYOUTS[0]
    if heads[:len(layout)] != layout:
        raise _fail(path, f"header rows {heads[:len(layout)]} (first cell of rows 1-{len(layout)}): expected "
                          f"{' / '.join(_LAYOUTS[0])} or {' / '.join(_LAYOUTS[1])}, in that order")
    head = [r.cells for r in rows[:len(layout)]]
    coord_row = head[-1]
    width = len(coord_row)
    for r in rows[:len(layout)]:
        if len(r.cells) != width:
            raise _fail(path, f"header {r.where} ({r.cells[0].strip()!r}) has {len(r.cells)} cells, the 'coords' row "
                              f"{width}: the header rows must have one cell per column")
    first = next((i for i, c in enumerate(coord_row) if c.strip() in ("x", "y", "likelihood")), None)
    if first is None:
        raise _fail(path, "no x/y columns in the 'coords' row")
    multi = len(layout) == 4
    columns: list[tuple[str, str, str, int]] = []
    seen: dict[tuple[str, str, str], int] = {}
    labels: dict[int, str] = {}
    for col in range(first, width):
        ind = head[1][col].strip() if multi else "animal"
        bp, coord = head[-2][col].strip(), coord_row[col].strip()
        label = f"{ind}/{bp}/{coord}" if multi else f"{bp}/{coord}"
        if coord not in ("x", "y", "likelihood"):
            raise _fail(path, f"column {col + 1} ({label}): coords must be x, y or likelihood, got {coord!r}")
        if not bp or (multi and not ind):
            raise _fail(path, f"column {col + 1} ({label}): no {'individual or ' if multi else ''}body part name")
        if (ind, bp, coord) in seen:
            raise _fail(path, f"columns {seen[ind, bp, coord] + 1} and {col + 1} are both {label}: which one holds "
                              "the label is undefined (rename or remove one)")
        seen[ind, bp, coord] = col
        labels[col] = label
        if coord != "likelihood":  # the scores of machine labels are no labels
            columns.append((ind, bp, coord, col))
    for ind, bp, coord, _ in columns:
        other = "y" if coord == "x" else "x"
        if (ind, bp, other) not in seen:
            raise _fail(path, f"column {ind + '/' if multi else ''}{bp}/{coord} has no {other} column")
    return _Header(len(layout), first, width, head[0][first].strip(), columns, multi, labels)


def _parse_row(path: Path, header: _Header, row: _Row, keep: Mapping[str, int], bp_idx: Mapping[str, int],
               n_ind: int, problem: _Problems) -> tuple[str, np.ndarray] | None:
    """One data row: ``(frame path, coords (I, K, 2))``, or None after a problem (raised or listed)."""
    cells = row.cells
    frame = "/".join(c.strip() for c in cells[:header.n_index] if c.strip())
    record = f"{row.where} (frame {frame})" if frame else row.where
    if not frame:
        problem(path, record, None, "no frame path in the index column(s)")
        return None
    if len(cells) != header.width:
        if len(cells) < header.width:
            problem(path, record, header.name(len(cells)), f"the row has {len(cells)} cells, the header "
                    f"{header.width}: it is cut short here, and its labels from this column on would be lost")
        else:
            problem(path, record, None, f"the row has {len(cells)} cells, the header {header.width}: "
                    f"{len(cells) - header.width} cell(s) beyond the last column")
        return None
    coords = np.full((n_ind, len(bp_idx), 2), np.nan)
    for ind, bp, coord, col in header.columns:
        if ind not in keep:
            continue
        cell = cells[col].strip()
        if not cell or cell.lower() == "nan":  # DeepLabCut writes unlabelled points as empty cells (pandas: NaN)
            continue
        try:
            value = float(cell)
        except ValueError:
            problem(path, record, header.name(col), f"{cell!r} is not a number")
            return None
        if not np.isfinite(value):
            problem(path, record, header.name(col), f"{cell!r} is not a finite coordinate")
            return None
        coords[keep[ind], bp_idx[bp], 0 if coord == "x" else 1] = value
    half = np.isnan(coords).any(-1) & ~np.isnan(coords).all(-1)
    if half.any():
        i, k = (int(v) for v in np.argwhere(half)[0])
        ind = next(n for n, j in keep.items() if j == i)
        bp = next(n for n, j in bp_idx.items() if j == k)
        missing = "x" if np.isnan(coords[i, k, 0]) else "y"
        problem(path, record, f"{ind + '/' if header.multi else ''}{bp}/{missing}",
                f"empty while its {'y' if missing == 'x' else 'x'} is labelled: half a point")
        return None
    return frame, coords


def read_dlc_labels(csv_path: str | Path, *, on_error: str = "raise") -> DLCLabels:
    """Parse and check a DLC ``CollectedData_*.csv``, or its ``.h5`` twin (single- or multi-animal header, 1- or
    3-column frame index).

    Every problem is a :class:`DataError` naming the file, the row (line and frame path) and the column
    (``individual/bodypart/coord``): a non-numeric or non-finite coordinate, half a point (x without y), a row
    whose cell count differs from the header's, a frame listed twice. With ``on_error="skip"`` such rows are
    dropped and listed in ``skipped`` instead. Problems of the whole file always raise: header rows missing or
    out of order, duplicate or unnamed columns, no labelled frame.
    """
    path = Path(csv_path)
    problem = _Problems(on_error)
    rows = _h5_rows(path) if path.suffix.lower() in (".h5", ".hdf5") else _csv_rows(path)
    header = _parse_header(path, rows)
    names = [c[0] for c in header.columns]
    individuals = list(dict.fromkeys(n for n in names if n != "single" or not header.multi))
    bodyparts = list(dict.fromkeys(c[1] for c in header.columns if c[0] in individuals))
    if not individuals or not bodyparts:
        raise _fail(path, "no body parts found")
    unique = sorted({c[1] for c in header.columns if c[0] not in individuals})
    if unique:
        log.warning("%s: maDLC's unique body parts %s belong to no animal and are not converted", path, unique)
    keep = {n: i for i, n in enumerate(individuals)}
    bp_idx = {n: i for i, n in enumerate(bodyparts)}
    parsed: dict[str, list[tuple[_Row, np.ndarray]]] = {}
    for row in rows[header.rows:]:
        got = _parse_row(path, header, row, keep, bp_idx, len(individuals), problem)
        if got is not None:
            parsed.setdefault(got[0], []).append((row, got[1]))
    for frame, copies in list(parsed.items()):
        if len(copies) > 1:
            problem(path, f"frame {frame}", None, f"listed {len(copies)} times ("
                    f"{', '.join(r.where for r, _ in copies)}): which row holds its labels is undefined")
            del parsed[frame]
    if not any(np.isfinite(c).any() for copies in parsed.values() for _, c in copies):
        if problem.skipped:
            raise _fail(path, f"no labelled frame left after skipping {len(problem.skipped)} bad rows: "
                              + "; ".join(f"{s['record']}: {s['reason']}" for s in problem.skipped[:3]))
        if len(rows) == header.rows:
            raise _fail(path, "no labelled frame: the file holds only its header rows")
        raise _fail(path, f"no labelled frame: none of its {len(rows) - header.rows} rows labels a point")
    frames = sorted(parsed)
    coords = np.stack([parsed[f][0][1] for f in frames])
    if problem.skipped:
        log.warning("%s: skipped %d bad rows: %s", path, len(problem.skipped),
                    "; ".join(f"{s['record']} {s['column']}: {s['reason']}" for s in problem.skipped))
    return DLCLabels(path, header.scorer, frames, individuals, bodyparts, coords, problem.skipped)


def read_dlc_csv(csv_path: str | Path) -> tuple[list[str], list[str], np.ndarray]:
    """Single-animal view: ``(frame_paths, bodyparts, coords float64 (N, K, 2))``, NaN = unlabelled.

    Frames are sorted by path. For multi-animal files use :func:`read_dlc_labels` (this raises).
    """
    labels = read_dlc_labels(csv_path)
    if len(labels.individuals) != 1:
        raise _fail(labels.csv_path, f"multi-animal file ({len(labels.individuals)} individuals); "
                                     "use read_dlc_labels")
    return labels.frame_paths, labels.bodyparts, labels.coords[:, 0]


def _project_root(csv_path: Path, frames: list[str]) -> Path:
    # Frame paths are relative to the project root ("labeled-data/<video>/img.png"): a DeepLabCut CSV sits two
    # folders below it, a lightning-pose CollectedData.csv at the root itself.
    here = csv_path.resolve().parent
    if frames:
        for cand in (here, *here.parents[:3]):
            if (cand / frames[0]).is_file():
                return cand
    return here


def _read_config(root: Path) -> dict:
    cfg = root / "config.yaml"
    if not cfg.is_file():
        return {}
    with open(cfg, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def video_of(frame: str) -> str:
    """The video a frame path belongs to: its folder below ``labeled-data`` (``labeled-data/m4s1/img0.png`` ->
    ``m4s1``), or its folder as written; ``""`` for a bare file name."""
    parts = Path(frame).parts
    if parts and parts[0] == "labeled-data":
        parts = parts[1:]
    return Path(*parts[:-1]).as_posix() if len(parts) > 1 else ""


def split_frames(
    frame_counts: Mapping[str, int],
    *,
    mode: str = "blocks",
    val_fraction: float = 0.1,
    test_fraction: float = 0.15,
    seed: int = 0,
) -> dict[str, dict[str, tuple[int, int]]]:
    """Held-out frame blocks per video: ``{video: {"val": (start, stop), "test": (start, stop)}}`` (half-open
    ranges of the video's frames sorted by path; a split missing from a video's dict has no frame there).

    Frames of one video are near-duplicate neighbours, so no split takes random frames:

    * ``mode="blocks"`` (default): every video contributes a contiguous block at its end to test
      (``round(n * test_fraction)`` frames, at least one when the fraction is > 0) and the block just before it
      to val, so every video is seen in training and tested on the part of it training never saw. Videos with
      fewer than three frames stay in train.
    * ``mode="videos"``: whole videos are held out, as out-of-video evaluations do (Horse-10 holds out
      whole horses):
      ``round(V * test_fraction)`` (at least one) test videos and as many val videos by ``val_fraction``,
      chosen by ``numpy.random.RandomState(seed)`` from the videos sorted by name; needs three videos or more.

    The result depends only on the frame counts, the fractions and the seed: reproducible.
    """
    for what, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= f < 1:
            raise ValueError(f"{what} must be in [0, 1), got {f}")
    videos = sorted(frame_counts)
    blocks: dict[str, dict[str, tuple[int, int]]] = {v: {} for v in videos}
    if mode == "blocks":
        for v in videos:
            n = int(frame_counts[v])
            if n < 3:
                continue
            n_test = max(1, round(n * test_fraction)) if test_fraction > 0 else 0
            n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
            while n_test + n_val > n - 1:  # keep a training frame
                if n_val >= n_test and n_val > 0:
                    n_val -= 1
                else:
                    n_test -= 1
            if n_test:
                blocks[v]["test"] = (n - n_test, n)
            if n_val:
                blocks[v]["val"] = (n - n_test - n_val, n - n_test)
        return blocks
    if mode == "videos":
        n_test = max(1, round(len(videos) * test_fraction)) if test_fraction > 0 else 0
        n_val = max(1, round(len(videos) * val_fraction)) if val_fraction > 0 else 0
        if n_test + n_val > len(videos) - 1:
            raise ValueError(f"split mode 'videos' holds out {n_test} test + {n_val} val videos but the project has "
                             f"{len(videos)} ({videos}); use split=blocks or label more videos")
        order = list(videos)
        np.random.RandomState(seed).shuffle(order)
        for v in order[:n_test]:
            blocks[v]["test"] = (0, int(frame_counts[v]))
        for v in order[n_test:n_test + n_val]:
            blocks[v]["val"] = (0, int(frame_counts[v]))
        return blocks
    raise ValueError(f"split mode must be 'blocks' or 'videos', got {mode!r}")


def split_labels(n: int, video: str, blocks: Mapping[str, tuple[int, int]]) -> list[str]:
    """The split of each of a video's ``n`` frames ("train" unless in its val/test block), checking the blocks."""
    labels = ["train"] * n
    for split in ("val", "test"):
        if split not in blocks:
            continue
        start, stop = (int(x) for x in blocks[split])
        if not 0 <= start < stop <= n:
            raise ValueError(f"video {video!r}: {split} block {tuple(blocks[split])} must satisfy "
                             f"0 <= start < stop <= {n} (its number of frames)")
        for i in range(start, stop):
            if labels[i] != "train":
                raise ValueError(f"video {video!r}: val and test blocks overlap at frame {i}")
            labels[i] = split
    return labels


def write_coco_splits(out_dir: Path, splits: Mapping[str, dict], category: dict, info: dict) -> dict[str, Path]:
    """Write ``out_dir/annotations/{split}.json`` (atomically) for the splits present, remove those of absent
    splits; returns the written paths."""
    paths: dict[str, Path] = {}
    ann_dir = out_dir / "annotations"
    ann_dir.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "test"):
        if split not in splits:
            (ann_dir / f"{split}.json").unlink(missing_ok=True)  # left by an earlier conversion
            continue
        coco = {"info": {**info, "split": split}, **splits[split], "categories": [category]}
        path = ann_dir / f"{split}.json"
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(coco, indent=1))
        os.replace(tmp, path)
        paths[split] = path
    return paths


def summarize_split(splits: Mapping[str, dict], videos: Mapping[str, str]) -> dict[str, Any]:
    """Per split: frames, instances and videos (``videos`` maps image id -> video) - what the converter reports."""
    out: dict[str, Any] = {}
    for split, coco in splits.items():
        vids = sorted({videos[im["id"]] for im in coco["images"]})
        out[split] = {"frames": len(coco["images"]), "instances": len(coco["annotations"]), "videos": vids}
    return out


def write_conversion(
    out_dir: Path, splits: Mapping[str, dict], image_video: Mapping[int, str], category: dict, info: dict, *,
    img_root: Path, mode: str, seed: int, counts: Mapping[str, int], blocks: Mapping[str, Mapping[str, Any]],
    skipped: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Path]:
    """A converter's output (DeepLabCut and SLEAP): the COCO files (:func:`write_coco_splits`) and ``split.json``
    (mode, seed, frames per video, the non-empty held-out blocks, :func:`summarize_split` and, when records were
    skipped, the ``skipped`` list); returns
    ``{"train": json, ["val": json,] ["test": json,] "images": img_root, "split": split.json}``."""
    paths = write_coco_splits(out_dir, splits, category, info)
    record = {"mode": mode, "seed": seed, "frames_per_video": dict(counts),
              "blocks": {v: {k: list(b) for k, b in bl.items()} for v, bl in blocks.items() if bl},
              "counts": summarize_split(splits, image_video)}
    if skipped:
        record["skipped"] = list(skipped)
    (out_dir / "split.json").write_text(json.dumps(record, indent=1) + "\n")
    paths["images"] = img_root
    paths["split"] = out_dir / "split.json"
    return paths


def instances_to_annotations(
    coords: np.ndarray, image_id: int, first_ann_id: int, size: tuple[int, int], margin: float, min_margin: float
) -> list[dict]:
    """COCO annotations of one frame's animals: ``coords`` (I, K, 2) image pixels, NaN = not labelled. An animal
    without any labelled point is no instance; the box comes from the labelled points (:func:`keypoint_box`)."""
    anns = []
    for xy in coords:
        box = keypoint_box(xy, margin, min_margin, clip_to=size)
        box = None if box is None else [round(float(v), 2) for v in box]
        if box is None:
            continue
        labelled = ~np.isnan(xy).any(axis=1)
        kps: list[float] = []
        for (x, y), ok in zip(xy, labelled):
            kps += [round(float(x), 3), round(float(y), 3), 2] if ok else [0, 0, 0]
        anns.append({
            "id": first_ann_id + len(anns), "image_id": image_id, "category_id": 1, "bbox": box,
            "area": round(box[2] * box[3], 2), "iscrowd": 0, "num_keypoints": int(labelled.sum()),
            "keypoints": kps,
        })
    return anns


def _frame_file(csv_path: Path, frame: str, root: Path) -> Path | None:
    """A labelled frame's image: below the project root, or as _project_root looks, or a bare file name next to
    the CSV; None when it is nowhere."""
    here = csv_path.resolve().parent
    candidates = [here / frame, *(p / frame for p in here.parents[:3]), here / Path(frame).name, root / frame]
    return next((c for c in candidates if c.is_file()), None)


@dataclass(frozen=True)
class SplitSettings:
    """How a converter splits its frames per video (DeepLabCut and SLEAP alike).

    ``blocks`` (``{video: {"val": (start, stop), "test": (start, stop)}}``, half-open ranges of the video's frames
    in order) is used as given; None = computed by :func:`split_frames` from ``mode``, the fractions and
    ``seed``."""

    mode: str = "blocks"
    val_fraction: float = 0.1
    test_fraction: float = 0.15
    seed: int = 0
    blocks: Mapping[str, Mapping[str, tuple[int, int]]] | None = None

    def resolve(self, counts: Mapping[str, int]) -> tuple[str, dict[str, Mapping[str, tuple[int, int]]]]:
        """``(mode recorded in split.json, blocks per video)`` for videos with ``counts`` frames; blocks naming a
        video the project does not have are an error (a typo would otherwise hold nothing out)."""
        if self.blocks is None:
            return self.mode, split_frames(counts, mode=self.mode, val_fraction=self.val_fraction,
                                           test_fraction=self.test_fraction, seed=self.seed)
        unknown = sorted(set(self.blocks) - set(counts))
        if unknown:
            raise ValueError(f"blocks name videos {unknown} that the project does not have "
                             f"(videos: {sorted(counts)})")
        return "given", dict(self.blocks)


class CocoBuilder:
    """The common half of the DeepLabCut and SLEAP converters: frames grouped by video, split per video
    (:class:`SplitSettings`), added one by one as COCO images with their animals' annotations (one category),
    then written with ``split.json`` (:func:`write_conversion`).

    A converter reads its own files, groups its frames by video in frame order, and calls :meth:`add_frame` for
    each ``(video, frame, split)`` that :meth:`frames` yields."""

    def __init__(self, source: str | Path, category: dict, frames_per_video: Mapping[str, int],
                 split: SplitSettings, margin: float, min_margin: float) -> None:
        self.source = source
        self.category = category
        self.counts = {v: int(n) for v, n in sorted(frames_per_video.items())}
        self.mode, self.blocks = split.resolve(self.counts)
        self.seed = split.seed
        self.margin, self.min_margin = margin, min_margin
        self.splits: dict[str, dict] = {}
        self.image_video: dict[int, str] = {}
        self.n_anns = 0

    def frames(self, by_video: Mapping[str, Sequence[Any]]) -> Iterator[tuple[str, Any, str]]:
        """``(video, frame, split)`` for every frame of ``by_video`` (videos by name, frames as given)."""
        for video, frames in sorted(by_video.items()):
            for frame, split_name in zip(frames, split_labels(len(frames), video, self.blocks.get(video, {}))):
                yield video, frame, split_name

    def add_frame(self, split: str, video: str, file_name: str, size: tuple[int, int], coords: np.ndarray,
                  **extra: Any) -> int:
        """Add one image (``size`` = (W, H), ``extra`` = further image fields) and an annotation per animal of
        ``coords`` (I, K, 2) image pixels, NaN = not labelled (:func:`instances_to_annotations`); returns the
        image id."""
        image_id = len(self.image_video) + 1
        self.image_video[image_id] = video
        coco = self.splits.setdefault(split, {"images": [], "annotations": []})
        coco["images"].append({"id": image_id, "file_name": file_name, "width": size[0], "height": size[1],
                               "video": video, **extra})
        anns = instances_to_annotations(coords, image_id, self.n_anns + 1, size, self.margin, self.min_margin)
        self.n_anns += len(anns)
        coco["annotations"] += anns
        return image_id

    def write(self, out_dir: Path, img_root: Path, info: dict, skipped: Sequence[Mapping[str, Any]] = ()
              ) -> dict[str, Path]:
        """The COCO files and ``split.json`` (:func:`write_conversion`, ``skipped`` = the records the converter
        dropped); a split leaving no training frame is an error."""
        if "train" not in self.splits:
            raise ValueError(f"{self.source}: the held-out blocks {self.blocks} leave no training frames")
        return write_conversion(out_dir, self.splits, self.image_video, self.category, info, img_root=img_root,
                                mode=self.mode, seed=self.seed, counts=self.counts, blocks=self.blocks,
                                skipped=skipped)


def _label_files(src: Path) -> list[Path]:
    """The label tables of a project folder (each ``CollectedData_*.csv``, or its ``.h5`` twin where there is no
    CSV), or the one file given."""
    if src.is_dir():
        csvs = sorted(src.glob("labeled-data/*/CollectedData_*.csv"))
        csvs += sorted(h for h in src.glob("labeled-data/*/CollectedData_*.h5")
                       if not h.with_suffix(".csv").is_file())
        if not csvs:
            raise FileNotFoundError(f"{src}: no labeled-data/*/CollectedData_*.csv in this DeepLabCut project")
        return csvs
    if src.is_file():
        return [src]
    raise FileNotFoundError(f"{src}: no such DeepLabCut project folder or label CSV")


def _twin_disagreement(table: DLCLabels, twin: DLCLabels) -> str | None:
    """The first difference between a label table and its CSV/.h5 twin, in words; None when they agree (to
    1e-6 px)."""
    if (table.individuals, table.bodyparts) != (twin.individuals, twin.bodyparts):
        return (f"columns differ: individuals {table.individuals} / {twin.individuals}, body parts "
                f"{table.bodyparts} / {twin.bodyparts}")
    if table.frame_paths != twin.frame_paths:
        only = sorted(set(table.frame_paths) ^ set(twin.frame_paths))
        return f"frames differ ({len(only)} in one file only, e.g. {only[0]})" if only else "frames differ"
    a, b = table.coords, twin.coords
    same = np.isclose(a, b, rtol=0, atol=1e-6) | (np.isnan(a) & np.isnan(b))
    if same.all():
        return None
    f, i, k, c = (int(v) for v in np.argwhere(~same)[0])
    column = f"{table.individuals[i] + '/' if len(table.individuals) > 1 else ''}{table.bodyparts[k]}/{'xy'[c]}"
    return (f"{int((~same).any(axis=(1, 2, 3)).sum())} frame(s) differ, first frame {table.frame_paths[f]}, "
            f"column {column}: {table.coords[f, i, k, c]:g} in {table.csv_path.name}, {twin.coords[f, i, k, c]:g} in "
            f"{twin.csv_path.name}")


def _check_twin(table: DLCLabels) -> None:
    """DeepLabCut keeps each label table twice (CSV and .h5); say so clearly when the two disagree, e.g. after
    editing one by hand, since DeepLabCut itself trains from the .h5 and this converter reads the file given."""
    path = table.csv_path
    twin_path = path.with_suffix(".h5" if path.suffix.lower() == ".csv" else ".csv")
    if not twin_path.is_file():
        return
    try:
        diff = _twin_disagreement(table, read_dlc_labels(twin_path))
    except DataError as err:
        diff = f"{twin_path.name} does not pass the checks ({err})"
    if diff is not None:
        newer = path if path.stat().st_mtime >= twin_path.stat().st_mtime else twin_path
        log.warning("%s and %s disagree: %s. Converting %s (%s was saved last); DeepLabCut trains from the .h5: "
                    "make the two agree (deeplabcut.convertcsv2h5 rewrites the .h5 from the CSV)",
                    path, twin_path.name, diff, path.name, newer.name)


def _common_bodyparts(tables: Sequence[DLCLabels]) -> list[str]:
    bodyparts = tables[0].bodyparts
    for t in tables[1:]:
        if t.bodyparts != bodyparts:
            raise _fail(t.csv_path, f"body parts {t.bodyparts} differ from {bodyparts} in {tables[0].csv_path}")
    return bodyparts


def _skeleton(cfg: Mapping[str, Any], bodyparts: list[str]) -> list[list[int]]:
    """``config.yaml``'s skeleton as 1-based COCO index pairs (edges naming unknown body parts dropped)."""
    return [[bodyparts.index(a) + 1, bodyparts.index(b) + 1] for pair in cfg.get("skeleton") or []
            if len(pair) == 2 and (a := pair[0]) in bodyparts and (b := pair[1]) in bodyparts]


def _frames_by_video(tables: Sequence[DLCLabels], root: Path, problem: _Problems
                     ) -> dict[str, list[tuple[DLCLabels, int, Path]]]:
    """``{video: [(table, row, image file), ...]}`` sorted by frame path. A frame labelled in two files is an
    error; a frame whose image is missing is one too, or with ``on_error="skip"`` a listed skip."""
    by_video: dict[str, list[tuple[DLCLabels, int, Path]]] = {}
    seen: dict[str, Path] = {}
    for t in tables:
        for row, frame in enumerate(t.frame_paths):
            if frame in seen:
                raise _fail(t.csv_path, f"frame {frame} is labelled in {seen[frame]} too")
            seen[frame] = t.csv_path
            image = _frame_file(t.csv_path, frame, root)
            if image is None:
                reason = f"image not found (looked for {root / frame})"
                if problem.raise_:
                    raise FileNotFoundError(f"{t.csv_path}: frame {frame}: {reason}")
                problem(t.csv_path, f"frame {frame}", None, reason)
                continue
            video = video_of(frame) or t.csv_path.parent.name
            by_video.setdefault(video, []).append((t, row, image))
    for frames in by_video.values():
        frames.sort(key=lambda f: f[0].frame_paths[f[1]])
    return by_video


def _frame_image(table: DLCLabels, frame: str, src_img: Path, root: Path, img_root: Path, copy_images: bool
                 ) -> tuple[str, tuple[int, int]]:
    """Read a labelled frame's image (for its size), copy it below ``img_root`` when asked; ``(COCO file_name,
    (W, H))``."""
    rel = Path(*Path(frame).parts[1:]) if Path(frame).parts[0] == "labeled-data" else Path(frame)
    file_name = rel.as_posix() if copy_images else Path(os.path.relpath(src_img, root)).as_posix()
    img = cv2.imread(str(src_img), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DataError(f"{table.csv_path}: frame {frame}: {src_img} is not an image OpenCV can read")
    height, width = img.shape[:2]
    if copy_images:
        dst = img_root / file_name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.is_file() or dst.stat().st_size != src_img.stat().st_size:
            shutil.copyfile(src_img, dst)
    return file_name, (width, height)


def dlc_to_coco(
    project_or_csv: str | Path,
    out_dir: str | Path,
    *,
    blocks: Mapping[str, Mapping[str, tuple[int, int]]] | None = None,
    split: str = "blocks",
    val_fraction: float = 0.1,
    test_fraction: float = 0.15,
    seed: int = 0,
    margin: float = 0.25,
    min_margin: float = 4.0,
    category_name: str = "animal",
    copy_images: bool = True,
    on_error: str = "raise",
) -> dict[str, Path]:
    """Convert a DLC project (folder with ``config.yaml`` + ``labeled-data``), or one label CSV (a DLC
    ``CollectedData_<scorer>.csv`` or a lightning-pose ``CollectedData.csv``), to COCO files.

    Every label CSV of the project is converted and the split is computed over all of them, per video (a
    frame's video is its folder, :func:`video_of`).

    Args:
        project_or_csv: project folder (every ``labeled-data/*/CollectedData_*.csv``) or one CSV.
        out_dir: output folder: ``annotations/{train,val,test}.json``, ``split.json`` (the held-out blocks and
            the counts per split) and, with ``copy_images``, ``images/``.
        blocks: held-out frame blocks per video, ``{video: {"val": (start, stop), "test": (start, stop)}}``;
            None = computed by :func:`split_frames` from ``split``, the fractions and ``seed``.
        split, val_fraction, test_fraction, seed: :func:`split_frames`'s ``mode``, fractions and seed.
        margin, min_margin: box margin (see :func:`keypoint_box`).
        category_name: COCO category name (``supercategory`` is "animal").
        copy_images: copy the frames to ``out_dir/images`` (file names relative to the project's
            ``labeled-data``); otherwise file names are relative to the project root and ``images`` points
            there.
        on_error: ``"raise"``: a bad row or a missing frame image is an error naming the file, the row and the
            column (:func:`read_dlc_labels`); ``"skip"``: it is dropped, logged and listed under ``skipped`` in
            ``split.json``, everything else converted.

    Returns:
        ``{"train": json, ["val": json,] ["test": json,] "images": folder, "split": split.json}``.
    """
    src = Path(project_or_csv)
    problem = _Problems(on_error)
    csvs = _label_files(src)
    tables = [read_dlc_labels(c, on_error=on_error) for c in csvs]
    for t in tables:
        _check_twin(t)
    bodyparts = _common_bodyparts(tables)
    root = src if src.is_dir() else _project_root(src, tables[0].frame_paths)
    category = {"supercategory": "animal", "id": 1, "name": category_name, "keypoints": list(bodyparts),
                "skeleton": _skeleton(_read_config(root), bodyparts)}
    by_video = _frames_by_video(tables, root, problem)
    settings = SplitSettings(split, val_fraction, test_fraction, seed, blocks)
    coco = CocoBuilder(src, category, {v: len(f) for v, f in by_video.items()}, settings, margin, min_margin)

    out_dir = Path(out_dir)
    img_root = out_dir / "images" if copy_images else root
    for video, (table, row, image), split_name in coco.frames(by_video):
        file_name, size = _frame_image(table, table.frame_paths[row], image, root, img_root, copy_images)
        coco.add_frame(split_name, video, file_name, size, table.coords[row])
    info = {"description": f"DeepLabCut labels of {root.name}", "source": [str(c) for c in csvs]}
    skipped = [s for t in tables for s in t.skipped] + problem.skipped
    if problem.skipped:
        log.warning("%s: skipped %d frames whose image is missing: %s", src, len(problem.skipped),
                    ", ".join(s["record"] for s in problem.skipped))
    return coco.write(out_dir, img_root, info, skipped)


def ensure_mouse_openfield(root: str | Path) -> dict[str, Path]:
    """Convert the embedded openfield frames into ``root`` once (a stamp file makes later calls instant).

    Split: frames 100-115 test, 90-99 val, 0-89 train (:data:`MOUSE_OPENFIELD_BLOCKS`); 320x240 JPEG frames;
    one category "mouse" with body parts snout, leftear, rightear, tailbase.

    Returns:
        ``{"train": json, "val": json, "test": json, "images": folder, "split": split.json}``.
    """
    root = Path(root)
    stamp_file = root / "mouse_openfield_stamp.json"
    stamp = {"converter": "clamp_pl.formats.dlc", "version": _CONVERTER_VERSION,
             "blocks": {k: list(v) for k, v in MOUSE_OPENFIELD_BLOCKS.items()}}
    paths = {s: root / "annotations" / f"{s}.json" for s in ("train", "val", "test")}
    paths["images"] = root / "images"
    paths["split"] = root / "split.json"
    if stamp_file.is_file() and all(p.exists() for p in paths.values()):
        try:
            if json.loads(stamp_file.read_text()) == stamp:
                return paths
        except json.JSONDecodeError:
            pass
    if not (RESOURCE_DIR / "config.yaml").is_file():
        raise FileNotFoundError(f"embedded DeepLabCut frames missing at {RESOURCE_DIR}: reinstall clamp_pl "
                                "(the package data was not installed)")
    out = dlc_to_coco(RESOURCE_DIR, root, blocks={"m4s1": MOUSE_OPENFIELD_BLOCKS}, category_name="mouse")
    stamp_file.write_text(json.dumps(stamp, indent=1) + "\n")
    return out
