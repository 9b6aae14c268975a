"""Animal-Pose (Cao et al., ICCV 2019) release -> COCO train/val/test files in mmpose's keypoint order.

Input: the official "Part I" release (github.com/noahcao/animal-pose-dataset): ``keypoints.json`` and an
``images/`` folder. In ``keypoints.json``:

* ``images`` maps a release image id (string) to a file name: PASCAL VOC 2011 images (``2007_000063.jpg``) and
  the 1,000 extra images of the dataset's second part (``ca110.jpeg``, ``ho105.jpeg``: species prefix
  ``ca``/``co``/``do``/``ho``/``sh`` + number);
* each annotation has ``image_id``, ``category_id`` (the release's species ids, resolved through its
  ``categories`` by NAME, so their numbering does not matter), ``bbox`` as ``[x1, y1, x2, y2]``, and
  ``keypoints`` as 20 ``[x, y, v]`` with ``v`` in {0, 1} (1 = labelled) in the release's own order (that of the
  dataset repository's ``visualize_keypoint.py``): left eye, right eye, nose, left ear base, right ear base,
  L/R front elbow, L/R back elbow, L/R front knee, L/R back knee, L/R front paw, L/R back paw, throat,
  withers, tail base.

Output (what mmpose's ``tools/dataset_converters/parse_animalpose_dataset.py`` writes from the XML version of
the same labels, except that species are KEPT): keypoints reordered to mmpose's order (L_Eye, R_Eye,
L_EarBase, R_EarBase, Nose, Throat, TailBase, Withers, L/R_F_Elbow, L/R_B_Elbow, L/R_F_Knee, L/R_B_Knee,
L/R_F_Paw, L/R_B_Paw) as float32 values, labelled points as ``[x, y, 2]`` and the rest ``[0, 0, 0]``;
``num_keypoints`` = labelled count; ``bbox`` = ``[x1, y1, x2 - x1, y2 - y1]``; ``area`` = w * h; ``iscrowd`` 0;
images as ``{"id", "file_name", "height", "width"}`` with sizes read from the image files. Category ids are
:func:`clamp_pl.data.metainfo.get_meta` ("animalpose") species ids (cat 1, cow 2, dog 3, horse 4, sheep 5) with
the family as ``supercategory``; mmpose writes category 1 ("animal") for every instance.

Image ids follow mmpose: VOC ``YYYY_NNNNNN`` -> ``int("YYYYNNNNNN")``; part-2 images -> species index
(ca 0, co 1, do 2, ho 3, sh 4) * 1000 + number, which reproduces the ids in mmpose's test data (ca110 -> 110,
ho105 -> 3105; its current converter numbers species from 1 and would give 1110 / 4105).

Splits (mmpose's, as far as they can be reproduced):

* test: the 1,000 part-2 images (mmpose's ``animalpose_test.json``);
* val / train: the PASCAL VOC images (3,608 images, 5,117 instances in the release) are shuffled image-wise by
  ``np.random.RandomState(0)`` and images go to val while the val instance count stays <= 1,117 (mmpose's
  procedure and seed), the rest to train (mmpose: 2,798 / 810 images, 4,000 / 1,117 instances).
  mmpose shuffles images in the order ``os.listdir`` returned its XML files, which depends on the file system,
  so its exact split cannot be reproduced; we shuffle images in ascending image-id order, which makes the
  split deterministic and documented.
* Records that point at an image missing from ``images`` (the release has one: annotation 854, image_id 597)
  cannot be placed: they are skipped, counted and listed (file, annotation index, image id) in
  :attr:`AnimalPoseConversion.skipped`, which :func:`prepare_animalpose` writes to
  ``annotations/animalpose_skipped.json``. Nothing else is dropped.
* Annotation ids: mmpose numbers annotations in that same ``os.listdir`` order (train/val from 1,000,000, test
  from 0); we number them in (image id, release order) order with the same offsets, so ids are stable but do
  not equal mmpose's.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from clamp_pl.data.metainfo import get_meta

log = logging.getLogger(__name__)

__all__ = [
    "AnimalPoseConversion",
    "MMPOSE_FROM_RELEASE",
    "RELEASE_KEYPOINTS",
    "convert_animalpose",
    "image_id_from_file_name",
    "prepare_animalpose",
]

RELEASE_KEYPOINTS = (
    "left_eye", "right_eye", "nose", "left_earbase", "right_earbase",
    "left_front_elbow", "right_front_elbow", "left_back_elbow", "right_back_elbow",
    "left_front_knee", "right_front_knee", "left_back_knee", "right_back_knee",
    "left_front_paw", "right_front_paw", "left_back_paw", "right_back_paw",
    "throat", "withers", "tailbase",
)
#: ``MMPOSE_FROM_RELEASE[k]`` = release index of mmpose keypoint ``k``.
MMPOSE_FROM_RELEASE = (0, 1, 3, 4, 2, 17, 19, 18, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16)
_PART2_PREFIX = {"ca": 0, "co": 1, "do": 2, "ho": 3, "sh": 4}
_VOC_RE = re.compile(r"^(\d{4})_(\d{6})$")
_PART2_RE = re.compile(r"^([a-z]{2})(\d+)$")
VAL_INSTANCES = 1117
TRAINVAL_ANN_START = 1_000_000


def image_id_from_file_name(file_name: str) -> tuple[int, bool]:
    """mmpose's image id for a release file name, and whether the image is a PASCAL VOC one (train/val)."""
    stem = Path(file_name).stem
    m = _VOC_RE.match(stem)
    if m:
        return int(m.group(1) + m.group(2)), True
    m = _PART2_RE.match(stem)
    if m and m.group(1) in _PART2_PREFIX:
        return _PART2_PREFIX[m.group(1)] * 1000 + int(m.group(2)), False
    raise ValueError(
        f"Animal-Pose image {file_name!r} is neither a PASCAL VOC image (YYYY_NNNNNN.jpg) nor a part-2 image "
        f"(ca|co|do|ho|sh + number); is this the official keypoints.json release?"
    )


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the image header."""
    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError as err:
        raise FileNotFoundError(f"Animal-Pose image {path} is missing (listed in keypoints.json)") from err


def _categories() -> list[dict]:
    meta = get_meta("animalpose")
    skeleton = [[a + 1, b + 1] for a, b in meta.skeleton]
    return [
        {"supercategory": meta.species_to_family[cid], "id": cid, "name": name,
         "keypoints": list(meta.keypoint_names), "skeleton": skeleton}
        for cid, name in sorted(meta.species.items())
    ]


def _convert_keypoints(raw: Any, where: str) -> tuple[list[float], int]:
    kps = np.asarray(raw, dtype=np.float64)
    if kps.size == 60:
        kps = kps.reshape(20, 3)  # nested [[x, y, v], ...] or flat
    else:
        raise ValueError(f"{where}: keypoints must be 20 [x, y, v] triples, got shape {np.shape(raw)}")
    out = np.zeros((20, 3), dtype=np.float32)
    for k, r in enumerate(MMPOSE_FROM_RELEASE):
        if kps[r, 2] > 0:
            out[k] = (kps[r, 0], kps[r, 1], 2)
    return out.reshape(-1).tolist(), int((out[:, 2] > 0).sum())


def split_trainval(image_ids: list[int], anns_per_image: dict[int, int], val_instances: int = VAL_INSTANCES,
                   seed: int = 0) -> tuple[list[int], list[int]]:
    """mmpose's greedy image-wise split: shuffle images, fill val up to ``val_instances`` instances.

    Returns (train image ids, val image ids), each in shuffled order.
    """
    order = sorted(image_ids)
    np.random.RandomState(seed).shuffle(order)
    train, val, count = [], [], 0
    for img_id in order:
        n = anns_per_image.get(img_id, 0)
        if count + n <= val_instances:
            count += n
            val.append(img_id)
        else:
            train.append(img_id)
    return train, val


@dataclass
class AnimalPoseConversion:
    """The converted release: ``splits`` maps "train"/"val"/"test" to COCO dicts; ``skipped`` lists the release
    records that could not be converted, one dict each (``file``, ``annotation`` = index in the release's
    ``annotations``, ``image_id``, ``reason``)."""

    splits: dict[str, dict]
    skipped: list[dict] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, dict[str, int]]:
        """Images and instances per split."""
        return {s: {"images": len(d["images"]), "instances": len(d["annotations"])} for s, d in self.splits.items()}


def convert_animalpose(keypoints_json: str | Path | dict, images_dir: str | Path, *,
                       val_instances: int = VAL_INSTANCES, seed: int = 0) -> AnimalPoseConversion:
    """Convert the release (path to or content of ``keypoints.json``) to train/val/test COCO dicts.

    Annotations whose ``image_id`` is not in ``images`` are skipped and listed; any other problem (unknown
    species, malformed keypoints, a listed image missing on disk) raises, naming the file and the record.
    """
    source = "keypoints.json" if isinstance(keypoints_json, dict) else str(keypoints_json)
    if isinstance(keypoints_json, dict):
        release = keypoints_json
    else:
        with open(keypoints_json, encoding="utf-8") as f:
            release = json.load(f)
    images_dir = Path(images_dir)
    for key in ("images", "annotations", "categories"):
        if key not in release:
            raise ValueError(f"{source}: no '{key}' field; expected the Animal-Pose keypoints.json release")
    species_ids = {name: cid for cid, name in get_meta("animalpose").species.items()}
    release_species = {}
    for cat in release["categories"]:
        name = str(cat["name"]).strip().lower()
        if name not in species_ids:
            raise ValueError(f"{source}: unknown species category {cat['name']!r}; expected {sorted(species_ids)}")
        release_species[int(cat["id"])] = species_ids[name]

    images: dict[int, dict] = {}
    is_voc: dict[int, bool] = {}
    by_release_id: dict[str, int] = {}
    for rid, file_name in release["images"].items():
        img_id, voc = image_id_from_file_name(file_name)
        if img_id in images:
            raise ValueError(f"{source}: images {file_name!r} and {images[img_id]['file_name']!r} map to one id")
        width, height = _image_size(images_dir / file_name)
        images[img_id] = {"id": img_id, "file_name": file_name, "height": height, "width": width}
        is_voc[img_id] = voc
        by_release_id[str(rid)] = img_id

    anns: list[tuple[int, int, dict]] = []
    skipped: list[dict] = []
    for n, a in enumerate(release["annotations"]):
        where = f"{source}: annotation {n}"
        if str(a.get("image_id")) not in by_release_id:
            skipped.append({"file": source, "annotation": n, "image_id": a.get("image_id"),
                            "reason": f"image_id {a.get('image_id')!r} is not in 'images'"})
            log.warning("%s: image_id %r is not in 'images': skipped", where, a.get("image_id"))
            continue
        if int(a.get("category_id", -1)) not in release_species:
            raise ValueError(f"{where}: category_id {a.get('category_id')!r} is not in 'categories'")
        img_id = by_release_id[str(a["image_id"])]
        keypoints, num = _convert_keypoints(a["keypoints"], where)
        x1, y1, x2, y2 = (float(v) for v in a["bbox"])
        bbox = [x1, y1, x2 - x1, y2 - y1]
        anns.append((img_id, n, {
            "keypoints": keypoints, "image_id": img_id, "id": -1, "num_keypoints": num, "bbox": bbox,
            "iscrowd": 0, "area": float(bbox[2] * bbox[3]), "category_id": release_species[int(a["category_id"])],
        }))
    anns.sort(key=lambda t: (t[0], t[1]))
    next_id = {True: TRAINVAL_ANN_START, False: 0}
    per_image: dict[int, list[dict]] = {}
    for img_id, _, ann in anns:
        ann["id"] = next_id[is_voc[img_id]]
        next_id[is_voc[img_id]] += 1
        per_image.setdefault(img_id, []).append(ann)

    trainval = [i for i in images if is_voc[i]]
    train_ids, val_ids = split_trainval(trainval, {i: len(per_image.get(i, [])) for i in trainval},
                                        val_instances, seed)
    test_ids = sorted(i for i in images if not is_voc[i])
    categories = _categories()
    out: dict[str, dict] = {}
    for split, ids in (("train", sorted(train_ids)), ("val", sorted(val_ids)), ("test", test_ids)):
        out[split] = {
            "info": {"description": f"Animal-Pose (Cao et al., ICCV 2019) {split} split, converted by "
                                    "clamp_pl.formats.animalpose (mmpose keypoint order, species kept)",
                     "version": "1.0"},
            "images": [images[i] for i in ids],
            "annotations": [a for i in ids for a in per_image.get(i, [])],
            "categories": categories,
        }
    return AnimalPoseConversion(out, skipped)


def prepare_animalpose(src: str | Path, out: str | Path | None = None, *, val_instances: int = VAL_INSTANCES,
                       seed: int = 0) -> tuple[dict[str, Path], AnimalPoseConversion]:
    """Convert ``src/keypoints.json`` (images in ``src/images``) into ``out/annotations/animalpose_{split}.json``
    plus ``out/annotations/animalpose_skipped.json`` (the skipped records and the split counts).

    ``out`` defaults to ``src``. When ``out`` differs, ``out/images`` is made a symlink to ``src/images`` so the
    output folder is the layout :class:`~clamp_pl.data.datamodule.AnimalPoseDataModule` reads.

    Returns:
        ``({"train", "val", "test": json, "images": folder, "skipped": json}, conversion)``.
    """
    src = Path(src)
    out = Path(out) if out is not None else src
    ann_file, img_dir = src / "keypoints.json", src / "images"
    for p in (ann_file, img_dir):
        if not p.exists():
            raise FileNotFoundError(
                f"{p} not found: download Animal-Pose Part I (keypoints.json + images/) from the README of "
                f"https://github.com/noahcao/animal-pose-dataset into {src}"
            )
    conversion = convert_animalpose(ann_file, img_dir, val_instances=val_instances, seed=seed)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    if out.resolve() != src.resolve() and not (out / "images").exists():
        (out / "images").symlink_to(img_dir.resolve(), target_is_directory=True)
    paths = {}
    for split, data in conversion.splits.items():
        path = out / "annotations" / f"animalpose_{split}.json"
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)
        paths[split] = path
    paths["images"] = out / "images"
    paths["skipped"] = out / "annotations" / "animalpose_skipped.json"
    paths["skipped"].write_text(json.dumps({"counts": conversion.counts, "skipped": conversion.skipped}, indent=1))
    return paths, conversion
