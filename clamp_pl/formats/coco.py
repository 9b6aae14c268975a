"""Reading COCO keypoint files into validated :class:`Instance` records.

Every field the pipeline uses is checked once, at load time, with an error that names the file, the record
(annotation or image id) and the field. ``on_error="raise"`` stops at the first bad record; ``on_error="skip"``
drops it, records why in a :class:`LoadReport`, and keeps everything else. Errors that leave nothing to read
(the file is missing, not JSON, or lacks the ``images``/``annotations``/``categories`` lists) always raise.

Rules that are not errors:

* crowd annotations (``iscrowd=1``) are not instances (top-down training and GT-box evaluation ignore them);
* an annotation without any labelled keypoint is dropped from the instances when ``skip_unlabelled`` is true
  (default: ``train``). CLAMP/mmpose 0.x drop them in every split; keeping them for evaluation is harmless for
  OKS AP because xtcocotools ignores ground truth without labelled keypoints;
* boxes are clipped to the image as mmpose 1.x does (``x1 = clip(x, 0, W-1)``, ``x2 = clip(x + w, 0, W-1)``);
* a missing or non-positive ``area`` is replaced by the clipped box area (xtcocotools' ``use_area`` needs it).

The returned ground-truth dict holds the valid categories, images and annotations (crowd and unlabelled ones
included) and is what ``xtcocotools.coco.COCO`` / the evaluation get; invalid records are removed from it so
evaluation never sees data the model was not given.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from clamp_pl.core.errors import DataError
from clamp_pl.data.metainfo import DatasetMeta

__all__ = ["DataError", "Instance", "LoadReport", "load_coco_instances", "check_image_file"]

_EXIF_ORIENTATION = 0x0112
_TRANSPOSED_ORIENTATIONS = {5, 6, 7, 8}  # EXIF orientations that swap width and height (cv2 applies them)


@dataclass
class Instance:
    """One annotated animal, ready for top-down processing.

    ``bbox`` is xywh in image pixels, clipped to the image; ``keypoints`` is (K, 3) float32 with (x, y) in image
    pixels (pixel centres at integer coordinates, mmpose convention) and v in {0, 1, 2}; unlabelled keypoints
    (v = 0) have x = y = 0. ``image_size`` is (W, H) as seen by ``cv2.imread`` (EXIF orientation applied).
    """

    ann_id: int
    image_id: int
    image_path: str
    image_size: tuple[int, int]
    bbox: np.ndarray
    keypoints: np.ndarray
    category_id: int
    species: str
    family: str
    area: float


@dataclass
class LoadReport:
    """What :func:`load_coco_instances` kept and dropped.

    ``skipped`` has one dict per dropped record: ``file``, ``ann_id`` (None for image/category records),
    ``image_id``, ``category_id``, ``field`` and ``reason``. ``counts`` has ``annotations`` (in the file),
    ``instances`` (returned), ``crowd`` and ``unlabelled`` (dropped by rule, not errors) and ``skipped``
    (annotations dropped because of an error, their own or their image's/category's).
    """

    file: str
    skipped: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, int] = field(
        default_factory=lambda: {"annotations": 0, "instances": 0, "crowd": 0, "unlabelled": 0, "skipped": 0}
    )

    @property
    def skipped_by_field(self) -> dict[str, int]:
        """Number of skipped records per offending field."""
        return dict(Counter(s["field"] for s in self.skipped))

    def write(self, path: str | Path) -> Path:
        """Write the report as JSON (``file``, ``counts``, ``skipped_by_field``, ``skipped``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {**asdict(self), "skipped_by_field": self.skipped_by_field}
        path.write_text(json.dumps(payload, indent=1, default=str))
        return path


class _Errors:
    """Raises or records a bad record, according to ``on_error``."""

    def __init__(self, report: LoadReport, on_error: str) -> None:
        self.report = report
        self.raise_ = on_error == "raise"

    def __call__(
        self,
        field_: str,
        reason: str,
        *,
        ann_id: int | None = None,
        image_id: int | None = None,
        category_id: int | None = None,
        annotation: bool = False,
    ) -> None:
        if self.raise_:
            raise DataError(f"{self.report.file}: {_record(ann_id, image_id, category_id)}: field "
                            f"'{field_}': {reason}")
        self.report.skipped.append(
            {"file": self.report.file, "ann_id": ann_id, "image_id": image_id, "category_id": category_id,
             "field": field_, "reason": reason}
        )
        if annotation:
            self.report.counts["skipped"] += 1


def _record(ann_id: int | None, image_id: int | None, category_id: int | None) -> str:
    if ann_id is not None:
        return f"annotation {ann_id}" + (f" (image {image_id})" if image_id is not None else "")
    if image_id is not None:
        return f"image {image_id}"
    return f"category {category_id}"


def _first_name_difference(names: list[Any], layout: tuple[str, ...]) -> int | None:
    """Index of the first keypoint name that differs from the layout's (stray whitespace ignored), or None."""
    return next((i for i, (a, b) in enumerate(zip(names, layout)) if str(a).strip() != b.strip()), None)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"{path}: annotation file not found")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: malformed JSON: {e}") from e
    if not isinstance(data, dict):
        raise DataError(f"{path}: top level must be a JSON object, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{path}: field '{key}' must be a list (COCO keypoint format)")
    return data


