"""Dataset metadata: keypoint names, prompt texts, flip symmetry, OKS sigmas, skeleton, half-body groups and the
species -> family taxonomy.

Each built-in dataset is written as ONE declarative table (a row per keypoint, a row per species); flip indices,
upper/lower-body ids and 0-based skeleton indices are derived from it, so a typo cannot make two fields disagree.
The AP-10K and Animal-Pose values are exactly those of mmpose's ``configs/_base_/datasets/{ap10k,animalpose}.py``
(identical in CLAMP and ViTPose), including their quirks: AP-10K types R_F_Paw as "lower" while L_F_Paw is
"upper", its joint weights are not left/right symmetric, and Animal-Pose's first five sigmas are COCO's
nose/eye/ear values in COCO order (L_EarBase 0.026 but R_EarBase 0.035). They are kept for comparability.

:func:`meta_from_coco` derives a meta for any COCO keypoint file (prompts from the keypoint names, flip pairs
from left/right names, a default sigma).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DatasetMeta",
    "get_meta",
    "meta_from_coco",
    "name_to_prompt",
    "name_tokens",
    "AP10K",
    "ANIMALPOSE",
    "DEFAULT_SIGMA",
]

#: Default OKS sigma for keypoints of an arbitrary COCO file. 0.072 is COCO's (and AP-10K's) elbow value, a
#: mid-range tolerance close to the mean AP-10K sigma (0.067); per-keypoint values should be given when known.
DEFAULT_SIGMA = 0.072


@dataclass(frozen=True, eq=False)
class DatasetMeta:
    """Everything the pipeline needs to know about a keypoint layout.

    Index conventions: keypoint ``k`` is the k-th entry of the COCO category's ``keypoints`` list (0-based);
    ``flip_indices[k]`` is the keypoint that ``k`` becomes after a horizontal flip (an involution);
    ``skeleton`` holds 0-based index pairs.
    """

    name: str
    keypoint_names: tuple[str, ...]
    prompts: tuple[str, ...]
    flip_indices: tuple[int, ...]
    sigmas: np.ndarray
    skeleton: tuple[tuple[int, int], ...]
    upper_body_ids: tuple[int, ...]
    lower_body_ids: tuple[int, ...]
    joint_weights: np.ndarray
    species: dict[int, str] = field(default_factory=dict)
    species_to_family: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        k = len(self.keypoint_names)
        sigmas = np.array(self.sigmas, dtype=np.float64).reshape(-1)
        weights = np.array(self.joint_weights, dtype=np.float64).reshape(-1)
        sigmas.setflags(write=False)
        weights.setflags(write=False)
        object.__setattr__(self, "sigmas", sigmas)
        object.__setattr__(self, "joint_weights", weights)
        problems = []
        for what, n in (("prompts", len(self.prompts)), ("flip_indices", len(self.flip_indices)),
                        ("sigmas", sigmas.size), ("joint_weights", weights.size)):
            if n != k:
                problems.append(f"{what} has {n} entries, expected {k}")
        if not problems:
            fi = self.flip_indices
            if any(not 0 <= j < k for j in fi) or any(fi[fi[j]] != j for j in range(k)):
                problems.append(f"flip_indices {fi} is not an involution of range({k})")
            if np.any(sigmas <= 0):
                problems.append("sigmas must be > 0")
            if any(not (0 <= a < k and 0 <= b < k) for a, b in self.skeleton):
                problems.append("skeleton index out of range")
            ids = set(self.upper_body_ids) | set(self.lower_body_ids)
            if not ids <= set(range(k)) or set(self.upper_body_ids) & set(self.lower_body_ids):
                problems.append("upper/lower body ids must be disjoint keypoint indices")
        if set(self.species_to_family) - set(self.species):
            problems.append("species_to_family has category ids missing from species")
        if problems:
            raise ValueError(f"invalid DatasetMeta {self.name!r}: " + "; ".join(problems))

    @property
    def num_keypoints(self) -> int:
        return len(self.keypoint_names)

    @property
    def flip_pairs(self) -> tuple[tuple[int, int], ...]:
        """Left/right pairs ``(i, j)`` with ``i < j``, in keypoint order."""
        return tuple((i, j) for i, j in enumerate(self.flip_indices) if i < j)

    @property
    def families(self) -> dict[str, list[int]]:
        """Family name -> sorted category ids of its species (``{}`` when the dataset has no taxonomy)."""
        out: dict[str, list[int]] = {}
        for cid, fam in self.species_to_family.items():
            out.setdefault(fam, []).append(cid)
        return {fam: sorted(ids) for fam, ids in sorted(out.items())}

    def family_of(self, species_name: str) -> str | None:
        """The family of a species given by name, or None when the name is not in the table."""
        for cid, name in self.species.items():
            if name == species_name:
                return self.species_to_family.get(cid)
        return None


# ----------------------------------------------------------------------------------------------- declarative tables
# Keypoint row: (COCO json name, prompt, sigma, flip partner json name or None, "upper" | "lower", joint weight)
_AP10K_KEYPOINTS = (
    ("left_eye", "left eye", 0.025, "right_eye", "upper", 1.0),
    ("right_eye", "right eye", 0.025, "left_eye", "upper", 1.0),
    ("nose", "nose", 0.026, None, "upper", 1.0),
    ("neck", "neck", 0.035, None, "upper", 1.0),
    ("root_of_tail", "tail root", 0.035, None, "lower", 1.0),
    ("left_shoulder", "left shoulder", 0.079, "right_shoulder", "upper", 1.0),
    ("left_elbow", "left elbow", 0.072, "right_elbow", "upper", 1.0),
    ("left_front_paw", "left front paw", 0.062, "right_front_paw", "upper", 1.2),
    ("right_shoulder", "right shoulder", 0.079, "left_shoulder", "upper", 1.2),
    ("right_elbow", "right elbow", 0.072, "left_elbow", "upper", 1.5),
    ("right_front_paw", "right front paw", 0.062, "left_front_paw", "lower", 1.5),
    ("left_hip", "left hip", 0.107, "right_hip", "lower", 1.0),
    ("left_knee", "left knee", 0.087, "right_knee", "lower", 1.0),
    ("left_back_paw", "left back paw", 0.089, "right_back_paw", "lower", 1.2),
    ("right_hip", "right hip", 0.107, "left_hip", "lower", 1.2),
    ("right_knee", "right knee", 0.087, "left_knee", "lower", 1.5),
    ("right_back_paw", "right back paw", 0.089, "left_back_paw", "lower", 1.5),
)
_AP10K_SKELETON = (
    ("left_eye", "right_eye"), ("left_eye", "nose"), ("right_eye", "nose"), ("nose", "neck"),
    ("neck", "root_of_tail"), ("neck", "left_shoulder"), ("left_shoulder", "left_elbow"),
    ("left_elbow", "left_front_paw"), ("neck", "right_shoulder"), ("right_shoulder", "right_elbow"),
    ("right_elbow", "right_front_paw"), ("root_of_tail", "left_hip"), ("left_hip", "left_knee"),
    ("left_knee", "left_back_paw"), ("root_of_tail", "right_hip"), ("right_hip", "right_knee"),
    ("right_knee", "right_back_paw"),
)
# Family -> species in category-id order; ids are 1..54 in this order (the AP-10K annotation categories).
_AP10K_TAXONOMY = (
    ("Bovidae", ("antelope", "argali sheep", "bison", "buffalo", "cow", "sheep")),
    ("Canidae", ("arctic fox", "dog", "fox", "wolf")),
    ("Castoridae", ("beaver",)),
    ("Cercopithecidae", ("alouatta", "monkey", "noisy night monkey", "spider monkey", "uakari")),
    ("Cervidae", ("deer", "moose")),
    ("Cricetidae", ("hamster",)),
    ("Elephantidae", ("elephant",)),
    ("Equidae", ("horse", "zebra")),
    ("Felidae", ("bobcat", "cat", "cheetah", "jaguar", "king cheetah", "leopard", "lion", "panther",
                 "snow leopard", "tiger")),
    ("Giraffidae", ("giraffe",)),
    ("Hippopotamidae", ("hippo",)),
    ("Hominidae", ("chimpanzee", "gorilla", "orangutan")),
    ("Leporidae", ("rabbit",)),
    ("Mephitidae", ("skunk",)),
    ("Muridae", ("mouse", "rat")),
    ("Mustelidae", ("otter", "weasel")),
    ("Procyonidae", ("raccoon",)),
    ("Rhinocerotidae", ("rhino",)),
    ("Sciuridae", ("marmot", "squirrel")),
    ("Suidae", ("pig",)),
    ("Talpidae", ("mole",)),
    ("Ursidae", ("black bear", "brown bear", "panda", "polar bear")),
    ("Vespertilionidae", ("bat",)),
)

# Animal-Pose has no prompt texts in CLAMP (no CLAMP Animal-Pose config was released); these are ours.
_ANIMALPOSE_KEYPOINTS = (
    ("L_Eye", "left eye", 0.025, "R_Eye", "upper", 1.0),
    ("R_Eye", "right eye", 0.025, "L_Eye", "upper", 1.0),
    ("L_EarBase", "left ear base", 0.026, "R_EarBase", "upper", 1.0),
    ("R_EarBase", "right ear base", 0.035, "L_EarBase", "upper", 1.0),
    ("Nose", "nose", 0.035, None, "upper", 1.0),
    ("Throat", "throat", 0.10, None, "upper", 1.0),
    ("TailBase", "tail base", 0.10, None, "lower", 1.0),
    ("Withers", "withers", 0.10, None, "upper", 1.0),
    ("L_F_Elbow", "left front elbow", 0.107, "R_F_Elbow", "upper", 1.0),
    ("R_F_Elbow", "right front elbow", 0.107, "L_F_Elbow", "upper", 1.0),
    ("L_B_Elbow", "left back elbow", 0.107, "R_B_Elbow", "lower", 1.0),
    ("R_B_Elbow", "right back elbow", 0.107, "L_B_Elbow", "lower", 1.0),
    ("L_F_Knee", "left front knee", 0.087, "R_F_Knee", "upper", 1.2),
    ("R_F_Knee", "right front knee", 0.087, "L_F_Knee", "upper", 1.2),
    ("L_B_Knee", "left back knee", 0.087, "R_B_Knee", "lower", 1.2),
    ("R_B_Knee", "right back knee", 0.087, "L_B_Knee", "lower", 1.2),
    ("L_F_Paw", "left front paw", 0.089, "R_F_Paw", "upper", 1.5),
    ("R_F_Paw", "right front paw", 0.089, "L_F_Paw", "upper", 1.5),
    ("L_B_Paw", "left back paw", 0.089, "R_B_Paw", "lower", 1.5),
    ("R_B_Paw", "right back paw", 0.089, "L_B_Paw", "lower", 1.5),
)
_ANIMALPOSE_SKELETON = (
    ("L_Eye", "R_Eye"), ("L_Eye", "L_EarBase"), ("R_Eye", "R_EarBase"), ("L_Eye", "Nose"), ("R_Eye", "Nose"),
    ("Nose", "Throat"), ("Throat", "Withers"), ("TailBase", "Withers"), ("Throat", "L_F_Elbow"),
    ("L_F_Elbow", "L_F_Knee"), ("L_F_Knee", "L_F_Paw"), ("Throat", "R_F_Elbow"), ("R_F_Elbow", "R_F_Knee"),
    ("R_F_Knee", "R_F_Paw"), ("TailBase", "L_B_Elbow"), ("L_B_Elbow", "L_B_Knee"), ("L_B_Knee", "L_B_Paw"),
    ("TailBase", "R_B_Elbow"), ("R_B_Elbow", "R_B_Knee"), ("R_B_Knee", "R_B_Paw"),
)
# Species ids 1..5 follow the alphabetical order used by mmpose's converter (parse_animalpose_dataset.py
# enumerates cat, cow, dog, horse, sheep from 0 and numbers test images ``index * 1000 + n``): id = index + 1.
# The converter itself writes category_id 1 for every instance, so per-species work needs re-labelled files.
_ANIMALPOSE_TAXONOMY = (
    ("Felidae", ((1, "cat"),)),
    ("Bovidae", ((2, "cow"), (5, "sheep"))),
    ("Canidae", ((3, "dog"),)),
    ("Equidae", ((4, "horse"),)),
)


def _meta_from_table(
    name: str,
    rows: tuple[tuple[str, str, float, str | None, str, float], ...],
    skeleton: tuple[tuple[str, str], ...],
    species: dict[int, str],
    species_to_family: dict[int, str],
) -> DatasetMeta:
    names = tuple(r[0] for r in rows)
    index = {n: i for i, n in enumerate(names)}
    return DatasetMeta(
        name=name,
        keypoint_names=names,
        prompts=tuple(r[1] for r in rows),
        flip_indices=tuple(index[r[3]] if r[3] is not None else i for i, r in enumerate(rows)),
        sigmas=np.array([r[2] for r in rows]),
        skeleton=tuple((index[a], index[b]) for a, b in skeleton),
        upper_body_ids=tuple(i for i, r in enumerate(rows) if r[4] == "upper"),
        lower_body_ids=tuple(i for i, r in enumerate(rows) if r[4] == "lower"),
        joint_weights=np.array([r[5] for r in rows]),
        species=species,
        species_to_family=species_to_family,
    )


def _ap10k() -> DatasetMeta:
    species: dict[int, str] = {}
    families: dict[int, str] = {}
    for fam, names in _AP10K_TAXONOMY:
        for sp in names:
            cid = len(species) + 1
            species[cid], families[cid] = sp, fam
    return _meta_from_table("ap10k", _AP10K_KEYPOINTS, _AP10K_SKELETON, species, families)


def _animalpose() -> DatasetMeta:
    species = {cid: sp for _, members in _ANIMALPOSE_TAXONOMY for cid, sp in members}
    families = {cid: fam for fam, members in _ANIMALPOSE_TAXONOMY for cid, _ in members}
    return _meta_from_table(
        "animalpose",
        _ANIMALPOSE_KEYPOINTS,
        _ANIMALPOSE_SKELETON,
        dict(sorted(species.items())),
        dict(sorted(families.items())),
    )


AP10K = _ap10k()
ANIMALPOSE = _animalpose()
_REGISTRY = {"ap10k": AP10K, "animalpose": ANIMALPOSE}


def get_meta(name: str) -> DatasetMeta:
    """The built-in meta ``"ap10k"`` or ``"animalpose"`` (case, ``-`` and ``_`` are ignored)."""
    key = re.sub(r"[-_\s]", "", str(name).lower())
    if key not in _REGISTRY:
        raise ValueError(f"unknown dataset meta {name!r}; choices: {sorted(_REGISTRY)}")
    return _REGISTRY[key]


# ------------------------------------------------------------------------------------------- names -> prompts/flip
# Words that appear glued to others in body-part names ("leftear", "tailbase", "rightfrontpaw").
_PREFIX_WORDS = ("left", "right", "front", "back", "hind", "rear", "upper", "lower", "mid")
_SUFFIX_WORDS = ("base", "tip", "root", "middle", "end")
# Single-letter tokens as written by mmpose-style names ("L_F_Paw").
_ABBREVIATIONS = {"l": "left", "r": "right", "f": "front", "b": "back"}
_SWAP = {"left": "right", "right": "left"}
# A keypoint is "lower body" (for half-body augmentation) when it names the hind part of the animal.
_LOWER_WORDS = {"back", "hind", "rear", "hip", "knee", "tail", "rump", "hock", "ankle"}
_GLUE_WORDS = frozenset(_PREFIX_WORDS + _SUFFIX_WORDS)


def name_tokens(name: str) -> list[str]:
    """Split a keypoint name into lower-case words.

    Separators (``_ - . space``) and camel case split words; single letters L/R/F/B expand to
    left/right/front/back; left/right/front/back/... prefixes and base/tip/root/... suffixes glued to another word
    are split off when at least three letters remain: ``left_front_paw`` -> [left, front, paw], ``L_EarBase`` -> [left, ear, base],
    ``leftear`` -> [left, ear], ``tailbase`` -> [tail, base].
    """
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", " ", name)
    words: list[str] = []
    for raw in re.split(r"[\s_\-.]+", spaced.strip()):
        if not raw:
            continue
        word = raw.lower()
        if word in _ABBREVIATIONS:
            words.append(_ABBREVIATIONS[word])
            continue
        head: list[str] = []
        tail: list[str] = []
        peeled = True
        while peeled and word not in _GLUE_WORDS:
            peeled = False
            for p in _PREFIX_WORDS:
                if word.startswith(p) and len(word) - len(p) >= 3:
                    head.append(p)
                    word = word[len(p):]
                    peeled = True
                    break
            for s in _SUFFIX_WORDS:
                if word.endswith(s) and len(word) - len(s) >= 3:
                    tail.insert(0, s)
                    word = word[: -len(s)]
                    peeled = True
                    break
        words.extend([*head, word, *tail])
    return words


def name_to_prompt(name: str) -> str:
    """The prompt text of a keypoint name: ``"left_front_paw"`` -> ``"left front paw"``."""
    return " ".join(name_tokens(name))


def _infer_flip_indices(names: tuple[str, ...]) -> tuple[int, ...]:
    tokens = [tuple(name_tokens(n)) for n in names]
    where = {t: i for i, t in enumerate(tokens)}
    flip = []
    for i, t in enumerate(tokens):
        mirrored = tuple(_SWAP.get(w, w) for w in t)
        j = where.get(mirrored, i) if mirrored != t else i
        flip.append(j)
    # Keep only mutual pairs so the result is always an involution (e.g. two names mapping to one partner).
    return tuple(j if flip[j] == i else i for i, j in enumerate(flip))


def _is_lower(tokens: list[str]) -> bool:
    if "front" in tokens or "fore" in tokens:
        return False
    return bool(_LOWER_WORDS & set(tokens))


def _load_json(coco: dict | str | Path) -> dict[str, Any]:
    if isinstance(coco, dict):
        return coco
    with open(coco, encoding="utf-8") as f:
        return json.load(f)


def meta_from_coco(
    coco: dict | str | Path,
    *,
    name: str | None = None,
    sigmas: Any = None,
    prompts: Any = None,
    default_sigma: float = DEFAULT_SIGMA,
) -> DatasetMeta:
    """Derive a :class:`DatasetMeta` from the categories of a COCO keypoint file (dict or path).

    All categories must share one ``keypoints`` list. Prompts come from the names (:func:`name_to_prompt`)
    unless given; flip pairs pair names that differ only by left <-> right; every keypoint gets
    ``default_sigma`` unless ``sigmas`` (K values) are given; half-body groups put back/hind/hip/tail... names in
    the lower body; joint weights are 1. ``species`` maps category id -> name and ``species_to_family`` maps it
    to the category's ``supercategory`` when that is present.
    """
    data = _load_json(coco)
    source = name or (str(coco) if not isinstance(coco, dict) else "coco")
    cats = data.get("categories") or []
    if not cats:
        raise ValueError(f"{source}: no categories")
    lists = {tuple(c.get("keypoints") or ()) for c in cats}
    if len(lists) != 1 or not next(iter(lists)):
        raise ValueError(f"{source}: categories must all define the same non-empty 'keypoints' list")
    names = tuple(str(n) for n in next(iter(lists)))
    k = len(names)
    if sigmas is None:
        sig = np.full(k, float(default_sigma))
    else:
        sig = np.asarray(list(sigmas), dtype=np.float64)
        if sig.size != k:
            raise ValueError(f"{source}: {sig.size} sigmas given for {k} keypoints")
    if prompts is None:
        texts = tuple(name_to_prompt(n) for n in names)
    else:
        texts = tuple(str(p) for p in prompts)
        if len(texts) != k:
            raise ValueError(f"{source}: {len(texts)} prompts given for {k} keypoints")
    skeleton = []
    for pair in cats[0].get("skeleton") or []:
        a, b = int(pair[0]) - 1, int(pair[1]) - 1  # COCO skeletons are 1-based
        if not (0 <= a < k and 0 <= b < k):
            raise ValueError(f"{source}: skeleton pair {pair} out of range for {k} keypoints")
        skeleton.append((a, b))
    lower = [_is_lower(name_tokens(n)) for n in names]
    species = {int(c["id"]): str(c.get("name", c["id"])) for c in cats}
    families = {int(c["id"]): str(c["supercategory"]) for c in cats if c.get("supercategory")}
    return DatasetMeta(
        name=name or "coco",
        keypoint_names=names,
        prompts=texts,
        flip_indices=_infer_flip_indices(names),
        sigmas=sig,
        skeleton=tuple(skeleton),
        upper_body_ids=tuple(i for i in range(k) if not lower[i]),
        lower_body_ids=tuple(i for i in range(k) if lower[i]),
        joint_weights=np.ones(k),
        species=species,
        species_to_family=families,
    )
