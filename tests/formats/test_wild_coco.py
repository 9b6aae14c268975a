"""COCO keypoint files as other animal datasets write them (fixtures in tests/fixtures/wild, made by its
make_fixtures.py): skeleton index base, names -> prompts, flip pairs against mmpose's metainfo, published sigmas,
user overrides, and the errors and warnings a user gets."""

from __future__ import annotations

import copy
import json
import logging

import numpy as np
import pytest

from clamp_pl.data.metainfo import format_meta_table, meta_from_coco, meta_table, skeleton_indices
from clamp_pl.formats.coco import DataError, load_coco_instances

LEG = [(f"{leg}L{i}", f"{leg}R{i}") for leg in ("foreleg", "midleg", "hindleg") for i in range(1, 5)]
# The ``swap`` fields of mmpose's configs/_base_/datasets/<name>.py, as unordered name pairs.
MMPOSE_PAIRS = {
    "fly": {("eyeL", "eyeR"), *LEG, ("wingL", "wingR")},
    "locust": {("anttipL", "anttipR"), ("antbaseL", "antbaseR"), ("eyeL", "eyeR"), *LEG},
    "zebra": {("forelegL1", "forelegR1"), ("hindlegL1", "hindlegR1")},
    "horse10": set(),  # Near*/Off*: toward / away from the camera, not swapped by a flip
    "macaque": {(f"left_{p}", f"right_{p}") for p in ("eye", "ear", "shoulder", "elbow", "wrist", "hip", "knee",
                                                      "ankle")},
    "atrw": {(f"left_{p}", f"right_{p}") for p in ("ear", "shoulder", "front_paw", "hip", "knee", "back_paw")},
    "ak": {(f"{p}_Left", f"{p}_Right") for p in ("Eye", "Mouth_Back", "Shoulder", "Elbow", "Wrist", "Hip", "Knee",
                                                 "Ankle")},
}
SKELETON_BASE = {"fly": "0-based", "locust": "1-based", "zebra": "1-based", "horse10": "1-based",
                 "macaque": "1-based (assumed)", "atrw": "1-based", "ak": "0-based"}


@pytest.fixture
def wild(test_data):
    return test_data / "wild"


@pytest.mark.parametrize("name", sorted(MMPOSE_PAIRS))
def test_flip_pairs_match_mmpose(wild, name):
    meta = meta_from_coco(wild / f"{name}.json", name=name)
    pairs = {tuple(sorted((meta.keypoint_names[i], meta.keypoint_names[j]))) for i, j in meta.flip_pairs}
    assert pairs == {tuple(sorted(p)) for p in MMPOSE_PAIRS[name]}
    assert meta.provenance["skeleton"] == SKELETON_BASE[name]
    raw = json.loads((wild / f"{name}.json").read_text())["categories"][0]
    assert meta.keypoint_names == tuple(n.strip() for n in raw["keypoints"])


@pytest.mark.parametrize("name", sorted(MMPOSE_PAIRS))
def test_fixture_loads_through_the_validating_loader(wild, name):
    meta = meta_from_coco(wild / f"{name}.json", name=name)
    insts, gt, report = load_coco_instances(wild / f"{name}.json", wild / "images", meta, train=True)
    assert len(insts) == 8 and not report.skipped
    assert insts[0].keypoints.shape == (meta.num_keypoints, 3)


def test_skeleton_follows_the_file(wild):
    fly = meta_from_coco(wild / "fly.json")
    names = fly.keypoint_names
    assert (names.index("eyeL"), names.index("head")) == fly.skeleton[0]  # 0-based file: [1, 0]
    locust = meta_from_coco(wild / "locust.json")
    assert locust.skeleton[-1] == (34, locust.keypoint_names.index("hindlegR3"))  # 1-based file: [35, 34]


