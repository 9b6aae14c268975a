"""Frames proposed for labelling, written into the user's own labelling project with the model's keypoints as
proposals to correct there. Existing labels are never written over: human labels stay in their files, untouched,
and a second run appends to the proposals of the first.

Where each format puts them (``<video>`` = the video file's stem, ``<n>`` = the frame index):

* DeepLabCut (a project folder with ``config.yaml``): ``labeled-data/<video>/img<n>.png`` (zero-padded as the
  folder's frames already are, else to the digits of the video's frame count, DeepLabCut's rule) and, beside them,
  ``machinelabels-iter<i>.h5`` + ``.csv`` (``i`` = the config's ``iteration``), the machine-label tables
  DeepLabCut's refine GUI and napari-deeplabcut open for correction; ``CollectedData_*`` is not touched. A
  video new to the project gets its folder, but not an entry in ``config.yaml``'s ``video_sets``.
* lightning-pose (a folder with ``CollectedData.csv``, or that file): ``labeled-data/<video>/img<n:08d>.png`` and
  ``proposals.csv`` at the project root, DeepLabCut's layout (``x, y, likelihood`` per keypoint, one row per frame
  indexed by its path relative to the root); ``CollectedData.csv`` is not touched.
* SLEAP (a ``.slp``): ``<stem>.proposals.slp`` beside it: the project's labels with, for each proposed frame of
  a video (referenced where it is, added to the project's videos when new), a predicted instance, which the SLEAP
  GUI turns into a user instance to correct. The project's own ``.slp`` is not touched; a second run adds to the
  proposals file, keeping everything in it (corrections made there included).
* COCO (a folder, or a COCO keypoint JSON whose folder is used): ``images/<video>/<n:06d>.png`` and
  ``proposals.json`` (COCO keypoints, ``v = 2``, the scores in ``keypoint_scores``; images carry ``video`` and
  ``frame_idx``), for Label Studio / CVAT import.

:func:`labelled_frames` lists per video the frames a project already labels or was proposed, which the
frame picker leaves out. Keypoint coordinates are image pixels, pixel centres at integer coordinates.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import yaml

from clamp_pl.core.geometry import keypoint_box
from clamp_pl.formats.dlc import PoseTable, read_dlc_labels, write_dlc_csv, write_dlc_h5
from clamp_pl.formats.sleap import import_sleap_io

__all__ = ["FORMATS", "Proposal", "detect_format", "labelled_frames", "project_root", "write_proposals"]

FORMATS = ("dlc", "lightning-pose", "sleap", "coco")
#: the lightning-pose proposals table, at the project root
LP_PROPOSALS = "proposals.csv"
COCO_PROPOSALS = "proposals.json"
_FRAME_NUMBER = re.compile(r"(\d+)\.\w+$")


@dataclass
class Proposal:
    """One frame proposed for labelling.

    Attributes:
        video: the video file the frame comes from.
        frame: its 0-based index in the video.
        image: RGB uint8 ``[H, W, 3]``.
        keypoints: ``[K, 2]`` the model's keypoints (image pixels), in the order of the writer's ``bodyparts``.
        scores: ``[K]`` their scores.
    """

    video: Path
    frame: int
    image: np.ndarray
    keypoints: np.ndarray
    scores: np.ndarray


def detect_format(project: str | Path) -> str:
    """The format of a project path: ``"dlc"`` (a folder with ``config.yaml``), ``"lightning-pose"`` (a folder
    with ``CollectedData.csv``, or a ``.csv``), ``"sleap"`` (a ``.slp``), else ``"coco"`` (a folder or ``.json``)."""
    p = Path(project)
    if p.suffix.lower() == ".slp":
        return "sleap"
    if p.suffix.lower() == ".csv":
        return "lightning-pose"
    if p.suffix.lower() == ".json":
        return "coco"
    if (p / "config.yaml").is_file() and (p / "labeled-data").is_dir():
        return "dlc"
    if (p / "CollectedData.csv").is_file():
        return "lightning-pose"
    return "coco"


def project_root(project: str | Path, fmt: str) -> Path:
    """The folder the format's proposals go to (a project file's folder)."""
    p = Path(project)
    return p.parent if p.suffix and fmt != "dlc" else p


def _frame_number(path: str) -> int | None:
    m = _FRAME_NUMBER.search(path)
    return int(m.group(1)) if m else None


def _rows_by_video(paths: Sequence[str], into: dict[str, set[int]]) -> None:
    for path in paths:
        parts = Path(path).parts
        number = _frame_number(path)
        if len(parts) >= 2 and number is not None:
            into.setdefault(parts[-2], set()).add(number)


def _table_index(path: Path) -> list[str]:
    """The row labels of a DeepLabCut-layout table (``.h5`` or ``.csv``; three-level row indices joined by
    '/')."""
    df = pd.read_hdf(path) if path.suffix == ".h5" else pd.read_csv(path, header=[0, 1, 2], index_col=0)
    return ["/".join(map(str, i)) if isinstance(i, tuple) else str(i) for i in df.index]


def labelled_frames(project: str | Path, fmt: str | None = None) -> dict[str, set[int]]:
    """Per video stem, the frame indices the project labels already or holds proposals for (never proposed
    again). Frame numbers are read from the label files' frame names (``img0042.png`` -> 42)."""
    fmt = fmt or detect_format(project)
    root = project_root(project, fmt)
    out: dict[str, set[int]] = {}
    if fmt == "dlc":
        for table in sorted(root.glob("labeled-data/*/CollectedData_*.csv")):
            _rows_by_video(read_dlc_labels(table).frame_paths, out)
        for table in sorted(root.glob("labeled-data/*/machinelabels-iter*.h5")):
            _rows_by_video(_table_index(table), out)
    elif fmt == "lightning-pose":
        for table in (sorted(root.glob("CollectedData*.csv")) + [root / LP_PROPOSALS]):
            if table.is_file():
                _rows_by_video(read_dlc_labels(table).frame_paths, out)
    elif fmt == "sleap":
        sio = import_sleap_io()
        slp = Path(project)
        for path in (slp, _sleap_proposals_path(slp)):
            if path.is_file():
                for lf in sio.load_slp(str(path)).labeled_frames:
                    name = lf.video.filename
                    if isinstance(name, str):
                        out.setdefault(Path(name).stem, set()).add(int(lf.frame_idx))
    elif fmt == "coco":
        files = [Path(project)] if Path(project).suffix.lower() == ".json" else []
        files.append(root / COCO_PROPOSALS)
        for path in dict.fromkeys(files):
            if path.is_file():
                for im in json.loads(path.read_text()).get("images", []):
                    if "video" in im and "frame_idx" in im:
                        out.setdefault(Path(str(im["video"])).stem, set()).add(int(im["frame_idx"]))
    else:
        raise ValueError(f"unknown proposals format {fmt!r}; one of {FORMATS}")
    return out