def check_image_file(path: str | Path, width: int, height: int) -> str | None:
    """Cheaply check an image file: exists, has a decodable header of the given size (after EXIF orientation,
    as ``cv2.imread`` sees it) and is not truncated. Returns None when fine, else the reason.

    Truncation is detected from the end marker (JPEG EOI ``FFD9``, PNG ``IEND``) without decoding; files without
    one (other formats, or trailing bytes after the marker) get a full decode, which fails on truncated data.
    """
    path = Path(path)
    if not path.is_file():
        return f"image file not found: {path}"
    try:
        with Image.open(path) as im:
            size = im.size
            fmt = im.format
            if im.getexif().get(_EXIF_ORIENTATION, 1) in _TRANSPOSED_ORIENTATIONS:
                size = (size[1], size[0])
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        return f"cannot decode image {path}: {e}"
    if size != (width, height):
        return f"image {path} is {size[0]}x{size[1]} but the JSON says {width}x{height}"
    marker = {"JPEG": b"\xff\xd9", "PNG": b"IEND"}.get(fmt or "")
    if marker is not None:
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - 64))
            if marker in f.read():
                return None
    try:
        with Image.open(path) as im:
            im.load()
    except (OSError, SyntaxError, ValueError) as e:
        return f"truncated or corrupt image {path}: {e}"
    return None


def _check_image_record(im: dict[str, Any]) -> tuple[str, str] | None:
    """(field, reason) of the first bad field of an image record, or None."""
    if not isinstance(im.get("file_name"), str) or not im["file_name"]:
        return "file_name", f"must be a non-empty string, got {im.get('file_name')!r}"
    for fld in ("width", "height"):
        if not _is_int(im.get(fld)) or im[fld] <= 0:
            return fld, f"must be a positive integer, got {im.get(fld)!r}"
    return None


def _check_keypoints(raw: Any, k: int) -> tuple[np.ndarray | None, str]:
    if not isinstance(raw, list):
        return None, f"must be a list of 3*K = {3 * k} numbers, got {type(raw).__name__}"
    if len(raw) != 3 * k:
        return None, f"has {len(raw)} values ({len(raw) / 3:g} keypoints), expected 3*K = {3 * k} (K = {k})"
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw):
        return None, "contains non-numeric values"
    kp = np.asarray(raw, dtype=np.float64).reshape(k, 3)
    if not np.all(np.isfinite(kp)):
        bad = int(np.flatnonzero(~np.isfinite(kp).all(axis=1))[0])
        return None, f"keypoint {bad} is not finite: {kp[bad].tolist()}"
    if not np.all(np.isin(kp[:, 2], (0, 1, 2))):
        bad = int(np.flatnonzero(~np.isin(kp[:, 2], (0, 1, 2)))[0])
        return None, f"keypoint {bad} has visibility {kp[bad, 2]:g}, expected 0, 1 or 2"
    labelled = kp[:, 2] > 0
    neg = labelled & (kp[:, :2] < 0).any(axis=1)
    if neg.any():
        bad = int(np.flatnonzero(neg)[0])
        return None, f"labelled keypoint {bad} has negative coordinates {kp[bad, :2].tolist()}"
    kp[~labelled] = 0.0
    return kp.astype(np.float32), ""


def _check_bbox(raw: Any, width: int, height: int) -> tuple[np.ndarray | None, str]:
    if not isinstance(raw, list) or len(raw) != 4:
        return None, f"must be [x, y, w, h], got {raw!r}"
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in raw):
        return None, f"must hold 4 finite numbers, got {raw!r}"
    x, y, w, h = (float(v) for v in raw)
    if w <= 0 or h <= 0:
        return None, f"{raw!r} has zero area"
    x1, y1 = min(max(x, 0.0), width - 1.0), min(max(y, 0.0), height - 1.0)
    x2, y2 = min(max(x + w, 0.0), width - 1.0), min(max(y + h, 0.0), height - 1.0)
    if x2 <= x1 or y2 <= y1:
        return None, f"{raw!r} is outside the {width}x{height} image (nothing left after clipping)"
    return np.array([x1, y1, x2 - x1, y2 - y1], dtype=np.float32), ""