def test_skeleton_index_base_detection():
    names = ["a", "b", "c"]
    assert skeleton_indices([[0, 1]], names, "f") == (((0, 1),), "0-based")
    assert skeleton_indices([[3, 1]], names, "f") == (((2, 0),), "1-based")
    assert skeleton_indices([[1, 2]], names, "f") == (((0, 1),), "1-based (assumed)")
    assert skeleton_indices([["a", "c "]], names, "f") == (((0, 2),), "names")
    assert skeleton_indices(None, names, "f") == ((), "none")
    with pytest.raises(ValueError, match="f: skeleton uses both index 0 and index 3"):
        skeleton_indices([[0, 3]], names, "f")
    with pytest.raises(ValueError, match=r"f: skeleton pair \[5, 1\] out of range for 3 keypoints"):
        skeleton_indices([[5, 1]], names, "f")


def test_prompts_read_as_english(wild):
    fly = dict(zip(meta_from_coco(wild / "fly.json").keypoint_names, meta_from_coco(wild / "fly.json").prompts))
    assert fly["forelegR1"] == "right fore leg 1" and fly["eyeL"] == "left eye" and fly["wingR"] == "right wing"
    locust = meta_from_coco(wild / "locust.json")
    assert dict(zip(locust.keypoint_names, locust.prompts))["anttipL"] == "left antenna tip"
    horse = meta_from_coco(wild / "horse10.json")
    assert dict(zip(horse.keypoint_names, horse.prompts))["Nearfrontfetlock"] == "near front fetlock"
    ak = meta_from_coco(wild / "ak.json")
    assert ak.prompts[1] == "left eye" and ak.prompts[0] == "head mid top"
    atrw = meta_from_coco(wild / "atrw.json")
    assert atrw.keypoint_names[:2] == ("left_ear", "right_ear") and atrw.prompts[:2] == ("left ear", "right ear")
    assert len(set(ak.prompts)) == ak.num_keypoints  # one text per keypoint


def test_published_sigmas_for_known_layouts(wild, caplog):
    with caplog.at_level(logging.WARNING):
        macaque = meta_from_coco(wild / "macaque.json")
        atrw = meta_from_coco(wild / "atrw.json")
    assert not [r for r in caplog.records if "sigmas" in r.getMessage()]
    np.testing.assert_array_equal(macaque.sigmas, [0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072,
                                                   0.062, 0.062, 0.107, 0.107, 0.087, 0.087, 0.089, 0.089])
    assert macaque.provenance["sigmas"] == "published COCO-17 values"
    assert atrw.sigmas[0] == 0.0277 and atrw.sigmas[-1] == 0.0539


def test_default_sigmas_warn_once_with_the_fix(wild, caplog):
    with caplog.at_level(logging.WARNING):
        meta = meta_from_coco(wild / "fly.json")
    warnings = [r.getMessage() for r in caplog.records if "sigmas" in r.getMessage()]
    assert len(warnings) == 1 and "data.sigmas=[s1,...,s32]" in warnings[0] and "fly.json" in warnings[0]
    assert np.all(meta.sigmas == 0.072)
    given = meta_from_coco(wild / "fly.json", sigmas=[0.05] * 32)
    assert given.provenance["sigmas"] == "given (data.sigmas)" and np.all(given.sigmas == 0.05)


def test_user_overrides_win(wild):
    horse = meta_from_coco(wild / "horse10.json", flip_pairs=[["Nearknee", "Offknee"], [3, 6]],
                           prompts={"Eye": "eye of the horse", 0: "muzzle"})
    assert horse.flip_pairs == ((2, 5), (3, 6))
    assert horse.prompts[:3] == ("muzzle", "eye of the horse", "near knee")
    assert horse.provenance["flip_pairs"] == "given (data.flip_pairs)"
    none = meta_from_coco(wild / "fly.json", flip_pairs=[])
    assert none.flip_pairs == ()
    with pytest.raises(ValueError, match="'kneecap' is not a keypoint name"):
        meta_from_coco(wild / "horse10.json", flip_pairs=[["kneecap", "Offknee"]])
    with pytest.raises(ValueError, match="'Offknee' is in two pairs"):
        meta_from_coco(wild / "horse10.json", flip_pairs=[["Nearknee", "Offknee"], ["Offknee", 3]])
    with pytest.raises(ValueError, match="3 prompts given for 22 keypoints"):
        meta_from_coco(wild / "horse10.json", prompts=["a", "b", "c"])


