"""Keypoint vocabularies matched by name: which keypoints of one dataset are the keypoints of another.

Two names match when their normalised forms are equal: the words of :func:`~clamp_pl.data.metainfo.name_tokens`
(``L_F_Paw`` -> "left front paw", ``root_of_tail`` -> "root of tail"), the side (left/right) kept apart, and the
rest read through :data:`SYNONYMS`, the one table of phrases that name the same body part ("snout" ~ "nose",
"tail base" ~ "root of tail", "hind paw" ~ "back paw"). Nothing else matches: a match never rests on where a
point is drawn.

Datasets also use different names for the same point, and the same word for different points. Those are not
matched; :data:`CONVENTIONS` records the known cases and every match report repeats the note of each unmatched
pair it covers. The AP-10K and Animal-Pose skeletons draw each leg as a chain of three points from the body to
the paw: AP-10K names them shoulder / elbow / front paw and hip / knee / back paw, Animal-Pose front elbow /
front knee / front paw and back elbow / back knee / back paw. So AP-10K's "left shoulder" is the point
Animal-Pose calls "left front elbow", and AP-10K's "left elbow" (the middle joint) is not Animal-Pose's "left
front elbow" (the top one).

:func:`union_vocabulary` builds the vocabulary of several datasets trained together (shared names once).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from clamp_pl.data.metainfo import DatasetMeta, name_tokens

__all__ = ["CONVENTIONS", "SYNONYMS", "VocabularyMatch", "canonical_name", "keypoint_indices", "match_vocabularies",
           "union_vocabulary"]

_SIDES = ("left", "right")

#: Phrases (a name without its side, in :func:`name_tokens` words) that name the same body part; the first of a
#: group is the canonical form.
SYNONYMS: tuple[tuple[str, ...], ...] = (
    ("nose", "snout", "nose tip", "snout tip", "tip of nose"),
    ("tail base", "root of tail", "tail root", "base of tail", "tail start"),
    ("tail tip", "tail end", "end of tail", "tip of tail"),
    ("ear base", "ear root", "base of ear", "root of ear"),
    ("front paw", "fore paw", "front foot", "fore foot", "forefoot", "front hoof", "fore hoof"),
    ("back paw", "hind paw", "rear paw", "back foot", "hind foot", "rear foot", "hindfoot", "back hoof",
     "hind hoof"),
    ("withers", "top of shoulders"),
    ("eye", "eye centre", "eye center"),
)

#: Known pairs of names, in two datasets, that are one point under two names or two points under one name; never
#: matched, reported with the unmatched names. ``(phrase a, phrase b, note)``, phrases without the side.
CONVENTIONS: tuple[tuple[str, str, str], ...] = (
    ("shoulder", "front elbow", "AP-10K's 'shoulder' is the point Animal-Pose calls 'front elbow' (the top of the "
     "foreleg chain in both skeletons); AP-10K's 'elbow' is the middle joint, Animal-Pose's 'front knee'"),
    ("elbow", "front knee", "AP-10K's 'elbow' (middle joint of the foreleg) is the point Animal-Pose calls "
     "'front knee'; Animal-Pose's 'front elbow' is AP-10K's 'shoulder'"),
    ("hip", "back elbow", "AP-10K's 'hip' is the point Animal-Pose calls 'back elbow' (the top of the hind-leg "
     "chain in both skeletons)"),
    ("knee", "back knee", "AP-10K's 'knee' and Animal-Pose's 'back knee' are both the middle joint of the hind "
     "leg, but 'knee' alone does not say which leg: not matched by name"),
)

_CANON = {phrase: group[0] for group in SYNONYMS for phrase in group}


def _split(name: str) -> tuple[str, str]:
    """(side, phrase) of a name in normalised words: ``"L_F_Paw"`` -> ("left", "front paw")."""
    words = name_tokens(name)
    side = " ".join(w for w in words if w in _SIDES)
    return side, " ".join(w for w in words if w not in _SIDES)


def canonical_name(name: str) -> str:
    """The form two names must share to match: side first, the phrase read through :data:`SYNONYMS`
    (``"TailBase"`` and ``"root_of_tail"`` -> "tail base", ``"L_F_Paw"`` -> "left front paw")."""
    side, phrase = _split(name)
    return " ".join(p for p in (side, _CANON.get(phrase, phrase)) if p)


def keypoint_indices(meta: DatasetMeta, names: Sequence[str], source: str = "keypoints") -> list[int]:
    """The indices in ``meta`` of the keypoints ``names`` (by :func:`canonical_name`: ``"left eye"`` finds
    ``L_Eye``), in the order given.

    Raises:
        ValueError: a name is not one of ``meta``'s, or is given twice (the message names ``source``).
    """
    where = {canonical_name(n): i for i, n in enumerate(meta.keypoint_names)}
    missing = [n for n in names if canonical_name(n) not in where]
    if missing:
        raise ValueError(f"{source}={list(names)}: {missing} are not keypoints of {meta.name} "
                         f"({list(meta.keypoint_names)})")
    found = [where[canonical_name(n)] for n in names]
    if len(set(found)) != len(found) or not found:
        raise ValueError(f"{source}={list(names)} must name distinct keypoints of {meta.name}, at least one")
    return found


@dataclass(frozen=True)
class VocabularyMatch:
    """The keypoints two vocabularies share by name.

    ``pairs`` are ``(source index, target index)`` in target order; ``how[i]`` says why pair i matched ("same
    name" or "synonym: a ~ b"); ``unmatched_source`` / ``unmatched_target`` the indices left over; ``notes`` the
    :data:`CONVENTIONS` notes of unmatched pairs, ``(source index, target index, note)``.
    """

    source: tuple[str, ...]
    target: tuple[str, ...]
    pairs: tuple[tuple[int, int], ...]
    how: tuple[str, ...]
    unmatched_source: tuple[int, ...]
    unmatched_target: tuple[int, ...]
    notes: tuple[tuple[int, int, str], ...]

    @property
    def source_indices(self) -> list[int]:
        return [s for s, _ in self.pairs]

    @property
    def target_indices(self) -> list[int]:
        return [t for _, t in self.pairs]

    def to_dict(self) -> dict[str, Any]:
        """The mapping as primitives, for ``vocabulary_mapping.json``."""
        return {
            "matched": [{"source": self.source[s], "target": self.target[t], "how": h}
                        for (s, t), h in zip(self.pairs, self.how)],
            "unmatched_source": [self.source[i] for i in self.unmatched_source],
            "unmatched_target": [self.target[i] for i in self.unmatched_target],
            "conventions": [{"source": self.source[s], "target": self.target[t], "note": n}
                            for s, t, n in self.notes],
        }

    def format(self) -> str:
        """A human-readable table of the mapping, the unmatched names and the notes."""
        lines = [f"{len(self.pairs)} of {len(self.target)} target keypoints matched by name:"]
        lines += [f"  {self.source[s]!r:>24} -> {self.target[t]!r}  ({h})" for (s, t), h in zip(self.pairs, self.how)]
        lines.append(f"unmatched model keypoints: {[self.source[i] for i in self.unmatched_source]}")
        lines.append(f"unmatched data keypoints: {[self.target[i] for i in self.unmatched_target]}")
        lines += [f"  not matched: {self.source[s]!r} / {self.target[t]!r}: {n}" for s, t, n in self.notes]
        return "\n".join(lines)


def match_vocabularies(source: Sequence[str], target: Sequence[str]) -> VocabularyMatch:
    """Match the keypoint names ``source`` (e.g. a model's) to ``target`` (e.g. a dataset's) by
    :func:`canonical_name`.

    Raises:
        ValueError: two names of one vocabulary have the same canonical form (the message names them).
    """
    source, target = tuple(map(str, source)), tuple(map(str, target))
    keys = {}
    for what, names in (("source", source), ("target", target)):
        seen: dict[str, str] = {}
        for n in names:
            c = canonical_name(n)
            if c in seen:
                raise ValueError(f"{what} keypoints {seen[c]!r} and {n!r} both read as {c!r}: rename one")
            seen[c] = n
        keys[what] = [canonical_name(n) for n in names]
    where = {c: i for i, c in enumerate(keys["source"])}
    pairs, how = [], []
    for t, c in enumerate(keys["target"]):
        s = where.get(c)
        if s is None:
            continue
        pairs.append((s, t))
        a, b = _split(source[s])[1], _split(target[t])[1]
        how.append("same name" if a == b else f"synonym: {a} ~ {b}")
    used_s, used_t = {s for s, _ in pairs}, {t for _, t in pairs}
    free_s = [i for i in range(len(source)) if i not in used_s]
    free_t = [i for i in range(len(target)) if i not in used_t]
    notes = []
    for s in free_s:
        side_s, phrase_s = _split(source[s])
        for t in free_t:
            side_t, phrase_t = _split(target[t])
            if side_s != side_t:
                continue
            for a, b, note in CONVENTIONS:
                if {phrase_s, phrase_t} == {a, b}:
                    notes.append((s, t, note))
    return VocabularyMatch(source, target, tuple(pairs), tuple(how), tuple(free_s), tuple(free_t), tuple(notes))


def union_vocabulary(metas: Mapping[str, DatasetMeta], name: str = "union") -> tuple[DatasetMeta, dict[str, list[int]]]:
    """The vocabulary of several datasets trained together, and each dataset's keypoints in it.

    Keypoints are taken in dataset order, then keypoint order; a keypoint whose :func:`canonical_name` an earlier
    dataset already has is that keypoint (its name, prompt and sigma are the earlier dataset's). Flip partners and
    the half-body groups come from the dataset that brought the keypoint; no skeleton; the species table is the
    first dataset's.

    Returns:
        ``(meta, channels)``: ``channels[dataset][k]`` is the union index of the dataset's keypoint ``k``.
    """
    names: list[str] = []
    prompts: list[str] = []
    sigmas: list[float] = []
    weights: list[float] = []
    lower: list[bool] = []
    where: dict[str, int] = {}
    channels: dict[str, list[int]] = {}
    for key, meta in metas.items():
        chans = []
        for k, n in enumerate(meta.keypoint_names):
            c = canonical_name(n)
            if c not in where:
                where[c] = len(names)
                names.append(n)
                prompts.append(meta.prompts[k])
                sigmas.append(float(meta.sigmas[k]))
                weights.append(float(meta.joint_weights[k]))
                lower.append(k in meta.lower_body_ids)
            chans.append(where[c])
        channels[key] = chans
    flip = list(range(len(names)))
    for key, meta in metas.items():
        chans = channels[key]
        for k, partner in enumerate(meta.flip_indices):
            if flip[chans[k]] == chans[k]:
                flip[chans[k]] = chans[partner]
    first = next(iter(metas.values()))
    union = DatasetMeta(
        name=name, keypoint_names=tuple(names), prompts=tuple(prompts), flip_indices=tuple(flip),
        sigmas=np.array(sigmas), skeleton=(),
        upper_body_ids=tuple(i for i, low in enumerate(lower) if not low),
        lower_body_ids=tuple(i for i, low in enumerate(lower) if low),
        joint_weights=np.array(weights), species=dict(first.species),
        species_to_family=dict(first.species_to_family),
    )
    return union, channels
