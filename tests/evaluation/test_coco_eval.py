"""evaluate_keypoints / per_category_ap / rescore / oks_nms against xtcocotools COCOeval called directly."""

import contextlib
import copy
import io
import json
import logging

import numpy as np
import pytest
from xtcocotools.coco import COCO
from xtcocotools.cocoeval import COCOeval

from clamp_pl.evaluation import (
    STAT_NAMES,
    SparseCOCOeval,
    evaluate_keypoints,
    instance_oks,
    oks_nms,
    per_category_ap,
)
from clamp_pl.formats.coco import write_results
from clamp_pl.inference.postprocess import rescore

K = 5
SIGMAS = np.array([0.025, 0.035, 0.079, 0.072, 0.089])


def make_gt(n_images=12, n_instances=30, cat_ids=(1, 2, 3, 4), seed=0):
    """Hand-built COCO keypoint GT: boxes of mixed sizes (medium and large), ~20% keypoints unlabelled."""
    rng = np.random.default_rng(seed)
    images = [{"id": 100 + i, "file_name": f"{i}.jpg", "width": 640, "height": 480} for i in range(n_images)]
    categories = [{"id": c, "name": f"sp{c}", "supercategory": f"fam{c % 2}"} for c in cat_ids]
    anns = []
    for i in range(n_instances):
        w, h = rng.uniform(40, 300), rng.uniform(40, 250)
        x, y = rng.uniform(0, 640 - w), rng.uniform(0, 480 - h)
        v = np.where(rng.random(K) < 0.8, 2, 0)
        v[0] = 2
        kp = np.stack([x + rng.uniform(0, w, K), y + rng.uniform(0, h, K)], 1) * (v > 0)[:, None]
        anns.append(
            {
                "id": 1000 + i,
                "image_id": 100 + i % n_images,
                "category_id": int(cat_ids[i % len(cat_ids)]),
                "bbox": [x, y, w, h],
                "area": w * h,
                "iscrowd": 0,
                "num_keypoints": int((v > 0).sum()),
                "keypoints": np.concatenate([kp, v[:, None]], 1).reshape(-1).tolist(),
            }
        )
    return {"images": images, "annotations": anns, "categories": categories}


def as_results(gt, noise=0.0, seed=1, scores=None):
    """GT keypoints given back as results, optionally with Gaussian noise relative to box size."""
    rng = np.random.default_rng(seed)
    results = []
    for i, a in enumerate(gt["annotations"]):
        kp = np.array(a["keypoints"], dtype=float).reshape(K, 3)
        kp[:, 2] = 1.0
        kp[:, :2] += rng.normal(0, noise * max(a["bbox"][2:]), (K, 2))
        score = 1.0 if scores is None else float(scores[i])
        results.append(
            {
                "image_id": a["image_id"],
                "category_id": a["category_id"],
                "keypoints": kp.reshape(-1).tolist(),
                "score": score,
            }
        )
    return results


