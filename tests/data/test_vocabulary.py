"""Keypoint vocabularies matched by name: normalised names, the synonym table, the convention notes, the union."""

from __future__ import annotations

import pytest

from clamp_pl.data.metainfo import get_meta
from clamp_pl.data.vocabulary import canonical_name, match_vocabularies, union_vocabulary


def test_canonical_names_read_through_the_synonym_table():
    assert canonical_name("TailBase") == canonical_name("root_of_tail") == canonical_name("tail root")
    assert canonical_name("Snout") == canonical_name("nose")
    assert canonical_name("L_F_Paw") == canonical_name("left_front_paw") == canonical_name("left forepaw")
    assert canonical_name("L_B_Paw") == canonical_name("leftHindPaw")
    # the side is never dropped or swapped
    assert canonical_name("L_Eye") != canonical_name("R_Eye")
    assert canonical_name("left_knee") != canonical_name("L_B_Knee")


def test_ap10k_to_animalpose_matches_names_only():
    ap10k, animalpose = get_meta("ap10k"), get_meta("animalpose")
    m = match_vocabularies(ap10k.keypoint_names, animalpose.keypoint_names)
    got = {(ap10k.keypoint_names[s], animalpose.keypoint_names[t]) for s, t in m.pairs}
    assert got == {("left_eye", "L_Eye"), ("right_eye", "R_Eye"), ("nose", "Nose"), ("root_of_tail", "TailBase"),
                   ("left_front_paw", "L_F_Paw"), ("right_front_paw", "R_F_Paw"), ("left_back_paw", "L_B_Paw"),
                   ("right_back_paw", "R_B_Paw")}
    assert m.how[m.target_indices.index(animalpose.keypoint_names.index("TailBase"))].startswith("synonym")
    # pairs come in target order; the rest is reported, never guessed
    assert m.target_indices == sorted(m.target_indices)
    unmatched = {animalpose.keypoint_names[t] for t in m.unmatched_target}
    assert {"Throat", "Withers", "L_F_Elbow", "L_B_Knee", "L_EarBase"} <= unmatched
    assert {ap10k.keypoint_names[s] for s in m.unmatched_source} >= {"neck", "left_shoulder", "left_knee"}
    # the shoulder / front-elbow convention is said, for both sides, and not matched
    notes = {(ap10k.keypoint_names[s], animalpose.keypoint_names[t]) for s, t, _ in m.notes}
    assert {("left_shoulder", "L_F_Elbow"), ("right_shoulder", "R_F_Elbow"), ("left_hip", "L_B_Elbow")} <= notes
    d = m.to_dict()
    assert {"source": "root_of_tail", "target": "TailBase", "how": d["matched"][3]["how"]} in d["matched"]
    assert "L_F_Elbow" in d["unmatched_target"] and any(c["target"] == "L_F_Elbow" for c in d["conventions"])
    assert "left_shoulder" in m.format()


def test_duplicate_canonical_names_are_an_error():
    with pytest.raises(ValueError, match="'tail_base'.*'root of tail'|'root of tail'.*'tail_base'"):
        match_vocabularies(["tail_base", "root of tail"], ["nose"])


def test_union_vocabulary_keeps_shared_names_once():
    ap10k, animalpose = get_meta("ap10k"), get_meta("animalpose")
    union, channels = union_vocabulary({"a": ap10k, "b": animalpose})
    assert union.num_keypoints == 17 + 20 - 8
    assert union.keypoint_names[:17] == ap10k.keypoint_names
    assert channels["a"] == list(range(17))
    for k, name in enumerate(animalpose.keypoint_names):
        assert canonical_name(union.keypoint_names[channels["b"][k]]) == canonical_name(name)
    assert union.keypoint_names[channels["b"][animalpose.keypoint_names.index("TailBase")]] == "root_of_tail"
    # flip partners follow the names in the union too
    for k, partner in enumerate(animalpose.flip_indices):
        assert union.flip_indices[channels["b"][k]] == channels["b"][partner]
    assert union.sigmas[channels["b"][animalpose.keypoint_names.index("Throat")]] == pytest.approx(0.10)
