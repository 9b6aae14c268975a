"""Predict keypoints on images: ``python -m clamp_pl.predict ckpt_path=<.ckpt or run dir> input=<image, folder or
glob> [boxes=<detections.json> | detector.enabled=true] [score_threshold=0.3] [flip_test=true] [output_dir=<folder>]``.

Input: one image file, every image inside a folder and its subfolders (searched recursively), or a glob pattern
(``'photos/**/*.jpg'``, quoted; ``**`` spans folders); suffixes in :data:`clamp_pl.api.IMAGE_SUFFIXES`, sorted by
path. File names in the outputs are relative to the folder (for a glob, to its longest folder without a
wildcard). A video file (:data:`clamp_pl.video.VIDEO_SUFFIXES`) is predicted frame by frame instead: see
:mod:`clamp_pl.video`.

Boxes: without ``boxes`` or a detector each image gets one whole-image box ``[0, 0, W, H]`` (score 1,
``category_id`` from the config). A detector (``detector.enabled=true`` with ``detector.weights=<file>`` or
``detector.download=true``: :mod:`clamp_pl.detector`) finds the animals of every image; each of its boxes scoring
at least ``detector.score_threshold`` is predicted, and its class is written as ``label``. With ``boxes`` the
file is a COCO detections list ``[{"image_id", "bbox": [x, y, w, h], "score", "category_id"?}, ...]`` or a COCO
dict with ``"annotations"`` (and optionally ``"images"``); detections below ``box_threshold`` and boxes without
area are ignored. Detections are matched to files by this rule:

1. if an images list is available (the ``"images"`` of the boxes file, or the COCO json ``image_list``), an
   ``image_id`` names its ``file_name``, which matches an input file by its path relative to the input folder,
   else by its base name;
2. otherwise an ``image_id`` matches the file whose name stem equals it as text, or whose stem is all digits
   with the same integer value (COCO's zero-padded ``000000000139.jpg`` is image 139).

Images without a detection get no prediction; detections that name no input file are counted and reported.

Outputs (``output_dir``, by default this command's run dir): ``predictions.json`` (COCO keypoint results plus
``file_name`` and ``bbox``: ``keypoints`` flat ``[x, y, score] * K`` in image pixels, ``score`` = box score x
mean keypoint score above 0.2), ``predictions_<scorer>.csv`` (and ``.h5``; DeepLabCut's layout, one row per
image indexed by its relative path, :mod:`clamp_pl.pose_io`; multi-animal with boxes or a detector),
``vis/<relative path>.jpg`` (skeletons; keypoints at or below ``score_threshold`` are not drawn) and, when some
images could not be read, ``errors.json``. An unreadable image is reported (the message names the file) and
skipped; the command fails only when the input does not exist or every image failed.
The ``image_id`` of an output is the detection's; without boxes it is the stem's integer value when every stem
is a distinct integer, else the file's position in the sorted list.
"""

from __future__ import annotations

import glob
import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig
from tqdm import tqdm

from clamp_pl.api import IMAGE_SUFFIXES, ImageReadError, PoseEstimator, coco_result, load_model, read_image
from clamp_pl.detector import Detector, build_detector
from clamp_pl.evaluation import write_results
from clamp_pl.pose_io import table_from_instances, write_pose_table
from clamp_pl.tracking import FollowConfig
from clamp_pl.utils.config import config_dir
from clamp_pl.utils.run import task_wrapper
from clamp_pl.video import VIDEO_SUFFIXES, is_video, run_video_prediction
from clamp_pl.visualization import draw_instances, save_rgb

log = logging.getLogger("clamp_pl")

__all__ = ["AllImagesFailed", "ImageJob", "list_images", "match_detections", "predict", "run_prediction"]


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


