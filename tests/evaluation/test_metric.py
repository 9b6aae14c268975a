"""CocoKeypointAP: equals the functional pipeline, is order/duplicate invariant, and DDP (gloo, 2 ranks) equals
one process."""

import json
import warnings

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DistributedSampler

from clamp_pl.evaluation import (
    evaluate_keypoints,
    oks_nms,
    pck,
    per_category_ap,
)
from clamp_pl.evaluation.metric import CocoKeypointAP
from clamp_pl.inference.postprocess import rescore

K = 5
SIGMAS = np.array([0.025, 0.035, 0.079, 0.072, 0.089])
FLIP_PAIRS = [(1, 2), (3, 4)]
SPECIES = {1: "cat", 2: "dog", 3: "lion"}
FAMILIES = {"Felidae": [1, 3], "Canidae": [2], "Ursidae": [7]}  # Ursidae has no GT: no key


def make_gt(n_images=8, n_instances=23, seed=0):
    rng = np.random.default_rng(seed)
    images = [{"id": 10 + i, "file_name": f"{i}.jpg", "width": 640, "height": 480} for i in range(n_images)]
    categories = [{"id": c, "name": n} for c, n in SPECIES.items()]
    anns = []
    for i in range(n_instances):
        w, h = rng.uniform(50, 300), rng.uniform(50, 250)
        x, y = rng.uniform(0, 640 - w), rng.uniform(0, 480 - h)
        v = np.where(rng.random(K) < 0.85, 2, 0)
        v[:3] = 2
        kp = np.stack([x + rng.uniform(0, w, K), y + rng.uniform(0, h, K)], 1) * (v > 0)[:, None]
        anns.append(
            {
                "id": 500 + i,
                "image_id": 10 + i % n_images,
                "category_id": 1 + i % 3,
                "bbox": [x, y, w, h],
                "area": w * h,
                "iscrowd": 0,
                "keypoints": np.concatenate([kp, v[:, None]], 1).reshape(-1).tolist(),
            }
        )
    return {"images": images, "annotations": anns, "categories": categories}


def make_predictions(gt, noise=0.04, seed=1, perfect_cats=(1,), detector_duplicate=True):
    """Per-instance arrays as the pose module passes them (ann_ids, image_ids, category_ids, keypoints,
    scores). Category ``perfect_cats`` are predicted exactly; with ``detector_duplicate``, one extra lower-score
    near-copy with an id outside the GT (as from a detector) that OKS-NMS must drop."""
    rng = np.random.default_rng(seed)
    anns = gt["annotations"]
    kpts = np.array([a["keypoints"] for a in anns], dtype=float).reshape(len(anns), K, 3)[..., :2]
    for i, a in enumerate(anns):
        if a["category_id"] not in perfect_cats:
            kpts[i] += rng.normal(0, noise * max(a["bbox"][2:]), (K, 2))
    data = {
        "ann_ids": np.array([a["id"] for a in anns]),
        "image_ids": np.array([a["image_id"] for a in anns]),
        "category_ids": np.array([a["category_id"] for a in anns]),
        "keypoints": kpts,
        "scores": rng.uniform(0.3, 1.0, (len(anns), K)),
    }
    if detector_duplicate:
        j = 1  # a dog: imperfect, so the duplicate would otherwise count as a false positive
        data = {k: np.concatenate([v, v[j : j + 1]]) for k, v in data.items()}
        data["ann_ids"][-1] = 99999
        data["keypoints"][-1] += 0.5
        data["scores"][-1] *= 0.5
    return data


def make_metric(gt, **kw):
    return CocoKeypointAP(gt, SIGMAS, species=SPECIES, families=FAMILIES, flip_pairs=FLIP_PAIRS, **kw)


def update(metric, data, idx=None):
    idx = np.arange(len(data["ann_ids"])) if idx is None else np.asarray(idx)
    metric.update(
        *(
            torch.as_tensor(data[k][idx])
            for k in ("ann_ids", "image_ids", "category_ids", "keypoints", "scores")
        )
    )


