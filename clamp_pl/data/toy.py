"""The embedded default dataset: procedural quadrupeds rendered in AP-10K format.

``ensure_toy_ap10k(root)`` draws small images of cartoon quadrupeds with cv2 and writes them with COCO keypoint
files that look like AP-10K's: the same 17 keypoints in AP-10K order, AP-10K category ids and names with
``supercategory`` = family, keypoint names and skeleton in every category, ``bbox`` (xywh), ``area`` (= w*h, as
in AP-10K), ``iscrowd`` 0 and ``num_keypoints``. It lets the whole pipeline (and a model) run on a fresh
machine with nothing downloaded.

What is drawn (all randomness from ``numpy.random.default_rng((seed, split, image index))``, so the output is
byte-identical for a given seed and independent of how many images are drawn before it):

* 15 species of 6 families (:data:`TOY_SPECIES`). A family shares a body plan (torso, leg, neck, head, snout,
  tail proportions, ears, horns, mane); species differ in proportions and appearance (coat colour, belly,
  stripes, spots, patches, wool).
* Each instance gets jittered proportions, a random pose (leg joint angles, neck, head and tail angles), a
  3/4 view (the far-side legs are offset and drawn darker behind the body), foreshortening, scale, in-plane
  rotation (sd 15 deg, within +-40) and a random facing.
* Left/right are the animal's own: the camera sees the animal's right side when it faces image-right, and
  its left side when it faces image-left, so ``left_*`` keypoints are the far side in the first case and the
  near side in the second. In-plane rotation keeps this; a mirror swaps it.
* Textured backgrounds with clutter; one animal per image, or two (p = 0.25); truncation by the image border
  (p = 0.2 per animal); occluding blobs (p = 0.35 per animal).
* Visibility follows COCO: ``v = 0`` not labelled (outside the image; x = y = 0), ``v = 1`` labelled but not
  visible (covered by an occluder, another animal, or by the animal's own body: e.g. the far shoulder/hip),
  ``v = 2`` visible. Coverage is read from a per-pixel label map of which body part was drawn last.
* Boxes are the extent of the animal's full silhouette (occluded parts included), clipped to the image.

The same animals can be written in Animal-Pose's 20 keypoints (``ensure_toy_animalpose``; the images do not depend
on the vocabulary): ear bases, throat and withers besides the shared points, and each leg's three points named as
Animal-Pose names them (front/back elbow, knee, paw: the toy's shoulder/hip, elbow/knee and paw).

Coordinates: keypoint (x, y) in pixels with pixel centres at integers (mmpose convention), rounded to 0.01.
Layout under ``root``: ``annotations/toy_{ap10k,animalpose}_{train,val,test}.json``, ``images/{split}/{image_id:06d}.jpg``
(``file_name`` is relative to ``images/``) and ``toy_stamp.json`` (generator version + parameters). A second
call with the same parameters returns at once; other parameters regenerate the set.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from clamp_pl.data.metainfo import get_meta

__all__ = ["GENERATOR_VERSION", "TOY_SPECIES", "VOCABULARIES", "ToySpecies", "ensure_toy_animalpose", "ensure_toy_ap10k",
           "render_image", "toy_categories"]

#: Bump whenever the drawing or the JSON changes, so that stale sets on disk are regenerated.
GENERATOR_VERSION = 1

SPLITS = ("train", "val", "test")
_JPEG_QUALITY = 90
# image_id = split index * _ID_BLOCK + image index + 1; ann_id = image_id * 10 + animal index.
_ID_BLOCK = 100_000

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class BodyPlan:
    """Proportions in units of torso length (= 1). Angles in degrees."""

    torso_h: float
    leg_up: float
    leg_lo: float
    leg_w: float
    neck_len: float
    neck_w: float
    neck_ang: float  # above horizontal
    head_len: float
    head_h: float
    snout: float
    tail_len: float
    tail_w: float
    tail_ang: float  # below horizontal, pointing backwards
    tail_curl: float  # deg per tail segment (+ = curls up)
    ears: str  # "pointed" | "round" | "none"
    ear_size: float
    horns: float = 0.0  # horn length (0 = none)
    mane: bool = False
    hooves: bool = False


_PLANS = {
    "Felidae": BodyPlan(0.36, 0.22, 0.26, 0.065, 0.20, 0.13, 40, 0.26, 0.22, 0.05, 0.70, 0.035, 20, 12,
                        "pointed", 0.09),
    "Canidae": BodyPlan(0.36, 0.24, 0.30, 0.060, 0.24, 0.12, 45, 0.24, 0.18, 0.16, 0.48, 0.070, 40, 0,
                        "pointed", 0.12),
    "Bovidae": BodyPlan(0.50, 0.20, 0.30, 0.075, 0.20, 0.17, 25, 0.28, 0.19, 0.10, 0.42, 0.025, 75, 0,
                        "pointed", 0.06, horns=0.12, hooves=True),
    "Equidae": BodyPlan(0.42, 0.30, 0.40, 0.065, 0.40, 0.15, 55, 0.32, 0.17, 0.12, 0.50, 0.070, 60, -4,
                        "pointed", 0.07, mane=True, hooves=True),
    "Ursidae": BodyPlan(0.55, 0.16, 0.22, 0.110, 0.12, 0.24, 20, 0.28, 0.25, 0.09, 0.07, 0.050, 30, 0,
                        "round", 0.07),
    "Giraffidae": BodyPlan(0.45, 0.42, 0.55, 0.060, 0.85, 0.11, 65, 0.26, 0.14, 0.10, 0.45, 0.030, 70, 0,
                           "pointed", 0.07, horns=0.07, hooves=True),
}


@dataclass(frozen=True)
class ToySpecies:
    """One toy species: an AP-10K species name, its family, proportion multipliers and appearance."""

    name: str
    family: str
    coats: tuple[RGB, ...]  # one is drawn per instance
    pattern: str = "plain"  # plain | stripes | tabby | spots | patches | wool | giraffe
    pattern_rgb: RGB = (20, 20, 20)
    belly_rgb: RGB | None = None
    head_rgb: RGB | None = None  # face/legs colour overriding the coat (no pattern there)
    leg_rgb: RGB | None = None
    tail_tip_rgb: RGB | None = None
    mane_rgb: RGB | None = None
    mane_prob: float = 1.0
    scale: dict[str, float] = field(default_factory=dict)  # BodyPlan field -> multiplier


TOY_SPECIES: tuple[ToySpecies, ...] = (
    ToySpecies("cat", "Felidae", ((128, 128, 128), (205, 135, 70), (45, 42, 40), (225, 220, 210)), "tabby",
               scale={"head_len": 1.1, "head_h": 1.1, "leg_up": 0.9}),
    ToySpecies("tiger", "Felidae", ((225, 120, 35),), "stripes", (25, 20, 15), belly_rgb=(235, 230, 215),
               scale={"torso_h": 1.05, "tail_len": 1.1}),
    ToySpecies("leopard", "Felidae", ((220, 180, 95),), "spots", (55, 40, 20), belly_rgb=(235, 225, 195)),
    ToySpecies("lion", "Felidae", ((200, 160, 95),), mane_rgb=(135, 80, 30), mane_prob=0.5,
               scale={"leg_up": 1.15, "tail_curl": 0.0}),
    ToySpecies("dog", "Canidae", ((140, 90, 45), (40, 38, 36), (215, 180, 120)), "patches", (240, 240, 235),
               scale={"snout": 0.8, "ear_size": 0.8}),
    ToySpecies("wolf", "Canidae", ((130, 128, 122),), belly_rgb=(205, 200, 190), scale={"leg_lo": 1.1}),
    ToySpecies("fox", "Canidae", ((210, 100, 30),), belly_rgb=(240, 235, 225), leg_rgb=(35, 25, 20),
               tail_tip_rgb=(245, 245, 240), scale={"leg_up": 0.8, "leg_lo": 0.8, "tail_w": 1.3,
                                                    "tail_len": 1.2, "ear_size": 1.2}),
    ToySpecies("cow", "Bovidae", ((245, 245, 240), (120, 70, 35)), "patches", (25, 25, 25),
               scale={"horns": 0.5}),
    ToySpecies("sheep", "Bovidae", ((225, 220, 200),), "wool", (245, 242, 230), head_rgb=(55, 48, 42),
               leg_rgb=(55, 48, 42), scale={"leg_up": 0.8, "leg_lo": 0.75, "horns": 0.0, "torso_h": 1.1}),
    ToySpecies("antelope", "Bovidae", ((190, 140, 80),), belly_rgb=(245, 240, 230),
               scale={"leg_lo": 1.25, "leg_w": 0.75, "torso_h": 0.85, "horns": 2.2, "neck_ang": 1.5}),
    ToySpecies("horse", "Equidae", ((130, 70, 35), (60, 35, 20), (30, 28, 26), (190, 185, 175)),
               mane_rgb=(30, 22, 18)),
    ToySpecies("zebra", "Equidae", ((240, 240, 235),), "stripes", (20, 20, 20), mane_rgb=(20, 20, 20),
               scale={"leg_lo": 0.9}),
    ToySpecies("brown bear", "Ursidae", ((105, 65, 35), (80, 50, 30))),
    ToySpecies("polar bear", "Ursidae", ((238, 234, 220),), scale={"neck_len": 1.6, "head_len": 0.9}),
    ToySpecies("giraffe", "Giraffidae", ((235, 205, 145),), "giraffe", (150, 90, 40), mane_rgb=(120, 70, 35)),
)

# Body-part groups, in drawing order within one animal (later groups cover earlier ones).
_FAR_FRONT, _FAR_BACK, _TAIL, _TORSO, _NECK, _HEAD, _NEAR_BACK, _NEAR_FRONT = range(8)
_OCCLUDER = 255
_BG_PALETTES = (  # (base RGB, variation RGB) pairs: grass, savanna, snow, forest, sand, rock
    ((90, 140, 60), (50, 60, 30)), ((190, 170, 110), (50, 45, 40)), ((225, 230, 238), (25, 25, 20)),
    ((60, 80, 45), (40, 45, 35)), ((215, 190, 145), (35, 35, 30)), ((130, 128, 122), (50, 50, 50)),
)

# Keypoint base name -> the groups it lies on; a part of a later group covering it makes it invisible. "front" /
# "back" are the near or far leg, resolved by the facing (see the module docstring).
_KP_GROUPS = {
    "eye": (_HEAD,), "nose": (_HEAD,), "neck": (_NECK, _TORSO, _HEAD), "root_of_tail": (_TAIL, _TORSO),
    "shoulder": ("front",), "elbow": ("front",), "front_paw": ("front",),
    "hip": ("back",), "knee": ("back",), "back_paw": ("back",),
    "ear_base": (_HEAD,), "throat": (_NECK, _HEAD), "withers": (_TORSO, _NECK),
}

# Animal-Pose keypoint name -> the toy point it names, written as an AP-10K-style name. Both skeletons draw each
# leg as three points from the body to the paw: Animal-Pose's front elbow / front knee / front paw are the toy's
# shoulder / elbow / front paw, its back elbow / back knee / back paw the hip / knee / back paw (the
# conventions recorded in clamp_pl.data.vocabulary.CONVENTIONS).
_ANIMALPOSE_POINTS = {
    "L_Eye": "left_eye", "R_Eye": "right_eye", "L_EarBase": "left_ear_base", "R_EarBase": "right_ear_base",
    "Nose": "nose", "Throat": "throat", "TailBase": "root_of_tail", "Withers": "withers",
    "L_F_Elbow": "left_shoulder", "R_F_Elbow": "right_shoulder", "L_B_Elbow": "left_hip", "R_B_Elbow": "right_hip",
    "L_F_Knee": "left_elbow", "R_F_Knee": "right_elbow", "L_B_Knee": "left_knee", "R_B_Knee": "right_knee",
    "L_F_Paw": "left_front_paw", "R_F_Paw": "right_front_paw", "L_B_Paw": "left_back_paw",
    "R_B_Paw": "right_back_paw",
}
#: the keypoint vocabularies the toy set is written in: the name of their :func:`get_meta` layout
VOCABULARIES = ("ap10k", "animalpose")


def _points(vocabulary: str) -> tuple[str, ...]:
    """The toy points (AP-10K-style names) of a vocabulary's keypoints, in its order."""
    if vocabulary not in VOCABULARIES:
        raise ValueError(f"unknown toy vocabulary {vocabulary!r}; choices: {list(VOCABULARIES)}")
    names = get_meta(vocabulary).keypoint_names
    return names if vocabulary == "ap10k" else tuple(_ANIMALPOSE_POINTS[n] for n in names)


