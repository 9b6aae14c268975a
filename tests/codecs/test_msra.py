import cv2
import numpy as np
import pytest

from clamp_pl.codecs import MSRAHeatmap, peak_cells


# ----------------------------------------------------------------------------- loop references (mmpose 1.x code)
def _ref_quarter(keypoints, heatmaps):
    """mmpose ``refine_keypoints`` with a neighbour on each side required (0 < x < W - 1 per axis)."""
    keypoints = keypoints.copy()
    n, k = keypoints.shape[:2]
    h, w = heatmaps.shape[1:]
    for i in range(n):
        for j in range(k):
            x, y = keypoints[i, j, :2].astype(int)
            dx = heatmaps[j, y, x + 1] - heatmaps[j, y, x - 1] if 0 < x < w - 1 and 0 <= y < h else 0.0
            dy = heatmaps[j, y + 1, x] - heatmaps[j, y - 1, x] if 0 < y < h - 1 and 0 <= x < w else 0.0
            keypoints[i, j] += np.sign([dx, dy]) * 0.25
    return keypoints


def _ref_dark(keypoints, heatmaps, kernel=11):
    """mmpose ``refine_keypoints_dark`` with its cv2-based ``gaussian_blur``."""
    keypoints = keypoints.copy()
    heatmaps = heatmaps.copy()
    border = (kernel - 1) // 2
    k_, h, w = heatmaps.shape
    for k in range(k_):
        origin_max = np.max(heatmaps[k])
        dr = np.zeros((h + 2 * border, w + 2 * border), dtype=np.float32)
        dr[border:-border, border:-border] = heatmaps[k].copy()
        dr = cv2.GaussianBlur(dr, (kernel, kernel), 0)
        heatmaps[k] = dr[border:-border, border:-border].copy()
        heatmaps[k] *= origin_max / np.max(heatmaps[k])
    np.maximum(heatmaps, 1e-10, heatmaps)
    np.log(heatmaps, heatmaps)
    for n in range(keypoints.shape[0]):
        for k in range(keypoints.shape[1]):
            x, y = keypoints[n, k, :2].astype(int)
            if 1 < x < w - 2 and 1 < y < h - 2:
                dx = 0.5 * (heatmaps[k, y, x + 1] - heatmaps[k, y, x - 1])
                dy = 0.5 * (heatmaps[k, y + 1, x] - heatmaps[k, y - 1, x])
                dxx = 0.25 * (heatmaps[k, y, x + 2] - 2 * heatmaps[k, y, x] + heatmaps[k, y, x - 2])
                dxy = 0.25 * (heatmaps[k, y + 1, x + 1] - heatmaps[k, y - 1, x + 1] - heatmaps[k, y + 1, x - 1]
                              + heatmaps[k, y - 1, x - 1])
                dyy = 0.25 * (heatmaps[k, y + 2, x] - 2 * heatmaps[k, y, x] + heatmaps[k, y - 2, x])
                hessian = np.array([[dxx, dxy], [dxy, dyy]])
                if dxx * dyy - dxy**2 != 0:
                    keypoints[n, k, :2] += -np.linalg.inv(hessian) @ np.array([dx, dy])
    return keypoints


