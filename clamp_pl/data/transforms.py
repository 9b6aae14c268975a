"""Top-down training augmentation and the dataset transform (numpy/cv2), as mmpose and CLAMP.

Conventions as :mod:`clamp_pl.core.geometry` (image pixels, ``center``/``scale`` in pixels, ``input_size`` (W, H));
the geometry and the test-time crop this module composes live in :mod:`clamp_pl.core`, shared with inference.

Training (:class:`TopDownAugment`, CLAMP's mmpose 0.x order): box -> centre/scale with the aspect ratio fixed to
W/H and 1.25 padding; horizontal flip (p 0.5, left/right keypoints swapped); half-body (p 0.3 when more than 8
keypoints are labelled: the box of the upper or lower body, x1.5); scale x clip(N(1, 0.5^2), 0.5, 1.5); rotation
clip(N(0, 40^2), -80, 80) degrees with p 0.6. The centre shift (p 0.3) is either drawn for every sample after the
half-body step (``shift_mode="sample"``, mmpose 1.x) or once per instance for the whole run before the flip
(``shift_mode="dataset"``, mmpose 0.x, what CLAMP ran). All of it becomes ONE affine matrix and ONE bilinear
``cv2.warpAffine`` per sample. Optional photometric augmentation (albumentations, pixel-level transforms only) runs
on the warped crop. Validation/test: centre/scale + warp only.

Speed (``reduced_decode``, off by default): a JPEG whose crop is shrunk by >= 2x (4x) is decoded at half (quarter)
resolution by libjpeg (``cv2.IMREAD_REDUCED_COLOR_2/4``): a faster decode (a training sample of an AP-10K-sized
photo ~1.1x faster in all, ``python -m benchmarks.cpu`` data case) that also anti-aliases the down-sampling, so the
pixels differ from a full decode + bilinear warp (CLAMP's).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from clamp_pl.core.geometry import (
    affine_points,
    bbox_xywh_to_center_scale,
    fix_aspect_ratio,
    flip_keypoints,
    flip_matrix,
    get_warp_matrix,
)
from clamp_pl.core.preprocess import NORMALIZATION, crop_and_normalize, normalize_chw, read_image, warp_crop
from clamp_pl.data.metainfo import DatasetMeta
from clamp_pl.formats.coco import Instance

__all__ = [
    "HALF_BODY_CENTERS",
    "SHIFT_MODES",
    "AugmentParams",
    "TopDownAugment",
    "TopDownTransform",
    "build_photometric",
    "half_body_box",
]


# ------------------------------------------------------------------------------------------------ augmentation
def half_body_box(
    keypoints: np.ndarray,
    upper_body_ids: tuple[int, ...],
    lower_body_ids: tuple[int, ...],
    aspect_ratio: float,
    rng: np.random.Generator,
    padding: float = 1.5,
    upper_prob: float = 0.7,
    center: str = "extent",
) -> tuple[np.ndarray, np.ndarray] | None:
    """Centre and scale of the box around the labelled upper- or lower-body keypoints, or None.

    The upper half is chosen with ``upper_prob`` when it has more than 2 labelled points (mmpose 0.x draws
    ``randn() < 0.5``, p = 0.69; mmpose 1.x uses 0.7), else the lower half when it has more than 2, else the upper
    half; fewer than 2 chosen points -> None. The box is the points' extent, aspect-fixed and x ``padding``.
    ``center="extent"`` centres it on the extent's middle, so it always holds the chosen points; ``"mean"``
    centres it on their mean (mmpose 0.x and 1.x), which can leave points outside when they are unevenly spread.

    Args:
        keypoints: (K, 3) x, y, v in image pixels.
    """
    if center not in HALF_BODY_CENTERS:
        raise ValueError(f"half-body center must be one of {HALF_BODY_CENTERS}, got {center!r}")
    labelled = keypoints[:, 2] > 0
    upper = [i for i in upper_body_ids if labelled[i]]
    lower = [i for i in lower_body_ids if labelled[i]]
    if rng.random() < upper_prob and len(upper) > 2:
        chosen = upper
    elif len(lower) > 2:
        chosen = lower
    else:
        chosen = upper
    if len(chosen) < 2:
        return None
    pts = keypoints[chosen, :2]
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    mid = (lo + hi) * 0.5 if center == "extent" else pts.mean(axis=0)
    return mid, fix_aspect_ratio(hi - lo, aspect_ratio) * padding


#: ``shift_mode`` values of :class:`TopDownAugment`.
SHIFT_MODES = ("sample", "dataset")
#: ``half_body_center`` values of :class:`TopDownAugment` (see :func:`half_body_box`).
HALF_BODY_CENTERS = ("extent", "mean")
# third entry of the seed of the per-instance generator of shift_mode="dataset", so that its draws are
# independent of the per-sample augmentation streams, which are seeded [seed, stream, index]
_DATASET_SHIFT_STREAM = 0x5348_4946  # "SHIF"


@dataclass(frozen=True)
class AugmentParams:
    """Sampled training geometry. ``center``/``scale`` are in the flipped image's frame when ``flipped``."""

    flipped: bool
    center: np.ndarray
    scale: np.ndarray
    rotation: float
    half_body: bool


