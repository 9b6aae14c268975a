"""Dataset metadata: keypoint names, prompt texts, flip symmetry, OKS sigmas, skeleton, half-body groups and the
species -> family taxonomy.

Each built-in dataset is written as ONE declarative table (a row per keypoint, a row per species); flip indices,
upper/lower-body ids and 0-based skeleton indices are derived from it, so a typo cannot make two fields disagree.
The AP-10K and Animal-Pose values are exactly those of mmpose's ``configs/_base_/datasets/{ap10k,animalpose}.py``
(identical in CLAMP and ViTPose), including their quirks: AP-10K types R_F_Paw as "lower" while L_F_Paw is
"upper", its joint weights are not left/right symmetric, and Animal-Pose's first five sigmas are COCO's
nose/eye/ear values in COCO order (L_EarBase 0.026 but R_EarBase 0.035). They are kept for comparability.

:func:`meta_from_coco` derives a meta for any COCO keypoint file as found in the wild: prompts from the keypoint
names (compact side markers, glued words and numbers read as English, the side first: ``forelegR1`` -> "right
fore leg 1"), flip pairs from anatomical left/right only (never near/off, inner/outer), published sigmas for known
layouts, 0- or 1-based skeletons; whatever the user gives (``data.flip_pairs``, ``data.prompts``,
``data.sigmas``) wins. :func:`format_meta_table` shows the result (``python -m clamp_pl.tools.inspect_data``).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

__all__ = [
    "DatasetMeta",
    "KNOWN_SIGMAS",
    "flip_indices_from_pairs",
    "format_meta_table",
    "get_meta",
    "known_sigmas",
    "meta_from_coco",
    "meta_from_names",
    "meta_table",
    "name_to_prompt",
    "name_tokens",
    "skeleton_indices",
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
    ``skeleton`` holds 0-based index pairs. ``provenance`` says, per field, how a derived meta got its value
    ("derived from the names", "given (data.prompts)", "published COCO-17 values", ...); empty for built-ins.
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
    provenance: dict[str, str] = field(default_factory=dict)

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

    def to_dict(self) -> dict[str, Any]:
        """The meta as primitives (dicts, lists, str, int, float), as model specs and exported files hold it; the
        inverse of :meth:`from_dict`. ``provenance`` (how a derived meta got its values) is not part of it."""
        return {
            "name": self.name,
            "keypoint_names": list(self.keypoint_names),
            "prompts": list(self.prompts),
            "flip_indices": [int(i) for i in self.flip_indices],
            "sigmas": [float(s) for s in self.sigmas],
            "skeleton": [[int(a), int(b)] for a, b in self.skeleton],
            "upper_body_ids": [int(i) for i in self.upper_body_ids],
            "lower_body_ids": [int(i) for i in self.lower_body_ids],
            "joint_weights": [float(w) for w in self.joint_weights],
            "species": {int(k): str(v) for k, v in self.species.items()},
            "species_to_family": {int(k): str(v) for k, v in self.species_to_family.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "meta") -> DatasetMeta:
        """The inverse of :meth:`to_dict` (validated); category ids written as strings (JSON, YAML) become ints
        again. Errors name ``source`` and the missing field."""
        try:
            return cls(
                name=str(d["name"]),
                keypoint_names=tuple(str(n) for n in d["keypoint_names"]),
                prompts=tuple(str(p) for p in d["prompts"]),
                flip_indices=tuple(int(i) for i in d["flip_indices"]),
                sigmas=np.asarray(d["sigmas"], dtype=np.float64),
                skeleton=tuple((int(a), int(b)) for a, b in d["skeleton"]),
                upper_body_ids=tuple(int(i) for i in d["upper_body_ids"]),
                lower_body_ids=tuple(int(i) for i in d["lower_body_ids"]),
                joint_weights=np.asarray(d["joint_weights"], dtype=np.float64),
                species={int(k): str(v) for k, v in (d.get("species") or {}).items()},
                species_to_family={int(k): str(v) for k, v in (d.get("species_to_family") or {}).items()},
            )
        except KeyError as e:
            raise ValueError(f"{source} has no field {e.args[0]!r} (fields: {sorted(d)})") from None


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
# Words found glued to others in body-part names ("leftear", "Nearfrontfetlock", "forelegR1", "anttipL"). Only
# "left"/"right" are flip sides: near/off/far (nearest to / farthest from the camera, Horse-10) and inner/outer
# are not swapped by a horizontal flip, so they never make flip pairs.
_PREFIX_WORDS = ("left", "right", "front", "back", "hind", "rear", "fore", "mid", "upper", "lower", "near", "off",
                 "far", "inner", "outer")
_SUFFIX_WORDS = ("base", "tip", "root", "middle", "end")
# Words that start or end like a glued word but are one word.
_WHOLE_WORDS = frozenset({"forehead", "middle", "frontal", "offset", "backbone", "nearest", "outermost"})
# Single letters as written by mmpose-style names ("L_F_Paw") and compact side markers ("eyeL", "forelegR1"),
# and abbreviations of DeepPoseKit's insect layouts ("anttipL": antenna tip).
_ABBREVIATIONS = {"l": "left", "r": "right", "f": "front", "b": "back", "ant": "antenna"}
# Second letters of compact limb codes ("LF_paw", "RH_knee").
_LIMB_LETTERS = {"F": "front", "B": "back", "H": "hind"}
_SIDES = ("left", "right")
_SWAP = {"left": "right", "right": "left"}
# Position words that are not flip sides (reported in the keypoint table, never paired).
_NON_FLIP_SIDES = frozenset({"near", "off", "far", "inner", "outer"})
# A keypoint is "lower body" (for half-body augmentation) when it names the hind part of the animal.
_LOWER_WORDS = {"back", "hind", "rear", "hip", "knee", "tail", "rump", "hock", "ankle", "stifle", "ischium"}
_GLUE_WORDS = frozenset(_PREFIX_WORDS + _SUFFIX_WORDS)
_SPLIT_RE = re.compile(
    r"(?<=[a-z0-9])(?=[A-Z])"  # camel case: eyeL -> eye L, LeftEar -> Left Ear
    r"|(?<=[A-Z])(?=[A-Z][a-z])"  # acronym then word: LFPaw -> LF Paw
    r"|(?<=[A-Za-z])(?=[0-9])|(?<=[0-9])(?=[A-Za-z])"  # numbers: R1 -> R 1, spine1 -> spine 1
)


def _peel(word: str) -> list[str]:
    """Split glued prefix/suffix words off ``word`` (lower case) while at least three letters remain."""
    head: list[str] = []
    tail: list[str] = []
    peeled = True
    while peeled and word not in _GLUE_WORDS and word not in _WHOLE_WORDS:
        peeled = False
        for p in _PREFIX_WORDS:
            if word.startswith(p) and len(word) - len(p) >= 3:
                head.append(p)
                word = word[len(p):]
                peeled = True
                break
        for s in _SUFFIX_WORDS:
            if word.endswith(s) and len(word) - len(s) >= 3 and word not in _WHOLE_WORDS:
                tail.insert(0, s)
                word = word[: -len(s)]
                peeled = True
                break
    return [*head, _ABBREVIATIONS.get(word, word) if len(word) > 1 else word, *tail]


def name_tokens(name: str) -> list[str]:
    """Split a keypoint name into lower-case words, the side (left/right) first.

    Separators (``_ - . space``, stray whitespace included), camel case and digits split words; single letters
    L/R/F/B expand to left/right/front/back; glued prefixes (left, right, front, back, hind, fore, mid, near,
    off, ...) and suffixes (base, tip, root, ...) are split off when at least three letters remain; ``ant`` reads
    as antenna; upper-case limb codes expand (``LF`` -> left front, ``RH`` -> right hind); a left/right word
    moves to the front and numbers stay:
    ``L_F_Paw`` -> [left, front, paw], ``eyeL`` -> [left, eye], ``forelegR1`` -> [right, fore, leg, 1],
    ``Eye_Left`` -> [left, eye], ``anttipL`` -> [left, antenna, tip], ``Nearfrontfetlock`` -> [near, front,
    fetlock], ``tailbase`` -> [tail, base].
    """
    words: list[str] = []
    for raw in re.split(r"[\s_\-.]+", _SPLIT_RE.sub(" ", str(name).strip())):
        if not raw:
            continue
        word = raw.lower()
        if word in _ABBREVIATIONS and len(word) == 1:
            words.append(_ABBREVIATIONS[word])
        elif raw.isupper() and len(raw) <= 3 and raw[0] in "LR" and set(raw[1:]) <= set(_LIMB_LETTERS):
            # compact limb codes: LF (left front), RH (right hind), LB
            words.extend([_ABBREVIATIONS[word[0]], *(_LIMB_LETTERS[c] for c in raw[1:])])
        else:
            words.extend(_peel(word))
    sides = [w for w in words if w in _SIDES]
    return [*sides, *(w for w in words if w not in _SIDES)]


def name_to_prompt(name: str) -> str:
    """The prompt text of a keypoint name: ``"left_front_paw"`` -> ``"left front paw"``, ``"forelegR1"`` ->
    ``"right fore leg 1"`` (see :func:`name_tokens`)."""
    return " ".join(name_tokens(name))


def _infer_flip_indices(names: Sequence[str]) -> tuple[int, ...]:
    """Pair names whose words differ only by left <-> right (mutual matches only, so always an involution)."""
    tokens = [tuple(name_tokens(n)) for n in names]
    where: dict[tuple[str, ...], int] = {}
    for i, t in enumerate(tokens):
        where.setdefault(t, i)
    flip = []
    for i, t in enumerate(tokens):
        mirrored = tuple(_SWAP.get(w, w) for w in t)
        flip.append(where.get(mirrored, i) if mirrored != t else i)
    return tuple(j if flip[j] == i else i for i, j in enumerate(flip))


def _is_lower(tokens: list[str]) -> bool:
    if "front" in tokens or "fore" in tokens:
        return False
    # "back" names the hind limb when it qualifies a part ("back paw", L_B_Paw) but the dorsal side when it
    # ends the name (Animal Kingdom's Torso_Mid_Back, Mouth_Back_Left -> "left mouth back")
    words = set(tokens[:-1]) | ({tokens[-1]} - {"back"}) if tokens else set()
    return bool(_LOWER_WORDS & words)


def _load_json(coco: dict | str | Path) -> dict[str, Any]:
    if isinstance(coco, dict):
        return coco
    with open(coco, encoding="utf-8") as f:
        return json.load(f)


# ------------------------------------------------------------------------------------ known layouts: published sigmas
# Keypoint layouts with published OKS sigmas, recognised by their keypoint words (so "L_Eye" and "left_eye" match).
# COCO-17 (Lin et al. 2014), which MacaquePose uses unchanged; ATRW and Animal Kingdom as in mmpose's
# configs/_base_/datasets/{atrw,ak}.py. DeepPoseKit's fly/locust/zebra and Horse-10 publish none (they are scored
# with PCK), so they get the default with a warning.
_COCO17_NAMES = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
                 "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
                 "right_knee", "left_ankle", "right_ankle")
_COCO17_SIGMAS = (0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107, 0.107,
                  0.087, 0.087, 0.089, 0.089)
_ATRW_NAMES = ("left_ear", "right_ear", "nose", "right_shoulder", "right_front_paw", "left_shoulder",
               "left_front_paw", "right_hip", "right_knee", "right_back_paw", "left_hip", "left_knee",
               "left_back_paw", "tail", "center")
_ATRW_SIGMAS = (0.0277, 0.0823, 0.0831, 0.0202, 0.0716, 0.0263, 0.0646, 0.0302, 0.0440, 0.0316, 0.0333, 0.0547,
                0.0263, 0.0683, 0.0539)
_AK_NAMES = ("Head_Mid_Top", "Eye_Left", "Eye_Right", "Mouth_Front_Top", "Mouth_Back_Left", "Mouth_Back_Right",
             "Mouth_Front_Bottom", "Shoulder_Left", "Shoulder_Right", "Elbow_Left", "Elbow_Right", "Wrist_Left",
             "Wrist_Right", "Torso_Mid_Back", "Hip_Left", "Hip_Right", "Knee_Left", "Knee_Right", "Ankle_Left",
             "Ankle_Right", "Tail_Top_Back", "Tail_Mid_Back", "Tail_End_Back")


def _layout_key(names: Sequence[str]) -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(name_tokens(n)) for n in names)


KNOWN_SIGMAS: dict[str, tuple[tuple[str, ...], tuple[float, ...]]] = {
    "COCO-17": (_COCO17_NAMES, _COCO17_SIGMAS),
    "ATRW": (_ATRW_NAMES, _ATRW_SIGMAS),
    "Animal Kingdom": (_AK_NAMES, (0.025,) * len(_AK_NAMES)),
    "AP-10K": (AP10K.keypoint_names, tuple(AP10K.sigmas.tolist())),
    "Animal-Pose": (ANIMALPOSE.keypoint_names, tuple(ANIMALPOSE.sigmas.tolist())),
}
_KNOWN_BY_KEY = {_layout_key(names): (layout, sig) for layout, (names, sig) in KNOWN_SIGMAS.items()}


def known_sigmas(names: Sequence[str]) -> tuple[str, np.ndarray] | None:
    """``(layout, sigmas)`` when ``names`` is a layout with published OKS sigmas (:data:`KNOWN_SIGMAS`)."""
    hit = _KNOWN_BY_KEY.get(_layout_key(names))
    return None if hit is None else (hit[0], np.asarray(hit[1], dtype=np.float64))


# ----------------------------------------------------------------------------------------------- skeleton and overrides
def skeleton_indices(pairs: Any, names: Sequence[str], source: str) -> tuple[tuple[tuple[int, int], ...], str]:
    """0-based skeleton pairs from a COCO category's ``skeleton`` and the convention found.

    COCO writes 1-based indices, but many converted animal files are 0-based. Detection: any index 0 means
    0-based, any index equal to K means 1-based (both at once is an error); when neither appears the file is
    read as 1-based, COCO's convention. Pairs of keypoint names are accepted too. Returns ``(pairs, how)``
    with ``how`` one of ``"0-based"``, ``"1-based"``, ``"1-based (assumed)"``, ``"names"``, ``"none"``.
    """
    k = len(names)
    pairs = list(pairs or [])
    if not pairs:
        return (), "none"
    for p in pairs:
        if not isinstance(p, (list, tuple)) or len(p) != 2:
            raise ValueError(f"{source}: skeleton entry {p!r} is not a pair")
    if all(isinstance(v, str) for p in pairs for v in p):
        index = {n.strip(): i for i, n in enumerate(names)}
        missing = sorted({v for p in pairs for v in p if v.strip() not in index})
        if missing:
            raise ValueError(f"{source}: skeleton names {missing} are not keypoints of the category")
        return tuple((index[a.strip()], index[b.strip()]) for a, b in pairs), "names"
    flat = []
    for p in pairs:
        for v in p:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v:
                raise ValueError(f"{source}: skeleton pair {p} holds a non-integer index")
            flat.append(int(v))
    zero, top = 0 in flat, k in flat
    if zero and top:
        raise ValueError(f"{source}: skeleton uses both index 0 and index {k} (= K) for {k} keypoints; it is "
                         "neither 0-based nor 1-based")
    offset, how = (0, "0-based") if zero else (1, "1-based" if top else "1-based (assumed)")
    out = []
    for p in pairs:
        a, b = int(p[0]) - offset, int(p[1]) - offset
        if not (0 <= a < k and 0 <= b < k):
            raise ValueError(f"{source}: skeleton pair {list(p)} out of range for {k} keypoints ({how})")
        out.append((a, b))
    return tuple(out), how


def _resolve_keypoint(ref: Any, names: Sequence[str], what: str, source: str) -> int:
    if isinstance(ref, str):
        stripped = [n.strip() for n in names]
        if ref.strip() not in stripped:
            raise ValueError(f"{source}: {what}: {ref!r} is not a keypoint name; names: {list(names)}")
        return stripped.index(ref.strip())
    if isinstance(ref, bool) or not isinstance(ref, (int, np.integer)) or not 0 <= int(ref) < len(names):
        raise ValueError(f"{source}: {what}: {ref!r} is neither a keypoint name nor an index in 0..{len(names) - 1}")
    return int(ref)


def flip_indices_from_pairs(pairs: Any, names: Sequence[str], source: str = "data.flip_pairs") -> tuple[int, ...]:
    """The flip involution of user-given pairs (keypoint names or 0-based indices); ``[]`` means no pairs."""
    flip = list(range(len(names)))
    for pair in pairs:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ValueError(f"{source}: {pair!r} is not a pair [a, b]")
        a, b = (_resolve_keypoint(r, names, f"pair {list(pair)}", source) for r in pair)
        if a == b:
            raise ValueError(f"{source}: pair {list(pair)} pairs {names[a]!r} with itself")
        for i in (a, b):
            if flip[i] != i:
                raise ValueError(f"{source}: {names[i]!r} is in two pairs")
        flip[a], flip[b] = b, a
    return tuple(flip)


def _prompts_override(prompts: Any, names: Sequence[str], derived: Sequence[str], source: str) -> tuple[str, ...]:
    if isinstance(prompts, Mapping):  # {name or index: prompt}: only these change
        out = list(derived)
        for ref, text in prompts.items():
            out[_resolve_keypoint(ref, names, "prompts", source)] = str(text)
        return tuple(out)
    texts = tuple(str(p) for p in prompts)
    if len(texts) != len(names):
        raise ValueError(f"{source}: {len(texts)} prompts given for {len(names)} keypoints")
    return texts


def _check_categories(cats: list[Any], source: str) -> tuple[str, ...]:
    first = None
    for c in cats:
        kps = c.get("keypoints") if isinstance(c, dict) else None
        if not isinstance(kps, list) or not kps:
            raise ValueError(f"{source}: category {c.get('id') if isinstance(c, dict) else c!r} has no "
                             "'keypoints' list (not a keypoint category)")
        kps = tuple(str(n).strip() for n in kps)
        if len(set(kps)) != len(kps):
            dup = sorted({n for n in kps if kps.count(n) > 1})
            raise ValueError(f"{source}: category {c.get('id')} ({c.get('name')!r}) names keypoints {dup} more than "
                             "once; keypoint names must be unique (prompts, flip pairs and checkpoints use them)")
        if first is None:
            first = (c, kps)
        elif kps != first[1]:
            a, b = first[0], c
            diff = next((i for i, (x, y) in enumerate(zip(first[1], kps)) if x != y), min(len(kps), len(first[1])))
            raise ValueError(
                f"{source}: categories {a.get('id')} ({a.get('name')!r}, {len(first[1])} keypoints) and "
                f"{b.get('id')} ({b.get('name')!r}, {len(kps)} keypoints) have different keypoint lists (first "
                f"difference at index {diff}); one model needs one layout: split the file per layout"
            )
    return first[1]


def meta_from_coco(
    coco: dict | str | Path,
    *,
    name: str | None = None,
    sigmas: Any = None,
    prompts: Any = None,
    flip_pairs: Any = None,
    default_sigma: float = DEFAULT_SIGMA,
) -> DatasetMeta:
    """Derive a :class:`DatasetMeta` from the categories of a COCO keypoint file (dict or path).

    All categories must share one ``keypoints`` list (names are stripped of stray whitespace). Derived, unless
    given:

    * prompts from the names (:func:`name_to_prompt`: side first, numbers kept); ``prompts`` is a list of K
      texts or a ``{name or index: text}`` mapping that changes only those;
    * flip pairs from names that differ only by left <-> right, or the category's ``symmetries`` (name pairs,
      not COCO: the SLEAP converter writes the skeleton's declared symmetries there); ``flip_pairs`` is a list
      of pairs of names or 0-based indices (``[]``: none);
    * sigmas: the published ones of a known layout (:data:`KNOWN_SIGMAS`), else ``default_sigma`` for every
      keypoint with a warning saying how to set them;
    * skeleton: 0- or 1-based, detected by :func:`skeleton_indices`;
    * half-body groups: back/hind/hip/tail... names in the lower body; joint weights are 1.

    A keypoint whose name says left/right without a partner is reported by a warning. ``species`` maps category
    id -> name and ``species_to_family`` maps it to the category's ``supercategory`` when present. What was
    derived and what was given is recorded in ``provenance`` (shown by :func:`format_meta_table`).
    """
    data = _load_json(coco)
    source = str(coco) if not isinstance(coco, dict) else (name or "coco")
    cats = data.get("categories") or []
    if not cats:
        raise ValueError(f"{source}: no categories")
    names = _check_categories(cats, source)
    k = len(names)
    provenance: dict[str, str] = {}

    if sigmas is not None:
        sig = np.asarray(list(sigmas), dtype=np.float64)
        if sig.size != k:
            raise ValueError(f"{source}: {sig.size} sigmas given for {k} keypoints")
        provenance["sigmas"] = "given (data.sigmas)"
    elif (hit := known_sigmas(names)) is not None:
        sig = hit[1]
        provenance["sigmas"] = f"published {hit[0]} values"
    else:
        sig = np.full(k, float(default_sigma))
        provenance["sigmas"] = f"default {default_sigma:g} for every keypoint"
        log.warning(
            "%s: no OKS sigmas for these %d keypoints: every keypoint gets %g, so AP is only comparable within "
            "this setting. Give the per-keypoint values with data.sigmas=[s1,...,s%d] (the keypoint order of the "
            "file; see python -m clamp_pl.tools.inspect_data).", source, k, default_sigma, k,
        )

    derived_prompts = tuple(name_to_prompt(n) for n in names)
    if prompts is None:
        texts = derived_prompts
        provenance["prompts"] = "derived from the names"
    else:
        texts = _prompts_override(prompts, names, derived_prompts, f"{source}: data.prompts")
        provenance["prompts"] = "given (data.prompts)"

    declared = cats[0].get("symmetries")  # not COCO: written by tools that declare their pairs (SLEAP)
    if flip_pairs is None and declared:
        flip = flip_indices_from_pairs(declared, names, f"{source}: category 'symmetries'")
        provenance["flip_pairs"] = "declared by the file (category 'symmetries')"
    elif flip_pairs is None:
        flip = _infer_flip_indices(names)
        provenance["flip_pairs"] = "derived from left/right in the names"
    else:
        flip = flip_indices_from_pairs(flip_pairs, names, f"{source}: data.flip_pairs")
        provenance["flip_pairs"] = "given (data.flip_pairs)"
    unpaired = [n for i, n in enumerate(names) if flip[i] == i and set(_SIDES) & set(name_tokens(n))]
    if unpaired and flip_pairs is None:
        log.warning("%s: keypoints %s name a side but have no left/right partner, so a horizontal flip keeps "
                    "them in place; set data.flip_pairs if they do pair", source, unpaired)
    positional = [n for n in names if _NON_FLIP_SIDES & set(name_tokens(n))]
    if positional and flip_pairs is None:
        provenance["not_flipped"] = ("near/off/far/inner/outer name the side toward or away from the camera, "
                                     f"which a flip does not swap: {len(positional)} keypoints left unpaired")

    skeleton, how = skeleton_indices(cats[0].get("skeleton"), names, source)
    provenance["skeleton"] = how
    if how not in ("none", "names"):
        log.info("%s: skeleton read as %s indices", source, how)

    lower = [_is_lower(name_tokens(n)) for n in names]
    species = {int(c["id"]): str(c.get("name", c["id"])) for c in cats}
    families = {int(c["id"]): str(c["supercategory"]) for c in cats if c.get("supercategory")}
    return DatasetMeta(
        name=name or "coco",
        keypoint_names=names,
        prompts=texts,
        flip_indices=flip,
        sigmas=sig,
        skeleton=skeleton,
        upper_body_ids=tuple(i for i in range(k) if not lower[i]),
        lower_body_ids=tuple(i for i in range(k) if lower[i]),
        joint_weights=np.ones(k),
        species=species,
        species_to_family=families,
        provenance=provenance,
    )


def meta_from_names(names: Sequence[str], *, name: str = "names", default_sigma: float = DEFAULT_SIGMA) -> DatasetMeta:
    """A :class:`DatasetMeta` from keypoint names alone (e.g. the keypoints asked of a model at run time), derived as
    :func:`meta_from_coco` derives them: prompts by :func:`name_to_prompt`, flip pairs from left <-> right in the
    names, the published sigmas of a known layout else ``default_sigma`` for every keypoint (no warning: the caller
    says what it uses them for), half-body groups from the names; no skeleton, no species."""
    names = tuple(str(n).strip() for n in names)
    if not names or any(not n for n in names):
        raise ValueError(f"keypoint names must be non-empty strings, got {list(names)}")
    if len(set(names)) != len(names):
        raise ValueError(f"keypoint names must be distinct, got {list(names)}")
    k = len(names)
    hit = known_sigmas(names)
    lower = [_is_lower(name_tokens(n)) for n in names]
    return DatasetMeta(
        name=name,
        keypoint_names=names,
        prompts=tuple(name_to_prompt(n) for n in names),
        flip_indices=_infer_flip_indices(names),
        sigmas=hit[1] if hit is not None else np.full(k, float(default_sigma)),
        skeleton=(),
        upper_body_ids=tuple(i for i in range(k) if not lower[i]),
        lower_body_ids=tuple(i for i in range(k) if lower[i]),
        joint_weights=np.ones(k),
        provenance={"prompts": "derived from the names", "flip_pairs": "derived from left/right in the names",
                    "sigmas": f"published {hit[0]} values" if hit is not None
                    else f"default {default_sigma:g} for every keypoint"},
    )


# ------------------------------------------------------------------------------------------------- the keypoint table
def meta_table(meta: DatasetMeta) -> list[dict[str, Any]]:
    """One row per keypoint: ``index``, ``name``, ``prompt``, ``flip`` (partner name, or None), ``body``
    ("upper"/"lower"/"" when in neither group) and ``sigma``."""
    upper, lower = set(meta.upper_body_ids), set(meta.lower_body_ids)
    return [
        {
            "index": i,
            "name": n,
            "prompt": meta.prompts[i],
            "flip": meta.keypoint_names[meta.flip_indices[i]] if meta.flip_indices[i] != i else None,
            "body": "upper" if i in upper else "lower" if i in lower else "",
            "sigma": float(meta.sigmas[i]),
        }
        for i, n in enumerate(meta.keypoint_names)
    ]


def format_meta_table(meta: DatasetMeta) -> str:
    """The keypoint table as Markdown, with how each column was obtained (``meta.provenance``) above it."""
    rows = meta_table(meta)
    lines = [f"{meta.name}: {meta.num_keypoints} keypoints, {len(meta.flip_pairs)} flip pairs, "
             f"{len(meta.skeleton)} skeleton links"]
    lines += [f"  {k}: {v}" for k, v in meta.provenance.items()]
    lines += ["", "| index | name | prompt | flip partner | body | sigma |", "| ---: | --- | --- | --- | --- | ---: |"]
    lines += [f"| {r['index']} | {r['name']} | {r['prompt']} | {r['flip'] or '-'} | {r['body'] or '-'} | "
              f"{r['sigma']:.4g} |" for r in rows]
    return "\n".join(lines)