def test_perfect_predictions():
    gt = make_gt()
    metric = make_metric(gt)
    update(metric, make_predictions(gt, perfect_cats=(1, 2, 3), detector_duplicate=False))
    out = metric.compute()
    assert all(isinstance(v, float) for v in out.values())
    for key in (
        "AP",
        "AP50",
        "AR",
        "PCK@0.05",
        "PCK@0.1",
        "AP_species/cat",
        "AP_species/dog",
        "AP_species/lion",
        "AP_family/Felidae",
        "AP_family/Canidae",
    ):
        assert out[key] == pytest.approx(1.0), key
    assert out["swap/1-2"] == 0.0 and out["swap/3-4"] == 0.0 and out["swap/mean"] == 0.0
    assert out["nearest_correct"] == 1.0
    analysis = metric.analysis()
    conf = analysis["keypoint_confusion"]
    n_labelled = sum(int(v > 0) for a in gt["annotations"] for v in a["keypoints"][2::3])
    assert conf.shape == (K, K) and np.trace(conf) == conf.sum() == n_labelled
    table = analysis["keypoint_pck"]
    assert set(table) == {"all", "cat", "dog", "lion"} and all(np.nanmin(v) == 1.0 for v in table.values())
    assert "AP_family/Ursidae" not in out
    results = metric.coco_results()
    assert len(results) == len(gt["annotations"])
    assert set(results[0]) == {"image_id", "category_id", "keypoints", "score", "ann_id"}
    assert len(results[0]["keypoints"]) == 3 * K


def test_instance_oks_per_ground_truth_instance():
    """Perfect cats score OKS 1, noisy dogs and lions less; the detector duplicate (not in GT) is absent."""
    gt = make_gt()
    metric = make_metric(gt)
    assert metric.analysis() == {}  # nothing computed yet
    update(metric, make_predictions(gt, perfect_cats=(1,)))
    metric.compute()
    oks = metric.analysis()["instance_oks"]
    assert set(oks) == {a["id"] for a in gt["annotations"]}
    cat = {a["id"]: a["category_id"] for a in gt["annotations"]}
    assert all(v == pytest.approx(1.0) for a, v in oks.items() if cat[a] == 1)
    assert all(0.0 < v < 1.0 for a, v in oks.items() if cat[a] != 1)
    metric.reset()
    assert metric.analysis() == {}


def test_matches_functional_pipeline():
    gt = make_gt(seed=2)
    data = make_predictions(gt, seed=3)
    metric = make_metric(gt)
    update(metric, data)
    out = metric.compute()

    # Reference: rescore, OKS-NMS (areas from GT boxes; keypoint extent for the detector duplicate),
    # evaluate_keypoints, per_category_ap, pck.
    anns = {a["id"]: a for a in gt["annotations"]}
    inst = rescore(data["scores"], np.ones(len(data["ann_ids"])))
    results = []
    for i, ann_id in enumerate(data["ann_ids"]):
        r = {
            "image_id": int(data["image_ids"][i]),
            "category_id": int(data["category_ids"][i]),
            "keypoints": np.concatenate([data["keypoints"][i], data["scores"][i][:, None]], 1)
            .ravel()
            .tolist(),
            "score": float(inst[i]),
        }
        if ann_id in anns:
            r["area"] = anns[ann_id]["bbox"][2] * anns[ann_id]["bbox"][3]
        results.append(r)
    kept = oks_nms(results, SIGMAS, 0.9)
    assert len(kept) == len(results) - 1  # the detector duplicate is suppressed
    stats = evaluate_keypoints(gt, kept, SIGMAS)
    assert {k: out[k] for k in stats} == pytest.approx(stats, abs=1e-12)
    assert 0 < out["AP"] < 1
    groups = {f"AP_species/{n}": [c] for c, n in SPECIES.items()}
    groups.update({f"AP_family/{n}": ids for n, ids in FAMILIES.items()})
    expected = per_category_ap(gt, kept, SIGMAS, groups)
    assert {k: out[k] for k in expected} == pytest.approx(expected, abs=1e-12)
    assert set(expected) == {k for k in out if k.startswith("AP_")}
    assert out["AP_species/cat"] == pytest.approx(1.0) and out["AP_species/dog"] < 1

    n = len(gt["annotations"])  # the duplicate (last) has no GT, so PCK skips it
    gt_kp = np.array([a["keypoints"] for a in gt["annotations"]]).reshape(n, K, 3)
    norm = np.array([max(a["bbox"][2:]) for a in gt["annotations"]])
    assert out["PCK@0.1"] == pytest.approx(
        pck(data["keypoints"][:n], gt_kp[..., :2], gt_kp[..., 2], norm, 0.1)
    )