def load_coco_instances(
    ann_file: str | Path,
    img_dir: str | Path,
    meta: DatasetMeta,
    *,
    train: bool,
    on_error: Literal["raise", "skip"] = "raise",
    check_images: bool = True,
    skip_unlabelled: bool | None = None,
) -> tuple[list[Instance], dict[str, Any], LoadReport]:
    """Load and validate a COCO keypoint file.

    Args:
        ann_file: the JSON file.
        img_dir: directory the images' ``file_name`` are relative to.
        meta: the keypoint layout; annotations must have ``meta.num_keypoints`` keypoints.
        train: training split (decides the default of ``skip_unlabelled``).
        on_error: ``"raise"`` -> :class:`DataError` at the first bad record; ``"skip"`` -> drop and report it.
        check_images: open every image header (existence, size against the JSON, truncation). Turn off only
            for files already checked; unreadable images then fail at load time in the transform.
        skip_unlabelled: drop annotations without any labelled keypoint (default: ``train``).

    Returns:
        ``(instances, gt, report)``: instances in file order; the ground-truth dict restricted to valid records
        (a new dict, the file's other top-level keys kept); the load report.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    path = Path(ann_file)
    img_dir = Path(img_dir)
    skip_unlabelled = train if skip_unlabelled is None else skip_unlabelled
    data = _read_json(path)
    report = LoadReport(file=str(path))
    fail = _Errors(report, on_error)
    categories, bad_categories = _valid_categories(data["categories"], meta, fail)
    images, bad_images = _valid_images(data["images"], fail)
    if check_images:
        _check_image_files(images, bad_images, img_dir, fail)
    instances, kept_anns = _instances(data["annotations"], _Valid(categories, bad_categories, images, bad_images),
                                      meta, img_dir, report, fail, skip_unlabelled)
    return instances, _restricted_gt(data, categories, images, kept_anns), report


def _valid_categories(
    raw: list[Any], meta: DatasetMeta, fail: _Errors
) -> tuple[dict[int, dict[str, Any]], set[Any]]:
    """The categories whose keypoints match ``meta``'s layout, by id, and the ids of the unusable ones."""
    k = meta.num_keypoints
    categories: dict[int, dict[str, Any]] = {}
    bad_categories: set[Any] = set()
    for cat in raw:
        cid = cat.get("id") if isinstance(cat, dict) else None
        if not _is_int(cid):
            fail("id", f"category id must be an integer, got {cid!r}", category_id=None)
            continue
        names = cat.get("keypoints")
        if not isinstance(names, list) or not names:
            fail("keypoints", "category has no 'keypoints' list (not a keypoint category)", category_id=cid)
            bad_categories.add(cid)
        elif len(names) != k:
            fail("keypoints", f"category defines {len(names)} keypoints, the '{meta.name}' layout has {k}",
                 category_id=cid)
            bad_categories.add(cid)
        elif (diff := _first_name_difference(names, meta.keypoint_names)) is not None:
            fail("keypoints", f"keypoint {diff} is {names[diff]!r} but the '{meta.name}' layout has "
                 f"{meta.keypoint_names[diff]!r} there (keypoint lists must match in order)", category_id=cid)
            bad_categories.add(cid)
        elif cid in categories:
            fail("id", "duplicate category id", category_id=cid)
        else:
            categories[cid] = cat
    return categories, bad_categories


def _valid_images(raw: list[Any], fail: _Errors) -> tuple[dict[int, dict[str, Any]], set[Any]]:
    """The well-formed image records by id, and the ids of the bad ones."""
    images: dict[int, dict[str, Any]] = {}
    bad_images: set[Any] = set()
    for im in raw:
        iid = im.get("id") if isinstance(im, dict) else None
        if not _is_int(iid):
            fail("id", f"image id must be an integer, got {iid!r}", image_id=None)
            continue
        if iid in images or iid in bad_images:
            fail("id", "duplicate image id", image_id=iid)
            continue
        problem = _check_image_record(im)
        if problem:
            fail(*problem, image_id=iid)
            bad_images.add(iid)
        else:
            images[iid] = im
    return images, bad_images


