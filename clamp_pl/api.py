"""The public Python API for a trained model (plain torch + numpy + cv2; no Lightning, Hydra or OmegaConf).

>>> from clamp_pl.api import load_model
>>> est = load_model("logs/train/runs/2024-01-01_12-00-00")   # a run dir (best checkpoint), .ckpt or model file
>>> preds = est.predict(["cat.jpg"], boxes=[[[10, 20, 200, 150, 0.9]]])

The implementation lives in :mod:`clamp_pl.inference`; this module is its stable facade.
"""

from clamp_pl.inference.estimator import (
    IMAGE_SUFFIXES,
    ImageReadError,
    PoseEstimator,
    coco_result,
    load_model,
    nearest_context_tokens,
    read_image,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageReadError",
    "PoseEstimator",
    "coco_result",
    "load_model",
    "nearest_context_tokens",
    "read_image",
]