def test_duplicates_and_order_do_not_matter():
    gt = make_gt(seed=4)
    data = make_predictions(gt, seed=5)
    reference = make_metric(gt)
    update(reference, data)
    expected = reference.compute()

    metric = make_metric(gt)
    perm = np.random.default_rng(0).permutation(len(data["ann_ids"]))
    keys = ("ann_ids", "image_ids", "category_ids", "keypoints", "scores")
    assert metric(*(torch.as_tensor(data[k][perm[:10]]) for k in keys)) is None  # forward only updates
    update(metric, data, perm[10:])
    update(metric, data, perm[:3])  # padding-style duplicates
    assert metric.compute() == expected
    assert metric.coco_results() == reference.coco_results()


def test_empty_and_lifecycle():
    gt = make_gt()
    metric = make_metric(gt)
    with pytest.raises(RuntimeError, match="compute"):
        metric.coco_results()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchmetrics warns about compute() before update()
        out = metric.compute()
    assert out["AP"] == 0.0 and "PCK@0.05" not in out
    assert metric.coco_results() == []
    metric.reset()
    with pytest.raises(RuntimeError):
        metric.coco_results()


def test_update_validates_shapes():
    metric = make_metric(make_gt())
    with pytest.raises(ValueError, match="keypoints"):
        metric.update([1], [10], [1], np.zeros((1, K + 1, 2)), np.zeros((1, K + 1)))
    with pytest.raises(ValueError, match="scores"):
        metric.update([1], [10], [1], np.zeros((1, K, 2)), np.zeros((1, K - 1)))
    with pytest.raises(ValueError, match="values per batch"):
        metric.update([1, 2], [10], [1], np.zeros((1, K, 2)), np.zeros((1, K)))


def _ddp_worker(rank, world_size, init_file, out_file, gt, data):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        metric = make_metric(gt)
        # shuffle=False, drop_last=False: an odd N pads the last rank with the first indices again.
        shard = np.array(
            list(DistributedSampler(range(len(data["ann_ids"])), world_size, rank, shuffle=False))
        )
        for chunk in np.array_split(shard, 3 + rank):  # different batch counts per rank
            update(metric, data, chunk)
        out = metric.compute()
        if rank == 0:
            with open(out_file, "w") as f:
                json.dump({"metrics": out, "results": metric.coco_results()}, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.e2e
def test_ddp_two_processes_equal_one(tmp_path):
    gt = make_gt(n_instances=24, seed=6)
    data = make_predictions(gt, seed=7)
    assert len(data["ann_ids"]) % 2 == 1  # odd: DistributedSampler pads a duplicate
    single = make_metric(gt)
    update(single, data)
    expected = single.compute()

    out_file = tmp_path / "rank0.json"
    mp.spawn(_ddp_worker, args=(2, tmp_path / "dist_init", out_file, gt, data), nprocs=2, join=True)
    got = json.loads(out_file.read_text())
    assert got["metrics"] == expected
    assert got["results"] == single.coco_results()
