"""The optional animal detector (clamp_pl.inference.detector): a randomly initialised torchvision model (nothing
downloaded) through the wrapper, weights from a local file, and the message when there are none."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clamp_pl.inference.detector import (
    COCO_ANIMALS,
    DetectorWeightsMissing,
    TorchvisionDetector,
    build_detector,
)

ARCH = "fasterrcnn_mobilenet_v3_large_320_fpn"


@pytest.fixture(scope="module")
def random_model():
    from torchvision.models import get_model

    torch.manual_seed(0)
    # small inputs keep the CPU forward short; random weights, no download
    # (torchvision's own 0.05 score floor off, so that untrained scores ~1/91 still come out)
    return get_model(ARCH, weights=None, weights_backbone=None, num_classes=91, min_size=160, max_size=160,
                     box_score_thresh=0.0)


def test_coco_animal_ids_match_torchvision():
    from torchvision.models import get_model_weights

    cats = get_model_weights(ARCH).DEFAULT.meta["categories"]  # metadata only, no download
    assert {i: cats[i] for i in COCO_ANIMALS} == COCO_ANIMALS


def test_random_detector_plumbing(random_model):
    det = TorchvisionDetector(random_model, classes={i: f"class{i}" for i in range(1, 91)}, score_threshold=0.0,
                              max_detections=5, device="cpu")
    images = [np.random.default_rng(i).integers(0, 255, (120, 160, 3), dtype=np.uint8) for i in range(2)]
    out = det(images)
    assert len(out) == 2 and all(len(dets) == 5 for dets in out)
    for dets in out:
        assert len(dets) <= 5
        scores = [d["score"] for d in dets]
        assert scores == sorted(scores, reverse=True)
        for d in dets:
            x, y, w, h = d["bbox"]
            assert w > 0 and h > 0 and -1 <= x and x + w <= 161 and -1 <= y and y + h <= 121  # xywh in pixels
            assert d["label"].startswith("class")
    assert det([]) == []


class _Fixed(torch.nn.Module):
    """A detection model answering known boxes (xyxy), labels and scores for every image."""

    def forward(self, images):
        return [{"boxes": torch.tensor([[10.0, 20.0, 50.0, 60.0], [0.0, 0.0, 5.0, 5.0], [1.0, 1.0, 30.0, 40.0]]),
                 "labels": torch.tensor([18, 18, 1]),  # dog, dog, person
                 "scores": torch.tensor([0.9, 0.3, 0.95])} for _ in images]


def test_keeps_animal_classes_above_the_threshold():
    det = TorchvisionDetector(_Fixed(), score_threshold=0.5, device="cpu")
    (dets,) = det([np.zeros((80, 80, 3), np.uint8)])
    assert dets == [{"bbox": [10.0, 20.0, 40.0, 40.0], "score": pytest.approx(0.9), "label": "dog"}]


def test_weights_from_a_local_file(random_model, tmp_path):
    path = tmp_path / "det.pth"
    torch.save({"model": random_model.state_dict()}, path)
    det = build_detector(ARCH, weights=path, device="cpu")
    key = "roi_heads.box_predictor.cls_score.weight"
    torch.testing.assert_close(det.model.state_dict()[key], random_model.state_dict()[key])
    assert det.classes == COCO_ANIMALS
    torch.save({"not": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"bad\.pth: not a state dict"):
        build_detector(ARCH, weights=tmp_path / "bad.pth")


def test_no_weights_says_how_to_get_them(tmp_path, monkeypatch):
    def no_download(*a, **k):
        raise AssertionError("must not download")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    with pytest.raises(DetectorWeightsMissing, match=r"detector\.weights=.*detector\.download=true.*boxes="):
        build_detector(ARCH)
    with pytest.raises(DetectorWeightsMissing, match="file not found"):
        build_detector(ARCH, weights=tmp_path / "nope.pth")
    with pytest.raises(ValueError, match="not a COCO class; known: .*giraffe"):
        build_detector(ARCH, classes=["unicorn"])
    with pytest.raises(ValueError, match="detector.arch"):
        build_detector("no_such_model")
