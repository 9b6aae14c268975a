"""Protocol invariants: supervised passes through; few-shot draws k per species, seeded, saved and reused;
zero-shot keeps held-out taxa out of train/val and only in test."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass

import pytest

from clamp_pl.data.protocols import DEFAULT_ZEROSHOT_FAMILIES, apply_protocol, fewshot, supervised, zeroshot

TAXA = [  # (category id, species, family, number of training instances)
    (5, "cow", "Bovidae", 12), (6, "sheep", "Bovidae", 3), (8, "dog", "Canidae", 9), (10, "wolf", "Canidae", 20),
    (21, "horse", "Equidae", 7), (22, "zebra", "Equidae", 5), (24, "cat", "Felidae", 1),
]


@dataclass
class Rec:
    """Stand-in for clamp_pl.formats.coco.Instance (protocols only read these attributes)."""

    ann_id: int
    category_id: int
    species: str
    family: str


def make(offset: int = 0) -> list[Rec]:
    out = []
    for cid, sp, fam, n in TAXA:
        out += [Rec(offset + cid * 1000 + i, cid, sp, fam) for i in range(n)]
    # Interleave species so that "input order is kept" is a real check.
    return sorted(out, key=lambda r: (r.ann_id % 7, r.ann_id))


def test_supervised_is_identity_copy():
    train = make()
    out = supervised(train)
    assert out == train and out is not train


@pytest.mark.parametrize("shots", [1, 5, 10])
def test_fewshot_exactly_k_per_species_or_all(shots):
    train = make()
    out = fewshot(train, shots=shots, seed=0)
    counts = Counter(r.category_id for r in out)
    for cid, _, _, n in TAXA:
        assert counts[cid] == min(shots, n)
    assert len({r.ann_id for r in out}) == len(out)
    pos = {id(r): i for i, r in enumerate(train)}
    assert [pos[id(r)] for r in out] == sorted(pos[id(r)] for r in out)  # input order kept


def test_fewshot_seeded_and_nested():
    train = make()
    a = {r.ann_id for r in fewshot(train, shots=3, seed=0)}
    assert a == {r.ann_id for r in fewshot(list(reversed(train)), shots=3, seed=0)}  # order-independent
    assert a != {r.ann_id for r in fewshot(train, shots=3, seed=1)}
    assert a <= {r.ann_id for r in fewshot(train, shots=6, seed=0)}  # k-shot inside (k+n)-shot
    # One species' draw does not depend on the other species present.
    only_wolf = [r for r in train if r.species == "wolf"]
    assert {r.ann_id for r in fewshot(only_wolf, shots=3, seed=0)} == {r.ann_id for r in fewshot(train, shots=3, seed=0)
                                                                        if r.species == "wolf"}


def test_fewshot_split_file_written_and_reused(tmp_path):
    train = make()
    path = tmp_path / "splits" / "k3.json"
    first = fewshot(train, shots=3, seed=0, split_file=path)
    record = json.loads(path.read_text())
    assert record["protocol"] == "fewshot" and record["shots"] == 3 and record["seed"] == 0
    assert record["ann_ids"] == sorted(r.ann_id for r in first)
    # Reused, not redrawn: a hand-edited file is honoured.
    record["ann_ids"] = record["ann_ids"][:2]
    path.write_text(json.dumps(record))
    assert [r.ann_id for r in fewshot(train, shots=3, seed=0, split_file=path)] == sorted(
        record["ann_ids"], key=[r.ann_id for r in train].index)


def test_fewshot_split_file_errors(tmp_path):
    train = make()
    path = tmp_path / "k2.json"
    path.write_text(json.dumps({"protocol": "fewshot", "shots": 2, "seed": 0, "ann_ids": [5000, 123456789]}))
    with pytest.raises(ValueError, match=r"k2\.json.*123456789"):
        fewshot(train, shots=2, seed=0, split_file=path)
    with pytest.raises(ValueError, match=r"k2\.json.*shots=2 seed=0.*shots=3 seed=0"):
        fewshot(train, shots=3, seed=0, split_file=path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"k2\.json"):
        fewshot(train, shots=2, seed=0, split_file=path)
    with pytest.raises(ValueError, match="shots >= 1"):
        fewshot(train, shots=0, seed=0)


def test_zeroshot_held_out_families_only_in_test():
    train, test = make(), make(offset=100_000)
    tr, te = zeroshot(train, test, held_out_families=["Equidae"])
    assert tr and te
    assert all(r.family != "Equidae" for r in tr)
    assert all(r.family == "Equidae" for r in te)
    assert len(te) == sum(r.family == "Equidae" for r in test)
    assert len(tr) == sum(r.family != "Equidae" for r in train)


def test_zeroshot_species_by_name_or_id_and_errors():
    train, test = make(), make(offset=100_000)
    tr, te = zeroshot(train, test, held_out_species=["zebra", 24])
    assert {r.species for r in te} == {"zebra", "cat"}
    assert not {"zebra", "cat"} & {r.species for r in tr}
    with pytest.raises(ValueError, match="Equidea.*Equidae"):
        zeroshot(train, test, held_out_families=["Equidea"])
    with pytest.raises(ValueError, match="held_out"):
        zeroshot(train, test)



def test_fewshot_on_chosen_taxa_every_split_same_split_file(tmp_path):
    train, val, test = make(), make(50_000), make(100_000)
    path = tmp_path / "s.json"
    tr, va, te = apply_protocol("fewshot", train, val, test, shots=3, seed=0, split_file=path, families=["Equidae"])
    assert Counter(r.species for r in tr) == {"horse": 3, "zebra": 3}
    assert {r.family for r in va} == {r.family for r in te} == {"Equidae"}
    assert len(te) == sum(r.family == "Equidae" for r in test)
    # the k-shot draw of the whole split, restricted: one split file serves both
    full, _, _ = apply_protocol("fewshot", train, val, test, shots=3, seed=0, split_file=path)
    assert [r for r in full if r.family == "Equidae"] == tr
    tr, _, te = apply_protocol("fewshot", train, val, test, shots=3, seed=0, species=["zebra", 24])
    assert {r.species for r in tr} == {r.species for r in te} == {"zebra", "cat"}
    with pytest.raises(ValueError, match="Equidea.*Equidae"):
        apply_protocol("fewshot", train, val, test, shots=3, seed=0, families=["Equidea"])

def test_apply_protocol_dispatch(tmp_path):
    train, val, test = make(), make(50_000), make(100_000)
    assert apply_protocol("supervised", train, val, test) == (train, val, test)
    tr, va, te = apply_protocol("fewshot", train, val, test, shots=2, seed=0, split_file=tmp_path / "s.json")
    assert len(tr) == sum(min(2, n) for *_, n in TAXA) and va == val and te == test
    assert DEFAULT_ZEROSHOT_FAMILIES == ("Equidae",)
    tr, va, te = apply_protocol("zeroshot", train, val, test)  # default: Equidae held out
    assert {r.family for r in te} == {"Equidae"}
    assert "Equidae" not in {r.family for r in tr} | {r.family for r in va}
    tr, va, te = apply_protocol("zeroshot", train, val, test, held_out_families=["Canidae"], held_out_species=None)
    assert {r.family for r in te} == {"Canidae"}
    with pytest.raises(ValueError, match="supervised, fewshot, zeroshot"):
        apply_protocol("oneshot", train, val, test)
    with pytest.raises(TypeError, match="shots"):
        apply_protocol("supervised", train, val, test, shots=3)
