"""Experimental protocols: which training / validation / test instances an experiment sees.

Pure functions over lists of instance records. Only four attributes are read, so any object with
``ann_id``, ``category_id``, ``species`` and ``family`` works (normally
:class:`clamp_pl.formats.coco.Instance`); input order is preserved in every output.

* ``supervised``: everything, unchanged.
* ``fewshot``: ``shots`` annotated instances per species (``category_id``) from the training split, or all
  of a species' instances when it has fewer. Each species draws from its own generator seeded by
  ``(seed, category_id)``, so the draw of one species does not depend on which other species are present,
  and a k-shot set is contained in the (k+n)-shot set of the same seed. The chosen annotation ids are
  written to a JSON split file that is reused (not redrawn) when it exists, so a few-shot run can be
  repeated or shared exactly. With ``families`` / ``species`` every split keeps only those taxa: few-shot
  on a family a model has never seen (a zero-shot split's held-out family). The k-shot draw is made on the whole
  training split and then restricted, so the split file is the same with and without them.
* ``zeroshot``: held-out families and/or species (AP-10K default: Equidae, i.e. horse and zebra, the
  family CLAMP reports). Training and validation keep only seen taxa; the test split keeps only the
  held-out ones. Validation deliberately excludes held-out taxa, so checkpoint selection never looks at
  the unseen families.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

__all__ = [
    "DEFAULT_ZEROSHOT_FAMILIES",
    "PROTOCOLS",
    "apply_protocol",
    "fewshot",
    "supervised",
    "zeroshot",
]

DEFAULT_ZEROSHOT_FAMILIES: tuple[str, ...] = ("Equidae",)
PROTOCOLS: tuple[str, ...] = ("supervised", "fewshot", "zeroshot")


class _Record(Protocol):
    ann_id: int
    category_id: int
    species: str
    family: str


T = TypeVar("T", bound=_Record)


def supervised(instances: Iterable[T]) -> list[T]:
    """Return all instances (a new list; the input is not modified)."""
    return list(instances)


def _draw_fewshot(instances: Sequence[T], shots: int, seed: int) -> set[int]:
    by_category: dict[int, list[int]] = {}
    for inst in instances:
        by_category.setdefault(int(inst.category_id), []).append(int(inst.ann_id))
    chosen: set[int] = set()
    for cid in sorted(by_category):
        ids = sorted(by_category[cid])
        order = np.random.default_rng([seed, cid]).permutation(len(ids))
        chosen.update(ids[i] for i in order[:shots])
    return chosen


def _read_split_file(path: Path, shots: int, seed: int) -> set[int]:
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"few-shot split file {path} is not valid JSON: {err}") from err
    if not isinstance(record, dict) or record.get("protocol") != "fewshot" or "ann_ids" not in record:
        raise ValueError(
            f"few-shot split file {path} is not a few-shot split "
            '(expected {"protocol": "fewshot", "shots": k, "seed": s, "ann_ids": [...]})'
        )
    if record.get("shots") != shots or record.get("seed") != seed:
        raise ValueError(
            f"few-shot split file {path} was drawn with shots={record.get('shots')} seed={record.get('seed')}, "
            f"but shots={shots} seed={seed} were requested; delete the file or choose another split_file"
        )
    return {int(i) for i in record["ann_ids"]}


def _write_split_file(path: Path, shots: int, seed: int, ann_ids: set[int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"protocol": "fewshot", "shots": shots, "seed": seed, "ann_ids": sorted(ann_ids)}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    # Atomic so that concurrent DDP ranks never read a half-written split.
    os.replace(tmp, path)


def fewshot(instances: Iterable[T], *, shots: int, seed: int, split_file: str | Path | None = None) -> list[T]:
    """Keep ``shots`` instances per species (category id), all of a species when it has fewer.

    Args:
        instances: the training split.
        shots: instances per species (>= 1).
        seed: sampling seed.
        split_file: JSON file ``{"protocol": "fewshot", "shots": k, "seed": s, "ann_ids": [...]}``. Reused
            when it exists (a ``ValueError`` names it when its shots/seed differ from the request or when it
            lists annotation ids that are not among ``instances``); written after drawing otherwise.

    Returns:
        The selected instances, in input order.
    """
    if isinstance(shots, bool) or not isinstance(shots, int | np.integer) or shots < 1:
        raise ValueError(f"few-shot protocol needs shots >= 1, got {shots!r}")
    instances = list(instances)
    known = {int(inst.ann_id) for inst in instances}
    path = Path(split_file) if split_file is not None else None
    if path is not None and path.exists():
        chosen = _read_split_file(path, int(shots), int(seed))
        unknown = sorted(chosen - known)
        if unknown:
            shown = ", ".join(map(str, unknown[:10])) + (" ..." if len(unknown) > 10 else "")
            raise ValueError(
                f"few-shot split file {path} lists {len(unknown)} annotation id(s) that are not in the "
                f"training split ({shown}); it was made for other data: delete it or choose another split_file"
            )
    else:
        chosen = _draw_fewshot(instances, int(shots), int(seed))
        if path is not None:
            _write_split_file(path, int(shots), int(seed), chosen)
    return [inst for inst in instances if int(inst.ann_id) in chosen]


def _held_out_predicate(instances: Sequence[_Record], families: Sequence[str], species: Sequence[str | int]):
    present_families = {inst.family for inst in instances}
    present_species = {inst.species for inst in instances}
    present_ids = {int(inst.category_id) for inst in instances}
    missing = [f for f in families if f not in present_families]
    missing += [
        s for s in species if (s not in present_ids if isinstance(s, int | np.integer) else s not in present_species)
    ]
    if missing:
        raise ValueError(
            f"protocol taxa {missing} do not occur in the data; families present: "
            f"{sorted(present_families)}; species present: {sorted(present_species)}"
        )
    family_set = set(families)
    name_set = {s for s in species if isinstance(s, str)}
    id_set = {int(s) for s in species if not isinstance(s, str)}

    def held_out(inst: _Record) -> bool:
        return inst.family in family_set or inst.species in name_set or int(inst.category_id) in id_set

    return held_out


def zeroshot(
    train: Iterable[T],
    test: Iterable[T],
    *,
    held_out_families: Sequence[str] = (),
    held_out_species: Sequence[str | int] = (),
) -> tuple[list[T], list[T]]:
    """Split by taxon: ``train`` keeps seen taxa only, ``test`` keeps held-out taxa only.

    Args:
        held_out_families: family names (COCO ``supercategory``), e.g. ``("Equidae",)``.
        held_out_species: species names or category ids.

    Raises:
        ValueError: nothing is held out, a named taxon does not occur in ``train`` or ``test``, or a
            resulting split is empty.
    """
    train, test = list(train), list(test)
    held_out_families, held_out_species = tuple(held_out_families), tuple(held_out_species)
    if not held_out_families and not held_out_species:
        raise ValueError("zero-shot protocol needs held_out_families and/or held_out_species")
    held_out = _held_out_predicate(train + test, held_out_families, held_out_species)
    train_out = [inst for inst in train if not held_out(inst)]
    test_out = [inst for inst in test if held_out(inst)]
    if not train_out or not test_out:
        raise ValueError(
            f"zero-shot split with families={list(held_out_families)} species={list(held_out_species)} leaves "
            f"{len(train_out)} training and {len(test_out)} test instances; both must be non-empty"
        )
    return train_out, test_out


def apply_protocol(name: str, train: Iterable[T], val: Iterable[T], test: Iterable[T], **kw: Any
                   ) -> tuple[list[T], list[T], list[T]]:
    """Apply protocol ``name`` to the three splits.

    ``supervised`` takes no options; ``fewshot`` takes ``shots``, ``seed``, ``split_file`` and subsamples
    only the training split, and ``families`` / ``species`` (names; species also by category id) to keep only
    those taxa in all three splits; ``zeroshot`` takes ``held_out_families`` / ``held_out_species`` (default
    ``held_out_families=("Equidae",)``), keeps seen taxa in train and val and held-out taxa in test.
    """
    train, val, test = list(train), list(val), list(test)
    if name == "supervised":
        if kw:
            raise TypeError(f"protocol 'supervised' takes no options, got {sorted(kw)}")
        return supervised(train), supervised(val), supervised(test)
    if name == "fewshot":
        families = tuple(kw.pop("families", None) or ())
        species = tuple(kw.pop("species", None) or ())
        train = fewshot(train, **kw)
        if not families and not species:
            return train, val, test
        keep = _held_out_predicate(train + val + test, families, species)
        return [i for i in train if keep(i)], [i for i in val if keep(i)], [i for i in test if keep(i)]
    if name == "zeroshot":
        unexpected = set(kw) - {"held_out_families", "held_out_species"}
        if unexpected:
            raise TypeError(f"protocol 'zeroshot' got unexpected options {sorted(unexpected)}")
        families = tuple(kw.get("held_out_families") or ())
        species = tuple(kw.get("held_out_species") or ())
        if not families and not species:
            families = DEFAULT_ZEROSHOT_FAMILIES
        train_out, test_out = zeroshot(train, test, held_out_families=families, held_out_species=species)
        held_out = _held_out_predicate(train + val + test, families, species)
        return train_out, [inst for inst in val if not held_out(inst)], test_out
    raise ValueError(f"unknown protocol {name!r}; choices: {', '.join(PROTOCOLS)}")