@dataclass(frozen=True, kw_only=True, eq=False)  # identity equality: meta holds arrays, photometric a dict
class TopDownAugment:
    """Training augmentation: samples the geometry of one instance and applies the photometric transforms.

    Built from ONE config node, ``data.augment`` (:meth:`from_config`): every setting is a required field, and its
    default lives only in ``conf/data/_base.yaml``.

    Geometry, in order (CLAMP = mmpose 0.21, see the module docstring), with the numpy Generator of the sample:

    1. ``shift_mode="dataset"`` (mmpose 0.x ``_xywh2cs``, drawn when the dataset is built): one shift per instance
       for the whole run. With ``shift_prob`` the centre moves by U(-shift_factor, shift_factor) x the UNPADDED
       box (w, h). Drawn from a generator seeded by (``seed``, ``ann_id``), so it is the same in every DataLoader
       worker and every epoch, and does not depend on the order or the other instances of the dataset.
    2. Horizontal flip with ``flip_prob`` (keypoints mirrored and left/right swapped, the centre mirrored).
    3. Half-body with ``half_body_prob`` when more than ``half_body_min_kpts`` keypoints are labelled: the box
       becomes the upper- or lower-body box x ``half_body_padding`` (:func:`half_body_box`, centred by
       ``half_body_center``); it replaces the shifted box of step 1.
    4. ``shift_mode="sample"`` (mmpose 1.x ``RandomBBoxTransform``): a fresh shift for every sample. With
       ``shift_prob`` the centre moves by clip(N(0, 1), -1, 1) x shift_factor x the PADDED box (the crop's w, h).
    5. Scale x clip(N(1, scale_factor^2), 1 - scale_factor, 1 + scale_factor).
    6. Rotation clip(N(0, rot_factor^2), -2 rot_factor, 2 rot_factor) degrees with ``rot_prob``, else 0.

    ``photometric``: albumentations pixel-level transforms (:func:`build_photometric`) run on the warped crop,
    seeded from the sample's Generator; None = off (as CLAMP).
    """

    meta: DatasetMeta
    flip_prob: float
    half_body_prob: float
    half_body_min_kpts: int
    half_body_padding: float
    half_body_center: str
    shift_mode: str
    shift_prob: float
    shift_factor: float
    scale_factor: float
    rot_factor: float
    rot_prob: float
    photometric: dict[str, Any] | None
    #: entropy of the ``shift_mode="dataset"`` draws (the experiment seed)
    seed: int = 0
    _photometric: Any = field(init=False, repr=False, compare=False)
    # shift_mode="dataset" offsets already drawn in this process (a generator costs ~90 us to seed, the sample ~5 ms)
    _shifts: dict[tuple[int, float, float], np.ndarray] = field(init=False, repr=False, compare=False,
                                                              default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("flip_prob", "half_body_prob", "shift_prob", "rot_prob"):
            value = getattr(self, name)
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"data.augment.{name} must be a probability in [0, 1], got {value!r}")
        for name in ("half_body_padding", "shift_factor", "rot_factor"):
            if float(getattr(self, name)) < 0:
                raise ValueError(f"data.augment.{name} must be >= 0, got {getattr(self, name)!r}")
        if not 0.0 <= float(self.scale_factor) < 1.0:
            raise ValueError(f"data.augment.scale_factor must be in [0, 1) (the scale is clipped to 1 +- it), "
                             f"got {self.scale_factor!r}")
        if self.shift_mode not in SHIFT_MODES:
            raise ValueError(f"data.augment.shift_mode must be one of {SHIFT_MODES}, got {self.shift_mode!r}")
        if self.half_body_center not in HALF_BODY_CENTERS:
            raise ValueError(f"data.augment.half_body_center must be one of {HALF_BODY_CENTERS}, "
                             f"got {self.half_body_center!r}")
        if isinstance(self.half_body_min_kpts, bool) or int(self.half_body_min_kpts) != self.half_body_min_kpts \
                or self.half_body_min_kpts < 0:
            raise ValueError(f"data.augment.half_body_min_kpts must be an integer >= 0, got {self.half_body_min_kpts!r}")
        object.__setattr__(self, "_photometric", build_photometric(self.photometric))

    @classmethod
    def from_config(cls, meta: DatasetMeta, node: Mapping[str, Any], seed: int = 0) -> TopDownAugment:
        """Build it from the ``data.augment`` config node; unknown or missing settings are an error naming them."""
        names = {f.name for f in fields(cls) if f.init} - {"meta", "seed"}
        unknown, missing = sorted(set(node) - names), sorted(names - set(node))
        if unknown or missing:
            raise ValueError(f"data.augment: unknown settings {unknown}, missing settings {missing} "
                             f"(the settings are {sorted(names)}; conf/data/_base.yaml lists them)")
        return cls(meta=meta, seed=seed, **node)

    def dataset_shift(self, ann_id: int, bbox: np.ndarray) -> np.ndarray:
        """The fixed centre offset (2,) of ``shift_mode="dataset"`` for the instance ``ann_id`` with the box
        ``bbox`` (4,) xywh; zeros for the 1 - shift_prob instances that are not shifted."""
        wh = np.asarray(bbox, dtype=np.float64)[2:4]
        cache_key = (int(ann_id), float(wh[0]), float(wh[1]))
        offset = self._shifts.get(cache_key)
        if offset is None:
            rng = np.random.default_rng([int(self.seed) % 2**63, _DATASET_SHIFT_STREAM, int(ann_id) % 2**63])
            shifted, u = rng.random(), rng.random(2)
            offset = (2.0 * u - 1.0) * self.shift_factor * wh if shifted < self.shift_prob else np.zeros(2)
            self._shifts[cache_key] = offset
        return offset.copy()

    def __call__(
        self,
        instance: Instance,
        center: np.ndarray,
        scale: np.ndarray,
        aspect_ratio: float,
        rng: np.random.Generator,
    ) -> tuple[AugmentParams, np.ndarray]:
        """Sample the geometry for ``instance``, whose padded, aspect-fixed box is (``center``, ``scale``).

        Returns the parameters and the keypoints (K, 3) in the frame of the parameters (mirrored and left/right
        swapped when flipped).
        """
        kpts = np.asarray(instance.keypoints, dtype=np.float64)
        center = np.asarray(center, dtype=np.float64)
        scale = np.asarray(scale, dtype=np.float64)
        image_width = instance.image_size[0]
        if self.shift_mode == "dataset":
            center = center + self.dataset_shift(instance.ann_id, instance.bbox)
        flipped = bool(rng.random() < self.flip_prob)
        if flipped:
            kpts = flip_keypoints(kpts, image_width, self.meta.flip_indices)
            center = np.array([image_width - 1 - center[0], center[1]])
        half = False
        if (kpts[:, 2] > 0).sum() > self.half_body_min_kpts and rng.random() < self.half_body_prob:
            box = half_body_box(kpts, self.meta.upper_body_ids, self.meta.lower_body_ids, aspect_ratio, rng,
                                padding=self.half_body_padding, center=self.half_body_center)
            if box is not None:
                center, scale = box
                half = True
        if self.shift_mode == "sample" and rng.random() < self.shift_prob:
            center = center + np.clip(rng.standard_normal(2), -1.0, 1.0) * self.shift_factor * scale
        sf = self.scale_factor
        scale = scale * np.clip(rng.standard_normal() * sf + 1.0, 1.0 - sf, 1.0 + sf)
        rot = 0.0
        if rng.random() < self.rot_prob:
            rf = self.rot_factor
            rot = float(np.clip(rng.standard_normal() * rf, -2.0 * rf, 2.0 * rf))
        return AugmentParams(flipped, center, scale, rot, half), kpts

    def apply_photometric(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The photometric transforms on an RGB uint8 crop (H, W, 3), seeded from ``rng`` (unchanged when off)."""
        if self._photometric is None:
            return image
        self._photometric.set_random_seed(int(rng.integers(2**31 - 1)))
        return self._photometric(image=image)["image"]


# ------------------------------------------------------------------------------------------------- pixels
def build_photometric(spec: dict[str, Any] | None):
    """An albumentations ``Compose`` of pixel-level transforms, or None.

    ``spec`` is either albumentations' serialised form (``A.to_dict``: a dict with a ``"transform"`` key) or a
    plain mapping ``{TransformName: kwargs}``, e.g. ``{"ColorJitter": {"brightness": 0.2, "p": 0.8},
    "GaussianBlur": {"p": 0.1}}`` (Hydra-friendly). Geometric transforms are rejected: they would move pixels
    without moving the keypoints.
    """
    if not spec:
        return None
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network check on import
    import albumentations as A

    if "transform" in spec:
        compose = A.from_dict(dict(spec))
    else:
        transforms = []
        for name, kwargs in spec.items():
            cls = getattr(A, name, None)
            if cls is None:
                raise ValueError(f"photometric: albumentations has no transform {name!r}")
            transforms.append(cls(**dict(kwargs or {})))
        compose = A.Compose(transforms)
    for t in compose.transforms:
        if not isinstance(t, A.ImageOnlyTransform):
            raise ValueError(f"photometric: {type(t).__name__} is not a pixel-level (ImageOnlyTransform) "
                             "transform; geometry is handled by TopDownTransform")
    return compose


class TopDownTransform:
    """Instance -> network input and input-space keypoints.

    Args:
        meta: keypoint layout (flip indices).
        input_size: (W, H) of the network input.
        augment: the training augmentation; None = evaluation (centre/scale + warp only, no Generator needed).
        normalization: ``"imagenet"`` (CLAMP) or ``"clip"``, or a pair (mean, std) of RGB triples on the [0, 1]
            scale (a model spec's).
        reduced_decode: decode JPEGs at 1/2 or 1/4 resolution when the crop is shrunk at least that much
            (faster; it changes pixels: libjpeg's DCT scaling anti-aliases the down-sampling that a full decode
            + bilinear warp aliases). CLAMP decodes in full.
        padding: box padding (1.25).
    """

    def __init__(
        self,
        meta: DatasetMeta,
        input_size: tuple[int, int] = (256, 256),
        *,
        augment: TopDownAugment | None = None,
        normalization: str | tuple[Sequence[float], Sequence[float]] = "imagenet",
        reduced_decode: bool = False,
        padding: float = 1.25,
    ) -> None:
        if isinstance(normalization, str) and normalization not in NORMALIZATION:
            raise ValueError(f"normalization must be one of {sorted(NORMALIZATION)}, got {normalization!r}")
        if augment is not None and augment.meta.num_keypoints != meta.num_keypoints:
            raise ValueError(f"augment is for {augment.meta.num_keypoints} keypoints, the transform for "
                             f"{meta.num_keypoints}")
        self.meta = meta
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.aspect_ratio = self.input_size[0] / self.input_size[1]
        self.augment = augment
        self.padding = padding
        self.reduced_decode = bool(reduced_decode)
        named = isinstance(normalization, str)
        self.normalization = normalization if named else "custom"
        self.mean, self.std = NORMALIZATION[normalization] if named else normalization

    @property
    def train(self) -> bool:
        """Whether samples are augmented (and need a Generator)."""
        return self.augment is not None

    def _reduction(self, scale: np.ndarray) -> int:
        """Largest f in {4, 2} with the crop at least f times the input in both dimensions, else 1."""
        if not self.reduced_decode:
            return 1
        for f in (4, 2):
            if scale[0] >= f * self.input_size[0] and scale[1] >= f * self.input_size[1]:
                return f
        return 1

    def __call__(self, instance: Instance, rng: np.random.Generator | None = None) -> dict[str, Any]:
        """Transform one instance.

        Returns:
            ``image`` float32 (3, H, W) normalised RGB; ``keypoints`` float32 (K, 2) in input pixels (meaningless
            where not visible); ``visible`` float32 (K,) (labelled, 0/1); ``center``/``scale`` float32 (2,) of
            the final crop box, in the flipped image's frame when ``flipped``; ``rotation`` (degrees);
            ``flipped``; ``warp_matrix`` float64 (2, 3) mapping ORIGINAL image pixels to input pixels.
        """
        img_w = instance.image_size[0]
        kpts = np.asarray(instance.keypoints, dtype=np.float64)
        center, scale = bbox_xywh_to_center_scale(instance.bbox, self.aspect_ratio, self.padding)
        flipped, rotation = False, 0.0
        if self.augment is None:
            # the test-time crop of inference (clamp_pl.api) too: one function for both
            img, f = read_image(instance.image_path, self._reduction(scale), instance.image_size)
            chw, center, scale = crop_and_normalize(img, instance.bbox, self.input_size, self.mean, self.std,
                                                    self.padding, bgr=True, decode_factor=f)
            frame_to_input = image_to_input = get_warp_matrix(center, scale, 0.0, self.input_size)
        else:
            if rng is None:
                raise ValueError("a training TopDownTransform (with augment) needs a numpy Generator")
            params, kpts = self.augment(instance, center, scale, self.aspect_ratio, rng)
            flipped, center, scale, rotation = params.flipped, params.center, params.scale, params.rotation
            frame_to_input = get_warp_matrix(center, scale, rotation, self.input_size)
            image_to_input = frame_to_input
            if flipped:
                image_to_input = frame_to_input @ flip_matrix(img_w)
            img, f = read_image(instance.image_path, self._reduction(scale), instance.image_size)
            image = warp_crop(img, image_to_input, self.input_size, bgr=True, decode_factor=f)
            chw = normalize_chw(self.augment.apply_photometric(image, rng), self.mean, self.std)
        return {
            "image": chw,
            "keypoints": affine_points(kpts[:, :2], frame_to_input).astype(np.float32),
            "visible": (kpts[:, 2] > 0).astype(np.float32),
            "center": center.astype(np.float32),
            "scale": scale.astype(np.float32),
            "rotation": float(rotation),
            "flipped": flipped,
            "warp_matrix": image_to_input,
        }


