"""PCK and swap rate on hand-built cases with known distances."""

import math

import numpy as np
import pytest

from clamp_pl.evaluation import keypoint_confusion, pck, pck_per_keypoint, swap_rate


def test_pck_known_distances():
    gt = np.zeros((2, 4, 2))
    pred = gt.copy()
    # Instance 0, norm 100: errors 3, 7 (3-4-5 scaled), 12, and 500 on an unlabelled keypoint.
    pred[0, 0] = [3, 0]
    pred[0, 1] = [4.2, 5.6]
    pred[0, 2] = [0, 12]
    pred[0, 3] = [500, 0]
    # Instance 1, norm 200: errors 5 (0.025), 15 (0.075), 25 (0.125), 0.
    pred[1, :3, 0] = [5, 15, 25]
    visible = np.array([[1, 1, 1, 0], [2, 2, 2, 2]])
    norm = np.array([100.0, 200.0])
    # Normalised errors of the 7 labelled keypoints: .03 .07 .12 | .025 .075 .125 0
    assert pck(pred, gt, visible, norm, 0.05) == pytest.approx(3 / 7)
    assert pck(pred, gt, visible, norm, 0.1) == pytest.approx(5 / 7)
    assert pck(pred, gt, visible, norm, 0.03) == pytest.approx(2 / 7)  # strict: exactly .03 is not correct


def test_pck_skips_zero_norm_and_empty():
    gt = np.zeros((2, 2, 2))
    pred = gt + 1
    assert pck(pred, gt, np.ones((2, 2)), np.array([0.0, 100.0]), 0.05) == 1.0
    assert math.isnan(pck(pred, gt, np.zeros((2, 2)), np.array([100.0, 100.0]), 0.05))


def test_swap_rate_hand_built():
    # 3 keypoints: 0 = left paw, 1 = right paw (a flip pair), 2 = nose (unpaired).
    gt = np.array([[[10, 0], [50, 0], [30, 30]]] * 4, dtype=float)
    pred = gt.copy()
    pred[0, [0, 1]] = gt[0, [1, 0]]  # instance 0: full swap (2 events)
    pred[1, 0] = gt[1, 1] + [-2, 0]  # instance 1: both predictions on the right paw (1 event)
    pred[2, 0] = [29, 0]  # instance 2: just on its own side (|19| < |21|), not swapped
    visible = np.ones((4, 3))
    visible[3, 1] = 0  # instance 3: pair not fully labelled -> ignored
    out = swap_rate(pred, gt, visible, [(0, 1)])
    assert out == {"0-1": pytest.approx(3 / 6), "mean": pytest.approx(0.5)}


def test_swap_rate_skips_unlabelled_pairs():
    gt = np.zeros((2, 4, 2))
    gt[..., 0] = [0, 10, 20, 30]
    visible = np.array([[1, 1, 1, 0], [1, 1, 0, 1]])
    out = swap_rate(gt.copy(), gt, visible, [(0, 1), (2, 3)])
    assert out == {"0-1": 0.0, "mean": 0.0}
    assert swap_rate(gt, gt, np.zeros((2, 4)), [(0, 1)]) == {}


def test_keypoint_confusion_hand_built():
    """3 keypoints on a line; instance 0 exact, instance 1 with keypoints 1 and 2 swapped, instance 2 with
    keypoint 2 unlabelled and its prediction sitting on keypoint 0."""
    gt = np.array([[[0, 0], [10, 0], [20, 0]]] * 3, dtype=float)
    pred = gt.copy()
    pred[1, 1], pred[1, 2] = gt[1, 2] + 1, gt[1, 1] - 1
    pred[2, 2] = gt[2, 0]
    pred[2, 1] = gt[2, 2]  # nearest to keypoint 2, which is unlabelled in instance 2: then keypoint 1 (dist 10)
    visible = np.array([[1, 1, 1], [1, 1, 1], [1, 1, 0]])
    counts = keypoint_confusion(pred, gt, visible)
    expected = np.array([[3, 0, 0],
                         [0, 2, 1],
                         [0, 1, 1]])
    np.testing.assert_array_equal(counts, expected)
    assert counts.sum() == visible.sum()  # one assignment per labelled keypoint; the unlabelled one not counted


def test_pck_per_keypoint_matches_pck():
    rng = np.random.default_rng(0)
    gt = rng.uniform(0, 100, (20, 4, 2))
    pred = gt + rng.normal(0, 8, gt.shape)
    visible = rng.random((20, 4)) < 0.8
    visible[:, 3] = False  # never labelled
    norm = np.full(20, 100.0)
    per = pck_per_keypoint(pred, gt, visible, norm, 0.1)
    assert np.isnan(per[3])
    for k in range(3):
        assert per[k] == pytest.approx(pck(pred[:, k:k + 1], gt[:, k:k + 1], visible[:, k:k + 1], norm, 0.1))