def test_side_without_partner_warns(wild, caplog):
    data = json.loads((wild / "zebra.json").read_text())
    data["categories"][0]["keypoints"][4] = "forelegX1"  # forelegL1 loses its partner
    with caplog.at_level(logging.WARNING):
        meta = meta_from_coco(data, name="zebra")
    assert len(meta.flip_pairs) == 1
    assert any("['forelegL1']" in r.getMessage() and "no left/right partner" in r.getMessage()
               for r in caplog.records)


def test_unknown_category_id_names_file_annotation_and_id(wild, tmp_path):
    data = json.loads((wild / "zebra.json").read_text())
    data["annotations"][3]["category_id"] = 7
    path = tmp_path / "zebra_bad.json"
    path.write_text(json.dumps(data))
    meta = meta_from_coco(path)
    with pytest.raises(DataError, match=r"zebra_bad.json: annotation 4 \(image 2\): field 'category_id': "
                                        r"category id 7 is not in 'categories'"):
        load_coco_instances(path, wild / "images", meta, train=True)
    insts, _, report = load_coco_instances(path, wild / "images", meta, train=True, on_error="skip")
    assert len(insts) == 7 and report.counts["skipped"] == 1
    assert report.skipped[0]["ann_id"] == 4 and report.skipped[0]["category_id"] == 7


def test_categories_with_different_keypoints(wild, tmp_path):
    data = json.loads((wild / "zebra.json").read_text())
    other = copy.deepcopy(data["categories"][0])
    other.update(id=2, name="horse")
    other["keypoints"] = other["keypoints"][:8] + ["tailend"]
    data["categories"].append(other)
    with pytest.raises(ValueError, match=r"categories 1 \('zebra', 9 keypoints\) and 2 \('horse', 9 keypoints\) "
                                         r"have different keypoint lists \(first difference at index 8\)"):
        meta_from_coco(data)
    # A val file whose category reorders the train layout is refused at load time, naming the keypoint.
    meta = meta_from_coco(wild / "zebra.json")
    val = json.loads((wild / "zebra.json").read_text())
    kps = val["categories"][0]["keypoints"]
    kps[3], kps[4] = kps[4], kps[3]
    path = tmp_path / "val.json"
    path.write_text(json.dumps(val))
    with pytest.raises(DataError, match=r"val.json: category 1: field 'keypoints': keypoint 3 is 'forelegR1'"):
        load_coco_instances(path, wild / "images", meta, train=False)


def test_table_lists_every_keypoint(wild):
    meta = meta_from_coco(wild / "fly.json", name="fly")
    rows = meta_table(meta)
    assert rows[1] == {"index": 1, "name": "eyeL", "prompt": "left eye", "flip": "eyeR", "body": "upper",
                       "sigma": 0.072}
    assert rows[0]["flip"] is None
    text = format_meta_table(meta)
    assert "fly: 32 keypoints, 14 flip pairs" in text and "skeleton: 0-based" in text
    assert "| 6 | forelegR1 | right fore leg 1 | forelegL1 | upper | 0.072 |" in text


@pytest.mark.parametrize(("name", "lower"), [("ak", set(range(14, 23))), ("macaque", set(range(11, 17)))])
def test_half_body_groups_match_mmpose_types(wild, name, lower):
    """mmpose's ``type='lower'`` keypoints; Animal Kingdom's trailing "Back" is the dorsal side, not a hind limb."""
    meta = meta_from_coco(wild / f"{name}.json")
    assert set(meta.lower_body_ids) == lower
    assert set(meta.upper_body_ids) == set(range(meta.num_keypoints)) - lower


def test_duplicate_keypoint_names_are_refused(wild):
    data = json.loads((wild / "zebra.json").read_text())
    data["categories"][0]["keypoints"][1] = " snout"
    with pytest.raises(ValueError, match=r"category 1 \('zebra'\) names keypoints \['snout'\] more than once"):
        meta_from_coco(data)
