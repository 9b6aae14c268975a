"""Time the evaluation on an AP-10K-sized synthetic set (issue #5).

6,000 instances, 17 keypoints, ~4,500 images, 54 categories in 23 families, predictions = ground truth plus
Gaussian noise (a few px to tens of px, relative to the box). Compares:

1. xtcocotools COCOeval called directly (the oracle, from a JSON round trip as mmpose does), and the same
   stock class on in-memory COCO objects (separates file I/O from the sparse ``evaluate()``);
2. ``evaluate_keypoints`` on the same results (must give identical stats);
3. ``CocoKeypointAP.compute()``: rescoring, OKS-NMS, AP + 54 per-species + per-family AP, PCK, swap rate.

Usage: ``python scripts/probe_eval_speed.py [--instances 6000] [--images 4500] [--repeat 1]``
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from xtcocotools.coco import COCO
from xtcocotools.cocoeval import COCOeval

from clamp_pl.evaluation import CocoKeypointAP, evaluate_keypoints, load_gt

AP10K_SIGMAS = np.array(
    [
        0.025,
        0.025,
        0.026,
        0.035,
        0.035,
        0.079,
        0.072,
        0.062,
        0.079,
        0.072,
        0.062,
        0.107,
        0.087,
        0.089,
        0.107,
        0.087,
        0.089,
    ]
)
FLIP_PAIRS = [(0, 1), (5, 8), (6, 9), (7, 10), (11, 14), (12, 15), (13, 16)]


def synthetic_ap10k(n_instances: int, n_images: int, n_cats: int = 54, k: int = 17, seed: int = 0):
    """Ground-truth COCO dict and per-instance noisy predictions (keypoints (N, K, 2), scores (N, K))."""
    rng = np.random.default_rng(seed)
    images = [
        {"id": i + 1, "file_name": f"{i + 1:06d}.jpg", "width": 1024, "height": 768} for i in range(n_images)
    ]
    categories = [
        {"id": c + 1, "name": f"species{c + 1}", "supercategory": f"family{c % 23}"} for c in range(n_cats)
    ]
    image_of = np.concatenate([np.arange(n_images), rng.integers(0, n_images, n_instances - n_images)]) + 1
    anns = []
    preds = np.zeros((n_instances, k, 2))
    scores = rng.uniform(0.1, 1.0, (n_instances, k))
    for i in range(n_instances):
        w, h = rng.uniform(30, 600), rng.uniform(30, 500)
        x, y = rng.uniform(0, 1024 - w), rng.uniform(0, 768 - h)
        kp = np.stack([x + rng.uniform(0, w, k), y + rng.uniform(0, h, k)], 1)
        v = np.where(rng.random(k) < 0.85, 2, 0)
        anns.append(
            {
                "id": i + 1,
                "image_id": int(image_of[i]),
                "category_id": int(rng.integers(1, n_cats + 1)),
                "bbox": [x, y, w, h],
                "area": w * h,
                "iscrowd": 0,
                "num_keypoints": int((v > 0).sum()),
                "keypoints": np.concatenate([kp * (v > 0)[:, None], v[:, None]], 1).reshape(-1).tolist(),
            }
        )
        preds[i] = kp + rng.normal(0, rng.uniform(0.005, 0.08) * max(w, h), (k, 2))
    return {"images": images, "annotations": anns, "categories": categories}, preds, scores


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--instances", type=int, default=6000)
    ap.add_argument("--images", type=int, default=4500)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()

    gt, preds, scores = synthetic_ap10k(args.instances, args.images)
    anns = gt["annotations"]
    results = [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "score": float(scores[i].mean()),
            "keypoints": np.concatenate([preds[i], scores[i][:, None]], 1).reshape(-1).tolist(),
        }
        for i, a in enumerate(anns)
    ]

    def direct() -> np.ndarray:
        with tempfile.TemporaryDirectory() as d, contextlib.redirect_stdout(io.StringIO()):
            gt_file, res_file = Path(d, "gt.json"), Path(d, "res.json")
            gt_file.write_text(json.dumps(gt))
            res_file.write_text(json.dumps(results))
            coco_gt = COCO(str(gt_file))
            ev = COCOeval(coco_gt, coco_gt.loadRes(str(res_file)), "keypoints", AP10K_SIGMAS, use_area=True)
            ev.params.useSegm = None
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        return ev.stats

    def stock_in_memory() -> np.ndarray:
        with contextlib.redirect_stdout(io.StringIO()):
            coco_gt = load_gt(gt)
            ev = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(results)), "keypoints", AP10K_SIGMAS)
            ev.params.useSegm = None
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        return ev.stats

    def timed(fn):
        best, out = float("inf"), None
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            out = fn()
            best = min(best, time.perf_counter() - t0)
        return best, out

    t_direct, stats_direct = timed(direct)
    t_stock, stats_stock = timed(stock_in_memory)
    t_ours, stats_ours = timed(lambda: evaluate_keypoints(gt, results, AP10K_SIGMAS))
    assert np.array_equal(stats_direct, stats_stock)
    assert np.array_equal(stats_direct, list(stats_ours.values())), (stats_direct, stats_ours)

    species = {c["id"]: c["name"] for c in gt["categories"]}
    families: dict[str, list[int]] = {}
    for c in gt["categories"]:
        families.setdefault(c["supercategory"], []).append(c["id"])

    def metric() -> dict[str, float]:
        m = CocoKeypointAP(gt, AP10K_SIGMAS, species=species, families=families, flip_pairs=FLIP_PAIRS)
        m.update(
            [a["id"] for a in anns],
            [a["image_id"] for a in anns],
            [a["category_id"] for a in anns],
            preds,
            scores,
        )
        return m.compute()

    t_metric, out = timed(metric)
    print(f"{args.instances} instances, {args.images} images, {len(gt['categories'])} categories, K=17")
    print(f"AP={stats_ours['AP']:.4f} AP50={stats_ours['AP50']:.4f} (direct COCOeval identical)")
    print(f"direct xtcocotools COCOeval (JSON files): {t_direct:.2f} s")
    print(f"stock COCOeval, in-memory COCO objects:   {t_stock:.2f} s")
    print(f"evaluate_keypoints (in memory):           {t_ours:.2f} s  (ratio {t_ours / t_direct:.2f})")
    n_sp = sum(k.startswith("AP_species/") for k in out)
    n_fam = sum(k.startswith("AP_family/") for k in out)
    print(
        f"CocoKeypointAP.compute() (+{n_sp} species, {n_fam} families, NMS, PCK, swap): {t_metric:.2f} s "
        f"(ratio {t_metric / t_direct:.2f}); AP={out['AP']:.4f} PCK@0.05={out['PCK@0.05']:.3f}"
    )


if __name__ == "__main__":
    main()
