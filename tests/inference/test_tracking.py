"""Following one animal (clamp_pl.inference.tracking) on synthetic sequences with a stub pose model that only sees keypoints
inside its crop, and only when the crop is not much larger than the animal."""

from __future__ import annotations

import numpy as np
import pytest

from clamp_pl.core.geometry import fix_box_aspect, keypoint_box
from clamp_pl.inference.tracking import FollowConfig, Follower, grid_boxes

W, H = 320, 240
# an animal of 4 keypoints, about 40 x 24 px
SHAPE = np.array([[0.0, 0.0], [10.0, -8.0], [10.0, 8.0], [40.0, 0.0]])


class StubModel:
    """Sees the animal's keypoints that fall inside a box padded like the real crop (x 1.25), if the box is at
    most 4x the animal's size; elsewhere answers the box centre with a low score. Counts the boxes it gets."""

    def __init__(self) -> None:
        self.truth = SHAPE.copy()
        self.hidden = np.zeros(len(SHAPE), bool)  # keypoints never seen (occluded)
        self.calls = 0
        self.boxes = 0

    def __call__(self, frame: np.ndarray, boxes: list[list[float]]) -> list[dict]:
        self.calls += 1
        self.boxes += len(boxes)
        out = []
        extent = float((self.truth.max(0) - self.truth.min(0)).max())
        for b in boxes:
            x, y, w, h = b
            c = np.array([x + w / 2, y + h / 2])
            half = 1.25 * np.array([w, h]) / 2
            inside = (np.abs(self.truth - c) <= half).all(1) & (max(w, h) <= 4 * extent) & ~self.hidden
            kpts = np.where(inside[:, None], self.truth, c)
            scores = np.where(inside, 0.9, 0.05)
            out.append({"bbox": list(b), "keypoints": kpts.astype(np.float32), "scores": scores.astype(np.float32),
                        "score": float(scores[scores > 0.2].mean()) if (scores > 0.2).any() else 0.0})
        return out


FRAME = np.zeros((H, W, 3), np.uint8)


def test_box_helpers():
    box = keypoint_box(np.array([[10.0, 20.0], [50.0, 30.0]]), margin=0.25, min_margin=4.0)
    np.testing.assert_allclose(box, [0.0, 10.0, 60.0, 30.0])  # 40 px extent -> 10 px on each side
    np.testing.assert_allclose(keypoint_box(np.array([[5.0, 5.0]]), 0.25, 4.0), [1, 1, 8, 8])
    sq = fix_box_aspect(box, 1.0)
    np.testing.assert_allclose(sq, [0.0, -5.0, 60.0, 60.0])  # centre (30, 25) kept
    wide = fix_box_aspect(np.array([0.0, 0.0, 10.0, 10.0]), 2.0)
    np.testing.assert_allclose(wide, [-5.0, 0.0, 20.0, 10.0])


def test_grid_covers_the_frame_at_every_scale():
    boxes = np.array(grid_boxes(W, H, scales=(0.3, 0.5), overlap=0.5))
    assert boxes[-1].tolist() == [0, 0, W, H]
    for side in (0.3 * H, 0.5 * H):
        cells = boxes[np.isclose(boxes[:, 2], side)]
        assert cells[:, 0].min() == 0 and np.isclose(cells[:, 0].max() + side, W)
        assert cells[:, 1].min() == 0 and np.isclose(cells[:, 1].max() + side, H)
        xs = np.unique(cells[:, 0])
        assert np.diff(xs).max() <= side * 0.5 + 1e-6  # neighbours overlap by at least half a box


def test_follows_a_moving_animal_without_searching_again():
    model = StubModel()
    follower = Follower(model, aspect=1.0, config=FollowConfig(smoothing=0.3))
    start = np.array([60.0, 100.0])
    steps = []
    for t in range(40):
        model.truth = SHAPE + start + [4.0 * t, 1.5 * t]  # 4.3 px per frame to the right and down
        before = model.boxes
        step = follower.step(FRAME)
        steps.append(step)
        np.testing.assert_allclose(step.instance["keypoints"], model.truth, atol=1e-4, err_msg=f"frame {t}")
        if t > 0:
            assert not step.reacquired and not step.searched and model.boxes - before == 1, f"frame {t}"
    assert steps[0].reacquired and steps[0].searched and steps[0].candidates > 10  # the first frame is a search
    # the box stays around the animal (aspect fixed to the input's)
    x, y, w, h = follower.box
    assert np.isclose(w, h) and x < model.truth[:, 0].min() and model.truth[:, 0].max() < x + w