def _species_ids() -> dict[str, tuple[int, str]]:
    """Species name -> (AP-10K category id, family), checked against the AP-10K taxonomy."""
    meta = get_meta("ap10k")
    by_name = {name: cid for cid, name in meta.species.items()}
    out = {}
    for sp in TOY_SPECIES:
        cid = by_name[sp.name]
        if meta.species_to_family[cid] != sp.family:
            raise AssertionError(f"toy species {sp.name} is {sp.family} here but {meta.species_to_family[cid]}")
        out[sp.name] = (cid, sp.family)
    return out


def toy_categories(vocabulary: str = "ap10k") -> list[dict]:
    """COCO ``categories`` of the toy set: its species with AP-10K ids, names and families, and the keypoints and
    skeleton of ``vocabulary`` (:data:`VOCABULARIES`)."""
    meta = get_meta(vocabulary)
    ids = _species_ids()
    skeleton = [[a + 1, b + 1] for a, b in meta.skeleton]
    cats = [
        {"supercategory": fam, "id": cid, "name": name, "keypoints": list(meta.keypoint_names),
         "skeleton": skeleton}
        for name, (cid, fam) in ids.items()
    ]
    return sorted(cats, key=lambda c: c["id"])


# ------------------------------------------------------------------------------------------------ geometry helpers
@functools.cache
def _unit_circle(n: int) -> tuple[np.ndarray, np.ndarray]:
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    return np.cos(t), np.sin(t)


