"""Predict keypoints on image files: listing inputs, matching detections to files, running the estimator and
writing the outputs (plain torch + numpy + cv2). The command ``python -m clamp_pl.predict`` is its Hydra front end;
the module docstring there gives the input rules, the matching rule and the outputs."""

from __future__ import annotations

import glob
import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clamp_pl.core.viz import draw_instances, save_rgb
from clamp_pl.formats.coco import write_results
from clamp_pl.formats.dlc import table_from_instances
from clamp_pl.inference.detector import Detector
from clamp_pl.inference.estimator import (
    IMAGE_SUFFIXES,
    ImageReadError,
    PoseEstimator,
    coco_result,
    read_image,
)
from clamp_pl.inference.progress import progress
from clamp_pl.inference.smoothing import write_pose_table

log = logging.getLogger("clamp_pl")

__all__ = ["AllImagesFailed", "ImageJob", "default_ids", "list_images", "load_detections", "match_detections",
           "run_prediction"]


class AllImagesFailed(RuntimeError):
    """No input image could be read."""


@dataclass
class ImageJob:
    """One input image: its file, its name relative to the input folder, its id and its detections (None =
    whole-image box)."""

    path: Path
    file_name: str
    image_id: int
    detections: list[dict[str, Any]] | None = None


def _is_image(f: Path) -> bool:
    return f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES


def list_images(input_path: str | Path) -> tuple[Path, list[Path]]:
    """``(root, files)``: the image itself, the images in a folder and all its subfolders, or the images a glob
    pattern matches (``**`` spans folders; the root is its longest folder without a wildcard). Sorted by their
    path relative to the root."""
    text = str(Path(str(input_path)).expanduser())
    if glob.has_magic(text):
        parts = Path(text).parts
        fixed = next(i for i, part in enumerate(parts) if glob.has_magic(part))
        root = Path(*parts[:fixed]) if fixed else Path(".")
        files = sorted((Path(f) for f in glob.glob(text, recursive=True) if _is_image(Path(f))),
                       key=lambda f: f.relative_to(root).as_posix())
        if not files:
            raise FileNotFoundError(f"no images ({' '.join(IMAGE_SUFFIXES)}) match {text}")
        return root, files
    p = Path(text)
    if not p.exists():
        raise FileNotFoundError(f"input not found: {p}")
    if p.is_file():
        return p.parent, [p]
    files = sorted((f for f in p.rglob("*") if _is_image(f)), key=lambda f: f.relative_to(p).as_posix())
    if not files:
        raise FileNotFoundError(f"no images ({' '.join(IMAGE_SUFFIXES)}) in {p} or its subfolders")
    return p, files


def default_ids(files: Sequence[Path]) -> list[int]:
    stems = [f.stem for f in files]
    if all(s.isdigit() for s in stems) and len({int(s) for s in stems}) == len(stems):
        return [int(s) for s in stems]
    return list(range(len(files)))


def _read_json(path: str | Path, what: str) -> Any:
    path = Path(str(path)).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e


def load_detections(
    boxes_file: str | Path, image_list: str | Path | None = None, box_threshold: float = 0.0
) -> tuple[list[dict[str, Any]], dict[int, str] | None]:
    """Detections (each with ``image_id``, ``bbox``, ``score``, optional ``category_id``) and the id -> file
    name map when an images list is available."""
    data = _read_json(boxes_file, "boxes")
    images = None
    if isinstance(data, dict):
        if "annotations" not in data:
            raise ValueError(f"{boxes_file}: expected a detections list or a COCO dict with 'annotations'")
        images = data.get("images")
        data = data["annotations"]
    if image_list:
        listed = _read_json(image_list, "image_list")
        images = listed.get("images") if isinstance(listed, dict) else None
        if images is None:
            raise ValueError(f"{image_list}: expected a COCO json with an 'images' list")
    dets, dropped = [], 0
    for n, d in enumerate(data):
        if not isinstance(d, dict) or "image_id" not in d or "bbox" not in d:
            raise ValueError(f"{boxes_file}: detection {n} needs 'image_id' and 'bbox', got {d!r}")
        bbox = [float(v) for v in d["bbox"]]
        score = float(d.get("score", 1.0))
        if len(bbox) != 4 or not np.isfinite(bbox).all() or bbox[2] <= 0 or bbox[3] <= 0 or score < box_threshold:
            dropped += 1
            continue
        det = {"image_id": d["image_id"], "bbox": bbox, "score": score}
        if d.get("category_id") is not None:
            det["category_id"] = int(d["category_id"])
        dets.append(det)
    if dropped:
        log.info("%s: %d detections ignored (below box_threshold=%s or without area)", boxes_file, dropped,
                 box_threshold)
    id_to_name = None if images is None else {im["id"]: str(im["file_name"]) for im in images}
    return dets, id_to_name