def oracle(gt, results, cat_ids=None, cls=COCOeval):
    """xtcocotools COCOeval run directly (mmpose's call), optionally restricted to cat_ids."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        ev = cls(coco, coco.loadRes(copy.deepcopy(results)), "keypoints", SIGMAS, use_area=True)
        ev.params.useSegm = None
        if cat_ids is not None:
            ev.params.catIds = list(cat_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def test_ground_truth_as_prediction_scores_one():
    gt = make_gt()
    stats = evaluate_keypoints(gt, as_results(gt), SIGMAS)
    assert set(stats) == set(STAT_NAMES)
    assert all(isinstance(v, float) for v in stats.values())
    for name in ("AP", "AP50", "AP75", "AR", "AR50", "AR75"):
        assert stats[name] == pytest.approx(1.0)


@pytest.mark.parametrize("noise", [0.01, 0.04, 0.1])
def test_perturbed_matches_direct_cocoeval(noise, tmp_path):
    gt = make_gt(seed=3)
    scores = np.random.default_rng(5).uniform(0.2, 1.0, len(gt["annotations"]))
    results = as_results(gt, noise=noise, scores=scores)
    expected = oracle(gt, results).stats
    stats = evaluate_keypoints(gt, results, SIGMAS)
    np.testing.assert_allclose([stats[n] for n in STAT_NAMES], expected, rtol=0, atol=1e-12)
    assert 0 < stats["AP"] < 1
    # A JSON path gives the same numbers, and neither input is modified.
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    before = copy.deepcopy((gt, results))
    assert evaluate_keypoints(path, results, SIGMAS) == stats
    assert (gt, results) == before


def test_sparse_evaluate_equals_stock_cocoeval():
    gt = make_gt(n_images=10, n_instances=25, seed=4)
    results = as_results(gt, noise=0.05, scores=np.linspace(0.3, 1, 25))
    # Results in images where their category has no GT, and images without any result.
    results[3]["category_id"] = 4 if results[3]["category_id"] != 4 else 1
    results = [r for r in results if r["image_id"] != 105]
    stock, sparse = oracle(gt, results), oracle(gt, results, cls=SparseCOCOeval)
    np.testing.assert_array_equal(sparse.eval["precision"], stock.eval["precision"])
    np.testing.assert_array_equal(sparse.eval["recall"], stock.eval["recall"])
    np.testing.assert_array_equal(sparse.stats, stock.stats)


def test_instance_oks_equals_cocoeval_pair_oks():
    """One instance per image: COCOeval's OKS matrix for (image, category) is the 1x1 OKS of the pair."""
    gt = make_gt(n_images=20, n_instances=20)
    results = as_results(gt, noise=0.05)
    ev = oracle(gt, results)
    anns = gt["annotations"]
    pred = np.array([r["keypoints"] for r in results]).reshape(len(results), K, 3)
    kp = np.array([a["keypoints"] for a in anns], dtype=float).reshape(len(anns), K, 3)
    ours = instance_oks(pred, kp, np.array([a["area"] for a in anns]), SIGMAS)
    theirs = [float(np.asarray(ev.ious[(a["image_id"], a["category_id"])]).item()) for a in anns]
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)
    assert 0.05 < ours.min() < ours.max() < 1.0
    kp[0, :, 2] = 0  # nothing labelled: undefined
    assert np.isnan(instance_oks(pred[:1], kp[:1], np.array([1.0]), SIGMAS)[0])


def test_wrong_category_ids_lower_ap():
    """Guard against mmpose #1726: AP is averaged over categories, so ids must be the true species."""
    gt = make_gt()
    results = as_results(gt)
    wrong = [dict(r, category_id=1) for r in results]
    assert evaluate_keypoints(gt, results, SIGMAS)["AP"] == pytest.approx(1.0)
    assert evaluate_keypoints(gt, wrong, SIGMAS)["AP"] < 0.5


def test_empty_results_give_zero():
    gt = make_gt()
    stats = evaluate_keypoints(gt, [], SIGMAS)
    assert stats["AP"] == 0.0 and stats["AR"] == 0.0


def test_invalid_results_raise():
    gt = make_gt()
    results = as_results(gt)
    with pytest.raises(ValueError, match="category_id"):
        evaluate_keypoints(gt, [{k: v for k, v in results[0].items() if k != "category_id"}], SIGMAS)
    with pytest.raises(ValueError, match="not in the ground truth"):
        evaluate_keypoints(gt, [dict(results[0], image_id=-5)], SIGMAS)
    with pytest.raises(ValueError, match="keypoint values"):
        evaluate_keypoints(gt, [dict(results[0], keypoints=results[0]["keypoints"][:-3])], SIGMAS)


def test_zero_area_uses_box_area(caplog):
    gt = make_gt(seed=7)
    results = as_results(gt, noise=0.03)
    no_area = copy.deepcopy(gt)
    for a in no_area["annotations"][::2]:
        a["area"] = 0
    for a in no_area["annotations"][1::4]:
        del a["area"]
    with caplog.at_level(logging.WARNING, logger="clamp_pl.evaluation.coco_eval"):
        stats = evaluate_keypoints(no_area, results, SIGMAS)
    assert "had no positive 'area'" in caplog.text
    # The make_gt area is exactly w*h, so the repaired GT evaluates like the original.
    np.testing.assert_allclose([stats[n] for n in STAT_NAMES], oracle(gt, results).stats, rtol=0, atol=1e-12)


