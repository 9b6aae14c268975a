"""Temporal smoothing of keypoint trajectories (clamp_pl.inference.smoothing): spikes removed, unconfident
points interpolated, nothing invented."""

from __future__ import annotations

import numpy as np
import pytest

from clamp_pl.inference.smoothing import smooth_trajectories


def test_smoothing_removes_a_spike_and_interpolates_low_scores():
    t = np.arange(21, dtype=np.float64)
    xy = np.stack([np.stack([t, 2 * t], 1)] * 2, axis=1)  # [T, K=2, 2]: a straight line
    lk = np.full((21, 2), 0.9)
    xy[10, 0] = [200.0, -50.0]  # a one-frame jump, confident
    xy[5, 1] = [999.0, 999.0]  # a wrong, unconfident point
    lk[5, 1] = 0.1
    med = smooth_trajectories(xy, lk, "median", window=5, threshold=0.3)
    np.testing.assert_allclose(med[10, 0], [10.0, 20.0], atol=2.0)  # the spike is gone (a neighbour's value)
    np.testing.assert_allclose(med[5, 1], [5.0, 10.0])  # interpolated from its neighbours
    sg = smooth_trajectories(xy, lk, "savgol", window=7, polyorder=1, threshold=0.3)
    np.testing.assert_allclose(sg[5, 1], [5.0, 10.0], atol=1e-6)  # a line is kept exactly by degree 1
    never = smooth_trajectories(xy, np.zeros((21, 2)), "median")
    assert np.isnan(never).all()  # nothing confident: nothing invented
    short = smooth_trajectories(xy[:4], lk[:4], "savgol", window=9, polyorder=2)
    assert np.isfinite(short).all()  # the window shrinks to the sequence


@pytest.mark.parametrize("kw, match", [({"method": "mean"}, "method"), ({"window": 4}, "odd"),
                                        ({"method": "savgol", "window": 5, "polyorder": 5}, "polyorder")])
def test_smoothing_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        smooth_trajectories(np.zeros((10, 1, 2)), np.ones((10, 1)), **kw)