def _check_image_files(images: dict[int, dict[str, Any]], bad_images: set[Any], img_dir: Path, fail: _Errors
                       ) -> None:
    """Open every image's header (in threads); images whose file is missing,
    truncated or of another size move from ``images`` to ``bad_images``."""
    if not images:
        return
    todo = list(images.values())
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        reasons = list(pool.map(
            lambda im: check_image_file(img_dir / im["file_name"], im["width"], im["height"]), todo))
    for im, reason in zip(todo, reasons):
        if reason is not None:
            fail("file_name", reason, image_id=im["id"])
            bad_images.add(im["id"])
            del images[im["id"]]


@dataclass
class _Valid:
    """The categories and images an annotation may refer to, and the ids of the invalid ones."""

    categories: dict[int, dict[str, Any]]
    bad_categories: set[Any]
    images: dict[int, dict[str, Any]]
    bad_images: set[Any]


def _instances(
    anns: list[Any], valid: _Valid, meta: DatasetMeta, img_dir: Path, report: LoadReport, fail: _Errors,
    skip_unlabelled: bool,
) -> tuple[list[Instance], list[dict[str, Any]]]:
    """The instances of the valid annotations (file order) and the annotations the ground truth keeps (crowd and
    unlabelled ones included)."""
    categories, bad_categories = valid.categories, valid.bad_categories
    images, bad_images = valid.images, valid.bad_images
    k = meta.num_keypoints
    instances: list[Instance] = []
    kept_anns: list[dict[str, Any]] = []
    seen_ids: set[int] = set()
    report.counts["annotations"] = len(anns)
    for ann in anns:
        if not isinstance(ann, dict) or not _is_int(ann.get("id")):
            raw = ann.get("id") if isinstance(ann, dict) else ann
            fail("id", f"annotation id must be an integer, got {raw!r}", annotation=True,
                 image_id=ann.get("image_id") if isinstance(ann, dict) else None)
            continue
        aid = ann["id"]
        iid = ann.get("image_id")
        skip = partial(fail, ann_id=aid, image_id=iid, annotation=True)
        if aid in seen_ids:
            skip("id", "duplicate annotation id")
            continue
        seen_ids.add(aid)
        if iid not in images:
            why = "its image record is invalid (see the image's entry)" if iid in bad_images else \
                f"no image with id {iid!r}"
            skip("image_id", why)
            continue
        cid = ann.get("category_id")
        if cid not in categories:
            why = "its category has no usable keypoint definition" if cid in bad_categories else \
                f"category id {cid!r} is not in 'categories' (ids: {sorted(categories)})"
            skip("category_id", why, category_id=cid if _is_int(cid) else None)
            continue
        if ann.get("iscrowd", 0):
            report.counts["crowd"] += 1
            kept_anns.append(ann)
            continue
        im = images[iid]
        kpts, why = _check_keypoints(ann.get("keypoints"), k)
        if kpts is None:
            skip("keypoints", why, category_id=cid)
            continue
        bbox, why = _check_bbox(ann.get("bbox"), im["width"], im["height"])
        if bbox is None:
            skip("bbox", why, category_id=cid)
            continue
        area = ann.get("area")
        if not isinstance(area, (int, float)) or isinstance(area, bool) or not area > 0:
            area = float(bbox[2] * bbox[3])
            ann = {**ann, "area": area}
        kept_anns.append(ann)
        if not (kpts[:, 2] > 0).any() and skip_unlabelled:
            report.counts["unlabelled"] += 1
            continue
        cat = categories[cid]
        species = str(cat.get("name", cid))
        family = meta.family_of(species) or str(cat.get("supercategory") or "")
        instances.append(
            Instance(
                ann_id=aid,
                image_id=iid,
                image_path=str(img_dir / im["file_name"]),
                image_size=(im["width"], im["height"]),
                bbox=bbox,
                keypoints=kpts,
                category_id=cid,
                species=species,
                family=family,
                area=float(area),
            )
        )
    report.counts["instances"] = len(instances)
    return instances, kept_anns


def _restricted_gt(data: dict[str, Any], categories: dict[int, dict[str, Any]], images: dict[int, dict[str, Any]],
                   kept_anns: list[dict[str, Any]]) -> dict[str, Any]:
    """The ground-truth dict of the valid records (a new dict, the file's other top-level keys kept)."""
    gt = {key: value for key, value in data.items() if key not in ("images", "annotations", "categories")}
    gt["categories"] = list(categories.values())
    gt["images"] = [im for im in data["images"] if isinstance(im, dict) and im.get("id") in images]
    gt["annotations"] = kept_anns
    return gt


def write_results(path: str | Path, results: Sequence[Mapping]) -> Path:
    """Write COCO keypoint results as JSON (the format ``COCO.loadRes`` reads); creates parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(list(results), f, default=_json_default)
    return path


def _json_default(obj: object) -> object:
    # Results often hold numpy scalars/arrays straight from the decoder.
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
