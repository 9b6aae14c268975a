"""Top-down geometry (numpy only), shared by training, evaluation and inference.

Conventions: points are (x, y) image pixels with pixel centres at integer coordinates; ``center`` (2,) and
``scale`` (2,) = (w, h) describe the crop box in image PIXELS (mmpose 1.x, not /200); ``input_size`` = (W, H);
boxes are ``[x, y, w, h]`` in image pixels.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "affine_points",
    "bbox_xywh_to_center_scale",
    "fix_aspect_ratio",
    "fix_box_aspect",
    "flip_keypoints",
    "flip_matrix",
    "get_warp_matrix",
    "input_to_image_coords",
    "keypoint_box",
]


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


def flip_matrix(width: float) -> np.ndarray:
    """3x3 homogeneous horizontal flip x -> width - 1 - x."""
    return np.array([[-1.0, 0.0, width - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])


def fix_box_aspect(box: np.ndarray, aspect: float) -> np.ndarray:
    """Grow the shorter side of ``box`` ``[x, y, w, h]`` so that ``w / h == aspect``, centre kept."""
    box = np.asarray(box, dtype=np.float64)
    wh = fix_aspect_ratio(box[2:], aspect)
    return np.concatenate([box[:2] + box[2:] / 2 - wh / 2, wh])


def keypoint_box(xy: np.ndarray, margin: float = 0.25, min_margin: float = 4.0,
                 clip_to: tuple[int, int] | None = None) -> np.ndarray | None:
    """The box ``[x, y, w, h]`` (float64) around the labelled points ``xy`` (K, 2; NaN rows ignored): their extent
    pushed out on every side by ``max(margin * larger side, min_margin)`` pixels, then clipped to the image
    ``[0, W] x [0, H]`` when ``clip_to`` = (W, H) is given. None when no point is labelled.

    Training boxes made from labels (DeepLabCut, SLEAP) and the boxes that follow an animal through a video use
    this one rule, so that inference crops look like the training crops.
    """
    xy = np.asarray(xy, dtype=np.float64)
    pts = xy[~np.isnan(xy).any(axis=1)]
    if len(pts) == 0:
        return None
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    pad = max(margin * float(max(hi - lo)), min_margin)
    x0, y0, x1, y1 = lo[0] - pad, lo[1] - pad, hi[0] + pad, hi[1] + pad
    if clip_to is not None:
        x0, y0 = max(0.0, x0), max(0.0, y0)
        x1, y1 = min(float(clip_to[0]), x1), min(float(clip_to[1]), y1)
    return np.array([x0, y0, x1 - x0, y1 - y0])