def _ellipses(c: np.ndarray, rx: np.ndarray, ry: np.ndarray, ang: np.ndarray, n: int) -> np.ndarray:
    """Vectorised ellipse polygons: centres (M, 2), radii and angles (M,) -> (M, n, 2)."""
    cos_t, sin_t = _unit_circle(n)
    x, y = rx[:, None] * cos_t, ry[:, None] * sin_t
    ca, sa = np.cos(ang)[:, None], np.sin(ang)[:, None]
    return np.stack([c[:, :1] + ca * x - sa * y, c[:, 1:] + sa * x + ca * y], axis=2)


def _ellipse(c, rx: float, ry: float, ang: float = 0.0, n: int = 20) -> np.ndarray:
    one = np.ones(1)
    return _ellipses(np.asarray(c, float).reshape(1, 2), rx * one, ry * one, ang * one, n)[0]


def _capsule(p0, p1, r0: float, r1: float, n: int = 7) -> np.ndarray:
    """Tapered capsule from p0 (radius r0) to p1 (radius r1) as a convex polygon."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    d = p1 - p0
    d = d / max(float(np.hypot(*d)), 1e-9)
    nrm = np.array([-d[1], d[0]])
    a1 = np.linspace(-np.pi / 2, np.pi / 2, n)
    a0 = np.linspace(np.pi / 2, 3 * np.pi / 2, n)
    front = p1 + r1 * (np.cos(a1)[:, None] * d + np.sin(a1)[:, None] * nrm)
    back = p0 + r0 * (np.cos(a0)[:, None] * d + np.sin(a0)[:, None] * nrm)
    return np.concatenate([front, back])


def _unit(deg: float) -> np.ndarray:
    r = math.radians(deg)
    return np.array([math.cos(r), math.sin(r)])


@dataclass
class _Part:
    group: int
    poly: np.ndarray  # (n, 2) body frame, later image frame
    rgb: np.ndarray  # (3,) float
    patterned: bool = False
    belly: bool = False


@dataclass
class _Animal:
    species: ToySpecies
    parts: list[_Part]
    keypoints: dict[str, np.ndarray]  # body-frame key -> (2,)
    pattern: list[np.ndarray]  # pattern polygons, body frame
    belly: np.ndarray | None
    pattern_rgb: np.ndarray
    belly_rgb: np.ndarray | None
    coat: np.ndarray
    # points only the Animal-Pose vocabulary names (ear bases, throat, withers): kept apart from ``keypoints``,
    # whose key count the occluder placement draws from, so that the AP-10K set stays byte-identical
    extra: dict[str, np.ndarray] = field(default_factory=dict)


def _jitter_plan(plan: BodyPlan, sp: ToySpecies, rng: np.random.Generator) -> dict[str, float]:
    out = {}
    for name in ("torso_h", "leg_up", "leg_lo", "leg_w", "neck_len", "neck_w", "neck_ang", "head_len",
                 "head_h", "snout", "tail_len", "tail_w", "tail_ang", "tail_curl", "ear_size", "horns"):
        out[name] = getattr(plan, name) * sp.scale.get(name, 1.0) * rng.uniform(0.9, 1.1)
    return out


def _build_animal(sp: ToySpecies, rng: np.random.Generator) -> _Animal:
    """Body-frame geometry (x forward, y down, torso length 1, centred at 0), near side = the animal's right."""
    plan = _PLANS[sp.family]
    p = _jitter_plan(plan, sp, rng)
    coat = np.array(sp.coats[rng.integers(len(sp.coats))], float) * rng.uniform(0.88, 1.08)
    coat = np.clip(coat, 0, 255)
    far = 0.72  # far-side shading factor
    head_rgb = np.array(sp.head_rgb, float) if sp.head_rgb else coat
    leg_rgb = np.array(sp.leg_rgb, float) if sp.leg_rgb else coat
    dark = np.array((28, 24, 22), float)
    a, b = 0.5, p["torso_h"] / 2
    parts: list[_Part] = []
    kp: dict[str, np.ndarray] = {}

    # 3/4 view: far-side roots appear higher (and slightly shifted) than the near ones.
    depth = np.array([rng.uniform(-0.04, 0.04), -rng.uniform(0.25, 0.55) * b])
    gait = rng.uniform(-1.0, 1.0, size=4)

    def leg(key: str, root: np.ndarray, front: bool, group: int, phase: float, shade: float) -> None:
        upper = rng.uniform(-28, 28) * 0.6 + phase * 14
        bend = rng.uniform(-55, 5) if front else rng.uniform(-5, 45)
        up_len = p["leg_up"] + 0.7 * b
        elbow = root + up_len * np.array([math.sin(math.radians(upper)), math.cos(math.radians(upper))])
        lower = math.radians(upper + bend)
        paw = elbow + p["leg_lo"] * np.array([math.sin(lower), math.cos(lower)])
        w = p["leg_w"]
        colour = leg_rgb * shade
        patterned = sp.leg_rgb is None
        parts.append(_Part(group, _capsule(root, elbow, w * 1.6, w), colour, patterned))
        parts.append(_Part(group, _capsule(elbow, paw, w * 0.9, w * 0.75), colour, patterned))
        paw_rgb = dark * shade if plan.hooves else colour * 0.9
        parts.append(_Part(group, _ellipse(paw + [w * 0.3, w * 0.2], w * 1.15, w * 0.7), paw_rgb))
        names = ("shoulder", "elbow", "front_paw") if front else ("hip", "knee", "back_paw")
        for name, pt in zip(names, (root, elbow, paw)):
            kp[f"{key}_{name}"] = pt

    front_root = np.array([a * 0.55, b * 0.15])
    back_root = np.array([-a * 0.58, b * 0.10])
    leg("far", front_root + depth, True, _FAR_FRONT, gait[0], far)
    leg("far", back_root + depth, False, _FAR_BACK, gait[1], far)

    # Tail: a chain of tapered segments from the tail root.
    tail_root = np.array([-a * 0.93, -b * 0.45])
    kp["root_of_tail"] = tail_root
    ang = 180 - (p["tail_ang"] + rng.uniform(-25, 25))  # pointing backwards (-x), drooping (+y)
    n_seg = 4
    seg_len = p["tail_len"] / n_seg
    pt = tail_root
    curl = p["tail_curl"] + rng.uniform(-10, 10)
    for i in range(n_seg):
        nxt = pt + seg_len * _unit(ang)
        r0 = p["tail_w"] * (1.0 - 0.15 * i)
        rgb = np.array(sp.tail_tip_rgb, float) if (sp.tail_tip_rgb and i == n_seg - 1) else coat
        parts.append(_Part(_TAIL, _capsule(pt, nxt, r0, r0 * 0.85), rgb, sp.tail_tip_rgb is None or i < n_seg - 1))
        pt, ang = nxt, ang + curl  # +curl turns the tail upwards (towards -y) when pointing backwards

    parts.append(_Part(_TORSO, _ellipse((0.0, 0.0), a, b, n=28), coat, True, True))
    parts.append(_Part(_TORSO, _ellipse((a * 0.45, -b * 0.05), a * 0.42, b * 1.02, n=20), coat, True, True))

    # Neck and head.
    neck_ang = p["neck_ang"] + rng.uniform(-15, 15)
    neck_dir = _unit(-neck_ang)
    neck_base = np.array([a * 0.72, -b * 0.3])
    neck_end = neck_base + p["neck_len"] * neck_dir
    nw = p["neck_w"]
    parts.append(_Part(_NECK, _capsule(neck_base - 0.05 * neck_dir, neck_end, nw * 0.8, nw * 0.55), coat, True))
    kp["neck"] = neck_base + 0.35 * (neck_end - neck_base)
    neck_up = np.array([neck_dir[1], -neck_dir[0]])
    has_mane = sp.mane_rgb is not None and rng.random() < sp.mane_prob
    if has_mane and plan.mane:
        mane_rgb = np.array(sp.mane_rgb, float)
        parts.append(_Part(_NECK, _capsule(neck_base + neck_up * nw * 0.55, neck_end + neck_up * nw * 0.45,
                                           nw * 0.25, nw * 0.2), mane_rgb))

    tilt = rng.uniform(5, 60) if sp.family != "Bovidae" else rng.uniform(15, 80)
    dh = _unit(tilt)  # head axis: forward and down
    up = np.array([dh[1], -dh[0]])
    hl, hh = p["head_len"], p["head_h"]
    hc = neck_end + dh * hl * 0.12
    if has_mane and not plan.mane:  # lion
        parts.append(_Part(_HEAD, _ellipse(hc - dh * hl * 0.15, hl * 0.62, hh * 0.95, math.atan2(dh[1], dh[0])),
                           np.array(sp.mane_rgb, float)))
    ear_base = hc - dh * hl * 0.18 + up * hh * 0.35
    ear_far = ear_base + dh * hl * 0.12 + up * hh * 0.08
    extra = {
        "near_ear_base": ear_base, "far_ear_base": ear_far,
        # the underside of the neck where it meets the head, and the top of the shoulders
        "throat": neck_end - neck_up * nw * 0.45, "withers": np.array([a * 0.5, -b * 1.0]),
    }
    es = p["ear_size"]

    def ear(base: np.ndarray, shade: float) -> None:
        if plan.ears == "pointed":
            tip = base + up * es - dh * es * 0.25
            tri = np.stack([base - dh * es * 0.35, tip, base + dh * es * 0.3])
            parts.append(_Part(_HEAD, tri, head_rgb * shade, sp.head_rgb is None))
        elif plan.ears == "round":
            parts.append(_Part(_HEAD, _ellipse(base + up * es * 0.4, es * 0.55, es * 0.55, n=12),
                               head_rgb * shade, sp.head_rgb is None))

    ear(ear_far, far)
    head_ang = math.atan2(dh[1], dh[0])
    parts.append(_Part(_HEAD, _ellipse(hc, hl * 0.42, hh * 0.5, head_ang), head_rgb, sp.head_rgb is None))
    snout_end = hc + dh * (hl * 0.32 + p["snout"])
    parts.append(_Part(_HEAD, _capsule(hc, snout_end, hh * 0.4, hh * 0.26), head_rgb, sp.head_rgb is None))
    ear(ear_base, 1.0)
    if p["horns"] > 0.01:
        horn_rgb = np.array((70, 60, 50), float) if sp.family != "Giraffidae" else head_rgb * 0.8
        for base, shade in ((ear_far + dh * hl * 0.12, far), (ear_base + dh * hl * 0.12, 1.0)):
            mid = base + up * p["horns"] * 0.6 - dh * p["horns"] * 0.3
            tip = mid + up * p["horns"] * 0.3 - dh * p["horns"] * 0.5
            parts.append(_Part(_HEAD, _capsule(base, mid, hh * 0.07, hh * 0.06), horn_rgb * shade))
            parts.append(_Part(_HEAD, _capsule(mid, tip, hh * 0.06, hh * 0.03), horn_rgb * shade))
    nose = snout_end + dh * hh * 0.12
    kp["nose"] = nose
    parts.append(_Part(_HEAD, _ellipse(nose, hh * 0.13, hh * 0.10, head_ang, n=10), dark))
    eye_r = hh * 0.13
    near_eye = hc + dh * hl * 0.06 + up * hh * 0.2
    far_eye = near_eye + dh * hl * 0.16 + up * hh * 0.13
    for key, c, s in (("far_eye", far_eye, 0.8), ("near_eye", near_eye, 1.0)):
        kp[key] = c
        parts.append(_Part(_HEAD, _ellipse(c, eye_r * s, eye_r * s, n=10), np.array((235, 230, 205), float)))
        parts.append(_Part(_HEAD, _ellipse(c, eye_r * s * 0.6, eye_r * s * 0.6, n=8), np.array((12, 10, 10.0))))

    leg("near", back_root, False, _NEAR_BACK, gait[2], 1.0)
    leg("near", front_root, True, _NEAR_FRONT, gait[3], 1.0)

    pattern = _pattern_polys(sp.pattern, rng)
    belly = _ellipse((0.0, b * 0.75), a * 0.85, b * 0.55) if sp.belly_rgb else None
    if sp.pattern == "tabby":
        pattern_rgb = coat * 0.62
    elif sp.pattern == "wool":
        pattern_rgb = np.clip(coat * 1.08, 0, 255)
    else:
        pattern_rgb = np.array(sp.pattern_rgb, float)
    return _Animal(sp, parts, kp, pattern, belly, pattern_rgb,
                   np.array(sp.belly_rgb, float) if sp.belly_rgb else None, coat, extra)


