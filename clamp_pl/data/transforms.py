"""Top-down geometry and image preparation (numpy/cv2 only), as mmpose and CLAMP.

Conventions: points are (x, y) image pixels with pixel centres at integer coordinates; ``center`` (2,) and
``scale`` (2,) = (w, h) describe the crop box in image PIXELS (mmpose 1.x, not /200); ``input_size`` = (W, H).

Training (CLAMP's mmpose 0.x pipeline, in order): box -> centre/scale with the aspect ratio fixed to W/H and
1.25 padding; horizontal flip (p 0.5, left/right keypoints swapped); half-body (p 0.3 when more than 8 keypoints
are labelled: the box of the upper or lower body, x1.5); centre shift (p 0.3, up to 0.16 of the box, mmpose 1.x;
CLAMP inherited a shift of up to 0.2 of the unpadded box = 0.16 of the padded one, but drew it once per run);
scale x clip(N(1, 0.5^2), 0.5, 1.5); rotation clip(N(0, 40^2), -80, 80) degrees with p 0.6. All of it becomes ONE
affine matrix and ONE bilinear ``cv2.warpAffine`` per sample. Optional photometric augmentation (albumentations,
pixel-level transforms only) runs on the warped crop. Validation/test: centre/scale + warp only.

Speed: a JPEG whose crop is shrunk by >= 2x (4x) is decoded at half (quarter) resolution by libjpeg
(``cv2.IMREAD_REDUCED_COLOR_2/4``), which is several times faster and also anti-aliases the down-sampling.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from clamp_pl.data.coco import DataError, Instance
from clamp_pl.data.metainfo import DatasetMeta

__all__ = [
    "NORMALIZATION",
    "AugmentParams",
    "TopDownAugment",
    "TopDownTransform",
    "affine_points",
    "bbox_xywh_to_center_scale",
    "build_photometric",
    "fix_aspect_ratio",
    "flip_keypoints",
    "get_warp_matrix",
    "half_body_box",
    "input_to_image_coords",
    "read_image",
]

#: RGB mean and std on the [0, 1] scale. CLAMP normalises with ImageNet statistics even for CLIP towers.
NORMALIZATION: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
}
_JPEG_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".jfif"}
_REDUCED_FLAGS = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4}


# --------------------------------------------------------------------------------------------------- geometry
def fix_aspect_ratio(scale: np.ndarray, aspect_ratio: float) -> np.ndarray:
    """Enlarge (w, h) so that w / h = aspect_ratio (mmpose ``_fix_aspect_ratio``). (..., 2) -> (..., 2)."""
    scale = np.asarray(scale, dtype=np.float64)
    w, h = scale[..., 0], scale[..., 1]
    wider = w > h * aspect_ratio
    return np.stack([np.where(wider, w, h * aspect_ratio), np.where(wider, w / aspect_ratio, h)], axis=-1)


def bbox_xywh_to_center_scale(
    bbox: np.ndarray, aspect_ratio: float, padding: float = 1.25
) -> tuple[np.ndarray, np.ndarray]:
    """Box (4,) xywh -> centre (2,) and scale (2,) = (w, h) of the aspect-fixed box enlarged by ``padding``."""
    x, y, w, h = (float(v) for v in bbox)
    center = np.array([x + 0.5 * w, y + 0.5 * h])
    return center, fix_aspect_ratio(np.array([w, h]), aspect_ratio) * padding


def get_warp_matrix(
    center: np.ndarray,
    scale: np.ndarray,
    rot_deg: float,
    output_size: tuple[int, int],
    inv: bool = False,
) -> np.ndarray:
    """The (2, 3) float64 affine matrix mapping image pixels to output pixels (``inv``: output -> image).

    The box centre goes to the output centre (W/2, H/2), the box width ``scale[0]`` to W (the aspect ratio is
    assumed fixed, as mmpose's ``get_warp_matrix`` without UDP), and the content is rotated by ``rot_deg``
    counter-clockwise. Equal to ``cv2.getAffineTransform`` on mmpose's three points, in closed form. Float64
    (cv2 accepts it) keeps round trips exact to ~1e-9 px.
    """
    out_w, out_h = output_size
    k = out_w / float(scale[0])
    theta = math.radians(rot_deg)
    c, s = math.cos(theta), math.sin(theta)
    center = np.asarray(center, dtype=np.float64)
    dst = np.array([out_w * 0.5, out_h * 0.5])
    if inv:
        lin = np.array([[c, -s], [s, c]]) / k
        return np.hstack([lin, (center - lin @ dst)[:, None]])
    lin = k * np.array([[c, s], [-s, c]])
    return np.hstack([lin, (dst - lin @ center)[:, None]])


def affine_points(points: np.ndarray, mat: np.ndarray) -> np.ndarray:
    """Apply a (2, 3) affine matrix to points (..., 2)."""
    pts = np.asarray(points, dtype=np.float64)
    return pts @ mat[:, :2].T + mat[:, 2]


def input_to_image_coords(
    keypoints: np.ndarray, center: np.ndarray, scale: np.ndarray, input_size: tuple[int, int]
) -> np.ndarray:
    """Map keypoints (N, K, 2) from input pixels back to image pixels, given each crop's centre (N, 2) and
    scale (N, 2) (no rotation, test time; mmpose ``transform_preds`` without UDP)."""
    kpts = np.asarray(keypoints, dtype=np.float64)
    center = np.asarray(center, dtype=np.float64)[:, None, :]
    scale = np.asarray(scale, dtype=np.float64)[:, None, :]
    return kpts / np.asarray(input_size, dtype=np.float64) * scale + center - 0.5 * scale


def flip_keypoints(keypoints: np.ndarray, width: float, flip_indices: tuple[int, ...] | list[int]) -> np.ndarray:
    """Mirror keypoints (K, 2 or 3) in an image of ``width`` pixels: x' = width - 1 - x, then swap left/right
    (row k of the result is the mirrored partner ``flip_indices[k]``). Extra columns move with their rows."""
    out = np.array(keypoints, dtype=np.float64, copy=True)
    out[:, 0] = width - 1 - out[:, 0]
    return out[list(flip_indices)]


def _flip_matrix(width: float) -> np.ndarray:
    """3x3 homogeneous horizontal flip x -> width - 1 - x."""
    return np.array([[-1.0, 0.0, width - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])


def half_body_box(
    keypoints: np.ndarray,
    upper_body_ids: tuple[int, ...],
    lower_body_ids: tuple[int, ...],
    aspect_ratio: float,
    rng: np.random.Generator,
    padding: float = 1.5,
    upper_prob: float = 0.7,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Centre and scale of the box around the labelled upper- or lower-body keypoints, or None.

    The upper half is chosen with ``upper_prob`` when it has more than 2 labelled points (mmpose 0.x draws
    ``randn() < 0.5``, p = 0.69; mmpose 1.x uses 0.7), else the lower half when it has more than 2, else the upper
    half; fewer than 2 chosen points -> None. The box is the points' extent, aspect-fixed and x ``padding``,
    centred on the extent's middle so it always holds the chosen points (mmpose centres it on their mean,
    which can leave points outside when they are unevenly spread).

    Args:
        keypoints: (K, 3) x, y, v in image pixels.
    """
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
    return (lo + hi) * 0.5, fix_aspect_ratio(hi - lo, aspect_ratio) * padding


@dataclass(frozen=True)
class AugmentParams:
    """Sampled training geometry. ``center``/``scale`` are in the flipped image's frame when ``flipped``."""

    flipped: bool
    center: np.ndarray
    scale: np.ndarray
    rotation: float
    half_body: bool


class TopDownAugment:
    """Samples the training geometry of one instance (numpy Generator passed in, so it is reproducible).

    Order and distributions follow CLAMP (mmpose 0.21): flip, half-body, then (mmpose 1.x) centre shift, scale and
    rotation; see the module docstring. The scale is clip(N(1, scale_factor^2), 1 - scale_factor,
    1 + scale_factor); the rotation clip(N(0, rot_factor^2), -2 rot_factor, 2 rot_factor) with ``rot_prob``; the
    shift clip(N(0, 1), -1, 1) * shift_factor * box size with ``shift_prob``.
    """

    def __init__(
        self,
        meta: DatasetMeta,
        *,
        flip_prob: float = 0.5,
        half_body_prob: float = 0.3,
        half_body_min_kpts: int = 8,
        half_body_padding: float = 1.5,
        shift_prob: float = 0.3,
        shift_factor: float = 0.16,
        scale_factor: float = 0.5,
        rot_factor: float = 40.0,
        rot_prob: float = 0.6,
    ) -> None:
        self.meta = meta
        self.flip_prob = flip_prob
        self.half_body_prob = half_body_prob
        self.half_body_min_kpts = half_body_min_kpts
        self.half_body_padding = half_body_padding
        self.shift_prob = shift_prob
        self.shift_factor = shift_factor
        self.scale_factor = scale_factor
        self.rot_factor = rot_factor
        self.rot_prob = rot_prob

    def __call__(
        self,
        keypoints: np.ndarray,
        center: np.ndarray,
        scale: np.ndarray,
        image_width: int,
        aspect_ratio: float,
        rng: np.random.Generator,
    ) -> tuple[AugmentParams, np.ndarray]:
        """Sample parameters for keypoints (K, 3) and the box (center, scale) of an image ``image_width`` wide.

        Returns the parameters and the keypoints (K, 3) in the frame of the parameters (mirrored and left/right
        swapped when flipped).
        """
        kpts = np.asarray(keypoints, dtype=np.float64)
        center = np.asarray(center, dtype=np.float64)
        scale = np.asarray(scale, dtype=np.float64)
        flipped = bool(rng.random() < self.flip_prob)
        if flipped:
            kpts = flip_keypoints(kpts, image_width, self.meta.flip_indices)
            center = np.array([image_width - 1 - center[0], center[1]])
        half = False
        if (kpts[:, 2] > 0).sum() > self.half_body_min_kpts and rng.random() < self.half_body_prob:
            box = half_body_box(kpts, self.meta.upper_body_ids, self.meta.lower_body_ids, aspect_ratio, rng,
                                padding=self.half_body_padding)
            if box is not None:
                center, scale = box
                half = True
        if rng.random() < self.shift_prob:
            center = center + np.clip(rng.standard_normal(2), -1.0, 1.0) * self.shift_factor * scale
        sf = self.scale_factor
        scale = scale * np.clip(rng.standard_normal() * sf + 1.0, 1.0 - sf, 1.0 + sf)
        rot = 0.0
        if rng.random() < self.rot_prob:
            rf = self.rot_factor
            rot = float(np.clip(rng.standard_normal() * rf, -2.0 * rf, 2.0 * rf))
        return AugmentParams(flipped, center, scale, rot, half), kpts


# ------------------------------------------------------------------------------------------------- pixels
def read_image(path: str, reduce: int = 1, expected_size: tuple[int, int] | None = None) -> tuple[np.ndarray, int]:
    """Read a BGR uint8 image with cv2 (EXIF orientation applied), at 1/``reduce`` resolution when possible.

    Reduced decoding is used only for JPEG files and only when the decoded size is ceil(W / f) x ceil(H / f),
    i.e. libjpeg's DCT scaling; otherwise the image is decoded in full. Pixel i of a 1/f image covers full
    pixels f*i .. f*i + f - 1, so x_full = f * x_reduced + (f - 1) / 2.

    Returns:
        (image (h, w, 3), f) with f in {1, 2, 4} the factor actually used.

    Raises:
        DataError: the file cannot be read, or its size differs from ``expected_size`` (W, H).
    """
    if reduce in _REDUCED_FLAGS and Path(path).suffix.lower() in _JPEG_SUFFIXES:
        img = cv2.imread(path, _REDUCED_FLAGS[reduce])
        if img is not None and (expected_size is None or img.shape[:2] == (
                -(-expected_size[1] // reduce), -(-expected_size[0] // reduce))):
            return img, reduce
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise DataError(f"{path}: cannot read image (missing, unreadable or not an image)")
    if expected_size is not None and img.shape[1::-1] != tuple(expected_size):
        raise DataError(f"{path}: image is {img.shape[1]}x{img.shape[0]} but the annotation says "
                        f"{expected_size[0]}x{expected_size[1]}")
    return img, 1


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
        meta: keypoint layout (flip indices, half-body groups).
        input_size: (W, H) of the network input.
        train: sample augmentation (else centre/scale + warp only; ``rng`` is then unused).
        flip_prob, half_body_prob, half_body_min_kpts, shift_prob, shift_factor, scale_factor, rot_factor,
            rot_prob: see :class:`TopDownAugment`.
        photometric: albumentations spec (:func:`build_photometric`); None = off.
        normalization: ``"imagenet"`` (CLAMP) or ``"clip"`` mean/std.
        reduced_decode: decode JPEGs at 1/2 or 1/4 resolution when the crop is shrunk at least that much.
        padding: box padding (1.25).
    """

    def __init__(
        self,
        meta: DatasetMeta,
        input_size: tuple[int, int] = (256, 256),
        *,
        train: bool,
        flip_prob: float = 0.5,
        half_body_prob: float = 0.3,
        half_body_min_kpts: int = 8,
        shift_prob: float = 0.3,
        shift_factor: float = 0.16,
        scale_factor: float = 0.5,
        rot_factor: float = 40.0,
        rot_prob: float = 0.6,
        photometric: dict[str, Any] | None = None,
        normalization: str = "imagenet",
        reduced_decode: bool = True,
        padding: float = 1.25,
    ) -> None:
        if normalization not in NORMALIZATION:
            raise ValueError(f"normalization must be one of {sorted(NORMALIZATION)}, got {normalization!r}")
        self.meta = meta
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.aspect_ratio = self.input_size[0] / self.input_size[1]
        self.train = bool(train)
        self.padding = padding
        self.reduced_decode = reduced_decode
        self.normalization = normalization
        self.augment = TopDownAugment(
            meta,
            flip_prob=flip_prob,
            half_body_prob=half_body_prob,
            half_body_min_kpts=half_body_min_kpts,
            shift_prob=shift_prob,
            shift_factor=shift_factor,
            scale_factor=scale_factor,
            rot_factor=rot_factor,
            rot_prob=rot_prob,
        )
        self.photometric = build_photometric(photometric)
        mean, std = NORMALIZATION[normalization]
        # (x / 255 - mean) / std == x * a - b, on RGB channels
        self._norm_a = (1.0 / (255.0 * np.asarray(std, dtype=np.float32))).astype(np.float32)
        self._norm_b = (np.asarray(mean, dtype=np.float32) / np.asarray(std, dtype=np.float32)).astype(np.float32)

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
        img_w, img_h = instance.image_size
        kpts = np.asarray(instance.keypoints, dtype=np.float64)
        center, scale = bbox_xywh_to_center_scale(instance.bbox, self.aspect_ratio, self.padding)
        flipped, rotation = False, 0.0
        if self.train:
            if rng is None:
                raise ValueError("TopDownTransform(train=True) needs a numpy Generator")
            params, kpts = self.augment(kpts, center, scale, img_w, self.aspect_ratio, rng)
            flipped, center, scale, rotation = params.flipped, params.center, params.scale, params.rotation
        frame_to_input = get_warp_matrix(center, scale, rotation, self.input_size)
        image_to_input = frame_to_input
        if flipped:
            image_to_input = frame_to_input @ _flip_matrix(img_w)
        image = self._warp(instance, image_to_input, scale)
        if self.photometric is not None:
            if rng is not None:
                self.photometric.set_random_seed(int(rng.integers(2**31 - 1)))
            image = self.photometric(image=image)["image"]
        # transposing the uint8 crop first and normalising in place is ~8x faster than the float HWC route
        chw = np.ascontiguousarray(image.transpose(2, 0, 1)).astype(np.float32)
        chw *= self._norm_a[:, None, None]
        chw -= self._norm_b[:, None, None]
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

    def _warp(self, instance: Instance, image_to_input: np.ndarray, scale: np.ndarray) -> np.ndarray:
        """Read the image (reduced when allowed) and warp it once; returns RGB uint8 (H, W, 3)."""
        img, f = read_image(instance.image_path, self._reduction(scale), instance.image_size)
        mat = image_to_input
        if f > 1:
            # reduced pixel -> full pixel: x_full = f * x_red + (f - 1) / 2
            off = (f - 1) * 0.5
            mat = image_to_input @ np.array([[f, 0.0, off], [0.0, f, off], [0.0, 0.0, 1.0]])
        crop = cv2.warpAffine(img, mat, self.input_size, flags=cv2.INTER_LINEAR)
        return cv2.cvtColor(crop, cv2.COLOR_BGR2RGB)
