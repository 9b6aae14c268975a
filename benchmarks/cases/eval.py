"""``eval``: AP-10K-like instances through ``evaluate_keypoints`` and ``CocoKeypointAP`` vs xtcocotools
``COCOeval`` called on JSON files, as mmpose does (docs/benchmarks.md)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.fixtures import DEFAULT_REPEATS
from benchmarks.harness import measure
from benchmarks.report import Row

AP10K_SIGMAS = (
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
)


def synthetic_ap10k_eval(n_instances: int, n_images: int, n_cats: int = 54, k: int = 17, seed: int = 0):
    """AP-10K-like ground truth (1024x768 images, boxes 30-600 px, ~85% of keypoints labelled, every image with
    at least one instance) and per-instance predictions = truth + Gaussian noise of 0.5-8% of the box size.

    Returns ``(gt dict, keypoints (N, K, 2), scores (N, K))`` in annotation order."""
    rng = np.random.default_rng(seed)
    images = [
        {"id": i + 1, "file_name": f"{i + 1:06d}.jpg", "width": 1024, "height": 768} for i in range(n_images)
    ]
    categories = [
        {"id": c + 1, "name": f"species{c + 1}", "supercategory": f"family{c % 23}"} for c in range(n_cats)
    ]
    image_of = (
        np.concatenate(
            [np.arange(min(n_images, n_instances)), rng.integers(0, n_images, max(0, n_instances - n_images))]
        )
        + 1
    )
    anns, preds = [], np.zeros((n_instances, k, 2))
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


def bench_eval(repeats: int | None, n_instances: int, n_images: int, workdir: Path) -> list[Row]:
    from xtcocotools.coco import COCO
    from xtcocotools.cocoeval import COCOeval

    from clamp_pl.evaluation import evaluate_keypoints
    from clamp_pl.evaluation.metric import CocoKeypointAP

    reps = repeats or DEFAULT_REPEATS["eval"]
    gt, preds, scores = synthetic_ap10k_eval(n_instances, n_images)
    sigmas = np.asarray(AP10K_SIGMAS)
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
    gt_file, res_file = workdir / "eval_gt.json", workdir / "eval_results.json"
    stats: dict[str, Any] = {}

    def direct() -> None:
        # mmpose's route: results and ground truth as JSON files, the stock class
        with contextlib.redirect_stdout(io.StringIO()):
            gt_file.write_text(json.dumps(gt))
            res_file.write_text(json.dumps(results))
            coco_gt = COCO(str(gt_file))
            ev = COCOeval(coco_gt, coco_gt.loadRes(str(res_file)), "keypoints", sigmas, use_area=True)
            ev.params.useSegm = None
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        stats["direct"] = [float(v) for v in ev.stats]

    def ours() -> None:
        stats["ours"] = list(evaluate_keypoints(gt, results, sigmas).values())

    species = {c["id"]: c["name"] for c in gt["categories"]}
    families: dict[str, list[int]] = {}
    for c in gt["categories"]:
        families.setdefault(c["supercategory"], []).append(c["id"])
    flip_pairs = [(0, 1), (5, 8), (6, 9), (7, 10), (11, 14), (12, 15), (13, 16)]
    ids = [torch.tensor([a[key] for a in anns]) for key in ("id", "image_id", "category_id")]

    def metric() -> None:
        m = CocoKeypointAP(gt, sigmas, species=species, families=families, flip_pairs=flip_pairs)
        m.update(*ids, torch.from_numpy(preds), torch.from_numpy(scores))
        stats["metric"] = m.compute()

    fns = {"direct": direct, "ours": ours, "metric": metric}
    meas = measure(fns, reps, warmup=0)
    if not np.allclose(stats["direct"], stats["ours"], atol=1e-12):
        raise AssertionError(f"evaluate_keypoints {stats['ours']} != COCOeval {stats['direct']}")
    size = f"{n_instances} instances, {n_images} images, 54 categories, K=17"
    ref_name = "xtcocotools COCOeval on JSON files (mmpose)"
    return [
        meas.time_row(
            "eval",
            f"evaluate_keypoints ({size})",
            ref_name,
            "ours",
            "direct",
            target=("ratio_le", 1.2),
            detail={"AP": stats["ours"][0], "identical_stats": True},
        ),
        meas.time_row(
            "eval",
            "CocoKeypointAP update + compute (+ OKS-NMS, 54 species, 23 families, PCK, swap rate)",
            ref_name,
            "metric",
            "direct",
            target=("ratio_le", 1.2),
            detail={"AP": stats["metric"]["AP"]},
        ),
    ]
