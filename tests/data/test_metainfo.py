import json

import numpy as np
import pytest

from clamp_pl.data.metainfo import DatasetMeta, get_meta, meta_from_coco, name_to_prompt, name_tokens

# Expected values: mmpose configs/_base_/datasets/{ap10k,animalpose}.py (identical in CLAMP and ViTPose), as
# transcribed in research/anchors.md section 2.3; AP-10K prompts are CLAMP's.
AP10K_NAMES = [
    "left_eye", "right_eye", "nose", "neck", "root_of_tail", "left_shoulder", "left_elbow", "left_front_paw",
    "right_shoulder", "right_elbow", "right_front_paw", "left_hip", "left_knee", "left_back_paw", "right_hip",
    "right_knee", "right_back_paw",
]
AP10K_PROMPTS = [
    "left eye", "right eye", "nose", "neck", "tail root", "left shoulder", "left elbow", "left front paw",
    "right shoulder", "right elbow", "right front paw", "left hip", "left knee", "left back paw", "right hip",
    "right knee", "right back paw",
]
AP10K_SIGMAS = [0.025, 0.025, 0.026, 0.035, 0.035, 0.079, 0.072, 0.062, 0.079, 0.072, 0.062, 0.107, 0.087,
                0.089, 0.107, 0.087, 0.089]
AP10K_FLIP = [1, 0, 2, 3, 4, 8, 9, 10, 5, 6, 7, 14, 15, 16, 11, 12, 13]
AP10K_SKELETON = [(0, 1), (0, 2), (1, 2), (2, 3), (3, 4), (3, 5), (5, 6), (6, 7), (3, 8), (8, 9), (9, 10),
                  (4, 11), (11, 12), (12, 13), (4, 14), (14, 15), (15, 16)]
AP10K_WEIGHTS = [1, 1, 1, 1, 1, 1, 1, 1.2, 1.2, 1.5, 1.5, 1, 1, 1.2, 1.2, 1.5, 1.5]

AP_NAMES = ["L_Eye", "R_Eye", "L_EarBase", "R_EarBase", "Nose", "Throat", "TailBase", "Withers", "L_F_Elbow",
            "R_F_Elbow", "L_B_Elbow", "R_B_Elbow", "L_F_Knee", "R_F_Knee", "L_B_Knee", "R_B_Knee", "L_F_Paw",
            "R_F_Paw", "L_B_Paw", "R_B_Paw"]
AP_PROMPTS = ["left eye", "right eye", "left ear base", "right ear base", "nose", "throat", "tail base", "withers",
              "left front elbow", "right front elbow", "left back elbow", "right back elbow", "left front knee",
              "right front knee", "left back knee", "right back knee", "left front paw", "right front paw",
              "left back paw", "right back paw"]
AP_SIGMAS = [0.025, 0.025, 0.026, 0.035, 0.035, 0.10, 0.10, 0.10] + [0.107] * 4 + [0.087] * 4 + [0.089] * 4
AP_FLIP = [1, 0, 3, 2, 4, 5, 6, 7, 9, 8, 11, 10, 13, 12, 15, 14, 17, 16, 19, 18]
AP_SKELETON = [(0, 1), (0, 2), (1, 3), (0, 4), (1, 4), (4, 5), (5, 7), (6, 7), (5, 8), (8, 12), (12, 16), (5, 9),
               (9, 13), (13, 17), (6, 10), (10, 14), (14, 18), (6, 11), (11, 15), (15, 19)]


def test_ap10k_exact():
    m = get_meta("ap10k")
    assert m.name == "ap10k" and m.num_keypoints == 17
    assert list(m.keypoint_names) == AP10K_NAMES
    assert list(m.prompts) == AP10K_PROMPTS
    assert m.sigmas.dtype == np.float64
    np.testing.assert_array_equal(m.sigmas, AP10K_SIGMAS)
    assert list(m.flip_indices) == AP10K_FLIP
    assert m.flip_pairs == ((0, 1), (5, 8), (6, 9), (7, 10), (11, 14), (12, 15), (13, 16))
    assert list(m.skeleton) == AP10K_SKELETON
    assert m.upper_body_ids == (0, 1, 2, 3, 5, 6, 7, 8, 9)
    assert m.lower_body_ids == (4, 10, 11, 12, 13, 14, 15, 16)  # R_F_Paw typed lower: mmpose quirk, kept
    np.testing.assert_array_equal(m.joint_weights, AP10K_WEIGHTS)


