"""MSRA Gaussian heatmaps (mmpose 1.x ``MSRAHeatmap``) and the down-sampled peak cells of CLAMP's feature loss.

Pure numpy/cv2. Coordinates: keypoints are (x, y) in network-input pixels with pixel centres at integer
coordinates; heatmap coordinate u = x / (W / w) (mmpose's non-UDP convention, so heatmap cell u is centred at input
x = u * W / w).
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["MSRAHeatmap", "peak_cells"]


def _pair(v: tuple[int, int] | list[int], name: str) -> tuple[int, int]:
    w, h = (int(x) for x in v)
    if w <= 0 or h <= 0:
        raise ValueError(f"{name} must be two positive integers (W, H), got {v}")
    return w, h


class MSRAHeatmap:
    """Encode keypoints as unnormalised Gaussian heatmaps (peak 1) and decode heatmaps back to keypoints.

    Encoding (mmpose ``generate_gaussian_heatmaps``): the Gaussian of ``sigma`` heatmap pixels is centred on the
    rounded heatmap position and truncated to a (6 sigma + 1)^2 window; with ``unbiased=True`` (DARK encoding,
    ``generate_unbiased_gaussian_heatmaps``) it is centred on the exact sub-pixel position and not truncated.
    A keypoint's weight is 0 when it is unlabelled or its Gaussian window lies entirely outside the map (its
    map is then all zero). Differences from mmpose, both only at the map border: rounding is floor(u + 0.5) (mmpose
    truncates towards zero, which rounds u in (-1, -0.5) to 0), and a window ending exactly at the border
    counts as outside (mmpose keeps weight 1 with an empty map).

    Decoding: arg-max, score = the maximum (keypoints whose maximum is <= 0 are returned at heatmap position
    (-1, -1), as mmpose); then either a quarter-pixel step towards the higher neighbour along x and y (default,
    the CLAMP/mmpose ``post_process='default'``) or DARK (``unbiased=True``: Gaussian blur with
    ``blur_kernel_size``, log, one Newton step -H^-1 grad with finite differences). The quarter step uses a
    neighbour on each side (0 < x < w - 1 per axis); mmpose also skips x = 1, which we do not.
    """

    def __init__(
        self,
        input_size: tuple[int, int] = (256, 256),
        heatmap_size: tuple[int, int] = (64, 64),
        sigma: float = 2.0,
        unbiased: bool = False,
        blur_kernel_size: int = 11,
    ) -> None:
        self.input_size = _pair(input_size, "input_size")
        self.heatmap_size = _pair(heatmap_size, "heatmap_size")
        if sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        if blur_kernel_size % 2 != 1 or blur_kernel_size < 3:
            raise ValueError(f"blur_kernel_size must be odd and >= 3, got {blur_kernel_size}")
        self.sigma = float(sigma)
        self.unbiased = bool(unbiased)
        self.blur_kernel_size = int(blur_kernel_size)
        #: input pixels per heatmap pixel, (sx, sy)
        self.scale_factor = np.array(self.input_size, dtype=np.float64) / np.array(self.heatmap_size)

    # ------------------------------------------------------------------------------------------------ encode
    def encode(self, keypoints: np.ndarray, visible: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Heatmap targets.

        Args:
            keypoints: (N, K, 2) in input pixels.
            visible: (N, K), > 0.5 for labelled keypoints (all labelled when None).

        Returns:
            ``heatmaps`` float32 (N, K, h, w) and ``keypoint_weights`` float32 (N, K) in {0, 1}.
        """
        kpts = np.asarray(keypoints, dtype=np.float64)
        if kpts.ndim != 3 or kpts.shape[-1] != 2:
            raise ValueError(f"keypoints must be (N, K, 2), got {kpts.shape}")
        vis = np.ones(kpts.shape[:2]) if visible is None else np.asarray(visible, dtype=np.float64)
        if vis.shape != kpts.shape[:2]:
            raise ValueError(f"visible must be {kpts.shape[:2]}, got {vis.shape}")
        w, h = self.heatmap_size
        u = kpts / self.scale_factor  # (N, K, 2) heatmap coordinates
        radius = 3.0 * self.sigma
        xs = np.arange(w, dtype=np.float64)
        ys = np.arange(h, dtype=np.float64)
        if self.unbiased:
            mu, half = u, radius
            inside_x = np.ones(u.shape[:2] + (w,), dtype=bool)
            inside_y = np.ones(u.shape[:2] + (h,), dtype=bool)
        else:
            # integer centre, window [mu - half, mu + half] with half = 3 sigma rounded down (6 for sigma 2)
            mu, half = np.floor(u + 0.5), np.floor(radius)
            inside_x = np.abs(xs - mu[..., :1]) <= half
            inside_y = np.abs(ys - mu[..., 1:]) <= half
        # the window [mu - half, mu + half + 1) misses the map entirely
        outside = ((mu[..., 0] - half >= w) | (mu[..., 1] - half >= h)
                   | (mu[..., 0] + half + 1 <= 0) | (mu[..., 1] + half + 1 <= 0))
        weights = ((vis > 0.5) & ~outside).astype(np.float32)
        two_s2 = 2.0 * self.sigma**2
        gx = np.exp(-((xs - mu[..., :1]) ** 2) / two_s2) * inside_x  # (N, K, w)
        # the 0/1 weight on the small factor (exact either way), and the outer product computed in float64 and
        # rounded straight into the float32 maps: one full-size pass instead of three
        gy = np.exp(-((ys - mu[..., 1:]) ** 2) / two_s2) * inside_y * weights[..., None]  # (N, K, h)
        heatmaps = np.empty(kpts.shape[:2] + (h, w), dtype=np.float32)
        np.multiply(gy[..., :, None], gx[..., None, :], out=heatmaps, casting="unsafe")
        return {"heatmaps": heatmaps, "keypoint_weights": weights}

    # ------------------------------------------------------------------------------------------------ decode
    def decode(self, heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Keypoints (1, K, 2) in input pixels and scores (1, K) from heatmaps (K, h, w)."""
        heatmaps = np.asarray(heatmaps)
        if heatmaps.ndim != 3:
            raise ValueError(f"heatmaps must be (K, h, w), got {heatmaps.shape}")
        return self.batch_decode(heatmaps[None])

    def batch_decode(self, heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Keypoints (B, K, 2) in input pixels and scores (B, K) from heatmaps (B, K, h, w); vectorised."""
        hm = np.asarray(heatmaps, dtype=np.float32)
        if hm.ndim != 4:
            raise ValueError(f"heatmaps must be (B, K, h, w), got {hm.shape}")
        b, k, h, w = hm.shape
        flat = hm.reshape(b, k, h * w)
        idx = flat.argmax(axis=-1)
        scores = np.take_along_axis(flat, idx[..., None], axis=-1)[..., 0]
        x, y = idx % w, idx // w
        coords = np.stack([x, y], axis=-1).astype(np.float32)
        if self.unbiased:
            coords += _dark_offsets(hm, x, y, self.blur_kernel_size)
        else:
            coords += _quarter_offsets(hm, x, y)
        coords[scores <= 0] = -1.0
        keypoints = (coords * self.scale_factor).astype(np.float32)
        return keypoints, scores.astype(np.float32)


def _gather(hm: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """hm[b, k, y[b, k], x[b, k]] with coordinates clipped into the map (callers mask invalid ones)."""
    b, k, h, w = hm.shape
    xi = np.clip(x, 0, w - 1)
    yi = np.clip(y, 0, h - 1)
    bi, ki = np.meshgrid(np.arange(b), np.arange(k), indexing="ij")
    return hm[bi, ki, yi, xi]


def _quarter_offsets(hm: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    _, _, h, w = hm.shape
    dx = _gather(hm, x + 1, y) - _gather(hm, x - 1, y)
    dy = _gather(hm, x, y + 1) - _gather(hm, x, y - 1)
    dx = np.where((x > 0) & (x < w - 1), dx, 0.0)
    dy = np.where((y > 0) & (y < h - 1), dy, 0.0)
    return (np.stack([np.sign(dx), np.sign(dy)], axis=-1) * 0.25).astype(np.float32)


def _gaussian_blur(hm: np.ndarray, kernel_size: int) -> np.ndarray:
    """mmpose ``gaussian_blur``: zero-padded Gaussian blur (sigma from the kernel size, as cv2), rescaled so each
    map keeps its maximum. (B, K, h, w) -> same."""
    g = cv2.getGaussianKernel(kernel_size, 0).astype(np.float64)[:, 0]
    border = (kernel_size - 1) // 2
    padded = np.pad(hm.astype(np.float64), ((0, 0), (0, 0), (border, border), (border, border)))
    rows = np.lib.stride_tricks.sliding_window_view(padded, kernel_size, axis=2) @ g  # (B, K, h, w + 2b)
    out = np.lib.stride_tricks.sliding_window_view(rows, kernel_size, axis=3) @ g  # (B, K, h, w)
    orig_max = hm.max(axis=(2, 3), keepdims=True)
    new_max = out.max(axis=(2, 3), keepdims=True)
    return out * np.divide(orig_max, new_max, out=np.zeros_like(new_max), where=new_max > 0)


def _dark_offsets(hm: np.ndarray, x: np.ndarray, y: np.ndarray, kernel_size: int) -> np.ndarray:
    _, _, h, w = hm.shape
    lg = np.log(np.maximum(_gaussian_blur(hm, kernel_size), 1e-10))

    def at(dx: int, dy: int) -> np.ndarray:
        return _gather(lg, x + dx, y + dy)

    c = at(0, 0)
    gx = 0.5 * (at(1, 0) - at(-1, 0))
    gy = 0.5 * (at(0, 1) - at(0, -1))
    hxx = 0.25 * (at(2, 0) - 2 * c + at(-2, 0))
    hyy = 0.25 * (at(0, 2) - 2 * c + at(0, -2))
    hxy = 0.25 * (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1))
    det = hxx * hyy - hxy**2
    ok = (x > 1) & (x < w - 2) & (y > 1) & (y < h - 2) & (det != 0)
    safe = np.where(ok, det, 1.0)
    ox = -(hyy * gx - hxy * gy) / safe
    oy = -(-hxy * gx + hxx * gy) / safe
    return np.where(ok[..., None], np.stack([ox, oy], axis=-1), 0.0).astype(np.float32)


def peak_cells(
    keypoints: np.ndarray,
    visible: np.ndarray,
    input_size: tuple[int, int],
    grid_size: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray]:
    """Feature-grid cell of each keypoint, the target of CLAMP's feature-level contrastive loss.

    The cell is ``(row, col) = (clip(round(y / sy), 0, gh - 1), clip(round(x / sx), 0, gw - 1))`` with
    ``(sx, sy) = input_size / grid_size``, flattened to ``row * gw + col``; the weight is 1 for a labelled
    keypoint inside the input (0 <= x < W, 0 <= y < H), else 0.

    This fixes the official CLAMP target: it drew a sigma = 0.5 Gaussian with mmpose's
    integer truncation of a non-integer window, which puts the peak one cell too far for grid index 0 or 1 and,
    for keypoints rounding to index ``gw`` (x >= 248 px at 256/16), leaves no cell at all while keeping weight 1
    (the pooled feature is then zero). Here every weighted keypoint has exactly one in-grid cell.

    Args:
        keypoints: (N, K, 2) in input pixels.
        visible: (N, K), > 0.5 for labelled keypoints.
        input_size: (W, H) of the network input.
        grid_size: (gw, gh) of the feature grid.

    Returns:
        ``index`` int64 (N, K) into the flattened (gh * gw) grid, ``weights`` float32 (N, K).
    """
    kpts = np.asarray(keypoints, dtype=np.float64)
    vis = np.asarray(visible, dtype=np.float64)
    iw, ih = _pair(input_size, "input_size")
    gw, gh = _pair(grid_size, "grid_size")
    col = np.clip(np.floor(kpts[..., 0] / (iw / gw) + 0.5), 0, gw - 1).astype(np.int64)
    row = np.clip(np.floor(kpts[..., 1] / (ih / gh) + 0.5), 0, gh - 1).astype(np.int64)
    inside = (kpts[..., 0] >= 0) & (kpts[..., 0] < iw) & (kpts[..., 1] >= 0) & (kpts[..., 1] < ih)
    weights = ((vis > 0.5) & inside).astype(np.float32)
    return row * gw + col, weights
