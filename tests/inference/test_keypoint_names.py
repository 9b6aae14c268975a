"""Keypoints by name at run time: a prompt-head model predicts any names (trained or never trained) through the
API, ``python -m clamp_pl.predict keypoints=[...]`` (images and videos), with flip pairs and prompts derived from the
names; a concat-head model asked for another count stops with one message naming the head and the way out.

The models are tiny CLAMPs with random weights written as model files: what is tested is the plumbing (which
prompts the network runs, in which order, and what the outputs are named), not accuracy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from clamp_pl.api import load_model
from clamp_pl.data.metainfo import get_meta
from clamp_pl.inference.checkpoint import save_model_file
from clamp_pl.inference.video import run_video_prediction
from clamp_pl.predict import predict
from clamp_pl.spec import make_spec

REPO = Path(__file__).resolve().parents[2]
#: the mouse's keypoints: "snout", "tail base" and the ears' tips were never AP-10K keypoints
MOUSE = ["snout", "left ear tip", "right ear tip", "tail base", "nose"]
TINY_NET = dict(clip_model="clamp-tiny-rn", pretrained=None, image_size=128, num_deconv=3, deconv_channels=32,
                upconv_num_deconv=3, upconv_channels=16, decoder_width=64, decoder_layers=2)


def _model_file(path: Path, head: str) -> Path:
    torch.manual_seed(0)
    spec = make_spec({**TINY_NET, "head": head}, get_meta("ap10k"), normalization="imagenet", padding=1.25,
                     sigma=2.0, decode="default", shift_heatmap=True, flip_test=True,
                     data={"name": "toy_ap10k"})
    net = spec.build_network()
    if head == "prompt":
        # the score term on, so that each prompt's heatmap differs visibly from the others
        net.keypoint_head.score_scale.data.fill_(1.0)
    return save_model_file(path, spec, net.state_dict())


@pytest.fixture(scope="module")
def prompt_model(tmp_path_factory) -> Path:
    return _model_file(tmp_path_factory.mktemp("prompt") / "model.pt", "prompt")


@pytest.fixture(scope="module")
def concat_model(tmp_path_factory) -> Path:
    return _model_file(tmp_path_factory.mktemp("concat") / "model.pt", "concat")


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (96, 120, 3), dtype=np.uint8)


def test_untrained_names_predict_through_the_api(prompt_model, image):
    est = load_model(prompt_model, device="cpu")
    assert est.spec.trained_vocabulary == get_meta("ap10k").keypoint_names and est.spec.head == "prompt"
    own = est.net.prompts
    inst = est.predict(image, keypoints=MOUSE)[0][0]
    assert inst["keypoints"].shape == (5, 2) and inst["scores"].shape == (5,)
    assert np.isfinite(inst["keypoints"]).all() and inst["names"] == tuple(MOUSE)
    assert inst["untrained"] == ("snout", "left ear tip", "right ear tip", "tail base")  # "nose" is AP-10K's
    assert est.net.prompts == own  # the network is left with its trained prompts

    meta = est.vocabulary(MOUSE)
    assert meta.prompts == ("snout", "left ear tip", "right ear tip", "tail base", "nose")
    assert meta.flip_pairs == ((1, 2),) and meta.sigmas[4] == get_meta("ap10k").sigmas[2]
    # the heatmaps are those of the network run with these prompts (set_prompts), without the flip test
    crop, center, scale = est.crop(image, [0, 0, 120, 96])
    kp, sc = est.predict_crops(crop[None], center[None], scale[None], flip_test=False, meta=meta)
    est.net.set_prompts(list(meta.prompts))
    with torch.no_grad():
        heatmaps = est.net(torch.from_numpy(crop[None]))["heatmaps"]
    est.net.set_prompts(own)
    assert heatmaps.shape[1] == 5 and not torch.allclose(heatmaps[0, 0], heatmaps[0, 3])
    np.testing.assert_allclose(sc[0], heatmaps.amax(dim=(2, 3))[0].numpy(), rtol=1e-5, atol=1e-6)


def test_trained_names_by_their_prompt_and_order(prompt_model, image):
    est = load_model(prompt_model, device="cpu")
    default = est.predict(image, flip_test=False)[0][0]
    assert default["names"] == get_meta("ap10k").keypoint_names and default["untrained"] == ()
    # AP-10K's names or their prompts ("left eye" is L_Eye's), in another order: the same keypoints, reordered
    # (the prompts attend to one another, so a subset is not the same computation: take all 17, permuted)
    names = list(get_meta("ap10k").keypoint_names)
    order = np.random.default_rng(1).permutation(len(names))
    asked = [names[i] if n % 2 else get_meta("ap10k").prompts[i] for n, i in enumerate(order)]
    again = est.predict(image, keypoints=asked, flip_test=False)[0][0]
    assert again["untrained"] == ()
    # heatmap maxima: random weights make near-flat heatmaps whose arg-max can tie, so the locations are not compared
    np.testing.assert_allclose(again["scores"], default["scores"][order], rtol=1e-4, atol=1e-6)


def test_concat_model_asked_for_another_count(concat_model, image):
    est = load_model(concat_model, device="cpu")
    with pytest.raises(ValueError, match=r"concat head .* K=17 .* got 5; train with model.net.head=prompt"):
        est.predict(image, keypoints=MOUSE)
    assert len(est.net.prompts) == 17
    # as many names as trained: CLAMP's zero-shot use of the concat head (other texts, same K)
    assert est.predict(image, keypoints=[f"part {i}" for i in range(17)])[0][0]["keypoints"].shape == (17, 2)


def _predict_cfg(make_cfg, model: Path, out: Path, *overrides: str):
    return make_cfg(f"ckpt_path={model}", f"output_dir={out}", "device=cpu", *overrides, config_name="predict",
                    fast=False)


def test_untrained_names_through_the_entry_point(make_cfg, prompt_model, image, tmp_path):
    pd = pytest.importorskip("pandas")
    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), image)
    out = tmp_path / "out"
    summary = predict(_predict_cfg(make_cfg, prompt_model, out, f"input={folder}",
                                   "keypoints=[snout,'left ear tip','right ear tip','tail base',nose]"))
    assert summary["keypoints"] == MOUSE and summary["untrained_keypoints"] == MOUSE[:4]
    preds = json.loads((out / "predictions.json").read_text())
    assert len(preds) == 1 and len(preds[0]["keypoints"]) == 5 * 3
    table = pd.read_csv(out / "predictions_clamp.csv", header=[0, 1, 2], index_col=0)
    assert list(table.columns.get_level_values("bodyparts").unique()) == MOUSE


def test_untrained_names_on_a_video(prompt_model, image, tmp_path):
    pd = pytest.importorskip("pandas")
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, image.shape[1::-1])
    for i in range(3):
        writer.write(np.roll(image, 4 * i, axis=1))
    writer.release()
    est = load_model(prompt_model, device="cpu")
    summary = run_video_prediction(est, path, tmp_path / "out", keypoints=MOUSE, visualize=False)
    assert summary["frames"] == 3 and summary["untrained_keypoints"] == MOUSE[:4]
    table = pd.read_csv(summary["csv"], header=[0, 1, 2], index_col=0)
    assert table.shape == (3, 15) and list(table.columns.get_level_values("bodyparts").unique()) == MOUSE


def test_concat_misuse_through_the_predict_task(make_cfg, concat_model, image, tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), image)
    cfg = _predict_cfg(make_cfg, concat_model, tmp_path / "out", f"input={tmp_path / 'a.png'}", "keypoints=[snout]")
    with pytest.raises(ValueError, match="concat head"):
        predict(cfg)


@pytest.mark.e2e
def test_concat_misuse_message_of_the_command(concat_model, image, tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), image)
    run = subprocess.run(
        [sys.executable, "-m", "clamp_pl.predict", f"ckpt_path={concat_model}", f"input={tmp_path / 'a.png'}",
         f"output_dir={tmp_path / 'out'}", "device=cpu", "keypoints=[snout,'tail base']",
         f"hydra.run.dir={tmp_path / 'hydra'}"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )
    assert run.returncode == 1
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "concat head" in errors[0] and "model.net.head=prompt" in errors[0], run.stderr
    assert "Traceback" not in run.stderr