def _pattern_polys(kind: str, rng: np.random.Generator) -> list[np.ndarray]:
    """Coat pattern as body-frame polygons covering the animal's extent (applied only inside coat parts)."""
    polys: list[np.ndarray] = []
    if kind in ("stripes", "tabby"):
        x = -0.9
        while x < 1.6:
            w = rng.uniform(0.025, 0.05)
            slant = rng.uniform(-0.15, 0.15)
            polys.append(np.array([[x, -1.5], [x + w, -1.5], [x + w + slant, 1.5], [x + slant, 1.5]]))
            x += rng.uniform(0.07, 0.12)
    elif kind == "spots":
        r = rng.uniform(0.015, 0.035, 110)
        polys += list(_ellipses(rng.uniform((-0.9, -1.4), (1.5, 1.2), size=(110, 2)), r,
                                r * rng.uniform(0.7, 1.0, 110), rng.uniform(0, np.pi, 110), 8))
    elif kind == "patches":
        m = int(rng.integers(3, 6))
        polys += list(_ellipses(rng.uniform((-0.6, -0.4), (0.8, 0.5), size=(m, 2)), rng.uniform(0.08, 0.2, m),
                                rng.uniform(0.06, 0.15, m), rng.uniform(0, np.pi, m), 14))
    elif kind == "wool":
        r = np.full(120, 0.022)
        polys += list(_ellipses(rng.uniform((-0.6, -0.4), (0.8, 0.4), size=(120, 2)), r, r, np.zeros(120), 8))
    elif kind == "giraffe":
        gx, gy = np.meshgrid(np.arange(-0.9, 1.6, 0.09), np.arange(-1.5, 1.2, 0.09), indexing="ij")
        grid = np.stack([gx.ravel(), gy.ravel()], axis=1)
        m = len(grid)
        polys += list(_ellipses(grid + rng.uniform(-0.015, 0.015, (m, 2)), rng.uniform(0.032, 0.04, m),
                                rng.uniform(0.03, 0.038, m), rng.uniform(0, 3, m), 6))
    return polys


