"""Evaluation: OKS AP via xtcocotools (mmpose semantics), per-species/family AP, PCK, swap rate."""

from clamp_pl.evaluation.coco_eval import (
    STAT_NAMES,
    CocoEvalResult,
    SparseCOCOeval,
    coco_keypoint_eval,
    evaluate_keypoints,
    instance_oks,
    load_gt,
    oks_iou,
    oks_nms,
    per_category_ap,
    rescore,
    write_results,
)
from clamp_pl.evaluation.metric import CocoKeypointAP
from clamp_pl.evaluation.pck import keypoint_confusion, pck, pck_per_keypoint, swap_rate

__all__ = [
    "STAT_NAMES",
    "CocoEvalResult",
    "CocoKeypointAP",
    "SparseCOCOeval",
    "coco_keypoint_eval",
    "evaluate_keypoints",
    "instance_oks",
    "keypoint_confusion",
    "load_gt",
    "oks_iou",
    "oks_nms",
    "pck",
    "pck_per_keypoint",
    "per_category_ap",
    "rescore",
    "swap_rate",
    "write_results",
]