def test_ap10k_taxonomy():
    m = get_meta("ap10k")
    assert sorted(m.species) == list(range(1, 55))
    assert len(m.families) == 23
    assert m.species[1] == "antelope" and m.species_to_family[1] == "Bovidae"
    assert m.species[26] == "jaguar" and m.species_to_family[26] == "Felidae"
    assert m.species[54] == "bat" and m.species_to_family[54] == "Vespertilionidae"
    assert m.families["Equidae"] == [21, 22]
    assert m.families["Felidae"] == list(range(23, 33))
    assert m.families["Ursidae"] == [50, 51, 52, 53]


def test_ap10k_taxonomy_matches_the_annotation_file(test_data):
    cats = json.loads((test_data / "ap10k" / "test_ap10k.json").read_text())["categories"]
    m = get_meta("ap10k")
    assert {c["id"]: c["name"] for c in cats} == m.species
    assert {c["id"]: c["supercategory"] for c in cats} == m.species_to_family
    assert all(c["keypoints"] == AP10K_NAMES for c in cats)
    assert [tuple(np.array(p) - 1) for p in cats[0]["skeleton"]] == AP10K_SKELETON


def test_animalpose_exact():
    m = get_meta("animalpose")
    assert m.num_keypoints == 20
    assert list(m.keypoint_names) == AP_NAMES
    assert list(m.prompts) == AP_PROMPTS
    np.testing.assert_array_equal(m.sigmas, AP_SIGMAS)
    assert list(m.flip_indices) == AP_FLIP
    assert list(m.skeleton) == AP_SKELETON
    assert m.upper_body_ids == (0, 1, 2, 3, 4, 5, 7, 8, 9, 12, 13, 16, 17)
    assert m.lower_body_ids == (6, 10, 11, 14, 15, 18, 19)
    np.testing.assert_array_equal(m.joint_weights, [1.0] * 12 + [1.2] * 4 + [1.5] * 4)
    assert m.species == {1: "cat", 2: "cow", 3: "dog", 4: "horse", 5: "sheep"}
    assert m.families == {"Bovidae": [2, 5], "Canidae": [3], "Equidae": [4], "Felidae": [1]}


@pytest.mark.parametrize("name", ["ap10k", "animalpose"])
def test_flip_indices_involution_and_names(name):
    m = get_meta(name)
    fi = m.flip_indices
    assert sorted(fi) == list(range(m.num_keypoints))
    for i, j in enumerate(fi):
        assert fi[j] == i
        swapped = [{"left": "right", "right": "left"}.get(w, w) for w in m.prompts[i].split()]
        assert " ".join(swapped) == m.prompts[j]


def test_get_meta_aliases_and_unknown():
    assert get_meta("AP-10K") is get_meta("ap10k")
    assert get_meta("animal_pose") is get_meta("animalpose")
    with pytest.raises(ValueError, match=r"choices: \['animalpose', 'ap10k'\]"):
        get_meta("coco_wholebody")


def test_meta_is_immutable():
    m = get_meta("ap10k")
    with pytest.raises(ValueError):
        m.sigmas[0] = 1.0
    with pytest.raises(AttributeError):
        m.name = "x"


def test_meta_validation():
    kw = dict(name="bad", keypoint_names=("a", "b"), prompts=("a", "b"), sigmas=[0.1, 0.1], skeleton=((0, 1),),
              upper_body_ids=(0,), lower_body_ids=(1,), joint_weights=[1, 1])
    DatasetMeta(flip_indices=(1, 0), **kw)
    with pytest.raises(ValueError, match="involution"):
        DatasetMeta(flip_indices=(1, 1), **kw)
    with pytest.raises(ValueError, match="sigmas has 1 entries"):
        DatasetMeta(flip_indices=(0, 1), **{**kw, "sigmas": [0.1]})