# ------------------------------------------------------------------------------------------------------ rendering
def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    base, var = _BG_PALETTES[rng.integers(len(_BG_PALETTES))]
    base = np.array(base, float)
    var = np.array(var, float)
    g = int(rng.integers(3, 8))
    coarse = base + (rng.random((g, g, 1)) - 0.5) * 2 * var
    img = cv2.resize(coarse.astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    fine = cv2.resize(rng.standard_normal((size // 4, size // 4), dtype=np.float32), (size, size),
                      interpolation=cv2.INTER_LINEAR)
    img = img + fine[..., None] * var.astype(np.float32) * 0.25
    if rng.random() < 0.4:  # horizon with a sky-ish band
        y = int(rng.uniform(0.1, 0.35) * size)
        sky = np.array(rng.choice([(170, 200, 230), (200, 210, 220), (150, 170, 190)]), np.float32)
        img[:y] = sky + 3.0 * rng.standard_normal((y, size, 3), dtype=np.float32)
    for _ in range(int(rng.integers(4, 14))):  # clutter: stones, tufts, sticks
        c = rng.uniform(0, size, 2)
        col = tuple(float(v) for v in np.clip(base + rng.uniform(-1, 1, 3) * var * 1.5, 0, 255))
        if rng.random() < 0.5:
            r = rng.uniform(0.01, 0.05) * size
            poly = _ellipse(c, r, r * rng.uniform(0.4, 1.0), rng.uniform(0, np.pi), n=12)
            cv2.fillPoly(img, [np.round(poly * 16).astype(np.int32)], col, cv2.LINE_AA, 4)
        else:
            d = _unit(rng.uniform(0, 360)) * rng.uniform(0.03, 0.12) * size
            cv2.line(img, tuple(int(v) for v in c), tuple(int(v) for v in c + d), col, int(rng.integers(1, 3)))
    return np.clip(img, 0, 255).astype(np.float32)[..., ::-1].copy()  # RGB -> BGR


def _to_fixed(poly: np.ndarray) -> np.ndarray:
    return np.round(poly * 16).astype(np.int32)  # 4 fractional bits for cv2 shift=4


def _place(animal: _Animal, rng: np.random.Generator, size: int, slot: tuple[float, float], extent_frac: float,
           truncate: bool) -> tuple[np.ndarray, int]:
    """Choose the body->image similarity (+ mirror, foreshortening) and transform the animal in place.

    Returns the (3, 2) affine used (for the pattern) and the mirror sign (+1: faces image-right).
    """
    mirror = 1 if rng.random() < 0.5 else -1
    fore = rng.uniform(0.65, 1.0)
    rot = math.radians(float(np.clip(rng.normal(0, 15), -40, 40)))
    lin = np.array([[math.cos(rot), -math.sin(rot)], [math.sin(rot), math.cos(rot)]]) @ np.diag([mirror * fore, 1.0])
    pts = np.concatenate([pt.poly for pt in animal.parts]) @ lin.T
    lo, hi = pts.min(0), pts.max(0)
    scale = extent_frac * size / float(max(hi - lo))
    lo, hi = lo * scale, hi * scale
    centre = np.array(slot) * size
    slack = np.maximum(size - (hi - lo), 0) / 2 * 0.8
    shift = centre - (lo + hi) / 2 + rng.uniform(-1, 1, 2) * slack * 0.5
    if truncate:  # push the animal partly across one border
        axis = int(rng.integers(2))
        shift[axis] += (1 if rng.random() < 0.5 else -1) * rng.uniform(0.15, 0.4) * (hi - lo)[axis]
    # Keep the torso centre inside the image so every instance keeps labelled keypoints.
    shift = np.clip(shift, 2, size - 3)
    affine = np.vstack([lin.T * scale, shift])
    for part in animal.parts:
        part.poly = part.poly @ affine[:2] + affine[2]
    for points in (animal.keypoints, animal.extra):
        for key in points:
            points[key] = points[key] @ affine[:2] + affine[2]
    return affine, mirror


def _draw_animal(img: np.ndarray, label: np.ndarray, animal: _Animal, affine: np.ndarray, code0: int) -> None:
    h, w = label.shape
    pattern = np.zeros((h, w), np.uint8)
    if animal.pattern:
        # Transform all pattern polygons in one product, then split them again.
        flat = _to_fixed(np.concatenate(animal.pattern) @ affine[:2] + affine[2])
        cuts = np.cumsum([len(p) for p in animal.pattern])[:-1]
        cv2.fillPoly(pattern, np.split(flat, cuts), 1, cv2.LINE_8, 4)
    belly = np.zeros((h, w), np.uint8)
    if animal.belly is not None:
        cv2.fillPoly(belly, [_to_fixed(animal.belly @ affine[:2] + affine[2])], 1, cv2.LINE_8, 4)
    part_mask = np.zeros((h, w), np.uint8)
    for part in animal.parts:
        poly = [_to_fixed(part.poly)]
        colour = tuple(float(c) for c in np.clip(part.rgb, 0, 255)[::-1])
        cv2.fillPoly(img, poly, colour, cv2.LINE_AA, 4)
        cv2.fillPoly(label, poly, code0 + part.group, cv2.LINE_8, 4)
        if part.patterned and (animal.pattern or (part.belly and animal.belly is not None)):
            x0, y0 = np.floor(part.poly.min(0)).astype(int).clip(0, [w, h])
            x1, y1 = (np.ceil(part.poly.max(0)).astype(int) + 1).clip(0, [w, h])
            if x1 <= x0 or y1 <= y0:
                continue
            roi = (slice(y0, y1), slice(x0, x1))
            part_mask[roi] = 0
            cv2.fillPoly(part_mask, poly, 1, cv2.LINE_8, 4)
            if part.belly and animal.belly_rgb is not None:
                sel = (part_mask[roi] & belly[roi]).astype(bool)
                img[roi][sel] = np.clip(animal.belly_rgb[::-1], 0, 255)
            sel = (part_mask[roi] & pattern[roi]).astype(bool)
            if sel.any():
                # Far-side parts are shaded darker; shade their pattern alike.
                shade = float(np.clip(part.rgb.mean() / max(animal.coat.mean(), 1.0), 0.5, 1.2))
                img[roi][sel] = np.clip(animal.pattern_rgb[::-1] * shade, 0, 255)


def _occluders(img: np.ndarray, label: np.ndarray, rng: np.random.Generator, anchors: list[np.ndarray],
               size: int) -> None:
    for anchor in anchors:
        c = anchor + rng.normal(0, 0.04 * size, 2)
        r = rng.uniform(0.06, 0.16) * size
        if rng.random() < 0.5:
            poly = _ellipse(c, r, r * rng.uniform(0.5, 1.0), rng.uniform(0, np.pi), n=18)
        else:
            pts = c + rng.normal(0, r * 0.7, (7, 2))
            poly = cv2.convexHull(pts.astype(np.float32))[:, 0].astype(float)
        green = rng.random() < 0.6
        rgb = np.array((60, 110, 45) if green else (120, 115, 105), float) * rng.uniform(0.7, 1.2)
        cv2.fillPoly(img, [_to_fixed(poly)], tuple(float(v) for v in np.clip(rgb, 0, 255)[::-1]), cv2.LINE_AA, 4)
        cv2.fillPoly(label, [_to_fixed(poly)], _OCCLUDER, cv2.LINE_8, 4)
        # Leaf/stone texture so occluders are not flat colour.
        for _ in range(8):
            q = c + rng.normal(0, r * 0.45, 2)
            cv2.circle(img, (int(q[0]), int(q[1])), max(1, int(r * 0.15)),
                       tuple(float(v) for v in np.clip(rgb * rng.uniform(0.7, 1.3), 0, 255)[::-1]), -1)


def _keypoint_table(mirror: int, names: tuple[str, ...]) -> list[tuple[str, tuple]]:
    """AP-10K-style toy point name -> (body-frame key, allowed groups), resolving near/far by the facing."""
    near_side = "right" if mirror > 0 else "left"
    table = []
    for name in names:
        side, _, base = name.partition("_") if name.startswith(("left_", "right_")) else ("", "", name)
        where = ("near" if side == near_side else "far") if side else ""
        groups = []
        for g in _KP_GROUPS[base]:
            if g == "front":
                g = _NEAR_FRONT if where == "near" else _FAR_FRONT
            elif g == "back":
                g = _NEAR_BACK if where == "near" else _FAR_BACK
            groups.append(g)
        table.append((f"{where}_{base}" if where else base, tuple(groups)))
    return table


def render_image(seed: int, split: int, index: int, size: int = 192, vocabulary: str = "ap10k"
                 ) -> tuple[np.ndarray, list[dict]]:
    """Draw one image (BGR uint8, ``size`` x ``size``) and its instances.

    Returns the image and, per animal, ``{"category_id", "keypoints" (K, 3) float [x, y, v], "bbox" [x, y,
    w, h]}`` with the keypoints of ``vocabulary`` in its order (AP-10K: K = 17, Animal-Pose: K = 20). The image
    and boxes do not depend on the vocabulary.
    """
    rng = np.random.default_rng([seed, split, index])
    points = _points(vocabulary)
    ids = _species_ids()
    img = _background(rng, size)
    label = np.zeros((size, size), np.uint8)
    n_animals = 2 if rng.random() < 0.25 else 1
    slots = [(0.5, 0.5)] if n_animals == 1 else [(0.3, rng.uniform(0.35, 0.65)), (0.7, rng.uniform(0.35, 0.65))]
    placed = []
    for i, slot in enumerate(slots):
        sp = TOY_SPECIES[int(rng.integers(len(TOY_SPECIES)))]
        animal = _build_animal(sp, rng)
        extent = rng.uniform(0.55, 0.92) if n_animals == 1 else rng.uniform(0.4, 0.6)
        affine, mirror = _place(animal, rng, size, slot, extent, truncate=rng.random() < 0.2)
        _draw_animal(img, label, animal, affine, 1 + 8 * i)
        placed.append((animal, mirror))
    anchors = []
    for animal, _ in placed:
        if rng.random() < 0.35:
            keys = sorted(animal.keypoints)
            anchors.append(animal.keypoints[keys[int(rng.integers(len(keys)))]])
    _occluders(img, label, rng, anchors, size)

    img = cv2.GaussianBlur(img, (3, 3), 0.6)
    img = img + 3.0 * rng.standard_normal(img.shape, dtype=np.float32)
    out_img = np.clip(np.round(img), 0, 255).astype(np.uint8)

    instances = []
    for i, (animal, mirror) in enumerate(placed):
        kps = np.zeros((len(points), 3))
        for k, (key, groups) in enumerate(_keypoint_table(mirror, points)):
            point = animal.keypoints[key] if key in animal.keypoints else animal.extra[key]
            x, y = (float(v) for v in np.round(point, 2))
            if not (0 <= x <= size - 1 and 0 <= y <= size - 1):
                continue  # v = 0: outside the image, not labelled
            # Occluded when something drawn after the keypoint's own parts covers it: an occluder, a later
            # animal, or a later part of this animal (groups are drawn in increasing order).
            code = int(label[int(round(y)), int(round(x))])
            owner, group = divmod(code - 1, 8)
            occluded = code == _OCCLUDER or (code > 0 and (owner > i or (owner == i and group > max(groups))))
            kps[k] = (x, y, 1 if occluded else 2)
        pts = np.concatenate([p.poly for p in animal.parts])
        lo = np.clip(pts.min(0), 0, size)
        hi = np.clip(pts.max(0), 0, size)
        bbox = [round(float(lo[0]), 2), round(float(lo[1]), 2), round(float(hi[0] - lo[0]), 2),
                round(float(hi[1] - lo[1]), 2)]
        instances.append({"category_id": ids[animal.species.name][0], "keypoints": kps, "bbox": bbox})
    return out_img, instances


# -------------------------------------------------------------------------------------------------- dataset files
def _stamp(seed: int, sizes: dict[str, int], image_size: int, vocabulary: str) -> dict:
    stamp = {"generator": "clamp_pl.data.toy", "version": GENERATOR_VERSION, "seed": seed, "image_size": image_size,
             **{f"n_{k}": v for k, v in sizes.items()}}
    return stamp if vocabulary == "ap10k" else {**stamp, "vocabulary": vocabulary}


def _paths(root: Path, vocabulary: str) -> dict[str, Path]:
    ann = root / "annotations"
    return {**{s: ann / f"toy_{vocabulary}_{s}.json" for s in SPLITS}, "images": root / "images"}


def _render_split(root: Path, split_idx: int, split: str, n: int, seed: int, size: int, vocabulary: str = "ap10k"
                  ) -> list[tuple[dict, list[dict]]]:
    """Render the ``n`` images of one split, write their JPEGs, return (image, annotations) records."""
    out = []
    for i in range(n):
        image_id = split_idx * _ID_BLOCK + i + 1
        img, insts = render_image(seed, split_idx, i, size, vocabulary)
        file_name = f"{split}/{image_id:06d}.jpg"
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
        if not ok:
            raise RuntimeError(f"could not encode toy image {file_name}")
        (root / "images" / file_name).write_bytes(buf.tobytes())
        anns = []
        for j, inst in enumerate(insts):
            kps = inst["keypoints"]
            x, y, w, h = inst["bbox"]
            anns.append({
                "id": image_id * 10 + j, "image_id": image_id, "category_id": inst["category_id"],
                "bbox": [x, y, w, h], "area": round(w * h, 2), "iscrowd": 0,
                "num_keypoints": int((kps[:, 2] > 0).sum()),
                "keypoints": [round(float(v), 2) if c < 2 else int(v) for row in kps for c, v in enumerate(row)],
            })
        out.append(({"id": image_id, "file_name": file_name, "width": size, "height": size}, anns))
    return out


def _coco_file(split: str, seed: int, records: list[tuple[dict, list[dict]]], vocabulary: str = "ap10k") -> dict:
    layout = "AP-10K format" if vocabulary == "ap10k" else "AP-10K format with Animal-Pose keypoints"
    return {
        "info": {"description": f"clamp_pl procedural toy quadrupeds in {layout} ({split})",
                 "version": str(GENERATOR_VERSION), "year": 2024, "contributor": "clamp_pl",
                 "seed": seed},
        "licenses": [{"id": 1, "name": "Apache-2.0 (generated data)", "url": ""}],
        "images": [img for img, _ in records],
        "annotations": [a for _, anns in records for a in anns],
        "categories": toy_categories(vocabulary),
    }


def ensure_toy_ap10k(root: str | Path, seed: int = 0, n_train: int = 1200, n_val: int = 150, n_test: int = 150,
                     image_size: int = 192) -> dict[str, Path]:
    """Generate the toy set into ``root`` unless an identical one is already there (see :func:`ensure_toy`)."""
    return ensure_toy(root, seed, n_train, n_val, n_test, image_size, vocabulary="ap10k")


def ensure_toy_animalpose(root: str | Path, seed: int = 1, n_train: int = 1200, n_val: int = 150,
                          n_test: int = 150, image_size: int = 192) -> dict[str, Path]:
    """The toy set with Animal-Pose's 20 keypoints (``annotations/toy_animalpose_{split}.json``); its default seed
    draws other animals than the AP-10K set's, so that the two are two datasets (see :func:`ensure_toy`)."""
    return ensure_toy(root, seed, n_train, n_val, n_test, image_size, vocabulary="animalpose")


def ensure_toy(root: str | Path, seed: int = 0, n_train: int = 1200, n_val: int = 150, n_test: int = 150,
               image_size: int = 192, vocabulary: str = "ap10k") -> dict[str, Path]:
    """Generate the toy set into ``root`` unless an identical one is already there.

    Args:
        root: output folder (created).
        seed: generator seed; the same seed gives byte-identical JSON files and images.
        n_train, n_val, n_test: number of IMAGES per split (about 1.25 instances per image).
        image_size: square image side in pixels.
        vocabulary: the keypoints written (:data:`VOCABULARIES`); the images do not depend on it.

    Returns:
        ``{"train": json, "val": json, "test": json, "images": image folder}`` (``file_name`` is relative to
        the image folder).
    """
    root = Path(root)
    sizes = {"train": int(n_train), "val": int(n_val), "test": int(n_test)}
    if any(n < 1 or n >= _ID_BLOCK for n in sizes.values()) or image_size < 64:
        raise ValueError(f"toy set needs 1 <= n < {_ID_BLOCK} images per split and image_size >= 64, got "
                         f"{sizes}, image_size={image_size}")
    _points(vocabulary)
    paths = _paths(root, vocabulary)
    stamp_file = root / "toy_stamp.json"
    stamp = _stamp(int(seed), sizes, int(image_size), vocabulary)
    if stamp_file.is_file() and all(paths[s].is_file() for s in SPLITS):
        try:
            if json.loads(stamp_file.read_text()) == stamp:
                return paths
        except json.JSONDecodeError:
            pass
    # Stale or partial set: start from an empty image folder so no old image survives.
    stamp_file.unlink(missing_ok=True)
    if paths["images"].exists():
        shutil.rmtree(paths["images"])
    paths["train"].parent.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        (paths["images"] / split).mkdir(parents=True, exist_ok=True)
    for split_idx, split in enumerate(SPLITS):
        # One process: drawing costs ~8 ms CPU per image (~13 s for the default 1,500 images), less than it
        # would take to make worker processes safe in every caller (notebooks, unguarded scripts, DDP).
        records = _render_split(root, split_idx, split, sizes[split], int(seed), int(image_size), vocabulary)
        coco = _coco_file(split, int(seed), records, vocabulary)
        tmp = paths[split].with_name(f".{paths[split].name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(coco, separators=(",", ":")))
        os.replace(tmp, paths[split])
    stamp_file.write_text(json.dumps(stamp, indent=1) + "\n")
    return paths
