"""Drawing keypoints, skeletons and score maps (numpy + cv2; RGB uint8 images)."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np


def palette(n: int) -> np.ndarray:
    """``n`` distinct RGB colours (uint8 ``[n, 3]``), evenly spaced in hue."""
    hsv = np.stack([np.linspace(0, 179, n, endpoint=False), np.full(n, 220), np.full(n, 255)], 1)
    return cv2.cvtColor(hsv.astype(np.uint8)[None], cv2.COLOR_HSV2RGB)[0]


def draw_pose(
    image: np.ndarray,
    keypoints: np.ndarray,
    scores: np.ndarray | None = None,
    skeleton: Sequence[Sequence[int]] = (),
    threshold: float = 0.3,
    radius: int | None = None,
    color: tuple[int, int, int] | None = None,
) -> np.ndarray:
    """Draw one instance on a copy of ``image`` (RGB uint8 ``[H, W, 3]``).

    Args:
        keypoints: ``[K, 2]`` (x, y) in image pixels.
        scores: ``[K]`` confidences (or visibility flags); keypoints at or below ``threshold`` are not drawn.
        color: one colour for the whole instance (e.g. ground truth); default: one colour per keypoint.
    """
    out = np.ascontiguousarray(image.copy())
    k = len(keypoints)
    scores = np.ones(k) if scores is None else np.asarray(scores)
    colours = palette(max(k, 1))
    r = radius or max(2, round(max(out.shape[:2]) / 120))
    shown = (scores > threshold) & np.isfinite(keypoints).all(1)
    for a, b in skeleton:
        if a < k and b < k and shown[a] and shown[b]:
            c = color or tuple(int(v) for v in colours[a])
            pa = tuple(int(round(v)) for v in keypoints[a])
            pb = tuple(int(round(v)) for v in keypoints[b])
            cv2.line(out, pa, pb, c, max(1, r // 2), cv2.LINE_AA)
    for i in np.flatnonzero(shown):
        c = color or tuple(int(v) for v in colours[i])
        cv2.circle(out, tuple(int(round(v)) for v in keypoints[i]), r, c, -1, cv2.LINE_AA)
    return out


def draw_instances(
    image: np.ndarray, instances: Sequence[dict], skeleton: Sequence[Sequence[int]] = (), threshold: float = 0.3,
    box_color: tuple[int, int, int] = (255, 255, 255),
) -> np.ndarray:
    """Boxes (``box_color``, RGB; white by default) and skeletons of :meth:`clamp_pl.api.PoseEstimator.predict`
    instances (``bbox`` ``[x, y, w, h]``, ``keypoints`` ``[K, 2]``, ``scores`` ``[K]``) on a copy of an RGB
    image."""
    out = np.ascontiguousarray(image.copy())
    thick = max(1, round(max(image.shape[:2]) / 400))
    for inst in instances:
        x, y, w, h = (int(round(v)) for v in inst["bbox"])
        cv2.rectangle(out, (x, y), (x + w, y + h), box_color, thick, cv2.LINE_AA)
        out = draw_pose(out, inst["keypoints"], inst["scores"], skeleton, threshold=threshold)
    return out


def score_map_grid(maps: np.ndarray, labels: Sequence[str] = (), tile: int = 64, cols: int = 6) -> np.ndarray:
    """Score maps ``[K, h, w]`` (cosine in [-1, 1] or heatmaps) as one RGB mosaic with a label per tile."""
    k = len(maps)
    rows = int(np.ceil(k / cols)) if k else 1
    canvas = np.zeros((rows * (tile + 14), cols * tile, 3), np.uint8)
    for i, m in enumerate(maps):
        lo, hi = float(m.min()), float(m.max())
        norm = ((m - lo) / (hi - lo + 1e-8) * 255).astype(np.uint8)
        col = cv2.applyColorMap(cv2.resize(norm, (tile, tile), interpolation=cv2.INTER_NEAREST), cv2.COLORMAP_VIRIDIS)
        r, c = divmod(i, cols)
        y0 = r * (tile + 14)
        canvas[y0 + 14: y0 + 14 + tile, c * tile: (c + 1) * tile] = col[..., ::-1]
        if i < len(labels):
            cv2.putText(canvas, labels[i][:12], (c * tile + 2, y0 + 11), cv2.FONT_HERSHEY_SIMPLEX, 0.3,
                        (255, 255, 255), 1, cv2.LINE_AA)
    return canvas


def grid_image(
    values: np.ndarray, row_labels: Sequence[str], cell_text: Sequence[Sequence[str]] | None = None, cell: int = 22
) -> np.ndarray:
    """A (R, C) table of values in [0, 1] as an RGB heat-map (NaN: grey): row labels on the left, column indices
    on top, ``cell_text`` written into the cells."""
    values = np.asarray(values, dtype=np.float64)
    r, c = values.shape
    left, top = 130, 18
    canvas = np.full((top + r * cell, left + c * cell, 3), 255, np.uint8)
    colours = cv2.applyColorMap((np.nan_to_num(np.clip(values, 0, 1)) * 255).astype(np.uint8),
                                cv2.COLORMAP_VIRIDIS)[..., ::-1]
    font = cv2.FONT_HERSHEY_SIMPLEX
    for j in range(c):
        cv2.putText(canvas, str(j), (left + j * cell + 5, top - 5), font, 0.3, (0, 0, 0), 1, cv2.LINE_AA)
    for i in range(r):
        label = row_labels[i] if i < len(row_labels) else str(i)
        cv2.putText(canvas, label[:22], (2, top + i * cell + cell // 2 + 4), font, 0.3, (0, 0, 0), 1, cv2.LINE_AA)
        for j in range(c):
            y, x = top + i * cell, left + j * cell
            nan = np.isnan(values[i, j])
            canvas[y: y + cell - 1, x: x + cell - 1] = (200, 200, 200) if nan else colours[i, j]
            text = cell_text[i][j] if cell_text is not None else ""
            if text and not nan:
                ink = (255, 255, 255) if values[i, j] < 0.6 else (0, 0, 0)
                cv2.putText(canvas, text, (x + 2, y + cell // 2 + 4), font, 0.28, ink, 1, cv2.LINE_AA)
    return canvas


def confusion_image(counts: np.ndarray, labels: Sequence[str] = ()) -> np.ndarray:
    """A (K, K) count matrix (rows: predicted keypoint, columns: where it landed), each row as percentages of
    its total; rows labelled ``i name``."""
    counts = np.asarray(counts, dtype=np.float64)
    share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    text = [[f"{round(100 * v)}" if n else "" for v, n in zip(rs, rc)] for rs, rc in zip(share, counts)]
    rows = [f"{i} {labels[i]}" if i < len(labels) else str(i) for i in range(len(counts))]
    return grid_image(share, rows, text)


def pck_table_image(table: dict[str, np.ndarray]) -> np.ndarray:
    """Per-keypoint PCK rows (``{"all": (K,), "<species>": (K,)}``, NaN = not labelled) as a heat-map with the
    percentages; columns are keypoint indices."""
    names = list(table)
    values = np.stack([np.asarray(table[n], dtype=np.float64) for n in names])
    text = [["" if np.isnan(v) else f"{round(100 * v)}" for v in row] for row in values]
    return grid_image(values, names, text)


def mosaic(images: Sequence[np.ndarray], cols: int = 4, pad: int = 2) -> np.ndarray:
    """Equal-size RGB images in a grid."""
    if not images:
        raise ValueError("mosaic of no images")
    h, w = images[0].shape[:2]
    rows = int(np.ceil(len(images) / cols))
    cols = min(cols, len(images))
    canvas = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad, 3), 255, np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        canvas[r * (h + pad): r * (h + pad) + h, c * (w + pad): c * (w + pad) + w] = im
    return canvas


def save_rgb(path, image: np.ndarray) -> None:
    """Write an RGB uint8 image (PNG/JPEG by extension); raises if cv2 cannot write it."""
    if not cv2.imwrite(str(path), image[..., ::-1]):
        raise OSError(f"could not write image {path}")
