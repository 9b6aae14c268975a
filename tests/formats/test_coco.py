"""Loading the real samples, and one test per bad-input case (each in "raise" and "skip" mode)."""

import json
import math
import shutil

import numpy as np
import pytest

from clamp_pl.data.metainfo import get_meta
from clamp_pl.formats.coco import DataError, LoadReport, check_image_file, load_coco_instances

AP10K = get_meta("ap10k")
JAGUAR_ANN, ANTELOPE_ANN = 9284, 6  # annotation ids of the two AP-10K sample instances
JAGUAR_IMG, ANTELOPE_IMG = 37516, 4


def test_load_real_ap10k(test_data):
    insts, gt, report = load_coco_instances(test_data / "ap10k" / "test_ap10k.json", test_data / "ap10k", AP10K,
                                            train=True)
    by_id = {i.ann_id: i for i in insts}
    assert set(by_id) == {JAGUAR_ANN, ANTELOPE_ANN}
    jag, ant = by_id[JAGUAR_ANN], by_id[ANTELOPE_ANN]
    assert (ant.species, ant.family, ant.category_id) == ("antelope", "Bovidae", 1)
    assert (jag.species, jag.family, jag.category_id) == ("jaguar", "Felidae", 26)
    assert ant.image_size == (1024, 683) and jag.image_size == (1200, 867)
    assert ant.image_path.endswith("000000000004.jpg")
    np.testing.assert_array_equal(ant.bbox, [408, 197, 429, 341])
    assert ant.bbox.dtype == np.float32 and ant.keypoints.dtype == np.float32
    assert ant.keypoints.shape == (17, 3)
    assert (ant.keypoints[:, 2] > 0).sum() == 16
    np.testing.assert_array_equal(ant.keypoints[0], [488, 443, 2])
    np.testing.assert_array_equal(ant.keypoints[1], [0, 0, 0])
    assert ant.area == 146289.0
    # the jaguar box ends at x = 1158 < 1199: not clipped
    np.testing.assert_array_equal(jag.bbox, [66, 192, 1092, 512])
    assert report.counts == {"annotations": 2, "instances": 2, "crowd": 0, "unlabelled": 0, "skipped": 0}
    assert report.skipped == []
    assert len(gt["annotations"]) == 2 and len(gt["images"]) == 2 and len(gt["categories"]) == 54
    assert "info" in gt


def test_load_real_animalpose(test_data):
    insts, gt, _ = load_coco_instances(test_data / "animalpose" / "test_animalpose.json",
                                       test_data / "animalpose", get_meta("animalpose"), train=False)
    assert [i.ann_id for i in insts] == [129, 583]
    assert [int((i.keypoints[:, 2] > 0).sum()) for i in insts] == [17, 15]
    # the category is named "cat" (supercategory "animal"): the family comes from the meta's table
    assert {(i.species, i.family) for i in insts} == {("cat", "Felidae")}
    assert insts[0].image_size == (300, 240)


# ------------------------------------------------------------------------------------------ bad-input helpers
@pytest.fixture
def sample(tmp_path, test_data):
    """A writable copy of the AP-10K sample: (data dict, image dir, write(data) -> json path)."""
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    for p in (test_data / "ap10k").glob("*.jpg"):
        shutil.copy(p, img_dir / p.name)
    data = json.loads((test_data / "ap10k" / "test_ap10k.json").read_text())

    def write(d, text=None):
        path = tmp_path / "ann.json"
        path.write_text(text if text is not None else json.dumps(d))
        return path

    return data, img_dir, write


def _ann(data, ann_id):
    return next(a for a in data["annotations"] if a["id"] == ann_id)


def _expect(path, img_dir, field, record, *, lost=(ANTELOPE_ANN,), kept=(JAGUAR_ANN,), train=True):
    """The case raises a DataError naming file/record/field, and in skip mode loses exactly the ``lost``
    annotations (an image error also reports the image's annotations, under field 'image_id')."""
    with pytest.raises(DataError) as err:
        load_coco_instances(path, img_dir, AP10K, train=train)
    msg = str(err.value)
    assert str(path) in msg and f"'{field}'" in msg and record in msg, msg
    insts, gt, report = load_coco_instances(path, img_dir, AP10K, train=train, on_error="skip")
    assert sorted(i.ann_id for i in insts) == sorted(kept)
    assert sorted(a["id"] for a in gt["annotations"]) == sorted(kept)
    assert report.counts["skipped"] == len(lost)
    image_error = record.startswith("image")
    assert {s["field"] for s in report.skipped} == ({field, "image_id"} if image_error else {field})
    assert all(s["file"] == str(path) for s in report.skipped)
    return report


