"""From network heatmaps to image keypoints: flip test and decoding, shared by evaluation (``PoseLitModule``)
and inference (``clamp_pl.api``). Plain torch + numpy; no Lightning."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from clamp_pl.codecs import MSRAHeatmap
from clamp_pl.core.geometry import input_to_image_coords

__all__ = ["decode_heatmaps", "flip_back", "flip_passes", "flip_test_heatmaps"]


def flip_back(heatmaps: Tensor, flip_indices: Sequence[int], shift: bool = True) -> Tensor:
    """Undo a horizontal input flip on heatmaps ``[B, K, h, w]``: mirror, swap left/right channels and, for
    non-UDP codecs, shift one pixel right to undo the half-pixel misalignment (mmpose ``flip_heatmaps``)."""
    out = heatmaps.flip(-1)[:, list(flip_indices)]
    if shift:
        out = torch.cat([out[..., :1], out[..., :-1]], dim=-1)
    return out


def flip_passes(
    forward: Callable[[Tensor], Tensor], images: Tensor, flip_indices: Sequence[int], shift: bool = True
) -> tuple[Tensor, Tensor]:
    """Both passes of the flip test, ``(original, flipped back)`` heatmaps ``[B, K, h, w]`` (float32) of
    normalised crops ``[B, 3, H, W]``: the original and the mirrored crops run as ONE batch through ``forward``."""
    b = images.shape[0]
    hm = forward(torch.cat([images, images.flip(-1)])).float()
    return hm[:b], flip_back(hm[b:], flip_indices, shift)


def flip_test_heatmaps(
    forward: Callable[[Tensor], Tensor],
    images: Tensor,
    flip_indices: Sequence[int],
    flip_test: bool,
    shift: bool = True,
) -> Tensor:
    """Heatmaps ``[B, K, h, w]`` (float32) of normalised crops ``[B, 3, H, W]``; ``forward`` maps crops to
    heatmaps. With ``flip_test`` the original and the mirrored crops run as ONE batch and the flipped-back
    heatmaps are averaged with the original ones."""
    if not flip_test:
        return forward(images).float()
    original, flipped = flip_passes(forward, images, flip_indices, shift)
    return 0.5 * (original + flipped)


def decode_heatmaps(
    codec: MSRAHeatmap, heatmaps: Tensor, center: Tensor | np.ndarray, scale: Tensor | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Heatmaps ``[B, K, h, w]`` of crops with box ``center``/``scale`` ``[B, 2]`` (image pixels) -> keypoints
    ``[B, K, 2]`` in image pixels (pixel centres at integer coordinates) and scores ``[B, K]``."""
    kpts, scores = codec.batch_decode(heatmaps.detach().cpu().numpy())
    center = center.cpu().numpy() if isinstance(center, Tensor) else np.asarray(center)
    scale = scale.cpu().numpy() if isinstance(scale, Tensor) else np.asarray(scale)
    return input_to_image_coords(kpts, center, scale, codec.input_size), scores


#: mmpose's keypoint-score threshold of the instance score (``bbox_keypoint`` rescoring)
RESCORE_THR = 0.2


def rescore(keypoint_scores: np.ndarray, box_scores: np.ndarray, thr: float = RESCORE_THR) -> np.ndarray:
    """Instance scores as mmpose's ``bbox_keypoint`` mode.

    Args:
        keypoint_scores: (N, K) keypoint confidences (heatmap maxima).
        box_scores: (N,) box confidences (1 for ground-truth boxes).
        thr: only keypoint scores strictly above it enter the mean.

    Returns:
        (N,) ``box_score * mean(keypoint scores > thr)``, 0 when no keypoint score exceeds ``thr``.
    """
    s = np.asarray(keypoint_scores, dtype=np.float64)
    keep = s > thr
    n = keep.sum(axis=1)
    mean = np.where(n > 0, (s * keep).sum(axis=1) / np.maximum(n, 1), 0.0)
    return np.asarray(box_scores, dtype=np.float64) * mean