def write_proposals(project: str | Path, proposals: Sequence[Proposal], bodyparts: Sequence[str],
                    fmt: str | None = None, scorer: str = "clamp", skeleton: Sequence[Sequence[int]] = ()
                    ) -> dict[str, Any]:
    """Write ``proposals`` into ``project`` in its format (see the module docstring).

    Args:
        bodyparts: the ``K`` keypoint names of the proposals' keypoints (a DeepLabCut / lightning-pose / SLEAP
            project must name the same ones, in any order).
        fmt: one of :data:`FORMATS`; None = :func:`detect_format`.
        scorer: the scorer row of DeepLabCut-layout tables.
        skeleton: 0-based keypoint pairs (COCO's category skeleton).

    Returns:
        ``{"format", "frames": [written image paths], "labels": [written label files]}``.

    Raises:
        ValueError: a proposal's frame is already labelled or proposed (the message names the file and frame),
            or the project's keypoints differ from ``bodyparts``.
    """
    fmt = fmt or detect_format(project)
    done = labelled_frames(project, fmt)
    for p in proposals:
        if p.frame in done.get(p.video.stem, set()):
            raise ValueError(f"{project}: frame {p.frame} of {p.video.name} is already labelled or proposed there")
    if fmt == "dlc":
        return _write_dlc(Path(project), proposals, list(bodyparts), scorer)
    if fmt == "lightning-pose":
        return _write_lightning_pose(project_root(project, fmt), proposals, list(bodyparts), scorer)
    if fmt == "sleap":
        return _write_sleap(Path(project), proposals, list(bodyparts))
    if fmt == "coco":
        return _write_coco(project_root(project, fmt), proposals, list(bodyparts), skeleton)
    raise ValueError(f"unknown proposals format {fmt!r}; one of {FORMATS}")