def test_reacquires_after_a_jump_and_marks_the_frame():
    model = StubModel()
    follower = Follower(model, aspect=1.0, config=FollowConfig())
    marks = []
    for t in range(20):
        offset = np.array([50.0 + 2 * t, 60.0]) if t < 10 else np.array([230.0, 190.0])  # teleports at 10
        model.truth = SHAPE + offset
        step = follower.step(FRAME)
        marks.append(step.reacquired)
        np.testing.assert_allclose(step.instance["keypoints"], model.truth, atol=1e-4, err_msg=f"frame {t}")
    assert [t for t, m in enumerate(marks) if m] == [0, 10]


def test_lost_animal_is_searched_every_frame_until_found():
    model = StubModel()
    follower = Follower(model, aspect=1.0)
    model.truth = SHAPE + [100.0, 100.0]
    follower.step(FRAME)
    model.truth = SHAPE + [-500.0, -500.0]  # out of the frame: nothing to find
    for _ in range(3):
        step = follower.step(FRAME)
        assert step.searched and step.instance["scores"].max() < 0.2
    assert follower.box is None  # nothing confident: the next frame searches from scratch
    model.truth = SHAPE + [200.0, 50.0]
    step = follower.step(FRAME)
    assert step.reacquired
    np.testing.assert_allclose(step.instance["keypoints"], model.truth, atol=1e-4)


def test_candidates_from_a_detector_replace_the_grid():
    model = StubModel()
    model.truth = SHAPE + [150.0, 120.0]
    asked = []

    def detector(frame):
        asked.append(1)
        return [[140.0, 100.0, 60.0, 40.0]]

    step = Follower(model, aspect=1.0, candidates=detector).step(FRAME)
    assert asked and step.reacquired and step.candidates == 2  # the detector's box, then its refinement
    np.testing.assert_allclose(step.instance["keypoints"], model.truth, atol=1e-4)


def test_box_keeps_the_whole_animal_while_part_of_it_is_unseen():
    model = StubModel()
    follower = Follower(model, aspect=1.0, config=FollowConfig(refine_shift=None))
    for t in range(30):
        model.truth = SHAPE + [60.0 + 3 * t, 100.0]
        model.hidden[3] = t >= 5  # the tail end disappears after frame 5; the head (3 points within 16 px) stays
        step = follower.step(FRAME)
        assert not step.searched or t == 0
    # the tail end's remembered position moved with the head: the box still spans the whole 40 px animal
    x, y, w, h = follower.box
    assert w > 40 and x < model.truth[:, 0].min() and x + w > model.truth[3, 0]


def test_box_size_changes_at_most_max_resize_per_frame():
    model = StubModel()
    follower = Follower(model, aspect=1.0, config=FollowConfig(max_resize=1.1, smoothing=0.0, refine_shift=None))
    model.truth = SHAPE + [100.0, 100.0]
    follower.step(FRAME)
    sides = [follower.box[2]]
    for _ in range(5):
        model.truth = (SHAPE * 2.0) + [100.0, 100.0]  # the animal suddenly looks twice as large
        follower.step(FRAME)
        sides.append(follower.box[2])
    ratios = np.array(sides[1:]) / np.array(sides[:-1])
    assert np.all(ratios <= 1.1 + 1e-9) and ratios[0] > 1.09


def test_fast_motion_is_recentred_within_the_frame():
    def run(refine_shift):
        model = StubModel()
        follower = Follower(model, aspect=1.0, config=FollowConfig(refine_shift=refine_shift, smoothing=0.5))
        seen = []
        for t in range(12):
            model.truth = SHAPE + [30.0 + 18 * t, 100.0]  # 18 px per frame: half the animal's length
            seen.append(int((follower.step(FRAME).instance["scores"] > 0.5).sum()))
        return seen, model.boxes

    seen_once, boxes_once = run(None)
    seen_twice, boxes_twice = run(0.15)
    assert sum(seen_twice) > sum(seen_once)  # more keypoints found
    assert boxes_twice > boxes_once  # at the price of a second pass on some frames
    assert min(seen_twice[1:]) == 4


def test_search_ranks_candidates_with_its_own_predict():
    model = StubModel()
    model.truth = SHAPE + [150.0, 120.0]
    ranked = []

    def rank(frame, boxes):
        ranked.append(len(boxes))
        return model(frame, boxes)

    step = Follower(model, aspect=1.0, search_predict=rank).step(FRAME)
    assert ranked == [len(grid_boxes(W, H))] and step.reacquired
    assert model.calls == 3  # the grid (through rank), the winner again, and its refinement
    np.testing.assert_allclose(step.instance["keypoints"], model.truth, atol=1e-4)


@pytest.mark.parametrize("bad", [{"smoothing": 1.0}, {"search_overlap": -0.1}, {"search_scales": (0.0,)},
                                 {"min_keypoints": 0}, {"margin": -1.0}, {"max_resize": 0.5}])
def test_config_errors_name_the_field(bad):
    field = next(iter(bad))
    with pytest.raises(ValueError, match=f"follow.{field}"):
        FollowConfig(**bad)