# ------------------------------------------------------------------------------------------ the bad-input cases
def test_missing_image(sample):
    data, img_dir, write = sample
    (img_dir / "000000000004.jpg").unlink()
    report = _expect(write(data), img_dir, "file_name", f"image {ANTELOPE_IMG}")
    assert "not found" in report.skipped[0]["reason"]
    assert {(s["ann_id"], s["image_id"], s["field"]) for s in report.skipped} == {
        (None, ANTELOPE_IMG, "file_name"), (ANTELOPE_ANN, ANTELOPE_IMG, "image_id")}


def test_corrupt_image(sample):
    data, img_dir, write = sample
    (img_dir / "000000000004.jpg").write_bytes(b"\x00garbage" * 100)
    report = _expect(write(data), img_dir, "file_name", f"image {ANTELOPE_IMG}")
    assert "cannot decode" in report.skipped[0]["reason"]


def test_truncated_image(sample):
    data, img_dir, write = sample
    p = img_dir / "000000000004.jpg"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    report = _expect(write(data), img_dir, "file_name", f"image {ANTELOPE_IMG}")
    assert "truncated" in report.skipped[0]["reason"]


def test_image_size_differs_from_json(sample):
    data, img_dir, write = sample
    next(im for im in data["images"] if im["id"] == ANTELOPE_IMG)["width"] = 1000
    report = _expect(write(data), img_dir, "file_name", f"image {ANTELOPE_IMG}")
    assert "1024x683 but the JSON says 1000x683" in report.skipped[0]["reason"]


def test_check_images_off_skips_file_checks(sample):
    data, img_dir, write = sample
    (img_dir / "000000000004.jpg").unlink()
    insts, _, _ = load_coco_instances(write(data), img_dir, AP10K, train=True, check_images=False)
    assert len(insts) == 2


@pytest.mark.parametrize(
    ("bbox", "why"),
    [([2000, 100, 50, 50], "outside"), ([-300, 100, 200, 50], "outside"), ([408, 197, 0, 341], "zero area"),
     ([408, 197, 10], "[x, y, w, h]"), ([408, None, 10, 10], "finite")],
)
def test_bad_bbox(sample, bbox, why):
    data, img_dir, write = sample
    _ann(data, ANTELOPE_ANN)["bbox"] = bbox
    report = _expect(write(data), img_dir, "bbox", f"annotation {ANTELOPE_ANN}")
    assert why in report.skipped[0]["reason"]


def test_bbox_is_clipped_and_area_filled(sample):
    data, img_dir, write = sample
    ann = _ann(data, ANTELOPE_ANN)
    ann["bbox"] = [-10, 600, 500, 200]
    del ann["area"]
    insts, gt, _ = load_coco_instances(write(data), img_dir, AP10K, train=True)
    inst = next(i for i in insts if i.ann_id == ANTELOPE_ANN)
    np.testing.assert_array_equal(inst.bbox, [0, 600, 490, 82])  # x2 = -10 + 500, y2 = min(800, 682)
    assert inst.area == 490 * 82 and _ann(gt, ANTELOPE_ANN)["area"] == 490 * 82


def test_all_keypoints_unlabelled(sample):
    data, img_dir, write = sample
    _ann(data, ANTELOPE_ANN)["keypoints"] = [0] * 51
    path = write(data)
    insts, gt, report = load_coco_instances(path, img_dir, AP10K, train=True)  # silent rule, not an error
    assert [i.ann_id for i in insts] == [JAGUAR_ANN]
    assert report.counts["unlabelled"] == 1 and report.skipped == []
    assert len(gt["annotations"]) == 2  # xtcocotools ignores it in evaluation
    insts, _, _ = load_coco_instances(path, img_dir, AP10K, train=False)
    assert sorted(i.ann_id for i in insts) == sorted([JAGUAR_ANN, ANTELOPE_ANN])
    insts, _, _ = load_coco_instances(path, img_dir, AP10K, train=False, skip_unlabelled=True)
    assert [i.ann_id for i in insts] == [JAGUAR_ANN]


def test_keypoint_count_differs_from_k(sample):
    data, img_dir, write = sample
    _ann(data, ANTELOPE_ANN)["keypoints"] = _ann(data, ANTELOPE_ANN)["keypoints"][:48]
    report = _expect(write(data), img_dir, "keypoints", f"annotation {ANTELOPE_ANN}")
    assert "expected 3*K = 51" in report.skipped[0]["reason"]


@pytest.mark.parametrize(("value", "why"), [(math.nan, "not finite"), (-3.0, "negative"), (math.inf, "not finite")])
def test_bad_keypoint_coordinates(sample, value, why):
    data, img_dir, write = sample
    _ann(data, ANTELOPE_ANN)["keypoints"][3 * 5] = value  # x of a labelled keypoint
    report = _expect(write(data), img_dir, "keypoints", f"annotation {ANTELOPE_ANN}")
    assert why in report.skipped[0]["reason"]


def test_bad_visibility_flag(sample):
    data, img_dir, write = sample
    _ann(data, ANTELOPE_ANN)["keypoints"][2] = 3
    _expect(write(data), img_dir, "keypoints", f"annotation {ANTELOPE_ANN}")