def _write_png(path: Path, image: np.ndarray) -> None:
    """Write an RGB frame as PNG, never over an existing file (a frame extracted before is the same frame)."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"{path}: cannot write the frame image")


def _frame_width(folder: Path, video: Path) -> int:
    """Zero padding of frame names: the folder's existing ``img<digits>.*`` files', else DeepLabCut's rule (the
    digits of the video's frame count)."""
    for f in sorted(folder.glob("img*.*")):
        m = re.fullmatch(r"img(\d+)", f.stem)
        if m:
            return len(m.group(1))
    cap = cv2.VideoCapture(str(video))
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if cap.isOpened() else 0
    cap.release()
    return max(int(np.ceil(np.log10(n))) if n > 1 else 1, 1)


def _check_bodyparts(where: Path, theirs: Sequence[str], ours: Sequence[str]) -> None:
    if sorted(theirs) != sorted(ours):
        raise ValueError(f"{where}: the project's keypoints {list(theirs)} are not the model's {list(ours)}")


def _append_table(path: Path, index: list[str], xy: np.ndarray, scores: np.ndarray, bodyparts: list[str],
                  scorer: str) -> PoseTable:
    """The rows of an existing DeepLabCut-layout table at ``path`` (``.csv`` read as written, values kept) plus
    the new rows ``xy [N, K, 2]``, ``scores [N, K]``."""
    if path.is_file():
        old = pd.read_csv(path, header=[0, 1, 2], index_col=0)
        old_parts = list(dict.fromkeys(old.columns.get_level_values(1)))
        _check_bodyparts(path, old_parts, bodyparts)
        scorer = str(old.columns.get_level_values(0)[0])
        vals = np.stack([old.xs(bp, axis=1, level=1).droplevel(0, axis=1)[["x", "y", "likelihood"]].to_numpy(float)
                         for bp in bodyparts], axis=1)  # [T, K, 3]
        index = [str(i) for i in old.index] + index
        xy = np.concatenate([vals[..., :2], xy])
        scores = np.concatenate([vals[..., 2], scores])
    return PoseTable(index, xy[:, None], scores[:, None], bodyparts, scorer)


def _by_video(proposals: Sequence[Proposal]) -> dict[Path, list[Proposal]]:
    groups: dict[Path, list[Proposal]] = {}
    for p in proposals:
        groups.setdefault(p.video, []).append(p)
    return {v: sorted(g, key=lambda p: p.frame) for v, g in groups.items()}


def _write_dlc(root: Path, proposals: Sequence[Proposal], bodyparts: list[str], scorer: str) -> dict[str, Any]:
    cfg = yaml.safe_load((root / "config.yaml").read_text()) or {}
    if cfg.get("bodyparts"):
        _check_bodyparts(root / "config.yaml", [str(b) for b in cfg["bodyparts"]], bodyparts)
        bodyparts_order = [str(b) for b in cfg["bodyparts"]]
    else:
        bodyparts_order = bodyparts
    order = [bodyparts.index(b) for b in bodyparts_order]
    iteration = int(cfg.get("iteration") or 0)
    frames, labels = [], []
    for video, group in _by_video(proposals).items():
        folder = root / "labeled-data" / video.stem
        width = _frame_width(folder, video)
        index = []
        for p in group:
            name = f"img{p.frame:0{width}d}.png"
            _write_png(folder / name, p.image)
            frames.append(folder / name)
            index.append(f"labeled-data/{video.stem}/{name}")
        xy = np.stack([p.keypoints for p in group]).astype(np.float64)[:, order]
        sc = np.stack([p.scores for p in group]).astype(np.float64)[:, order]
        stem = folder / f"machinelabels-iter{iteration}"
        table = _append_table(stem.with_suffix(".csv"), index, xy, sc, bodyparts_order, scorer)
        labels.append(write_dlc_csv(table, stem.with_suffix(".csv")))
        h5 = write_dlc_h5(table, stem.with_suffix(".h5"))
        if h5 is not None:
            labels.append(h5)
    return {"format": "dlc", "frames": frames, "labels": labels}