def test_per_category_ap_species_and_families():
    # 2 species in 2 families + a 3rd species in family B; species 1 perfect, species 2 and 3 perturbed.
    gt = make_gt(n_images=8, n_instances=24, cat_ids=(1, 2, 3), seed=11)
    results = as_results(gt, noise=0.05, scores=np.random.default_rng(2).uniform(0.1, 1, 24))
    for r, a in zip(results, gt["annotations"]):
        if a["category_id"] == 1:
            r["keypoints"] = [v if i % 3 != 2 else 1.0 for i, v in enumerate(a["keypoints"])]
    groups = {
        "sp1": [1],
        "sp2": [2],
        "sp3": [3],
        "famA": [1],
        "famB": [2, 3],
        "nothing": [99],
        "all": [1, 2, 3],
    }
    ap = per_category_ap(gt, results, SIGMAS, groups)
    assert "nothing" not in ap and all(np.isfinite(list(ap.values())))
    assert ap["sp1"] == pytest.approx(1.0)
    assert ap["sp2"] < 1 and ap["sp3"] < 1
    # Each group equals COCOeval restricted to the group's categories.
    for name in ("sp2", "famB", "all"):
        assert ap[name] == pytest.approx(oracle(gt, results, cat_ids=groups[name]).stats[0], abs=1e-12)
    assert ap["all"] == pytest.approx(evaluate_keypoints(gt, results, SIGMAS)["AP"], abs=1e-12)


def test_rescore_bbox_keypoint_mode():
    scores = np.array([[0.1, 0.5, 0.9], [0.1, 0.2, 0.15], [0.3, 0.3, 0.3]])
    out = rescore(scores, np.array([0.8, 1.0, 0.5]))
    np.testing.assert_allclose(out, [0.8 * 0.7, 0.0, 0.5 * 0.3])


def mmpose_oks_nms(kpts_db, thr, sigmas):
    """Transcription of mmpose.evaluation.functional.nms.oks_nms / oks_iou (vis_thr=None), the reference."""
    scores = np.array([k["score"] for k in kpts_db])
    kpts = np.array([np.asarray(k["keypoints"]).flatten() for k in kpts_db])
    areas = np.array([k["area"] for k in kpts_db])
    order = scores.argsort()[::-1]
    var = (sigmas * 2) ** 2
    keep = []
    while len(order) > 0:
        i = order[0]
        keep.append(i)
        ious = np.zeros(len(order) - 1)
        for n, j in enumerate(order[1:]):
            dx, dy = kpts[j, 0::3] - kpts[i, 0::3], kpts[j, 1::3] - kpts[i, 1::3]
            e = (dx**2 + dy**2) / var / ((areas[i] + areas[j]) / 2 + np.spacing(1)) / 2
            ious[n] = np.sum(np.exp(-e)) / len(e)
        order = order[np.where(ious <= thr)[0] + 1]
    return sorted(keep)


def test_oks_nms_keeps_best_of_duplicates():
    base = np.array([[100, 100, 1], [120, 100, 1], [110, 130, 1], [90, 160, 1], [130, 160, 1]], dtype=float)
    far = base + [200, 0, 0]

    def res(img, kp, score, shift=0.0):
        kp = kp + [shift, shift, 0]
        return {
            "image_id": img,
            "category_id": 1,
            "keypoints": kp.reshape(-1).tolist(),
            "score": score,
            "area": 80.0 * 80.0,
        }

    results = [
        res(1, base, 0.5, shift=0.5),  # near-duplicate of the best one: dropped
        res(1, base, 0.9),  # best
        res(1, far, 0.4),  # another animal: kept
        res(1, base, 0.3, shift=1.0),  # dropped
        res(2, base, 0.2, shift=0.7),  # other image: NMS is per image, kept
    ]
    kept = oks_nms(results, SIGMAS, thr=0.9)
    assert [r["score"] for r in kept] == [0.9, 0.4, 0.2]
    assert oks_nms(results, SIGMAS, thr=1.0) == results  # OKS never exceeds 1
    assert oks_nms([], SIGMAS) == []


def test_oks_nms_matches_mmpose_reference():
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 200, (4, K, 2))
    results = []
    for i in range(40):
        kp = base[i % 4] + rng.normal(0, rng.uniform(0.5, 20), (K, 2))
        results.append(
            {
                "image_id": 1,
                "category_id": 1,
                "score": float(rng.random()),
                "area": 150.0**2,
                "keypoints": np.concatenate([kp, rng.random((K, 1))], 1).reshape(-1).tolist(),
            }
        )
    expected = mmpose_oks_nms(results, 0.9, SIGMAS)
    assert 4 <= len(expected) < 40
    assert oks_nms(results, SIGMAS, 0.9) == [results[i] for i in expected]


def test_write_results_round_trip(tmp_path):
    gt = make_gt()
    results = as_results(gt, noise=0.02)
    results[0]["score"] = np.float32(0.5)
    path = write_results(tmp_path / "sub" / "results.json", results)
    loaded = json.loads(path.read_text())
    assert len(loaded) == len(results) and loaded[0]["score"] == 0.5
    assert evaluate_keypoints(gt, loaded, SIGMAS) == evaluate_keypoints(gt, results, SIGMAS)
