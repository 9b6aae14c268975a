"""DeepLabCut projects -> COCO keypoint files.

A DeepLabCut (DLC) project keeps its labels per video in ``labeled-data/<video>/CollectedData_<scorer>.csv``:

* single-animal: three header rows ``scorer`` / ``bodyparts`` / ``coords`` (``x``, ``y`` per body part);
* multi-animal (maDLC): four header rows ``scorer`` / ``individuals`` / ``bodyparts`` / ``coords``; every
  individual becomes one instance. The ``single`` individual of maDLC (the project's unique body parts) is
  not an animal and is dropped.

Rows start with the frame path, either in one column (``labeled-data/m4s1/img0000.png``) or, since DLC 2.3, in
three index columns (``labeled-data``, ``m4s1``, ``img0000.png``). Empty cells mean "not labelled".

Conversion (:func:`dlc_to_coco`): one category (name configurable, ``keypoints`` = the body-part names,
``skeleton`` from ``config.yaml`` when it defines one), ``v = 2`` for labelled and ``x = y = v = 0`` for
unlabelled keypoints, and a box from the labelled keypoints plus a margin (``margin`` x the larger side of
their extent on every side, at least ``min_margin`` px) clipped to the image. Frames of one video are nearly
identical neighbours, so val/test are CONTIGUOUS blocks of the frame list (sorted by path) rather than random
frames, which would leak near-duplicates into training.

Prompts for the body-part names come from :func:`clamp_pl.data.metainfo.name_to_prompt`
(``leftear`` -> "left ear", ``tailbase`` -> "tail base").

:func:`ensure_mouse_openfield` converts the 116 real frames of DLC's openfield example that ship with the
package (``clamp_pl/resources/dlc_openfield``, half size, see its README) with the default split: frames 100-115
test, 90-99 val, 0-89 train.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import yaml

__all__ = [
    "DLCLabels",
    "MOUSE_OPENFIELD_BLOCKS",
    "dlc_to_coco",
    "ensure_mouse_openfield",
    "keypoint_box",
    "read_dlc_csv",
    "read_dlc_labels",
]

RESOURCE_DIR = Path(__file__).resolve().parent.parent / "resources" / "dlc_openfield"
#: Default split of the embedded openfield frames: half-open frame-index blocks.
MOUSE_OPENFIELD_BLOCKS = {"val": (90, 100), "test": (100, 116)}
_CONVERTER_VERSION = 1


@dataclass
class DLCLabels:
    """Labels of one ``CollectedData_*.csv``.

    ``coords`` is float64 ``(N, I, K, 2)``: frame, individual, body part, (x, y) in image pixels; NaN where
    the body part is not labelled. Single-animal files have one individual (``individuals == ["animal"]``).
    """

    csv_path: Path
    scorer: str
    frame_paths: list[str]
    individuals: list[str]
    bodyparts: list[str]
    coords: np.ndarray


def _fail(path: Path, msg: str) -> ValueError:
    return ValueError(f"{path}: {msg}")


def read_dlc_labels(csv_path: str | Path) -> DLCLabels:
    """Parse a DLC ``CollectedData_*.csv`` (single- or multi-animal header, 1- or 3-column frame index)."""
    path = Path(csv_path)
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.reader(f) if any(c.strip() for c in r)]
    if len(rows) < 3 or rows[0][0].strip() != "scorer":
        raise _fail(path, "not a DeepLabCut label file (first cell must be 'scorer')")
    heads = [r[0].strip() for r in rows[:4]]
    if heads[:3] == ["scorer", "bodyparts", "coords"]:
        n_header, ind_row, bp_row, coord_row = 3, None, rows[1], rows[2]
    elif heads == ["scorer", "individuals", "bodyparts", "coords"]:
        n_header, ind_row, bp_row, coord_row = 4, rows[1], rows[2], rows[3]
    else:
        raise _fail(path, f"unexpected header rows {heads}; expected scorer/bodyparts/coords "
                          "(or scorer/individuals/bodyparts/coords)")
    # The frame index spans the columns before the first coordinate column.
    first = next((i for i, c in enumerate(coord_row) if c.strip() in ("x", "y", "likelihood")), None)
    if first is None:
        raise _fail(path, "no x/y columns in the 'coords' row")
    n_index = first
    columns: list[tuple[str, str, str, int]] = []  # (individual, bodypart, coord, column)
    for col in range(first, len(coord_row)):
        coord = coord_row[col].strip()
        if coord not in ("x", "y"):
            continue  # likelihood columns of machine labels
        ind = ind_row[col].strip() if ind_row is not None else "animal"
        columns.append((ind, bp_row[col].strip(), coord, col))
    individuals = list(dict.fromkeys(c[0] for c in columns if c[0] != "single" or ind_row is None))
    bodyparts = list(dict.fromkeys(c[1] for c in columns if c[0] in individuals))
    if not individuals or not bodyparts:
        raise _fail(path, "no body parts found")
    frames: list[str] = []
    coords = np.full((len(rows) - n_header, len(individuals), len(bodyparts), 2), np.nan)
    ind_idx = {n: i for i, n in enumerate(individuals)}
    bp_idx = {n: i for i, n in enumerate(bodyparts)}
    for r, row in enumerate(rows[n_header:]):
        frame = "/".join(c.strip() for c in row[:n_index] if c.strip())
        if not frame:
            raise _fail(path, f"data row {r + n_header + 1} has no frame path")
        frames.append(frame)
        for ind, bp, coord, col in columns:
            if ind not in ind_idx:
                continue
            cell = row[col].strip() if col < len(row) else ""
            if cell:
                try:
                    coords[r, ind_idx[ind], bp_idx[bp], 0 if coord == "x" else 1] = float(cell)
                except ValueError as err:
                    raise _fail(path, f"frame {frame}: {bp} {coord} = {cell!r} is not a number") from err
    if len(set(frames)) != len(frames):
        raise _fail(path, "duplicate frame paths")
    order = sorted(range(len(frames)), key=lambda i: frames[i])
    return DLCLabels(path, rows[0][n_index].strip() if len(rows[0]) > n_index else "", [frames[i] for i in order],
                     individuals, bodyparts, coords[order])


def read_dlc_csv(csv_path: str | Path) -> tuple[list[str], list[str], np.ndarray]:
    """Single-animal view: ``(frame_paths, bodyparts, coords float64 (N, K, 2))``, NaN = unlabelled.

    Frames are sorted by path. For multi-animal files use :func:`read_dlc_labels` (this raises).
    """
    labels = read_dlc_labels(csv_path)
    if len(labels.individuals) != 1:
        raise _fail(labels.csv_path, f"multi-animal file ({len(labels.individuals)} individuals); "
                                     "use read_dlc_labels")
    return labels.frame_paths, labels.bodyparts, labels.coords[:, 0]


def keypoint_box(xy: np.ndarray, image_size: tuple[int, int], margin: float = 0.25, min_margin: float = 4.0
                 ) -> list[float] | None:
    """Box ``[x, y, w, h]`` around the labelled points ``xy`` (K, 2; NaN rows ignored).

    Each side is pushed out by ``max(margin * max(extent_w, extent_h), min_margin)`` pixels, then the box is
    clipped to the image ``[0, W] x [0, H]``. None when no point is labelled.
    """
    pts = xy[~np.isnan(xy).any(axis=1)]
    if len(pts) == 0:
        return None
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    pad = max(margin * float(max(hi - lo)), min_margin)
    w, h = image_size
    x0, y0 = max(0.0, lo[0] - pad), max(0.0, lo[1] - pad)
    x1, y1 = min(float(w), hi[0] + pad), min(float(h), hi[1] + pad)
    return [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)]


def _project_root(csv_path: Path, frames: list[str]) -> Path:
    # Frame paths are relative to the project root ("labeled-data/<video>/img.png").
    parts = Path(frames[0]).parts if frames else ()
    if parts and parts[0] == "labeled-data":
        return csv_path.resolve().parents[2]
    return csv_path.resolve().parent


def _read_config(root: Path) -> dict:
    cfg = root / "config.yaml"
    if not cfg.is_file():
        return {}
    with open(cfg, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def _check_block(name: str, block: tuple[int, int] | None, n: int) -> range:
    if block is None:
        return range(0)
    start, stop = int(block[0]), int(block[1])
    if not 0 <= start < stop <= n:
        raise ValueError(f"{name}_block {block} must satisfy 0 <= start < stop <= {n} (number of frames)")
    return range(start, stop)


def dlc_to_coco(
    project_or_csv: str | Path,
    out_dir: str | Path,
    *,
    test_block: tuple[int, int] | None,
    val_block: tuple[int, int] | None = None,
    margin: float = 0.25,
    min_margin: float = 4.0,
    category_name: str = "mouse",
    copy_images: bool = True,
) -> dict[str, Path]:
    """Convert a DLC project (folder with ``config.yaml`` + ``labeled-data``) or one label CSV to COCO files.

    Args:
        project_or_csv: project folder (every ``labeled-data/*/CollectedData_*.csv`` is used) or one CSV.
        out_dir: output folder: ``annotations/{train,val,test}.json`` and, with ``copy_images``, ``images/``.
        test_block, val_block: half-open ``(start, stop)`` frame-index ranges (frames sorted by path, videos
            concatenated in path order) held out as test / val; None = no such split. They must not overlap.
        margin, min_margin: box margin (see :func:`keypoint_box`).
        category_name: COCO category name (``supercategory`` is "animal").
        copy_images: copy the frames to ``out_dir/images`` (file names relative to the project's
            ``labeled-data``); otherwise file names are relative to the project root and ``images`` points
            there.

    Returns:
        ``{"train": json, ["val": json,] ["test": json,] "images": folder}``.
    """
    src = Path(project_or_csv)
    if src.is_dir():
        csvs = sorted(src.glob("labeled-data/*/CollectedData_*.csv"))
        if not csvs:
            raise FileNotFoundError(f"{src}: no labeled-data/*/CollectedData_*.csv in this DeepLabCut project")
    elif src.is_file():
        csvs = [src]
    else:
        raise FileNotFoundError(f"{src}: no such DeepLabCut project folder or label CSV")
    tables = [read_dlc_labels(c) for c in csvs]
    bodyparts = tables[0].bodyparts
    for t in tables[1:]:
        if t.bodyparts != bodyparts:
            raise _fail(t.csv_path, f"body parts {t.bodyparts} differ from {bodyparts} in {tables[0].csv_path}")
    root = src if src.is_dir() else _project_root(src, tables[0].frame_paths)
    cfg = _read_config(root)
    skeleton = []
    for pair in cfg.get("skeleton") or []:
        if len(pair) == 2 and pair[0] in bodyparts and pair[1] in bodyparts:
            skeleton.append([bodyparts.index(pair[0]) + 1, bodyparts.index(pair[1]) + 1])

    frames = [(t, i) for t in tables for i in range(len(t.frame_paths))]
    n = len(frames)
    test_ids = _check_block("test", test_block, n)
    val_ids = _check_block("val", val_block, n)
    if set(test_ids) & set(val_ids):
        raise ValueError(f"val_block {val_block} and test_block {test_block} overlap")
    split_of = ["train"] * n
    for i in val_ids:
        split_of[i] = "val"
    for i in test_ids:
        split_of[i] = "test"
    if "train" not in split_of:
        raise ValueError(f"val/test blocks {val_block}, {test_block} leave no training frames of {n}")

    out_dir = Path(out_dir)
    img_root = out_dir / "images" if copy_images else root
    category = {"supercategory": "animal", "id": 1, "name": category_name, "keypoints": list(bodyparts),
                "skeleton": skeleton}
    splits: dict[str, dict] = {}
    for idx, ((table, row), split) in enumerate(zip(frames, split_of)):
        frame = table.frame_paths[row]
        src_img = (root / frame) if (root / frame).is_file() else table.csv_path.parent / Path(frame).name
        rel = Path(*Path(frame).parts[1:]) if Path(frame).parts[0] == "labeled-data" else Path(frame)
        file_name = rel.as_posix() if copy_images else Path(os.path.relpath(src_img, root)).as_posix()
        img = cv2.imread(str(src_img), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise FileNotFoundError(f"{table.csv_path}: frame {frame} not found or unreadable at {src_img}")
        height, width = img.shape[:2]
        if copy_images:
            dst = img_root / file_name
            dst.parent.mkdir(parents=True, exist_ok=True)
            if not dst.is_file() or dst.stat().st_size != src_img.stat().st_size:
                shutil.copyfile(src_img, dst)
        coco = splits.setdefault(split, {"images": [], "annotations": []})
        image_id = idx + 1
        coco["images"].append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for ind in range(len(table.individuals)):
            xy = table.coords[row, ind]
            box = keypoint_box(xy, (width, height), margin, min_margin)
            if box is None:
                continue  # an individual without labels in this frame is not an instance
            labelled = ~np.isnan(xy).any(axis=1)
            kps = []
            for (x, y), ok in zip(xy, labelled):
                kps += [round(float(x), 3), round(float(y), 3), 2] if ok else [0, 0, 0]
            coco["annotations"].append({
                "id": image_id * 100 + ind, "image_id": image_id, "category_id": 1, "bbox": box,
                "area": round(box[2] * box[3], 2), "iscrowd": 0, "num_keypoints": int(labelled.sum()),
                "keypoints": kps,
            })
    paths: dict[str, Path] = {}
    ann_dir = out_dir / "annotations"
    ann_dir.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "test"):
        if split not in splits:
            continue
        coco = {"info": {"description": f"DeepLabCut labels of {root.name} ({split})",
                         "source": [str(c) for c in csvs]},
                **splits[split], "categories": [category]}
        path = ann_dir / f"{split}.json"
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(coco, indent=1))
        os.replace(tmp, path)
        paths[split] = path
    paths["images"] = img_root
    return paths