def match_detections(
    root: Path, files: Sequence[Path], detections: Sequence[dict[str, Any]], id_to_name: dict[Any, str] | None
) -> tuple[list[ImageJob], int]:
    """Jobs (one per file, with its detections) and the number of detections that matched no file."""
    rel = {f: f.relative_to(root).as_posix() for f in files}
    by_rel = {r: f for f, r in rel.items()}
    by_base: dict[str, list[Path]] = defaultdict(list)
    for f in files:
        by_base[f.name].append(f)
    by_stem: dict[str, Path] = {}
    for f in files:
        by_stem.setdefault(f.stem, f)
        if f.stem.isdigit():
            by_stem.setdefault(str(int(f.stem)), f)

    def file_of(image_id: Any) -> Path | None:
        if id_to_name is not None:
            name = id_to_name.get(image_id)
            if name is None:
                return None
            if name in by_rel:
                return by_rel[name]
            base = by_base.get(Path(name).name, [])
            return base[0] if len(base) == 1 else None
        key = str(image_id)
        return by_stem.get(key) or (by_stem.get(str(int(key))) if key.isdigit() else None)

    dets_of: dict[Path, list[dict[str, Any]]] = defaultdict(list)
    ids_of: dict[Path, Any] = {}
    unmatched = 0
    for d in detections:
        f = file_of(d["image_id"])
        if f is None:
            unmatched += 1
            continue
        dets_of[f].append(d)
        ids_of.setdefault(f, d["image_id"])
    fallback = default_ids(files)
    jobs = [ImageJob(f, rel[f], ids_of.get(f, fallback[i]), dets_of.get(f, [])) for i, f in enumerate(files)]
    return jobs, unmatched


def run_prediction(
    est: PoseEstimator,
    jobs: Sequence[ImageJob],
    output_dir: Path,
    *,
    score_threshold: float = 0.3,
    flip_test: bool = True,
    batch_size: int = 16,
    category_id: int = 1,
    visualize: bool = True,
    detector: Detector | None = None,
    scorer: str = "clamp",
    keypoints: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Predict every job, write ``predictions.json``, ``predictions_<scorer>.csv`` (``.h5``), ``vis/`` and
    ``errors.json``; ``detector`` (when given) finds the boxes of the jobs; ``keypoints`` names the keypoints to
    predict (None: the model's trained vocabulary; see :meth:`PoseEstimator.predict`). Returns a summary
    ``{"images", "predicted", "failed", "instances", "errors": [{"file", "error"}], "predictions": path, "csv",
    "h5", "keypoints": the names predicted, "untrained_keypoints": those the model was never trained on}``."""
    meta = est.vocabulary(keypoints)  # before any work: a concat model asked for another count stops here
    output_dir.mkdir(parents=True, exist_ok=True)
    vis_dir = output_dir / "vis"
    if visualize:
        vis_dir.mkdir(exist_ok=True)
    results: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = []
    rows: list[tuple[str, list[dict[str, Any]]]] = []
    done = 0
    with progress(len(jobs), "predict", "img") as bar:
        # chunks of images, so that crops of several images share a forward pass
        for start in range(0, len(jobs), batch_size):
            loaded = []
            for job in jobs[start:start + batch_size]:
                try:
                    loaded.append((job, read_image(job.path)))
                except ImageReadError as e:
                    errors.append({"file": str(job.path), "error": str(e)})
                    log.error("skipped: %s", e)
            if detector is not None and loaded:
                for (job, _), dets in zip(loaded, detector([img for _, img in loaded])):
                    job.detections = dets
            preds = est.predict([img for _, img in loaded], [job.detections for job, _ in loaded],
                                keypoints=keypoints, flip_test=flip_test, batch_size=batch_size) if loaded else []
            for (job, img), instances in zip(loaded, preds):
                done += 1
                # the detector's class is a COCO name, not one of the pose model's categories: kept as a label
                labels = [{"label": d["label"]} if "label" in d else {} for d in job.detections or [{}]]
                results += [coco_result(inst, job.image_id, category_id, file_name=job.file_name, **lab)
                            for inst, lab in zip(instances, labels)]
                rows.append((job.file_name, instances))
                if visualize:
                    vis = vis_dir / Path(job.file_name).with_suffix(".jpg")
                    vis.parent.mkdir(parents=True, exist_ok=True)
                    save_rgb(vis, draw_instances(img, instances, meta.skeleton, score_threshold))
            bar.update(len(jobs[start:start + batch_size]))
    pred_path = write_results(output_dir / "predictions.json", results)
    multi = detector is not None or any(job.detections is not None for job in jobs)
    table = table_from_instances([r for r, _ in rows], [i for _, i in rows], list(meta.keypoint_names), scorer,
                                 multi)
    files = write_pose_table(table, output_dir / f"predictions_{scorer}")
    if errors:
        (output_dir / "errors.json").write_text(json.dumps(errors, indent=1))
    return {"images": len(jobs), "predicted": done, "failed": len(errors), "instances": len(results),
            "errors": errors, "predictions": pred_path, "csv": files["csv"], "h5": files["h5"],
            "keypoints": list(meta.keypoint_names), "untrained_keypoints": list(est.spec.untrained(keypoints))}