@pytest.mark.parametrize(
    ("name", "prompt"),
    [
        ("left_front_paw", "left front paw"),
        ("leftear", "left ear"),
        ("tailbase", "tail base"),
        ("L_EarBase", "left ear base"),
        ("TailBase", "tail base"),
        ("R_B_Paw", "right back paw"),
        ("rightFrontPaw", "right front paw"),
        ("rightfrontpaw", "right front paw"),
        ("nose-tip", "nose tip"),
        ("snout", "snout"),
        ("middle", "middle"),
        ("frontal", "frontal"),
        ("spine1", "spine 1"),
        # names as found in public animal datasets: compact side markers, side last, glued words, whitespace
        ("eyeL", "left eye"),
        ("forelegR1", "right fore leg 1"),
        ("hindlegL4", "left hind leg 4"),
        ("LeftEar", "left ear"),
        ("Eye_Left", "left eye"),
        ("Mouth_Back_Right", "right mouth back"),
        ("anttipL", "left antenna tip"),
        ("wingR", "right wing"),
        ("abdomen2", "abdomen 2"),
        ("Nearfrontfetlock", "near front fetlock"),
        ("nearfrontfetlock", "near front fetlock"),
        ("Offhindhock", "off hind hock"),
        ("  left_ear ", "left ear"),
        ("forehead", "forehead"),
        ("LF_paw", "left front paw"),
        ("RH knee", "right hind knee"),
        ("LED", "led"),
    ],
)
def test_name_to_prompt(name, prompt):
    assert name_to_prompt(name) == prompt


def test_name_tokens():
    assert name_tokens("L_F_Paw") == ["left", "front", "paw"]


def test_meta_from_coco_reproduces_animalpose(test_data):
    derived = meta_from_coco(test_data / "animalpose" / "test_animalpose.json", name="ap")
    ref = get_meta("animalpose")
    assert derived.keypoint_names == ref.keypoint_names
    assert derived.prompts == ref.prompts
    assert derived.flip_indices == ref.flip_indices
    assert derived.skeleton == ref.skeleton
    assert derived.upper_body_ids == ref.upper_body_ids and derived.lower_body_ids == ref.lower_body_ids
    np.testing.assert_array_equal(derived.sigmas, ref.sigmas)  # a known layout gets its published sigmas
    assert derived.provenance["sigmas"] == "published Animal-Pose values"
    assert derived.species == {1: "cat"} and derived.species_to_family == {1: "animal"}


def test_meta_from_coco_ap10k_dict(test_data):
    data = json.loads((test_data / "ap10k" / "test_ap10k.json").read_text())
    m = meta_from_coco(data, sigmas=AP10K_SIGMAS)
    ref = get_meta("ap10k")
    assert m.flip_indices == ref.flip_indices
    assert m.prompts[4] == "root of tail"
    np.testing.assert_array_equal(m.sigmas, AP10K_SIGMAS)
    assert m.families == ref.families
    assert 10 in m.upper_body_ids  # name-derived groups are symmetric (no R_F_Paw quirk)


def test_meta_from_coco_dlc_names_and_errors():
    cat = {"id": 1, "name": "mouse", "keypoints": ["snout", "leftear", "rightear", "tailbase"], "skeleton": []}
    m = meta_from_coco({"categories": [cat]}, name="mouse", prompts=["nose", "left ear", "right ear", "tail"],
                       default_sigma=0.05)
    assert m.flip_indices == (0, 2, 1, 3)
    assert m.prompts == ("nose", "left ear", "right ear", "tail")
    assert m.lower_body_ids == (3,)
    np.testing.assert_array_equal(m.sigmas, [0.05] * 4)
    with pytest.raises(ValueError, match="3 sigmas given for 4"):
        meta_from_coco({"categories": [cat]}, sigmas=[0.1] * 3)
    other = {**cat, "id": 2, "keypoints": ["a", "b"]}
    with pytest.raises(ValueError, match=r"categories 1 \('mouse', 4 keypoints\) and 2 \('mouse', 2 keypoints\)"):
        meta_from_coco({"categories": [cat, other]})
    with pytest.raises(ValueError, match="no categories"):
        meta_from_coco({"categories": []})