def ensure_mouse_openfield(root: str | Path) -> dict[str, Path]:
    """Convert the embedded openfield frames into ``root`` once (a stamp file makes later calls instant).

    Split: frames 100-115 test, 90-99 val, 0-89 train (:data:`MOUSE_OPENFIELD_BLOCKS`); 320x240 JPEG frames;
    one category "mouse" with body parts snout, leftear, rightear, tailbase.

    Returns:
        ``{"train": json, "val": json, "test": json, "images": folder}``.
    """
    root = Path(root)
    stamp_file = root / "mouse_openfield_stamp.json"
    stamp = {"converter": "clamp_pl.data.dlc", "version": _CONVERTER_VERSION,
             "blocks": {k: list(v) for k, v in MOUSE_OPENFIELD_BLOCKS.items()}}
    paths = {s: root / "annotations" / f"{s}.json" for s in ("train", "val", "test")}
    paths["images"] = root / "images"
    if stamp_file.is_file() and all(p.exists() for p in paths.values()):
        try:
            if json.loads(stamp_file.read_text()) == stamp:
                return paths
        except json.JSONDecodeError:
            pass
    if not (RESOURCE_DIR / "config.yaml").is_file():
        raise FileNotFoundError(f"embedded DeepLabCut frames missing at {RESOURCE_DIR}: reinstall clamp_pl "
                                "(the package data was not installed)")
    out = dlc_to_coco(RESOURCE_DIR, root, test_block=MOUSE_OPENFIELD_BLOCKS["test"],
                      val_block=MOUSE_OPENFIELD_BLOCKS["val"], category_name="mouse")
    stamp_file.write_text(json.dumps(stamp, indent=1) + "\n")
    return out
