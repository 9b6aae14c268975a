"""``CocoKeypointAP``: a torchmetrics Metric that gathers top-down predictions across ranks and scores them.

Each rank appends its predictions (one per instance, image pixels); ``compute()`` gathers them, drops the
duplicates that ``DistributedSampler`` pads in, and runs the mmpose evaluation: rescoring, OKS-NMS, OKS AP
(overall, per species, per family), PCK and swap rate. The result does not depend on the number of ranks or on
the order of updates: samples are sorted by annotation id before evaluation.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from clamp_pl.evaluation.coco_eval import coco_keypoint_eval, instance_oks, load_gt, oks_nms
from clamp_pl.evaluation.pck import keypoint_confusion, pck, pck_per_keypoint, swap_rate
from clamp_pl.inference.postprocess import RESCORE_THR, rescore

PCK_THRESHOLDS: tuple[float, ...] = (0.05, 0.1, 0.2)
#: threshold of the per-keypoint (and per-species) PCK table
KEYPOINT_PCK_THR = 0.1


class CocoKeypointAP(Metric):
    """OKS keypoint AP (xtcocotools, mmpose ``CocoMetric`` semantics) plus per-group AP, PCK and swap rate.

    Args:
        gt: COCO keypoint ground truth (dict or path) that the predictions' ``ann_id``/``image_id`` refer to.
        sigmas: (K,) OKS sigmas of the dataset.
        species: category id -> species name; adds ``AP_species/<name>`` for species with ground truth.
        families: family name -> category ids; adds ``AP_family/<name>`` for families with ground truth.
        flip_pairs: (k1, k2) pairs; adds ``swap/<k1>-<k2>`` and ``swap/mean``.
        nms_thr: OKS-NMS threshold per image (None disables NMS).
        score_thr: keypoint scores above it enter the instance score (mmpose ``keypoint_score_thr``).
        use_area: OKS normalised by the GT area (mmpose default).

    ``compute()`` returns python floats: ``AP, AP50, AP75, APM, APL, AR, AR50, AR75, ARM, ARL`` (-1 where
    undefined, as xtcocotools), ``PCK@0.05``, ``PCK@0.1``, ``PCK@0.2`` (over predictions whose ``ann_id`` is a
    ground-truth annotation, before NMS, normalised by max(w, h) of its box), ``nearest_correct`` (fraction of
    labelled keypoints whose prediction is nearer to that keypoint than to any other labelled one of the
    instance: the diagonal of the confusion matrix in :meth:`analysis`), and the optional keys above.

    Call ``update()`` per batch and ``compute()`` once per epoch; ``forward()`` only updates, since an OKS AP of
    a single batch means little and costs a COCOeval run.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        gt: Mapping | str | Path,
        sigmas: Sequence[float] | np.ndarray,
        *,
        species: Mapping[int, str] | None = None,
        families: Mapping[str, Sequence[int]] | None = None,
        flip_pairs: Sequence[tuple[int, int]] | None = None,
        nms_thr: float | None = 0.9,
        score_thr: float = RESCORE_THR,
        use_area: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.coco_gt = load_gt(gt)
        self.sigmas = np.asarray(sigmas, dtype=np.float64)
        self.species = dict(species or {})
        self.families = {name: list(ids) for name, ids in (families or {}).items()}
        self.flip_pairs = [tuple(p) for p in (flip_pairs or ())]
        self.nms_thr = nms_thr
        self.score_thr = score_thr
        self.use_area = use_area
        self._results: list[dict] | None = None
        # per-instance / per-keypoint results of the last compute(): see analysis()
        self._analysis: dict[str, Any] = {}

        for name in ("ann_ids", "image_ids", "category_ids", "keypoints", "scores", "box_scores", "areas"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(
        self,
        ann_ids: torch.Tensor | np.ndarray,
        image_ids: torch.Tensor | np.ndarray,
        category_ids: torch.Tensor | np.ndarray,
        keypoints: torch.Tensor | np.ndarray,
        scores: torch.Tensor | np.ndarray,
        box_scores: torch.Tensor | np.ndarray | None = None,
        areas: torch.Tensor | np.ndarray | None = None,
    ) -> None:
        """Append a batch of N instance predictions.

        Args:
            ann_ids: (N,) annotation ids (the ground-truth annotation, or any unique id for detector boxes);
                also the key that removes the duplicates ``DistributedSampler`` pads in.
            image_ids: (N,) image ids; category_ids: (N,) the instance's true category (species) ids.
            keypoints: (N, K, 2) predicted (x, y) in image pixels.
            scores: (N, K) keypoint confidences.
            box_scores: (N,) box confidences; None = 1 (ground-truth boxes).
            areas: (N,) box areas for OKS-NMS; mmpose uses the padded crop box, i.e. ``scale.prod(-1)``.
                None = w*h of the ground-truth box of ``ann_id`` (keypoint extent when the id is not in GT).
        """
        kp = torch.as_tensor(keypoints, dtype=torch.float64, device=self.device)
        k = len(self.sigmas)
        if kp.ndim != 3 or tuple(kp.shape[1:]) != (k, 2):
            raise ValueError(f"keypoints must be (N, {k}, 2), got {tuple(kp.shape)}")
        n = kp.shape[0]

        def vec(x, dtype: torch.dtype, fill: float = 0.0) -> torch.Tensor:
            t = torch.full((n,), fill, dtype=dtype) if x is None else torch.as_tensor(x, dtype=dtype)
            t = t.reshape(-1).to(self.device)
            if t.shape[0] != n:
                raise ValueError(f"expected {n} values per batch, got {t.shape[0]}")
            return t

        sc = torch.as_tensor(scores, dtype=torch.float64, device=self.device)
        if tuple(sc.shape) != (n, k):
            raise ValueError(f"scores must be ({n}, {k}), got {tuple(sc.shape)}")
        self.ann_ids.append(vec(ann_ids, torch.int64))
        self.image_ids.append(vec(image_ids, torch.int64))
        self.category_ids.append(vec(category_ids, torch.int64))
        self.keypoints.append(kp)
        self.scores.append(sc)
        self.box_scores.append(vec(box_scores, torch.float64, 1.0))
        self.areas.append(vec(areas, torch.float64, float("nan")))

    def forward(self, *args, **kwargs) -> None:
        """Same as :meth:`update` (no per-batch evaluation)."""
        self.update(*args, **kwargs)

    def _gathered(self) -> dict[str, np.ndarray]:
        """All states as numpy, deduplicated by ``ann_id`` (first kept) and sorted by it."""
        names = ("ann_ids", "image_ids", "category_ids", "keypoints", "scores", "box_scores", "areas")
        if (isinstance(self.ann_ids, list) and not self.ann_ids) or dim_zero_cat(self.ann_ids).numel() == 0:
            k = len(self.sigmas)
            shapes = {"keypoints": (0, k, 2), "scores": (0, k)}
            return {n: np.zeros(shapes.get(n, (0,))) for n in names}
        arrays = {n: dim_zero_cat(getattr(self, n)).cpu().numpy() for n in names}
        _, first = np.unique(arrays["ann_ids"], return_index=True)  # sorted ids, first occurrence of each
        return {n: a[first] for n, a in arrays.items()}

    def _build_results(self, s: Mapping[str, np.ndarray]) -> list[dict]:
        inst_scores = rescore(s["scores"], s["box_scores"], self.score_thr)
        results = []
        for i in range(len(s["ann_ids"])):
            ann_id = int(s["ann_ids"][i])
            kp = np.concatenate([s["keypoints"][i], s["scores"][i][:, None]], axis=1)
            r = {
                "image_id": int(s["image_ids"][i]),
                "category_id": int(s["category_ids"][i]),
                "keypoints": kp.reshape(-1).tolist(),
                "score": float(inst_scores[i]),
                "ann_id": ann_id,
            }
            area = float(s["areas"][i])
            if np.isnan(area) and ann_id in self.coco_gt.anns:
                bbox = self.coco_gt.anns[ann_id]["bbox"]
                area = float(bbox[2]) * float(bbox[3])
            if not np.isnan(area):
                r["area"] = area
            results.append(r)
        if self.nms_thr is not None:
            results = oks_nms(results, self.sigmas, self.nms_thr)
        for r in results:
            r.pop("area", None)  # only NMS needs it; keeps the written results in COCO's format
        return results

    def _keypoint_metrics(self, s: Mapping[str, np.ndarray]) -> dict[str, float]:
        self._analysis = {}
        in_gt = np.array([int(a) in self.coco_gt.anns for a in s["ann_ids"]], dtype=bool)
        if not in_gt.any():
            return {}
        anns = [self.coco_gt.anns[int(a)] for a in s["ann_ids"][in_gt]]
        gt = np.array([a["keypoints"] for a in anns], dtype=np.float64).reshape(len(anns), -1, 3)
        norm = np.array([max(a["bbox"][2], a["bbox"][3]) for a in anns], dtype=np.float64)
        pred, visible = s["keypoints"][in_gt], gt[..., 2] > 0
        areas = np.array([a.get("area") or a["bbox"][2] * a["bbox"][3] for a in anns], dtype=np.float64)
        oks = instance_oks(pred, gt, areas, self.sigmas)
        confusion = keypoint_confusion(pred, gt[..., :2], visible)
        table = {"all": pck_per_keypoint(pred, gt[..., :2], visible, norm, KEYPOINT_PCK_THR)}
        cats = np.array([a["category_id"] for a in anns])
        for cat_id, name in sorted(self.species.items(), key=lambda x: x[1]):
            sel = cats == cat_id
            if sel.any():
                table[name] = pck_per_keypoint(pred[sel], gt[sel, :, :2], visible[sel], norm[sel], KEYPOINT_PCK_THR)
        self._analysis = {
            "instance_oks": {int(a): float(o) for a, o in zip(s["ann_ids"][in_gt], oks) if np.isfinite(o)},
            "keypoint_confusion": confusion,
            "keypoint_pck": table,
        }
        out = {}
        if confusion.sum():
            out["nearest_correct"] = float(np.trace(confusion) / confusion.sum())
        for thr in PCK_THRESHOLDS:
            value = pck(pred, gt[..., :2], visible, norm, thr)
            if not np.isnan(value):
                out[f"PCK@{thr}"] = value
        if self.flip_pairs:
            out.update(
                {f"swap/{k}": v for k, v in swap_rate(pred, gt[..., :2], visible, self.flip_pairs).items()}
            )
        return out

    def compute(self) -> dict[str, float]:
        """Evaluate everything gathered so far; see the class docstring for the keys."""
        s = self._gathered()
        self._results = self._build_results(s)
        ev = coco_keypoint_eval(self.coco_gt, self._results, self.sigmas, use_area=self.use_area)
        out = dict(ev.stats)
        for cat_id, name in self.species.items():
            if cat_id in ev.category_ap:
                out[f"AP_species/{name}"] = ev.category_ap[cat_id]
        out.update({f"AP_family/{n}": v for n, v in ev.group_ap(self.families).items()})
        out.update(self._keypoint_metrics(s))
        return out

    def coco_results(self) -> list[dict]:
        """COCO results of the last ``compute()`` (rescored, after NMS, one per ``ann_id``).

        Each has ``image_id``, ``category_id``, ``keypoints`` (flat ``[x, y, score] * K``), ``score`` and
        ``ann_id`` (for tracing a prediction back to its instance); write them with ``write_results``.
        """
        if self._results is None:
            raise RuntimeError("CocoKeypointAP.coco_results() needs compute() first")
        return [dict(r) for r in self._results]

    def analysis(self) -> dict[str, Any]:
        """Per-instance and per-keypoint results of the last ``compute()`` (empty before any, or without ground
        truth), a copy:

        * ``instance_oks``: ``ann_id`` -> OKS of its prediction with its ground truth (COCOeval's formula for
          the pair, before rescoring and NMS); instances without labelled keypoints are left out.
        * ``keypoint_confusion``: (K, K) counts, row = predicted keypoint, column = the labelled keypoint it
          landed nearest to (:func:`clamp_pl.evaluation.pck.keypoint_confusion`).
        * ``keypoint_pck``: PCK@``KEYPOINT_PCK_THR`` per keypoint, (K,) arrays (NaN: never labelled), for
          ``"all"`` instances and for each species with ground truth (by name).
        """
        return copy.deepcopy(self._analysis)

    def reset(self) -> None:
        super().reset()
        self._results = None
        self._analysis = {}
