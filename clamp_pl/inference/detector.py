"""Find animals in images with a torchvision detector, for top-down pose estimation on images without boxes.

COCO-trained torchvision detectors (``fasterrcnn_mobilenet_v3_large_fpn``, ``fasterrcnn_resnet50_fpn``,
``retinanet_resnet50_fpn``, ...) know ten animal classes (:data:`COCO_ANIMALS`); their boxes above a score
threshold become the pose model's boxes.

Weights are never fetched silently: either a local file (a torchvision state dict of the same architecture,
e.g. the ``.pth`` that torchvision's model zoo serves for it, saved from ``torch.hub``'s cache of a machine that
has it), or an explicit ``download=True``, which torchvision downloads into ``torch.hub``'s cache (logged).
Without either, :func:`build_detector` raises :class:`DetectorWeightsMissing` saying how to get them, or how to
pass boxes instead.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

log = logging.getLogger("clamp_pl")

__all__ = ["COCO_ANIMALS", "Detector", "DetectorWeightsMissing", "TorchvisionDetector", "build_detector"]

#: COCO category id -> name of the animal classes (torchvision's COCO detectors use these ids as labels)
COCO_ANIMALS: dict[int, str] = {16: "bird", 17: "cat", 18: "dog", 19: "horse", 20: "sheep", 21: "cow",
                                22: "elephant", 23: "bear", 24: "zebra", 25: "giraffe"}

Detection = dict[str, Any]


class DetectorWeightsMissing(FileNotFoundError):
    """A detector was asked for without weights (no local file, no explicit download)."""


class Detector(Protocol):
    """Anything that finds boxes: ``detector(images RGB uint8 [H, W, 3], ...) -> per image, detections
    {"bbox": [x, y, w, h] image pixels, "score": float, "label": class name}`` (best first)."""

    def __call__(self, images: Sequence[np.ndarray]) -> list[list[Detection]]: ...


class TorchvisionDetector:
    """A torchvision detection model kept to some classes and a score threshold.

    Args:
        model: a torchvision detection model (``images: list of float [3, H, W] in [0, 1]`` -> ``boxes`` xyxy,
            ``labels``, ``scores``); put in eval mode here.
        classes: label id -> name of the classes to keep (default the COCO animals).
        score_threshold: detections scoring below it are dropped.
        max_detections: at most this many per image (best first).
        device: where the model runs (default: cuda when available).
    """

    def __init__(
        self, model: torch.nn.Module, classes: dict[int, str] | None = None, score_threshold: float = 0.5,
        max_detections: int = 10, device: str | torch.device | None = None,
    ) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.classes = dict(COCO_ANIMALS if classes is None else classes)
        self.score_threshold = float(score_threshold)
        self.max_detections = int(max_detections)

    @torch.no_grad()
    def __call__(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        if not images:
            return []
        batch = [torch.from_numpy(np.ascontiguousarray(im)).to(self.device).permute(2, 0, 1).float() / 255.0
                 for im in images]
        out: list[list[Detection]] = []
        for res in self.model(batch):
            boxes = res["boxes"].float().cpu().numpy()
            labels = res["labels"].cpu().numpy()
            scores = res["scores"].float().cpu().numpy()
            dets = []
            for (x0, y0, x1, y1), lab, sc in zip(boxes, labels, scores):
                if int(lab) in self.classes and sc >= self.score_threshold and x1 > x0 and y1 > y0:
                    dets.append({"bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                                 "score": float(sc), "label": self.classes[int(lab)]})
            dets.sort(key=lambda d: -d["score"])
            out.append(dets[:self.max_detections])
        return out


def _coco_category_ids(names: Sequence[str] | None, arch: str) -> dict[int, str]:
    """Class names -> ``{COCO id: name}`` (None = the animals); unknown names are an error listing the known."""
    if names is None:
        return dict(COCO_ANIMALS)
    from torchvision.models import get_model_weights

    categories = get_model_weights(arch).DEFAULT.meta["categories"]
    ids = {}
    for n in names:
        if n not in categories:
            known = ", ".join(c for c in categories if c != "N/A" and c != "__background__")
            raise ValueError(f"detector.classes: {n!r} is not a COCO class; known: {known}")
        ids[categories.index(n)] = n
    return ids


def build_detector(
    arch: str = "fasterrcnn_mobilenet_v3_large_fpn",
    weights: str | Path | None = None,
    download: bool = False,
    score_threshold: float = 0.5,
    classes: Sequence[str] | None = None,
    max_detections: int = 10,
    device: str | torch.device | None = None,
) -> TorchvisionDetector:
    """A COCO-trained torchvision detector (see the module docstring).

    Args:
        arch: a ``torchvision.models.get_model`` detection name.
        weights: a local state-dict file of ``arch`` with the 91 COCO labels (a raw state dict, or a dict holding
            it under ``"model"`` or ``"state_dict"``).
        download: with no ``weights``, let torchvision download its COCO weights for ``arch`` (logged).
        classes: COCO class names to keep (default :data:`COCO_ANIMALS`).
    """
    from torchvision.models import get_model, get_model_weights

    try:
        default = get_model_weights(arch).DEFAULT
    except (ValueError, KeyError) as e:
        raise ValueError(f"detector.arch: {arch!r} is not a torchvision detection model ({e})") from e
    keep = _coco_category_ids(classes, arch)
    if weights is not None:
        path = Path(str(weights)).expanduser()
        if not path.is_file():
            raise DetectorWeightsMissing(f"detector.weights: file not found: {path}")
        model = get_model(arch, weights=None, weights_backbone=None, num_classes=len(default.meta["categories"]))
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict):
            state = state.get("model", state.get("state_dict", state))
        try:
            model.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as e:
            raise ValueError(f"{path}: not a state dict of torchvision's {arch} with the COCO labels: "
                             f"{str(e)[:500]}") from e
        log.info("detector %s: weights from %s", arch, path)
    elif download:
        log.warning("detector %s: downloading torchvision's COCO weights %s into torch.hub's cache (%s) because "
                    "detector.download=true", arch, default.url, torch.hub.get_dir())
        model = get_model(arch, weights=default)
    else:
        raise DetectorWeightsMissing(
            f"the {arch} detector has no weights. Either pass a local file: detector.weights=<path to {arch}'s "
            f"COCO state dict, {Path(default.url).name} from torchvision's model zoo, e.g. copied from "
            f"{torch.hub.get_dir()}/checkpoints/ of a machine that has it>, or allow the download: "
            f"detector.download=true; or give no detector and pass boxes=<COCO detections JSON> (one "
            f"[x, y, w, h] per animal), or track=follow for a single animal in a video")
    return TorchvisionDetector(model, keep, score_threshold, max_detections, device)
