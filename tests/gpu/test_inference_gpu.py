"""Inference from a CUDA model: ``load_model(..., device="cuda")`` predicts what the CPU predicts, the ONNX export
of a model held on CUDA verifies against PyTorch, and the torchvision detector runs on CUDA (random init)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TEST_DATA
from gpu_support import DEVICE, GPU, report

from clamp_pl.api import load_model
from clamp_pl.inference.estimator import read_image

pytestmark = GPU
AP10K = TEST_DATA / "ap10k"


@pytest.fixture(scope="module")
def images_and_boxes() -> tuple[list[np.ndarray], list[list[list[float]]]]:
    """The real AP-10K test images and their annotated boxes."""
    coco = json.loads((AP10K / "test_ap10k.json").read_text())
    images = [read_image(AP10K / im["file_name"]) for im in coco["images"]]
    boxes = [[a["bbox"] for a in coco["annotations"] if a["image_id"] == im["id"]] for im in coco["images"]]
    return images, boxes


def test_load_model_on_cuda_predicts_as_on_cpu(tiny_run, images_and_boxes, record_property):
    images, boxes = images_and_boxes
    out = {dev: load_model(tiny_run, device=dev).predict(images, boxes) for dev in ("cpu", DEVICE.type)}
    kp = {d: np.concatenate([i["keypoints"] for im in o for i in im]) for d, o in out.items()}
    sc = {d: np.concatenate([i["scores"] for im in o for i in im]) for d, o in out.items()}
    dist = np.linalg.norm(kp["cpu"] - kp[DEVICE.type], axis=-1)
    report(record_property, "predict_cuda_vs_cpu_max_px", float(dist.max()))
    np.testing.assert_allclose(sc[DEVICE.type], sc["cpu"], atol=1e-3)
    # a keypoint may move by a heatmap cell where two maxima are within float rounding: 90% within 0.5 px
    assert (dist <= 0.5).mean() >= 0.9, dist


def test_onnx_export_from_a_cuda_model(tiny_run, tmp_path, record_property):
    from clamp_pl.inference.onnx import export_onnx, verify_onnx

    est = load_model(tiny_run, device=DEVICE.type)
    path = export_onnx(est, tmp_path / "model.onnx")
    err = verify_onnx(est, path)
    report(record_property, "onnx_max_abs_diff", err)
    assert err < 1e-3
    assert next(est.net.parameters()).device.type == DEVICE.type  # handed back where it was


def test_detector_runs_on_cuda():
    from torchvision.models import get_model

    from clamp_pl.inference.detector import COCO_ANIMALS, TorchvisionDetector

    torch.manual_seed(0)
    model = get_model("fasterrcnn_mobilenet_v3_large_fpn", weights=None, weights_backbone=None, num_classes=91)
    det = TorchvisionDetector(model, score_threshold=0.0, max_detections=5, device=DEVICE)
    assert next(det.model.parameters()).device.type == DEVICE.type
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (240, 320, 3), dtype=np.uint8) for _ in range(2)]
    out = det(images)
    assert len(out) == 2
    for dets in out:
        assert len(dets) <= 5
        for d in dets:
            assert d["label"] in COCO_ANIMALS.values() and np.isfinite(d["bbox"]).all() and d["bbox"][2] > 0
