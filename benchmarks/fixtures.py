"""Inputs of the benchmarks: synthetic AP-10K-like photos and COCO files, the composed model configs, randomly
initialised CLAMP networks and batches for them, and the training step of ``PoseLitModule`` on plain tensors."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from benchmarks.report import REPO

MODELS = {"tiny": "clamp_tiny", "vitb16": "clamp_vitb16", "rn50": "clamp_rn50"}
HEAVY_MODELS = ("vitb16", "rn50")
DEFAULT_REPEATS = {"data": 7, "text": 5, "eval": 3, "tiny": 5, "vitb16": 3, "rn50": 3}
AP10K_SAMPLES = REPO / "tests" / "fixtures" / "ap10k"


def synthetic_photo(rng: np.random.Generator, size: tuple[int, int] = (1024, 683)) -> np.ndarray:
    """A BGR uint8 image whose JPEG size and decode cost resemble a photo: smooth colour fields, shapes, grain."""
    w, h = size
    img = cv2.resize(
        rng.uniform(0, 255, (h // 48 + 2, w // 48 + 2, 3)).astype(np.float32),
        (w, h),
        interpolation=cv2.INTER_CUBIC,
    )
    for _ in range(12):
        centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        axes = (int(rng.integers(20, w // 3)), int(rng.integers(20, h // 3)))
        colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
        cv2.ellipse(img, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1, cv2.LINE_AA)
    img += rng.normal(0, 10, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def ap10k_like_set(root: Path, n_synthetic: int = 24, seed: int = 0) -> tuple[Path, Path]:
    """COCO file + image dir: ``n_synthetic`` 1024x683 JPEGs (quality 90) with one AP-10K-like instance each
    (box 30-90% of the image, 17 keypoints, ~85% labelled) and the 2 real AP-10K test samples."""
    rng = np.random.default_rng(seed)
    img_dir = root / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    real = json.loads((AP10K_SAMPLES / "test_ap10k.json").read_text())
    images, annotations = list(real["images"]), list(real["annotations"])
    for im in real["images"]:
        shutil.copy(AP10K_SAMPLES / im["file_name"], img_dir / im["file_name"])
    cat_ids = [c["id"] for c in real["categories"]]
    w, h = 1024, 683
    for i in range(n_synthetic):
        image_id, name = 10_000 + i, f"synthetic_{i:03d}.jpg"
        cv2.imwrite(str(img_dir / name), synthetic_photo(rng, (w, h)), [cv2.IMWRITE_JPEG_QUALITY, 90])
        images.append({"id": image_id, "file_name": name, "width": w, "height": h})
        bw, bh = rng.uniform(0.3, 0.9) * w, rng.uniform(0.3, 0.9) * h
        bx, by = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
        kx, ky = bx + rng.uniform(0, bw, 17), by + rng.uniform(0, bh, 17)
        v = np.where(rng.random(17) < 0.85, 2, 0)
        v[:3] = 2  # at least a few labelled keypoints
        kpts = np.stack([kx * (v > 0), ky * (v > 0), v], 1).reshape(-1)
        annotations.append(
            {
                "id": 20_000 + i,
                "image_id": image_id,
                "category_id": int(rng.choice(cat_ids)),
                "bbox": [bx, by, bw, bh],
                "area": bw * bh,
                "iscrowd": 0,
                "num_keypoints": int((v > 0).sum()),
                "keypoints": kpts.tolist(),
            }
        )
    ann = root / "ap10k_like.json"
    ann.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": real["categories"]})
    )
    return ann, img_dir


@contextlib.contextmanager
def composed(overrides: list[str]):
    """``conf/train.yaml`` composed by Hydra with ``overrides`` (the DictConfig, inside the context)."""
    from clamp_pl.cli.config import compose_config

    with tempfile.TemporaryDirectory() as d:
        yield compose_config("train", overrides, Path(d))


def model_config(name: str) -> dict[str, Any]:
    """``conf/model/<name>.yaml`` composed by Hydra and resolved, plus ``"spec"``: the model spec for the AP-10K
    keypoints (:func:`clamp_pl.cli.build.build_spec`: heatmap size and feature grid derived from the network)."""
    from omegaconf import OmegaConf

    from clamp_pl.cli.build import build_spec
    from clamp_pl.data.metainfo import get_meta

    with composed([f"model={name}"]) as cfg:
        out = OmegaConf.to_container(cfg.model, resolve=True)
        out["spec"] = build_spec(cfg, get_meta("ap10k"), "ap10k")
    return out


def train_augment(meta, seed: int = 0):
    """The training augmentation as the datamodule builds it from the configured ``data.augment`` node."""
    from omegaconf import OmegaConf

    from clamp_pl.data.transforms import TopDownAugment

    with composed([]) as cfg:
        node = OmegaConf.to_container(cfg.data.augment, resolve=True)
    return TopDownAugment.from_config(meta, node, seed)


def build_clamp(cfg: dict[str, Any], text_branch: bool = True):
    """The randomly initialised CLAMP of a :func:`model_config`'s spec, or its image-only baseline."""
    torch.manual_seed(0)
    spec = cfg["spec"]
    return dataclasses.replace(spec, net={**spec.net, "text_branch": text_branch}).build_network()


def synthetic_batch(model, batch: int, heatmap_size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Random images [B,3,S,S] and training targets (heatmaps [B,K,h,w] for ``heatmap_size`` (w, h), weights,
    feature-grid peak cells) for ``model``."""
    size = model.image_tower.image_size
    gh, gw = model.feature_grid
    g = torch.Generator().manual_seed(0)
    k = model.num_keypoints
    return {
        "image": torch.randn(batch, 3, size, size, generator=g),
        "heatmaps": torch.rand(batch, k, heatmap_size[1], heatmap_size[0], generator=g),
        "keypoint_weights": torch.ones(batch, k),
        "peak_index": torch.randint(0, gh * gw, (batch, k), generator=g),
        "peak_weights": torch.ones(batch, k),
    }


def make_optimizer(model, cfg: dict[str, Any], fused: bool = True) -> torch.optim.Optimizer:
    """``PoseLitModule``'s AdamW (:mod:`clamp_pl.training.optim`) with the optimiser settings of the :func:`model_config`
    ``cfg``; fused as the module makes it by default (``optimizer.fused: auto``)."""
    from clamp_pl.training.optim import adamw, param_groups

    o = cfg["optimizer"]
    groups = param_groups(model, lr=o["lr"], weight_decay=o["weight_decay"], backbone_lr_mult=o["backbone_lr_mult"],
                          no_decay_keys=o.get("no_decay_keys"))
    return adamw(groups, fused=fused)




def make_train_step(model, cfg: dict[str, Any], criterion, batch: dict[str, torch.Tensor], *,
                    fused: bool = True, check: bool = True) -> Callable[[], None]:
    """The training step of ``PoseLitModule`` on a fixed batch: forward + loss + backward, the non-finite check
    (``check``: :func:`clamp_pl.training.optim.skip_if_nonfinite`, the module's own) and the optimiser step."""
    from clamp_pl.training.optim import skip_if_nonfinite

    opt = make_optimizer(model, cfg, fused=fused)
    model.train()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = criterion(model(batch["image"]), batch)["loss"]
        loss.backward()
        if check:
            skip_if_nonfinite(opt, ~torch.isfinite(loss.detach()))
        opt.step()

    return step
