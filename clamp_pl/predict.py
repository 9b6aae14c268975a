"""Predict keypoints on images: ``python -m clamp_pl.predict ckpt_path=<.ckpt or run dir> input=<image, folder or
glob> [boxes=<detections.json> | detector.enabled=true] [keypoints=[name,...]] [score_threshold=0.3] [flip_test=true]
[output_dir=<folder>]``.

Keypoints: ``keypoints=[snout,'left ear',tail_base]`` predicts these names (any names for a model with the prompt
head, ``model.net.head=prompt``; prompts and flip pairs derived from the names), in this order, in every output;
null (the default) = the keypoints the model was trained on. The log and the returned summary name the keypoints
the model was never trained on. A model with CLAMP's concat head takes only as many names as it was trained on.

Backend: ``backend=onnx`` runs the model's ONNX export with onnxruntime on the CPU (made at ``onnx``, default
``<output_dir>/model.onnx``, when missing or older than the checkpoint; :mod:`clamp_pl.inference.onnx_backend`), the
trained keypoints only; ``backend=torch`` (the default) the PyTorch network on ``device``.

Input: one image file, every image inside a folder and its subfolders (searched recursively), or a glob pattern
(``'photos/**/*.jpg'``, quoted; ``**`` spans folders); suffixes in :data:`clamp_pl.api.IMAGE_SUFFIXES`, sorted by
path. File names in the outputs are relative to the folder (for a glob, to its longest folder without a
wildcard). A video file (:data:`clamp_pl.inference.video.VIDEO_SUFFIXES`) is predicted frame by frame instead: see
:mod:`clamp_pl.inference.video`.

Boxes: without ``boxes`` or a detector each image gets one whole-image box ``[0, 0, W, H]`` (score 1,
``category_id`` from the config). A detector (``detector.enabled=true`` with ``detector.weights=<file>`` or
``detector.download=true``: :mod:`clamp_pl.inference.detector`) finds the animals of every image; each of its boxes scoring
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
image indexed by its relative path, :mod:`clamp_pl.formats.dlc`; multi-animal with boxes or a detector),
``vis/<relative path>.jpg`` (skeletons; keypoints at or below ``score_threshold`` are not drawn) and, when some
images could not be read, ``errors.json``. An unreadable image is reported (the message names the file) and
skipped; the command fails only when the input does not exist or every image failed.
The ``image_id`` of an output is the detection's; without boxes it is the stem's integer value when every stem
is a distinct integer, else the file's position in the sorted list.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from clamp_pl.cli.config import config_dir
from clamp_pl.cli.run import exit_on_user_error, task_wrapper
from clamp_pl.inference.detector import Detector, build_detector
from clamp_pl.inference.estimator import PoseEstimator, load_model
from clamp_pl.inference.images import (
    AllImagesFailed,
    ImageJob,
    default_ids,
    list_images,
    load_detections,
    match_detections,
    run_prediction,
)
from clamp_pl.inference.tracking import FollowConfig
from clamp_pl.inference.video import VIDEO_SUFFIXES, is_video, run_video_prediction

log = logging.getLogger("clamp_pl")

__all__ = ["main", "predict"]


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
        jobs = [ImageJob(f, f.relative_to(root).as_posix(), i) for f, i in zip(files, default_ids(files))]
    est = _estimator(cfg)
    out = Path(cfg.output_dir)
    summary = run_prediction(
        est, jobs, out, score_threshold=float(cfg.score_threshold), flip_test=bool(cfg.flip_test),
        batch_size=int(cfg.batch_size), category_id=int(cfg.category_id), visualize=bool(cfg.visualize),
        detector=detector, scorer=str(cfg.get("scorer", "clamp")), keypoints=_keypoints(cfg),
    )
    _log_untrained(summary)
    log.info("%d images: %d predicted (%d instances), %d failed; results in %s", summary["images"],
             summary["predicted"], summary["instances"], summary["failed"], out)
    if summary["failed"]:
        log.warning("unreadable images (%d): %s (listed in %s)", summary["failed"],
                    ", ".join(e["file"] for e in summary["errors"][:5]), out / "errors.json")
        if summary["failed"] == summary["images"]:
            raise AllImagesFailed(f"all {summary['images']} images failed to load (see {out / 'errors.json'})")
    return summary


def _estimator(cfg: DictConfig) -> PoseEstimator:
    """The model of ``ckpt_path`` on the configured ``backend``: ``torch`` (:func:`load_model` on ``device``) or
    ``onnx`` (onnxruntime on the CPU, the export at ``onnx``, made there when missing or stale;
    :func:`clamp_pl.inference.onnx_backend.load_onnx_model`)."""
    backend = str(cfg.get("backend", "torch"))
    if backend == "torch":
        return load_model(cfg.ckpt_path, device=cfg.get("device"))
    if backend != "onnx":
        raise ValueError(f"backend must be torch or onnx, got {backend!r}")
    from clamp_pl.inference.onnx_backend import load_onnx_model

    if cfg.get("device") not in (None, "cpu"):
        log.warning("backend=onnx runs on the CPU (onnxruntime): device=%s is not used", cfg.device)
    onnx = cfg.get("onnx") or Path(cfg.output_dir) / "model.onnx"
    return load_onnx_model(cfg.ckpt_path, onnx, threads=cfg.get("threads"))


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


def _keypoints(cfg: DictConfig) -> list[str] | None:
    """``keypoints``: a list of names, one name, or null (the trained vocabulary)."""
    names = cfg.get("keypoints")
    if names is None:
        return None
    names = [names] if isinstance(names, str) else [str(n) for n in names]
    if not names:
        raise ValueError("keypoints=[] names no keypoint: give names (keypoints=[snout,'left ear']) or null")
    return names


def _log_untrained(summary: dict[str, Any]) -> None:
    if summary["untrained_keypoints"]:
        log.warning("keypoints the model was never trained on (predicted from their names alone): %s",
                    ", ".join(summary["untrained_keypoints"]))


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
    est = _estimator(cfg)
    out = Path(cfg.output_dir)
    summary = run_video_prediction(
        est, cfg.input, out, track=track, follow=follow, detector=detector, detections=dets,
        frame_step=int(cfg.get("frame_step", 1)), max_frames=cfg.get("max_frames"),
        score_threshold=float(cfg.score_threshold), flip_test=bool(cfg.flip_test), batch_size=int(cfg.batch_size),
        category_id=int(cfg.category_id), visualize=bool(cfg.visualize), smoothing=_smoothing(cfg),
        scorer=str(cfg.get("scorer", "clamp")), keypoints=_keypoints(cfg),
    )
    _log_untrained(summary)
    log.info("%s: %d frames predicted (%d instances, %.1f ms/frame%s); %s, %s%s", cfg.input, summary["frames"],
             summary["instances"], summary["ms_per_frame"],
             f", re-acquired in {len(summary['reacquired'])} frames" if track == "follow" else "",
             summary["predictions"], summary["csv"], f", {summary['video']}" if summary["video"] else "")
    return summary


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="predict")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    predict(cfg)


if __name__ == "__main__":
    main()
