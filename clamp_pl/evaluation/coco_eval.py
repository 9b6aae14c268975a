"""COCO keypoint evaluation (OKS AP) on xtcocotools, with mmpose's rescoring and OKS-NMS.

Semantics follow mmpose's ``CocoMetric`` (and the mmpose 0.x ``TopDownAp10kDataset`` that CLAMP used):

- ``COCOeval(coco_gt, coco_dt, 'keypoints', sigmas, use_area=True)`` from xtcocotools, ``params.useSegm = None``,
  all GT images and categories, default thresholds (OKS 0.50:0.95, maxDets 20, areas all/medium/large); its
  ``evaluate()`` skips empty (image, category) pairs (:class:`SparseCOCOeval`, same numbers, faster).
- Every result carries its instance's true ``category_id``: COCOeval averages AP over categories, so a wrong or
  constant id collapses AP (mmpose #1726).
- Instance score = box score x mean of the keypoint scores above 0.2 (``score_mode='bbox_keypoint'``), then
  OKS-NMS at 0.9 per image with the dataset sigmas (:func:`clamp_pl.inference.postprocess.rescore`, :func:`oks_nms`).

Coordinates are image pixels, COCO results are dicts with ``image_id``, ``category_id``, ``keypoints`` (flat
``[x, y, score] * K``) and ``score``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from xtcocotools.coco import COCO
from xtcocotools.cocoeval import COCOeval

log = logging.getLogger(__name__)

STAT_NAMES: tuple[str, ...] = ("AP", "AP50", "AP75", "APM", "APL", "AR", "AR50", "AR75", "ARM", "ARL")

# Only these keys reach xtcocotools: ``loadRes`` switches to box evaluation when a result has ``bbox`` and it
# overwrites ``id``/``area``, so extra keys are either harmful or ignored.
_RESULT_KEYS = ("image_id", "category_id", "keypoints", "score")


def load_gt(gt: Mapping | str | Path | COCO) -> COCO:
    """Build an xtcocotools ``COCO`` ground-truth object in memory (no temporary files).

    Args:
        gt: a COCO keypoint dict, a path to a COCO JSON file, or an existing ``COCO`` object (returned as is).

    The caller's dict is not modified: annotations are copied, because COCOeval writes ``ignore`` flags into
    them. Annotations without ``iscrowd`` get ``iscrowd=0``. An annotation whose ``area`` is missing or <= 0
    gets ``area = w * h`` of its box (a warning says how many): OKS divides by the area, so area 0 would make
    every non-exact prediction score OKS 0 (mmpose #2248).
    """
    if isinstance(gt, COCO):
        return gt
    if isinstance(gt, str | Path):
        with open(gt) as f:
            gt = json.load(f)
    annotations = []
    n_fixed = 0
    for ann in gt.get("annotations", []):
        ann = dict(ann)
        ann.setdefault("iscrowd", 0)
        if not ann.get("area") or ann["area"] <= 0:
            ann["area"] = float(ann["bbox"][2]) * float(ann["bbox"][3])
            n_fixed += 1
        annotations.append(ann)
    if n_fixed:
        log.warning("%d ground-truth annotation(s) had no positive 'area'; using bbox w*h instead", n_fixed)
    coco = COCO()
    coco.dataset = {
        "images": list(gt.get("images", [])),
        "categories": list(gt.get("categories", [])),
        "annotations": annotations,
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


class SparseCOCOeval(COCOeval):
    """xtcocotools ``COCOeval`` whose ``evaluate()`` visits only (image, category) pairs with GT or results.

    The stock loop runs over the full image x category product (AP-10K test: ~2,000 images x 54 species,
    three area ranges), where ``computeOks`` returns ``[]`` and ``evaluateImg`` returns ``None`` for every empty
    pair. Skipping those pairs leaves ``evalImgs``, ``accumulate()`` and the stats unchanged (a test compares
    the precision arrays with the stock class) and is several times faster. Non-keypoint types and
    ``useCats=0`` use the stock loop.
    """

    def evaluate(self) -> None:
        p = self.params
        if not p.useCats or p.useSegm is not None or "keypoints" not in p.iouType:
            super().evaluate()
            return
        p.imgIds = list(np.unique(p.imgIds))
        p.catIds = list(np.unique(p.catIds))
        p.maxDets = sorted(p.maxDets)
        self._prepare()
        # _prepare only indexes annotations of p.imgIds x p.catIds, so every key below has an index.
        pairs = sorted({key for d in (self._gts, self._dts) for key, v in d.items() if v})
        img_index = {img: i for i, img in enumerate(p.imgIds)}
        cat_index = {cat: k for k, cat in enumerate(p.catIds)}
        self.ious = {key: self.computeOks(*key) for key in pairs}
        n_img, n_area, max_det = len(p.imgIds), len(p.areaRng), p.maxDets[-1]
        # Same layout as the stock list: category-major, then area range, then image.
        self.evalImgs = [None] * (len(p.catIds) * n_area * n_img)
        for img, cat in pairs:
            for a, area_rng in enumerate(p.areaRng):
                index = (cat_index[cat] * n_area + a) * n_img + img_index[img]
                self.evalImgs[index] = self.evaluateImg(img, cat, area_rng, max_det)
        self._paramsEval = copy.deepcopy(p)


@dataclass
class CocoEvalResult:
    """Outcome of one COCOeval run.

    Attributes:
        stats: ``AP, AP50, AP75, APM, APL, AR, AR50, AR75, ARM, ARL`` as floats. As in xtcocotools, -1 means
            undefined (no ground truth in that area range, e.g. APM when there is no medium-sized instance).
        category_ap: category id -> AP (OKS 0.50:0.95, all areas, maxDets 20), only for categories with at
            least one non-ignored ground-truth instance.
    """

    stats: dict[str, float]
    category_ap: dict[int, float]

    def group_ap(self, groups: Mapping[str, Sequence[int]]) -> dict[str, float]:
        """AP of each group of categories (species family, ...), as COCOeval restricted to the group.

        COCOeval's AP is the mean of its precision array over (OKS threshold, recall, category), where
        categories without ground truth are -1 and left out; every category with ground truth fills all its
        entries, so the AP of ``params.catIds = group`` equals the mean of the group's per-category APs
        (``tests/evaluation/test_coco_eval.py`` checks it against a restricted run). Groups without any ground
        truth are left out of the output (no NaN).
        """
        out = {}
        for name, cat_ids in groups.items():
            aps = [self.category_ap[c] for c in cat_ids if c in self.category_ap]
            if aps:
                out[name] = float(np.mean(aps))
        return out


def coco_keypoint_eval(
    gt: Mapping | str | Path | COCO,
    results: Sequence[Mapping],
    sigmas: Sequence[float] | np.ndarray,
    *,
    use_area: bool = True,
) -> CocoEvalResult:
    """Run xtcocotools COCOeval once and return the summary stats and the per-category AP.

    Args:
        gt: ground truth, see :func:`load_gt`.
        results: COCO keypoint results; each needs ``image_id``, ``category_id`` (the instance's true
            category), ``keypoints`` (flat ``[x, y, score] * K``, image pixels) and ``score``. Results whose
            keypoint scores are all 0 are ignored by COCOeval (as in mmpose).
        sigmas: per-keypoint OKS sigmas (K,).
        use_area: divide OKS by the GT ``area`` (True, mmpose) or by 0.53 * box area.

    Raises:
        ValueError: a result lacks a required key, or names an image that is not in the ground truth.
    """
    coco_gt = load_gt(gt)
    sigmas = np.asarray(sigmas, dtype=np.float64)
    dts = []
    for i, r in enumerate(results):
        missing = [k for k in _RESULT_KEYS if k not in r]
        if missing:
            raise ValueError(f"result #{i} lacks {missing} (each result needs {list(_RESULT_KEYS)})")
        if len(r["keypoints"]) != 3 * len(sigmas):
            raise ValueError(
                f"result #{i} has {len(r['keypoints'])} keypoint values, expected 3 * {len(sigmas)}"
            )
        dts.append({k: r[k] for k in _RESULT_KEYS})
    unknown = {d["image_id"] for d in dts} - set(coco_gt.getImgIds())
    if unknown:
        raise ValueError(f"results name image ids that are not in the ground truth: {sorted(unknown)[:10]}")

    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(dts)
        ev = SparseCOCOeval(coco_gt, coco_dt, "keypoints", sigmas, use_area=use_area)
        ev.params.useSegm = None
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = {name: float(v) for name, v in zip(STAT_NAMES, ev.stats)}

    # precision: [T, R, K, A, M]; area index 0 is 'all', maxDets index -1 is 20 (what AP uses).
    precision = ev.eval["precision"][:, :, :, 0, -1]
    category_ap = {}
    for k, cat_id in enumerate(ev.params.catIds):
        p = precision[:, :, k]
        valid = p > -1
        if valid.any():
            category_ap[int(cat_id)] = float(p[valid].mean())
    return CocoEvalResult(stats=stats, category_ap=category_ap)


def evaluate_keypoints(
    gt: Mapping | str | Path | COCO,
    results: Sequence[Mapping],
    sigmas: Sequence[float] | np.ndarray,
    *,
    use_area: bool = True,
) -> dict[str, float]:
    """OKS keypoint AP/AR with xtcocotools COCOeval (mmpose ``CocoMetric`` semantics).

    Returns ``{"AP", "AP50", "AP75", "APM", "APL", "AR", "AR50", "AR75", "ARM", "ARL"}`` as floats (-1 where
    undefined, as in xtcocotools). Empty ``results`` give AP 0. See :func:`coco_keypoint_eval` for the
    arguments; rescoring and NMS are the caller's (:func:`clamp_pl.inference.postprocess.rescore`, :func:`oks_nms`).
    """
    return coco_keypoint_eval(gt, results, sigmas, use_area=use_area).stats


def per_category_ap(
    gt: Mapping | str | Path | COCO,
    results: Sequence[Mapping],
    sigmas: Sequence[float] | np.ndarray,
    groups: Mapping[str, Sequence[int]],
    *,
    use_area: bool = True,
) -> dict[str, float]:
    """AP of each named group of category ids (a species: one id; a family: its species' ids).

    One COCOeval run serves every group: the per-category AP comes from the accumulated precision array, and
    a group's AP equals COCOeval restricted to ``params.catIds = group`` (see :meth:`CocoEvalResult.group_ap`).
    Groups without ground truth are left out of the output (no NaN).
    """
    return coco_keypoint_eval(gt, results, sigmas, use_area=use_area).group_ap(groups)


def oks_iou(
    g: np.ndarray, d: np.ndarray, area_g: float, area_d: np.ndarray, sigmas: np.ndarray
) -> np.ndarray:
    """OKS between one instance and several, as mmpose's ``oks_iou`` (no visibility threshold).

    Args:
        g: (K, 2+) keypoints of the reference instance (image pixels).
        d: (D, K, 2+) keypoints of the others.
        area_g: box area of the reference; area_d: (D,) box areas of the others. Their mean normalises.
        sigmas: (K,).

    Returns:
        (D,) OKS in [0, 1].
    """
    var = (2 * np.asarray(sigmas, dtype=np.float64)) ** 2
    d2 = ((d[..., :2] - g[None, :, :2]) ** 2).sum(-1)
    e = d2 / var / ((area_g + area_d)[:, None] / 2 + np.spacing(1)) / 2
    return np.exp(-e).mean(axis=1)


def instance_oks(pred: np.ndarray, gt: np.ndarray, areas: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """OKS of each prediction with its own ground-truth instance, as COCOeval's ``computeOks`` for that pair.

    Args:
        pred: (N, K, 2+) predicted keypoints (image pixels); gt: (N, K, 3) ground truth (x, y, v).
        areas: (N,) ground-truth areas (the annotations' ``area``); sigmas: (K,).

    Returns:
        (N,) OKS in [0, 1] over the labelled (v > 0) keypoints; NaN for an instance without any.
    """
    var = (2 * np.asarray(sigmas, dtype=np.float64)) ** 2
    d2 = ((np.asarray(pred, dtype=np.float64)[..., :2] - gt[..., :2]) ** 2).sum(-1)
    e = np.exp(-d2 / var / (np.asarray(areas, dtype=np.float64)[:, None] + np.spacing(1)) / 2)
    visible = gt[..., 2] > 0
    n_vis = visible.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_vis > 0, (e * visible).sum(1) / n_vis, np.nan)


def _result_area(r: Mapping) -> float:
    if "area" in r:
        return float(r["area"])
    if "bbox" in r:
        return float(r["bbox"][2]) * float(r["bbox"][3])
    kp = np.asarray(r["keypoints"], dtype=np.float64).reshape(-1, 3)
    return float(np.ptp(kp[:, 0]) * np.ptp(kp[:, 1]))


def oks_nms(results: Sequence[Mapping], sigmas: Sequence[float] | np.ndarray, thr: float = 0.9) -> list[dict]:
    """Greedy OKS non-maximum suppression per image (mmpose ``oks_nms``).

    In each image, the highest-scoring result is kept and every other whose OKS with it exceeds ``thr`` is
    dropped, repeatedly. OKS uses all K keypoints and the mean box area of the pair. A no-op with one
    ground-truth box per animal unless two animals nearly coincide; it matters with detector boxes.

    Args:
        results: COCO results; the box area comes from ``area`` if present, else ``bbox`` (w*h), else the
            keypoints' extent (what ``COCO.loadRes`` uses).
        sigmas: (K,) OKS sigmas.
        thr: suppression threshold.

    Returns:
        The kept results, in their input order. Equal scores keep the earlier result.
    """
    sigmas = np.asarray(sigmas, dtype=np.float64)
    by_image: dict[int, list[int]] = defaultdict(list)
    for i, r in enumerate(results):
        by_image[r["image_id"]].append(i)
    kept: list[int] = []
    for idx in by_image.values():
        if len(idx) == 1:
            kept.extend(idx)
            continue
        kpts = np.stack([np.asarray(results[i]["keypoints"], dtype=np.float64).reshape(-1, 3) for i in idx])
        areas = np.array([_result_area(results[i]) for i in idx])
        scores = np.array([float(results[i]["score"]) for i in idx])
        order = np.argsort(-scores, kind="stable")
        while order.size:
            best = order[0]
            kept.append(idx[best])
            rest = order[1:]
            oks = oks_iou(kpts[best], kpts[rest], areas[best], areas[rest], sigmas)
            order = rest[oks <= thr]
    return [dict(results[i]) for i in sorted(kept)]