def test_duplicate_annotation_ids(sample):
    data, img_dir, write = sample
    dup = json.loads(json.dumps(_ann(data, ANTELOPE_ANN)))
    data["annotations"].append(dup)
    path = write(data)
    with pytest.raises(DataError, match=rf"annotation {ANTELOPE_ANN} .*'id': duplicate annotation id"):
        load_coco_instances(path, img_dir, AP10K, train=True)
    insts, gt, report = load_coco_instances(path, img_dir, AP10K, train=True, on_error="skip")
    assert sorted(i.ann_id for i in insts) == sorted([JAGUAR_ANN, ANTELOPE_ANN])  # the first one is kept
    assert len(gt["annotations"]) == 2
    assert report.counts["skipped"] == 1 and report.skipped[0]["field"] == "id"


def test_category_not_in_categories(sample):
    data, img_dir, write = sample
    _ann(data, ANTELOPE_ANN)["category_id"] = 99
    report = _expect(write(data), img_dir, "category_id", f"annotation {ANTELOPE_ANN}")
    assert "99 is not in 'categories'" in report.skipped[0]["reason"]


def test_unknown_image_id(sample):
    data, img_dir, write = sample
    _ann(data, ANTELOPE_ANN)["image_id"] = 12345
    _expect(write(data), img_dir, "image_id", f"annotation {ANTELOPE_ANN}")


@pytest.mark.parametrize("on_error", ["raise", "skip"])
@pytest.mark.parametrize("text", ['{"images": [', "[1, 2]", '{"images": [], "annotations": []}'])
def test_malformed_json_always_raises(sample, text, on_error):
    _, img_dir, write = sample
    path = write(None, text=text)
    with pytest.raises(DataError, match=str(path)):
        load_coco_instances(path, img_dir, AP10K, train=True, on_error=on_error)


def test_missing_annotation_file(tmp_path):
    with pytest.raises(DataError, match="annotation file not found"):
        load_coco_instances(tmp_path / "nope.json", tmp_path, AP10K, train=True)


def test_category_without_keypoints(sample):
    data, img_dir, write = sample
    del next(c for c in data["categories"] if c["id"] == 1)["keypoints"]
    path = write(data)
    with pytest.raises(DataError, match=r"category 1: field 'keypoints'"):
        load_coco_instances(path, img_dir, AP10K, train=True)
    insts, gt, report = load_coco_instances(path, img_dir, AP10K, train=True, on_error="skip")
    assert [i.ann_id for i in insts] == [JAGUAR_ANN]
    assert report.counts["skipped"] == 1  # the antelope annotation (category 1)
    assert {s["field"] for s in report.skipped} == {"keypoints", "category_id"}
    assert 1 not in {c["id"] for c in gt["categories"]}


def test_category_with_wrong_keypoint_count(sample):
    data, img_dir, write = sample
    cat = next(c for c in data["categories"] if c["id"] == 26)
    cat["keypoints"] = cat["keypoints"][:10]
    with pytest.raises(DataError, match=r"category 26: field 'keypoints': category defines 10 keypoints"):
        load_coco_instances(write(data), img_dir, AP10K, train=True)


def test_crowd_is_skipped_not_an_error(sample):
    data, img_dir, write = sample
    _ann(data, ANTELOPE_ANN)["iscrowd"] = 1
    insts, gt, report = load_coco_instances(write(data), img_dir, AP10K, train=True)
    assert [i.ann_id for i in insts] == [JAGUAR_ANN]
    assert report.counts["crowd"] == 1 and report.skipped == []
    assert len(gt["annotations"]) == 2


def test_skip_mode_collects_everything_and_writes_report(sample, tmp_path):
    data, img_dir, write = sample
    _ann(data, ANTELOPE_ANN)["keypoints"][0] = math.nan
    _ann(data, JAGUAR_ANN)["bbox"] = [0, 0, 0, 0]
    insts, gt, report = load_coco_instances(write(data), img_dir, AP10K, train=True, on_error="skip")
    assert insts == [] and gt["annotations"] == [] and len(gt["images"]) == 2
    assert report.counts["skipped"] == 2 and report.skipped_by_field == {"keypoints": 1, "bbox": 1}
    out = report.write(tmp_path / "reports" / "skipped.json")
    saved = json.loads(out.read_text())
    assert saved["counts"]["skipped"] == 2 and len(saved["skipped"]) == 2
    assert {s["ann_id"] for s in saved["skipped"]} == {ANTELOPE_ANN, JAGUAR_ANN}
    assert isinstance(report, LoadReport)


def test_bad_on_error_value(sample):
    data, img_dir, write = sample
    with pytest.raises(ValueError, match="on_error"):
        load_coco_instances(write(data), img_dir, AP10K, train=True, on_error="ignore")


def test_check_image_file_ok(test_data):
    assert check_image_file(test_data / "animalpose" / "ca110.jpeg", 300, 240) is None
