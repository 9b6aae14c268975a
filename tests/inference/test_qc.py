"""Label-free quality signals (clamp_pl.inference.qc): the Procrustes pose prior and its errors, temporal jumps,
both flip passes against the estimator's own flip test, ranking and the diverse frame picker, and one video
checked end to end (CSV, picture, ensemble)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from helpers.projects import BODYPARTS
from helpers.qc import make_model_file, make_video

from clamp_pl.api import load_model
from clamp_pl.core.preprocess import crop_and_normalize
from clamp_pl.inference.qc import (
    combine,
    fit_pose_prior,
    flip_disagreement,
    kmeans,
    parse_signal,
    plot_qc,
    pose_errors,
    predict_two_passes,
    rank_normalize,
    run_video_qc,
    select_frames,
    temporal_jump,
    write_qc_csv,
)
from clamp_pl.inference.video import iter_frames
from clamp_pl.spec import ModelSpec

BASE = np.array([[0.0, 0.0], [1.0, 0.6], [1.0, -0.6], [4.0, 0.0]])  # snout, left ear, right ear, tail base


def _poses(n: int, seed: int = 0, noise: float = 0.03) -> np.ndarray:
    """``[n, 4, 2]`` the base pose rotated, scaled, moved and jittered."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a = rng.uniform(0, 2 * np.pi)
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        out.append((BASE + rng.normal(0, noise, BASE.shape)) @ rot.T * rng.uniform(10, 40) + rng.uniform(0, 200, 2))
    return np.array(out)


def test_pose_prior_fits_plausible_poses_and_flags_swapped_ears():
    train = _poses(40)
    prior = fit_pose_prior(train)
    assert prior is not None and prior["n_train"] == 40
    assert 1 <= len(prior["components"]) <= 2 * 4 - 5
    good = pose_errors(prior, _poses(20, seed=1))
    swapped = _poses(20, seed=1)[:, [0, 2, 1, 3]]  # left and right ear exchanged: a mirror image, not a rotation
    bad = pose_errors(prior, swapped)
    assert good.shape == (20, 4)
    assert np.max(good) < 0.1 < np.min(bad.max(axis=1))
    # invariant to where the animal is, how large and how turned
    moved = _poses(1, seed=2)
    assert np.allclose(pose_errors(prior, moved), pose_errors(prior, moved * 3 + 50), atol=1e-9)


def test_pose_prior_needs_enough_fully_labelled_poses():
    poses = _poses(6)
    visible = np.ones((6, 4), bool)
    visible[:2, 3] = False  # two poses miss the tail base: four complete ones are too few
    assert fit_pose_prior(poses, visible, min_instances=5) is None
    assert fit_pose_prior(poses, visible, min_instances=4) is not None


def test_pose_prior_travels_in_the_spec(tmp_path):
    prior = fit_pose_prior(_poses(30))
    est = load_model(make_model_file(tmp_path / "m.pt", pose_prior=prior), device="cpu")
    assert est.spec.pose_prior == prior
    again = ModelSpec.from_dict(est.spec.to_dict())
    assert again.pose_prior == prior
    plain = ModelSpec.from_dict({k: v for k, v in est.spec.to_dict().items() if k != "pose_prior"})
    assert plain.pose_prior is None and "pose_prior" not in plain.to_dict()


def test_temporal_jump_finds_a_glitch_not_steady_motion():
    t = np.arange(30, dtype=float)
    kp = np.stack([np.stack([5 * t, 2 * t], 1), np.stack([5 * t + 10, 2 * t], 1)], axis=1)  # [30, 2, 2] running
    kp += np.random.default_rng(0).normal(0, 0.3, kp.shape)
    kp[17, 1] += [25.0, -20.0]  # one frame's second keypoint jumps away and back
    ratio = temporal_jump(kp, np.full(30, 50.0))
    assert ratio.shape == (30, 2)
    assert np.argmax(ratio[:, 1]) == 17 and ratio[17, 1] > 3
    assert (ratio[:, 0] < 1.5).all()  # fast but steady motion is no jump
    assert temporal_jump(kp[:1], np.ones(1)).tolist() == [[0.0, 0.0]]


def test_both_flip_passes_match_the_estimator(tmp_path):
    est = load_model(make_model_file(tmp_path / "m.pt"), device="cpu")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(3)]
    boxes = [[4, 2, 40, 30], [0, 0, 64, 48], [10, 10, 30, 30]]
    cut = [crop_and_normalize(i, b, est.input_size, est.spec.mean, est.spec.std, est.padding)
           for i, b in zip(images, boxes)]
    crops, centers, scales = (np.stack([c[j] for c in cut]) for j in range(3))
    two = predict_two_passes(est, crops, centers, scales, batch_size=2)
    averaged, scores = est.predict_crops(crops, centers, scales, flip_test=True)
    original, _ = est.predict_crops(crops, centers, scales, flip_test=False)
    np.testing.assert_allclose(two["keypoints"], averaged, atol=1e-4)
    np.testing.assert_allclose(two["scores"], scores, atol=1e-5)
    np.testing.assert_allclose(two["original"], original, atol=1e-4)
    flip = flip_disagreement(two["original"], two["flipped"], np.array([40.0, 64.0, 30.0]))
    expected = np.linalg.norm(two["original"] - two["flipped"], axis=-1)[0] / 40.0
    np.testing.assert_allclose(flip[0], expected)


