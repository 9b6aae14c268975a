"""Evaluation: OKS AP via xtcocotools (mmpose semantics), per-species/family AP, PCK, swap rate.

The torchmetrics wrapper used in training is ``clamp_pl.evaluation.metric.CocoKeypointAP``; it is not imported
here, so that scoring a results file does not load torchmetrics.
"""

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
)
from clamp_pl.evaluation.pck import keypoint_confusion, pck, pck_per_keypoint, swap_rate

__all__ = [
    "STAT_NAMES",
    "CocoEvalResult",
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
    "swap_rate",
]