def _ref_decode(heatmaps, unbiased):
    k, h, w = heatmaps.shape
    flat = heatmaps.reshape(k, -1)
    idx = flat.argmax(1)
    vals = flat.max(1)
    locs = np.stack([idx % w, idx // w], -1).astype(np.float32)[None]
    locs = _ref_dark(locs, heatmaps) if unbiased else _ref_quarter(locs, heatmaps)
    locs[0][vals <= 0] = -1
    return locs * 4.0, vals[None]


# ----------------------------------------------------------------------------------------------------- encode
def test_encode_gaussian_values():
    codec = MSRAHeatmap()
    enc = codec.encode(np.array([[[100.0, 41.0], [30.0, 250.0]]]), np.array([[1, 1]]))
    hm, w = enc["heatmaps"], enc["keypoint_weights"]
    assert hm.shape == (1, 2, 64, 64) and hm.dtype == np.float32 and w.dtype == np.float32
    # u = (25, 10.25) -> centre (25, 10); peak 1 there; sigma 2
    assert hm[0, 0, 10, 25] == 1.0 and hm[0, 0].argmax() == 10 * 64 + 25
    assert hm[0, 0, 10, 26] == pytest.approx(np.exp(-1 / 8), rel=1e-6)
    assert hm[0, 0, 13, 27] == pytest.approx(np.exp(-13 / 8), rel=1e-6)
    assert hm[0, 0, 10, 31] > 0 and hm[0, 0, 10, 32] == 0  # window truncated at 3 sigma = 6 cells
    # u = (7.5, 62.5) rounds half up to (8, 63)
    assert np.unravel_index(hm[0, 1].argmax(), (64, 64)) == (63, 8)
    np.testing.assert_array_equal(w, [[1, 1]])


def test_encode_weights_invisible_and_outside():
    codec = MSRAHeatmap()
    kpts = np.array([[[100, 100], [100, 100], [-20, 100], [-40, 100], [100, 280], [100, 284], [300, 300]]],
                    dtype=float)
    enc = codec.encode(kpts, np.array([[1, 0, 1, 1, 1, 1, 1]]))
    # u = -5 (window reaches cell 1) is kept; u = -10 (window ends at -4) is entirely outside;
    # u_y = 70 (window starts at 64) is outside, u_y = 69 (window starts at 63) is kept
    np.testing.assert_array_equal(enc["keypoint_weights"], [[1, 0, 1, 0, 0, 0, 0]])
    assert enc["heatmaps"][0, 1].max() == 0 and enc["heatmaps"][0, 3].max() == 0
    assert enc["heatmaps"][0, 2, 25, 1] == pytest.approx(np.exp(-36 / 8), rel=1e-6)
    enc = codec.encode(np.array([[[100.0, 276.0]]]), np.array([[1]]))
    assert enc["keypoint_weights"][0, 0] == 1 and enc["heatmaps"][0, 0, 63, 25] > 0


def test_encode_default_visible_and_shape_errors():
    codec = MSRAHeatmap(input_size=(192, 256), heatmap_size=(48, 64))
    enc = codec.encode(np.full((3, 5, 2), 50.0))
    assert enc["heatmaps"].shape == (3, 5, 64, 48)
    assert enc["keypoint_weights"].sum() == 15
    with pytest.raises(ValueError, match=r"\(N, K, 2\)"):
        codec.encode(np.zeros((5, 2)))
    with pytest.raises(ValueError, match="visible"):
        codec.encode(np.zeros((1, 5, 2)), np.ones((1, 4)))
    with pytest.raises(ValueError, match="blur_kernel_size"):
        MSRAHeatmap(blur_kernel_size=10)


# ----------------------------------------------------------------------------------------------------- decode
def test_round_trip_integer_positions():
    codec = MSRAHeatmap()
    rng = np.random.default_rng(0)
    kpts = rng.integers(0, 64, (1, 17, 2)).astype(np.float64) * 4.0  # integer heatmap cells, borders included
    kpts[0, :4] = [[0, 0], [252, 252], [0, 132], [4, 252]]
    enc = codec.encode(kpts, np.ones((1, 17)))
    dec, scores = codec.decode(enc["heatmaps"][0])
    assert dec.shape == (1, 17, 2) and scores.shape == (1, 17)
    assert np.abs(dec - kpts).max() / 4.0 <= 0.25
    np.testing.assert_array_equal(scores, 1.0)


def test_round_trip_any_integer_pixel_within_half_cell_plus_quarter():
    codec = MSRAHeatmap()
    kpts = np.random.default_rng(1).integers(8, 248, (1, 17, 2)).astype(np.float64)
    dec, _ = codec.decode(codec.encode(kpts)["heatmaps"][0])
    assert np.abs(dec - kpts).max() / 4.0 <= 0.5


def test_round_trip_subpixel_dark():
    codec = MSRAHeatmap(unbiased=True)
    kpts = np.random.default_rng(2).uniform(12, 244, (1, 17, 2))
    dec, scores = codec.decode(codec.encode(kpts)["heatmaps"][0])
    assert np.abs(dec - kpts).max() / 4.0 <= 0.1
    assert scores.min() > 0.8


def test_quarter_shift_moves_towards_higher_neighbour():
    hm = np.zeros((1, 64, 64), np.float32)
    hm[0, 20, 30] = 1.0
    hm[0, 20, 31] = 0.5
    hm[0, 19, 30] = 0.4
    dec, score = MSRAHeatmap().decode(hm)
    np.testing.assert_allclose(dec[0, 0], [(30 + 0.25) * 4, (20 - 0.25) * 4])
    assert score[0, 0] == 1.0


def test_non_positive_maximum_gives_minus_one():
    hm = np.zeros((2, 64, 64), np.float32)
    hm[1] = -1.0
    dec, scores = MSRAHeatmap().decode(hm)
    np.testing.assert_array_equal(dec[0], -4.0)
    np.testing.assert_array_equal(scores, [[0.0, -1.0]])


@pytest.mark.parametrize("unbiased", [False, True])
def test_decode_matches_mmpose_loop_reference(unbiased):
    rng = np.random.default_rng(3)
    codec = MSRAHeatmap(unbiased=unbiased)
    kpts = rng.uniform(-10, 266, (1, 17, 2))
    kpts[0, :3] = [[0, 0], [255, 100], [6, 250]]  # border peaks
    hm = codec.encode(kpts)["heatmaps"][0] + rng.uniform(0, 0.05, (17, 64, 64)).astype(np.float32)
    ref, ref_scores = _ref_decode(hm, unbiased)
    dec, scores = codec.decode(hm)
    np.testing.assert_allclose(dec, ref, atol=1e-4)
    np.testing.assert_allclose(scores, ref_scores)


@pytest.mark.parametrize("unbiased", [False, True])
def test_batch_decode_equals_decode(unbiased):
    rng = np.random.default_rng(4)
    codec = MSRAHeatmap(unbiased=unbiased)
    hm = codec.encode(rng.uniform(0, 256, (5, 17, 2)))["heatmaps"]
    hm += rng.uniform(0, 0.1, hm.shape).astype(np.float32)
    kb, sb = codec.batch_decode(hm)
    assert kb.shape == (5, 17, 2) and sb.shape == (5, 17) and kb.dtype == np.float32
    for i in range(5):
        k1, s1 = codec.decode(hm[i])
        np.testing.assert_array_equal(kb[i], k1[0])
        np.testing.assert_array_equal(sb[i], s1[0])


def test_non_square_scale_factor():
    codec = MSRAHeatmap(input_size=(192, 256), heatmap_size=(48, 64))
    kpts = np.array([[[40.0, 200.0]]])
    dec, _ = codec.decode(codec.encode(kpts)["heatmaps"][0])
    np.testing.assert_allclose(dec, kpts)


# ------------------------------------------------------------------------------------------------- peak cells
def test_peak_cells():
    kpts = np.array([[[0, 0], [7.9, 8.0], [8.0, 7.9], [255.9, 255.9], [248, 120], [-0.1, 10], [100, 256],
                      [100, 100]]])
    vis = np.array([[1, 1, 1, 1, 1, 1, 1, 0]])
    idx, w = peak_cells(kpts, vis, (256, 256), (16, 16))
    assert idx.dtype == np.int64 and w.dtype == np.float32
    rows_cols = [divmod(int(i), 16) for i in idx[0]]
    assert rows_cols[:5] == [(0, 0), (1, 0), (0, 1), (15, 15), (8, 15)]
    # x >= 248 px rounds to column 16: clipped to the last cell (the official target had no cell there)
    np.testing.assert_array_equal(w, [[1, 1, 1, 1, 1, 0, 0, 0]])


def test_peak_cells_rn50_grid_and_rectangular():
    idx, w = peak_cells(np.array([[[31.0, 17.0]]]), np.ones((1, 1)), (256, 256), (8, 8))
    assert divmod(int(idx[0, 0]), 8) == (1, 1)
    idx, _ = peak_cells(np.array([[[100.0, 200.0]]]), np.ones((1, 1)), (192, 256), (12, 16))
    assert divmod(int(idx[0, 0]), 12) == (13, 6)
