"""Every timm tower family through the real entry points, randomly initialised, nothing downloaded: the tiny config
of each family trains a couple of batches with ``clamp_pl.train.train``, its run directory reloads to the same
predictions, it exports to ONNX with parity and its spec rebuilds it; the full-size configs (``conf/model``) train
one step on the toy set under ``slow``."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import FAST_OVERRIDES, compose_cfg

from clamp_pl.api import load_model
from clamp_pl.inference.estimator import PoseEstimator
from clamp_pl.inference.onnx import export_onnx, verify_onnx
from clamp_pl.inference.onnx_backend import OnnxPoseEstimator
from clamp_pl.spec import ModelSpec

#: tiny open_clip config of each family (clamp_pl/models/model_configs), at 128 px with clamp_tiny's heads
TINY = ["clamp-tiny-mapvit", "clamp-tiny-eva02", "clamp-tiny-pecore", "clamp-tiny-convnext",
        "clamp-tiny-mobileclip2"]


def _train(overrides, run_dir, data_dir):
    from hydra.core.global_hydra import GlobalHydra

    from clamp_pl.train import train

    cfg = compose_cfg("train", [*FAST_OVERRIDES, "experiment=supervised_toy", "test=false", *overrides], run_dir,
                      data_dir)
    try:
        metrics, objects = train(cfg)
    finally:
        GlobalHydra.instance().clear()
    return metrics, objects["model"]


def _image(seed=0):
    g = np.random.default_rng(seed)
    return g.integers(0, 256, (150, 190, 3), dtype=np.uint8)


@pytest.mark.parametrize("clip_model", TINY)
def test_tiny_tower_trains_reloads_exports_and_rebuilds(tmp_path, data_dir, clip_model):
    run_dir = tmp_path / "run"
    metrics, module = _train(
        ["model=clamp_tiny", f"model.net.clip_model={clip_model}", "model.net.drop_path_mode=sample",
         "data.normalization=tower", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1"],
        run_dir, data_dir)
    assert math.isfinite(metrics["train/loss"])
    assert module.spec.normalization == "tower" and module.spec.net["clip_model"] == clip_model

    # the run directory is the model: its best checkpoint (the one epoch) predicts as the trained module
    est = load_model(run_dir, device="cpu")
    assert est.spec.to_dict() == module.spec.to_dict()
    trained = PoseEstimator(module.spec, module.net, device="cpu")
    images, boxes = [_image(0), _image(1)], [[[10, 12, 150, 120]], [[0, 0, 190, 150], [40, 30, 60, 90]]]
    got, ref = est.predict(images, boxes), trained.predict(images, boxes)
    for a, b in zip(got, ref):
        for x, y in zip(a, b):
            np.testing.assert_allclose(x["keypoints"], y["keypoints"], atol=1e-4)
            np.testing.assert_allclose(x["scores"], y["scores"], atol=1e-6)

    # two training steps leave heatmaps ~1e-4: recalibrated BatchNorm and a redrawn last layer make the parity
    # check compare outputs of order 1 (as tests/inference/test_export.py)
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
    path = export_onnx(est, tmp_path / "model.onnx")
    with torch.no_grad():
        peak = est.net(torch.randn(2, 3, *est.input_size[::-1]))["heatmaps"].abs().max()
    assert peak > 0.1
    assert verify_onnx(est, path) <= 1e-4
    # ... and runs behind the predict surface (predict backend=onnx) with the same keypoints
    onnx_est = OnnxPoseEstimator(est.spec, path)
    for a, b in zip(est.predict(images, boxes), onnx_est.predict(images, boxes)):
        for x, y in zip(a, b):
            np.testing.assert_allclose(y["keypoints"], x["keypoints"], atol=1e-3)
    assert json.loads(path.with_suffix(".json").read_text())["mean"] == pytest.approx(list(module.spec.mean))

    # the spec (through JSON) rebuilds the same network: every weight loads strictly, same outputs
    spec = ModelSpec.from_dict(json.loads(json.dumps(est.spec.to_dict())))
    net = spec.build_network()
    net.load_state_dict(est.net.state_dict())
    x = torch.randn(2, 3, *spec.input_size[::-1])
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x)["heatmaps"], est.net(x)["heatmaps"])


FULL = ["clamp_siglip2_vitb16", "clamp_eva02_vitb16", "clamp_pecore_vitb16", "clamp_convnext_base",
        "clamp_mobileclip2_s0"]


@pytest.mark.slow
@pytest.mark.parametrize("model", FULL)
def test_full_size_config_trains_on_the_toy_set(tmp_path, data_dir, model):
    """``experiment=supervised_toy model=clamp_<tower>``, random init (pretrained=null), one step of 2 crops at the
    config's full size, then the run directory loads."""
    if model == "clamp_siglip2_vitb16":
        pytest.importorskip("transformers", reason="SigLIP 2's Gemma tokenizer is a Hugging Face file (transformers)")
    run_dir = tmp_path / "run"
    metrics, module = _train(
        [f"model={model}", "model.net.pretrained=null", "data.batch_size=2", "trainer.limit_train_batches=1",
         "trainer.limit_val_batches=1"], run_dir, data_dir)
    assert math.isfinite(metrics["train/loss"])
    assert module.spec.input_size == (256, 256) and list(module.spec.heatmap_size) == [64, 64]
    assert load_model(run_dir, device="cpu").spec.to_dict() == module.spec.to_dict()
