"""The procedural toy set: AP-10K format validity, determinism, idempotence, left/right semantics."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from xtcocotools.coco import COCO

from clamp_pl.data import toy as toy_module
from clamp_pl.data.metainfo import get_meta
from clamp_pl.data.toy import TOY_SPECIES, ensure_toy_ap10k, toy_categories

SMALL = dict(n_train=60, n_val=10, n_test=10, image_size=192)


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> dict[str, Path]:
    return ensure_toy_ap10k(tmp_path_factory.mktemp("toy"), seed=0, **SMALL)


def test_species_table_matches_ap10k():
    meta = get_meta("ap10k")
    cats = toy_categories()
    assert len(cats) == len(TOY_SPECIES) >= 12
    assert len({c["supercategory"] for c in cats}) >= 4
    for c in cats:
        assert meta.species[c["id"]] == c["name"]
        assert meta.species_to_family[c["id"]] == c["supercategory"]
        assert c["keypoints"] == list(meta.keypoint_names)
        assert [tuple(p) for p in c["skeleton"]] == [(a + 1, b + 1) for a, b in meta.skeleton]
    assert {"Equidae", "Felidae", "Canidae", "Bovidae", "Ursidae"} <= {c["supercategory"] for c in cats}


def test_coco_format_valid(toy):
    meta = get_meta("ap10k")
    ann_ids, img_ids = set(), set()
    for split, n_img in (("train", 60), ("val", 10), ("test", 10)):
        coco = COCO(str(toy[split]))
        assert len(coco.imgs) == n_img
        assert len(coco.anns) >= n_img
        cat_ids = set(coco.cats)
        for img in coco.imgs.values():
            assert img["id"] not in img_ids
            img_ids.add(img["id"])
            im = cv2.imread(str(toy["images"] / img["file_name"]))
            assert im is not None and im.shape[:2] == (img["height"], img["width"]) == (192, 192)
        for ann in coco.anns.values():
            assert ann["id"] not in ann_ids
            ann_ids.add(ann["id"])
            assert ann["category_id"] in cat_ids and ann["iscrowd"] == 0
            k = np.array(ann["keypoints"], float).reshape(meta.num_keypoints, 3)
            assert set(np.unique(k[:, 2])) <= {0, 1, 2}
            lab = k[:, 2] > 0
            assert ann["num_keypoints"] == lab.sum() > 0
            assert np.all(k[~lab, :2] == 0)
            assert np.all((k[lab, :2] >= 0) & (k[lab, :2] <= 191))
            x, y, w, h = ann["bbox"]
            assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= 192.01 and y + h <= 192.01
            assert ann["area"] == pytest.approx(w * h, abs=0.01)
            # The box (full silhouette) contains every labelled keypoint.
            assert np.all((k[lab, 0] >= x - 0.5) & (k[lab, 0] <= x + w + 0.5))
            assert np.all((k[lab, 1] >= y - 0.5) & (k[lab, 1] <= y + h + 0.5))


def test_variety_and_visibility_flags(toy):
    meta = get_meta("ap10k")
    anns = json.loads(toy["train"].read_text())["annotations"]
    k = np.array([a["keypoints"] for a in anns], float).reshape(len(anns), meta.num_keypoints, 3)
    v = k[..., 2]
    assert (v == 1).any() and (v == 2).any() and (v == 0).any()  # occluded, visible, truncated
    assert len(Counter(a["category_id"] for a in anns)) >= 10
    images_with_two = Counter(a["image_id"] for a in anns)
    assert max(images_with_two.values()) == 2
    # Eyes are distinct, learnable points.
    both = (v[:, 0] == 2) & (v[:, 1] == 2)
    assert np.median(np.linalg.norm(k[both, 0, :2] - k[both, 1, :2], axis=1)) >= 1.5


def test_left_right_are_the_animals_own(toy):
    """Facing image-right shows the animal's right side: its right shoulder/hip are near (visible) and the
    left ones are behind the body (v = 1), and the other way round when it faces left."""
    names = get_meta("ap10k").keypoint_names
    idx = {n: i for i, n in enumerate(names)}
    near_visible = far_visible = 0
    for split in ("train", "val", "test"):
        for a in json.loads(toy[split].read_text())["annotations"]:
            k = np.array(a["keypoints"], float).reshape(-1, 3)
            nose, tail = k[idx["nose"]], k[idx["root_of_tail"]]
            if nose[2] == 0 or tail[2] == 0 or abs(nose[0] - tail[0]) < 10:
                continue
            near, far = ("right", "left") if nose[0] > tail[0] else ("left", "right")
            for part in ("shoulder", "hip"):
                near_visible += k[idx[f"{near}_{part}"], 2] == 2
                far_visible += k[idx[f"{far}_{part}"], 2] == 2
    assert near_visible > 3 * max(far_visible, 1)


def test_deterministic_and_idempotent(tmp_path, toy, monkeypatch):
    again = ensure_toy_ap10k(tmp_path / "a", seed=0, **SMALL)
    for split in ("train", "val", "test"):
        assert again[split].read_bytes() == toy[split].read_bytes()
    files = sorted(p.relative_to(toy["images"]) for p in toy["images"].rglob("*.jpg"))
    assert files == sorted(p.relative_to(again["images"]) for p in again["images"].rglob("*.jpg"))
    assert all((toy["images"] / f).read_bytes() == (again["images"] / f).read_bytes() for f in files)

    mtime = again["train"].stat().st_mtime_ns
    with monkeypatch.context() as m:  # same parameters: nothing may be rendered again
        m.setattr(toy_module, "_render_split", lambda *a, **k: pytest.fail("regenerated an up-to-date toy set"))
        assert ensure_toy_ap10k(tmp_path / "a", seed=0, **SMALL) == again
    assert again["train"].stat().st_mtime_ns == mtime

    other = ensure_toy_ap10k(tmp_path / "a", seed=1, n_train=5, n_val=2, n_test=2)  # new params: regenerated
    assert other["train"].read_bytes() != toy["train"].read_bytes()
    assert len(list(other["images"].rglob("*.jpg"))) == 9  # no stale images left behind


def test_loads_through_the_validating_loader(toy):
    from clamp_pl.formats.coco import load_coco_instances

    for split in ("train", "val", "test"):
        insts, _, report = load_coco_instances(toy[split], toy["images"], get_meta("ap10k"), train=split == "train")
        assert insts and not report.skipped
        assert {i.family for i in insts} <= {c["supercategory"] for c in toy_categories()}