def _write_lightning_pose(root: Path, proposals: Sequence[Proposal], bodyparts: list[str], scorer: str
                          ) -> dict[str, Any]:
    collected = root / "CollectedData.csv"
    order_names = read_dlc_labels(collected).bodyparts if collected.is_file() else bodyparts
    _check_bodyparts(collected, order_names, bodyparts)
    order = [bodyparts.index(b) for b in order_names]
    frames, index, xy, sc = [], [], [], []
    for video, group in _by_video(proposals).items():
        for p in group:
            rel = f"labeled-data/{video.stem}/img{p.frame:08d}.png"
            _write_png(root / rel, p.image)
            frames.append(root / rel)
            index.append(rel)
            xy.append(np.asarray(p.keypoints, dtype=np.float64)[order])
            sc.append(np.asarray(p.scores, dtype=np.float64)[order])
    path = root / LP_PROPOSALS
    table = _append_table(path, index, np.stack(xy), np.stack(sc), order_names, scorer)
    return {"format": "lightning-pose", "frames": frames, "labels": [write_dlc_csv(table, path)]}


def _sleap_proposals_path(slp: Path) -> Path:
    return slp.with_name(f"{slp.stem}.proposals.slp")


def _write_sleap(slp: Path, proposals: Sequence[Proposal], bodyparts: list[str]) -> dict[str, Any]:
    sio = import_sleap_io()
    out = _sleap_proposals_path(slp)
    labels = sio.load_slp(str(out if out.is_file() else slp))
    if len(labels.skeletons) != 1:
        raise ValueError(f"{slp}: {len(labels.skeletons)} skeletons; proposals need the project's one skeleton")
    skeleton = labels.skeletons[0]
    nodes = list(skeleton.node_names)
    _check_bodyparts(slp, nodes, bodyparts)
    order = [bodyparts.index(n) for n in nodes]
    videos = {str(Path(v.filename).resolve()): v for v in labels.videos if isinstance(v.filename, str)}
    for video, group in _by_video(proposals).items():
        key = str(video.resolve())
        if key not in videos:
            videos[key] = sio.Video.from_filename(key)
            labels.videos.append(videos[key])
        for p in group:
            inst = sio.PredictedInstance.from_numpy(
                np.asarray(p.keypoints, dtype=np.float64)[order], skeleton=skeleton,
                point_scores=np.asarray(p.scores, dtype=np.float64)[order], score=float(np.mean(p.scores)))
            labels.labeled_frames.append(sio.LabeledFrame(video=videos[key], frame_idx=int(p.frame),
                                                          instances=[inst]))
    sio.save_slp(labels, str(out), verbose=False)
    return {"format": "sleap", "frames": [], "labels": [out]}


def _write_coco(root: Path, proposals: Sequence[Proposal], bodyparts: list[str],
                skeleton: Sequence[Sequence[int]]) -> dict[str, Any]:
    path = root / COCO_PROPOSALS
    if path.is_file():
        coco = json.loads(path.read_text())
        _check_bodyparts(path, coco["categories"][0]["keypoints"], bodyparts)
        if coco["categories"][0]["keypoints"] != bodyparts:
            raise ValueError(f"{path}: keypoint order {coco['categories'][0]['keypoints']} differs from {bodyparts}")
    else:
        coco = {"info": {"description": "frames proposed for labelling, with the model's keypoints"},
                "images": [], "annotations": [],
                "categories": [{"id": 1, "name": "animal", "supercategory": "animal", "keypoints": bodyparts,
                                "skeleton": [[int(a) + 1, int(b) + 1] for a, b in skeleton]}]}
    next_image = max((im["id"] for im in coco["images"]), default=0) + 1
    next_ann = max((a["id"] for a in coco["annotations"]), default=0) + 1
    frames = []
    for video, group in _by_video(proposals).items():
        for p in group:
            rel = f"images/{video.stem}/{p.frame:06d}.png"
            _write_png(root / rel, p.image)
            frames.append(root / rel)
            h, w = p.image.shape[:2]
            kpts = np.asarray(p.keypoints, dtype=np.float64)
            box = keypoint_box(kpts, clip_to=(w, h))
            coco["images"].append({"id": next_image, "file_name": rel[len("images/"):], "width": w, "height": h,
                                   "video": video.stem, "frame_idx": int(p.frame)})
            coco["annotations"].append({
                "id": next_ann, "image_id": next_image, "category_id": 1, "iscrowd": 0,
                "keypoints": [round(float(v), 3) for xy in kpts for v in (*xy, 2)],
                "num_keypoints": len(kpts), "bbox": [round(float(v), 2) for v in box],
                "area": round(float(box[2] * box[3]), 2),
                "keypoint_scores": [round(float(s), 4) for s in p.scores]})
            next_image += 1
            next_ann += 1
    path.write_text(json.dumps(coco, indent=1))
    return {"format": "coco", "frames": frames, "labels": [path]}
