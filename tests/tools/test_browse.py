"""``clamp_pl.tools.browse``: the crops drawn are the DataModule's own (augmented for train), reproducible per seed."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clamp_pl.tools.browse import browse, overlay_heatmaps, render_samples


def test_overlay_keeps_cold_pixels_and_colours_the_peaks():
    img = np.full((64, 64, 3), 100, np.uint8)
    hm = np.zeros((2, 16, 16), np.float32)
    hm[1, 8, 8] = 1.0
    out = overlay_heatmaps(img, hm)
    assert (out[:8, :8] == 100).all()  # no heat: the image as it was
    assert np.abs(out[33, 33].astype(int) - 100).sum() > 30  # the peak (16 -> 64 px: cell 8 is at ~33)


@pytest.fixture
def toy_dm(make_cfg):
    from clamp_pl.cli.build import build_datamodule, build_spec

    cfg = make_cfg(config_name="browse")
    dm = build_datamodule(cfg)
    dm.use_spec(build_spec(cfg, dm.ensure_meta(), dm.name))
    dm.setup("fit")
    return dm


def test_render_is_reproducible_and_follows_the_dataset(toy_dm):
    pic, recs = render_samples(toy_dm, "train", n=6, seed=3, cols=3)
    h, w = toy_dm.input_size[1], toy_dm.input_size[0]
    assert pic.shape == (2 * h + 2, 3 * w + 4, 3) and len(recs) == 6
    again, recs2 = render_samples(toy_dm, "train", n=6, seed=3, cols=3)
    assert np.array_equal(pic, again) and recs == recs2
    other, recs3 = render_samples(toy_dm, "train", n=6, seed=4, cols=3)
    assert not np.array_equal(pic, other)
    ds = toy_dm.datasets["train"]
    for r in recs:
        inst = ds.instances[r["index"]]
        assert (r["ann_id"], r["image_id"], r["category_id"]) == (inst.ann_id, inst.image_id, inst.category_id)
    # train crops are augmented (rotation / flip drawn per crop); test crops never are
    assert any(r["rotation_deg"] != 0 or r["flipped"] for r in recs + recs3)
    _, test_recs = render_samples(toy_dm, "test", n=4, seed=0)
    assert all(r["rotation_deg"] == 0 and not r["flipped"] for r in test_recs)


def test_unknown_split_is_a_clear_error(toy_dm):
    with pytest.raises(ValueError, match="split must be one of"):
        render_samples(toy_dm, "training")


def test_cli_writes_the_picture_and_the_tile_list(make_cfg, tmp_path):
    cfg = make_cfg("split=val", "n=5", config_name="browse")
    out, _ = browse(cfg)
    recs = json.loads((tmp_path / "run" / "browse_val.json").read_text())
    assert (tmp_path / "run" / "browse_val.png").stat().st_size > 1000
    assert out["picture"].endswith("browse_val.png") and len(recs["tiles"]) == 5 and recs["split"] == "val"
    assert [r["name"] for r in recs["keypoints"]][:3] == ["left_eye", "right_eye", "nose"]
    assert recs["keypoints"][0]["flip"] == "right_eye" and recs["keypoints"][0]["sigma"] == 0.025