def _default_ids(files: Sequence[Path]) -> list[int]:
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
    fallback = _default_ids(files)
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
) -> dict[str, Any]:
    """Predict every job, write ``predictions.json``, ``predictions_<scorer>.csv`` (``.h5``), ``vis/`` and
    ``errors.json``; ``detector`` (when given) finds the boxes of the jobs. Returns a summary ``{"images",
    "predicted", "failed", "instances", "errors": [{"file", "error"}], "predictions": path, "csv", "h5"}``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    vis_dir = output_dir / "vis"
    if visualize:
        vis_dir.mkdir(exist_ok=True)
    results: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = []
    rows: list[tuple[str, list[dict[str, Any]]]] = []
    done = 0
    with tqdm(total=len(jobs), desc="predict", unit="img", dynamic_ncols=True) as bar:
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
                                flip_test=flip_test, batch_size=batch_size) if loaded else []
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
                    save_rgb(vis, draw_instances(img, instances, est.meta["skeleton"], score_threshold))
            bar.update(len(jobs[start:start + batch_size]))
    pred_path = write_results(output_dir / "predictions.json", results)
    names = est.meta["keypoint_names"] or [f"kp{i}" for i in range(len(est.meta["prompts"]))]
    multi = detector is not None or any(job.detections is not None for job in jobs)
    table = table_from_instances([r for r, _ in rows], [i for _, i in rows], names, scorer, multi)
    files = write_pose_table(table, output_dir / f"predictions_{scorer}")
    if errors:
        (output_dir / "errors.json").write_text(json.dumps(errors, indent=1))
    return {"images": len(jobs), "predicted": done, "failed": len(errors), "instances": len(results),
            "errors": errors, "predictions": pred_path, "csv": files["csv"], "h5": files["h5"]}


@task_wrapper
def predict(cfg: DictConfig) -> dict[str, Any]:
    """The ``clamp_pl.predict`` command (see the module docstring). Raises :class:`AllImagesFailed` when no
    image could be read."""
    if is_video(cfg.input):
        return _predict_video(cfg)
    if cfg.get("track", "none") != "none":
        raise ValueError(f"track={cfg.track} follows an animal through a video; {cfg.input} is not a video file "
                         f"(suffixes {' '.join(VIDEO_SUFFIXES)})")
    root, files = list_images(cfg.input)
    detector = _build_detector(cfg)
    if cfg.get("boxes"):
        dets, id_to_name = load_detections(cfg.boxes, cfg.get("image_list"), float(cfg.box_threshold))
        jobs, unmatched = match_detections(root, files, dets, id_to_name)
        if unmatched:
            log.warning("%d of %d detections match no input image (see the matching rule in clamp_pl.predict)",
                        unmatched, len(dets))
        empty = sum(not j.detections for j in jobs)
        if empty:
            log.warning("%d of %d images have no detection: no prediction for them", empty, len(jobs))
    else:
        jobs = [ImageJob(f, f.relative_to(root).as_posix(), i) for f, i in zip(files, _default_ids(files))]
    est = load_model(cfg.ckpt_path, device=cfg.get("device"))
    out = Path(cfg.output_dir)
    summary = run_prediction(
        est, jobs, out, score_threshold=float(cfg.score_threshold), flip_test=bool(cfg.flip_test),
        batch_size=int(cfg.batch_size), category_id=int(cfg.category_id), visualize=bool(cfg.visualize),
        detector=detector, scorer=str(cfg.get("scorer", "clamp")),
    )
    log.info("%d images: %d predicted (%d instances), %d failed; results in %s", summary["images"],
             summary["predicted"], summary["instances"], summary["failed"], out)
    if summary["failed"]:
        log.warning("unreadable images (%d): %s (listed in %s)", summary["failed"],
                    ", ".join(e["file"] for e in summary["errors"][:5]), out / "errors.json")
        if summary["failed"] == summary["images"]:
            raise AllImagesFailed(f"all {summary['images']} images failed to load (see {out / 'errors.json'})")
    return summary


def _build_detector(cfg: DictConfig) -> Detector | None:
    """The configured detector (``detector.enabled``), or None; with ``boxes`` too it is an error."""
    d = cfg.get("detector") or {}
    if not d.get("enabled"):
        if d.get("weights") or d.get("download"):
            log.warning("detector.weights/download are set but detector.enabled=false: no detector used")
        return None
    if cfg.get("boxes"):
        raise ValueError("give boxes=<file> or detector.enabled=true, not both")
    return build_detector(
        arch=str(d.get("arch", "fasterrcnn_mobilenet_v3_large_fpn")), weights=d.get("weights"),
        download=bool(d.get("download", False)), score_threshold=float(d.get("score_threshold", 0.5)),
        classes=list(d["classes"]) if d.get("classes") else None, max_detections=int(d.get("max_detections", 10)),
        device=cfg.get("device"),
    )


def _smoothing(cfg: DictConfig) -> dict[str, Any] | None:
    s = cfg.get("smoothing") or {}
    if not s.get("method"):
        return None
    return {"method": str(s.method), "window": int(s.get("window", 5)), "polyorder": int(s.get("polyorder", 2)),
            "threshold": float(s.get("threshold", 0.3))}


def _predict_video(cfg: DictConfig) -> dict[str, Any]:
    dets = None
    if cfg.get("boxes"):
        dets, _ = load_detections(cfg.boxes, None, float(cfg.box_threshold))
    track = str(cfg.get("track", "none"))
    f = cfg.get("follow") or {}
    try:
        follow = FollowConfig(**{k: (tuple(v) if k == "search_scales" else v) for k, v in f.items()})
    except TypeError as e:
        raise ValueError(f"follow: {e} (known keys: {sorted(FollowConfig.__dataclass_fields__)})") from e
    detector = _build_detector(cfg)
    est = load_model(cfg.ckpt_path, device=cfg.get("device"))
    out = Path(cfg.output_dir)
    summary = run_video_prediction(
        est, cfg.input, out, track=track, follow=follow, detector=detector, detections=dets,
        frame_step=int(cfg.get("frame_step", 1)), max_frames=cfg.get("max_frames"),
        score_threshold=float(cfg.score_threshold), flip_test=bool(cfg.flip_test), batch_size=int(cfg.batch_size),
        category_id=int(cfg.category_id), visualize=bool(cfg.visualize), smoothing=_smoothing(cfg),
        scorer=str(cfg.get("scorer", "clamp")),
    )
    log.info("%s: %d frames predicted (%d instances, %.1f ms/frame%s); %s, %s%s", cfg.input, summary["frames"],
             summary["instances"], summary["ms_per_frame"],
             f", re-acquired in {len(summary['reacquired'])} frames" if track == "follow" else "",
             summary["predictions"], summary["csv"], f", {summary['video']}" if summary["video"] else "")
    return summary


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="predict")
def main(cfg: DictConfig) -> None:
    predict(cfg)


if __name__ == "__main__":
    main()
