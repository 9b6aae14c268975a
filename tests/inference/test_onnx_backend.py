"""``backend=onnx``: the ONNX export run by onnxruntime behind the estimator's predict surface gives the PyTorch
backend's keypoints on images and through the video loops (batched frames and following), is exported once per
checkpoint, and refuses what the graph cannot do (other keypoint names, score maps, an export of another model)."""

from __future__ import annotations

import dataclasses
import json
import os

import cv2
import numpy as np
import pytest
import torch

from clamp_pl.api import load_model
from clamp_pl.inference.checkpoint import save_model_file
from clamp_pl.inference.video import run_video_prediction
from clamp_pl.predict import predict

pytest.importorskip("onnxruntime")
from clamp_pl.inference.onnx_backend import OnnxPoseEstimator, load_onnx_model  # noqa: E402


@pytest.fixture(scope="module")
def model_file(tiny_run, tmp_path_factory):
    """The tiny run with BatchNorm recalibrated and its last layer redrawn (as tests/inference/test_export.py): two
    training steps leave heatmaps ~1e-4, nearly flat, where the arg-max of two backends could differ by rounding;
    peaks of order 1 make the comparison meaningful."""
    est = load_model(tiny_run, device="cpu")
    g = torch.Generator().manual_seed(0)
    for m in est.net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    est.net.train()
    with torch.no_grad():
        for _ in range(2):
            est.net(torch.randn(4, 3, *est.input_size[::-1], generator=g))
    est.net.eval()
    torch.nn.init.normal_(est.net.keypoint_head.final_layer.weight, std=0.3, generator=g)
    return save_model_file(tmp_path_factory.mktemp("model") / "model.pt", est.spec, est.net.state_dict())


@pytest.fixture(scope="module")
def video(tmp_path_factory, data_dir, tiny_run):
    img = cv2.imread(str(next(p for p in sorted((data_dir / "toy_ap10k").rglob("*.jpg")))))
    path = tmp_path_factory.mktemp("video") / "walk.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, img.shape[1::-1])
    for i in range(5):
        writer.write(np.roll(img, 3 * i, axis=1))
    writer.release()
    return path


def _frames(video):
    cap = cv2.VideoCapture(str(video))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(f, cv2.COLOR_BGR2RGB))
    return frames


def test_onnx_predicts_as_torch(model_file, video, tmp_path):
    torch_est = load_model(model_file, device="cpu")
    onnx_est = load_onnx_model(model_file, tmp_path / "m.onnx")
    assert isinstance(onnx_est, OnnxPoseEstimator) and onnx_est.spec.to_dict() == torch_est.spec.to_dict()
    frames = _frames(video)
    boxes = [[[20, 10, 60, 70], [0, 0, 90, 80]]] + [None] * (len(frames) - 1)
    for flip in (True, False):
        ref = torch_est.predict(frames, boxes, flip_test=flip, batch_size=3)
        got = onnx_est.predict(frames, boxes, flip_test=flip, batch_size=3)
        for a, b in zip(ref, got):
            assert len(a) == len(b)
            for x, y in zip(a, b):
                assert x["scores"].max() > 0.1  # peaks of order 1 (see model_file)
                np.testing.assert_allclose(y["keypoints"], x["keypoints"], atol=1e-3)
                np.testing.assert_allclose(y["scores"], x["scores"], atol=1e-4)
                assert y["names"] == x["names"]


@pytest.mark.parametrize("track", ["none", "follow"])
def test_video_loops_run_on_the_onnx_backend(model_file, video, tmp_path, track):
    outs = {}
    for name, est in (("torch", load_model(model_file, device="cpu")),
                      ("onnx", load_onnx_model(model_file, tmp_path / "m.onnx"))):
        summary = run_video_prediction(est, video, tmp_path / name, track=track, batch_size=2, visualize=False)
        assert summary["frames"] == 5
        outs[name] = json.loads(summary["predictions"].read_text())
    for a, b in zip(outs["torch"], outs["onnx"]):
        assert a["bbox"] == pytest.approx(b["bbox"], abs=0.05)
        np.testing.assert_allclose(a["keypoints"], b["keypoints"], atol=2e-3)


def test_predict_cli_backend_onnx(make_cfg, model_file, video, tmp_path):
    out = tmp_path / "pred"
    cfg = make_cfg(f"ckpt_path={model_file}", f"input={video}", f"output_dir={out}", "backend=onnx",
                   "visualize=false", "threads=1", config_name="predict", fast=False)
    summary = predict(cfg)
    assert summary["frames"] == 5 and (out / "model.onnx").is_file() and (out / "model.json").is_file()
    ref = load_model(model_file, device="cpu").predict(_frames(video))
    preds = json.loads(summary["predictions"].read_text())
    for p, r in zip(preds, ref):
        np.testing.assert_allclose(np.array(p["keypoints"]).reshape(-1, 3)[:, :2], r[0]["keypoints"], atol=2e-3)
    with pytest.raises(ValueError, match="backend must be torch or onnx"):
        predict(make_cfg(f"ckpt_path={model_file}", f"input={video}", f"output_dir={out}", "backend=tensorrt",
                         config_name="predict", fast=False))


def test_export_made_once_per_checkpoint(model_file, tiny_run, tmp_path):
    path = tmp_path / "m.onnx"
    load_onnx_model(model_file, path)
    made = path.stat().st_mtime_ns
    load_onnx_model(model_file, path)
    assert path.stat().st_mtime_ns == made  # the same checkpoint's export is reused
    os.utime(model_file, ns=(made + 10**9, made + 10**9))  # the checkpoint was written again since
    load_onnx_model(model_file, path)
    assert path.stat().st_mtime_ns > made
    load_onnx_model(tiny_run, path)  # another checkpoint: exported again, side-car names it
    assert json.loads(path.with_suffix(".json").read_text())["checkpoint"] != str(model_file)


def test_what_the_graph_cannot_do_is_a_clear_error(model_file, tmp_path):
    est = load_onnx_model(model_file, tmp_path / "m.onnx")
    names = list(est.meta.keypoint_names)
    assert est.vocabulary(names) is est.meta
    with pytest.raises(ValueError, match="backend=torch"):
        est.predict(np.zeros((64, 64, 3), np.uint8), keypoints=names[:3])
    with pytest.raises(ValueError, match="score maps"):
        est.score_maps(np.zeros((1, 3, *est.input_size[::-1]), np.float32))
    spec = est.spec
    other = dataclasses.replace(spec, net={**spec.net, "image_size": 64}, input_size=(64, 64),
                                feature_grid=(2, 2), heatmap_size=(16, 16))
    with pytest.raises(ValueError, match="an export of another model"):
        OnnxPoseEstimator(other, tmp_path / "m.onnx")