def test_ranking_and_signal_names():
    assert rank_normalize(np.array([3.0, 1.0, np.nan, 1.0])).tolist()[:2] == [1.0, 0.5]
    r = rank_normalize(np.array([3.0, 1.0, np.nan, 1.0]))
    assert np.isnan(r[2]) and r[1] == r[3]  # ties share their mean rank
    sig = {"flip": np.array([0.1, 0.9, 0.5]), "jump": np.array([5.0, 1.0, 9.0])}
    np.testing.assert_allclose(combine(sig, ["flip", "jump"]), [(1 / 3 + 2 / 3) / 2, (1 + 1 / 3) / 2, (2 / 3 + 1) / 2])
    np.testing.assert_allclose(combine(sig, ["flip", "pose"]), sig["flip"])  # a missing signal is left out
    assert parse_signal("combined") == ["confidence", "flip", "jump", "pose", "ensemble"]
    assert parse_signal("flip+pose") == ["flip", "pose"]
    with pytest.raises(ValueError, match="unknown"):
        parse_signal("flop")


def test_select_frames_is_diverse_and_skips_labelled_frames():
    rng = np.random.default_rng(0)
    poses = np.concatenate([rng.normal(0, 0.01, (10, 4)), rng.normal(5, 0.01, (10, 4))])
    ranking = np.concatenate([np.linspace(1.0, 0.9, 10), np.linspace(0.8, 0.7, 10)])  # group A ranks first
    assert set(kmeans(poses, 2)[:10]) != set(kmeans(poses, 2)[10:])
    top = select_frames(ranking, poses, 2, candidates=1)
    assert top.tolist() == [0, 1]  # without clustering: the two best, both of group A
    picked = select_frames(ranking, poses, 2, candidates=10)
    assert picked.tolist() == [0, 10]  # one per pose group, the best of each
    exclude = np.zeros(20, bool)
    exclude[[0, 10]] = True
    assert select_frames(ranking, poses, 2, exclude, candidates=10).tolist() == [1, 11]
    assert select_frames(ranking, poses, 5, np.ones(20, bool)).size == 0


def test_video_qc_csv_picture_and_ensemble(tmp_path):
    video = make_video(tmp_path / "walk.avi", n=9)
    prior = fit_pose_prior(_poses(30))
    a = load_model(make_model_file(tmp_path / "a.pt", seed=0, pose_prior=prior), device="cpu")
    b = load_model(make_model_file(tmp_path / "b.pt", seed=1), device="cpu")
    qc = run_video_qc([a, b], video, frame_step=2, batch_size=3)
    assert qc.frames.tolist() == [0, 2, 4, 6, 8]
    assert set(qc.per_frame) == {"confidence", "flip", "jump", "pose", "ensemble"}
    assert qc.members.shape == (2, 5, 4, 2)
    np.testing.assert_allclose(qc.per_frame["confidence"], 1 - qc.scores.min(axis=1))
    # the first model on whole-frame boxes is what the estimator predicts on those frames
    direct = a.predict([f for _, f in iter_frames(video, 2)], flip_test=True)
    np.testing.assert_allclose(qc.keypoints, np.stack([d[0]["keypoints"] for d in direct]), atol=1e-3)
    ranking = combine(qc.per_frame, parse_signal("combined"))
    path = write_qc_csv(qc, tmp_path / "walk_qc.csv", ranking, picked=[1], labelled=np.array([1, 0, 0, 0, 0]))
    rows = list(csv.DictReader(open(path)))
    assert [int(r["frame"]) for r in rows] == [0, 2, 4, 6, 8]
    for signal in ("score", "flip", "jump", "pose", "ensemble"):
        assert all(f"{signal}/{bp}" in rows[0] for bp in BODYPARTS)
    assert [r["picked"] for r in rows] == ["0", "1", "0", "0", "0"] and rows[0]["labelled"] == "1"
    assert float(rows[3]["flip"]) == pytest.approx(qc.per_frame["flip"][3], abs=1e-5)
    png = plot_qc(qc, tmp_path / "walk_qc.png", ranking, picked=[1])
    assert png.stat().st_size > 1000
    given = np.array([[4, 4, 30, 30], [10, 6, 40, 36], [20, 8, 30, 30]], float)
    single = run_video_qc([b], video, max_frames=3, boxes=given)
    assert set(single.per_frame) == {"confidence", "flip", "jump"}  # no prior, one model
    np.testing.assert_array_equal(single.boxes, given)
    frames = [f for _, f in iter_frames(video, 1, 3)]
    np.testing.assert_allclose(single.keypoints, np.stack([r[0]["keypoints"] for r in b.predict(
        frames, [[g.tolist()] for g in given])]), atol=1e-3)
    with pytest.raises(ValueError, match="2 boxes for more frames"):
        run_video_qc([b], video, max_frames=3, boxes=given[:2])
