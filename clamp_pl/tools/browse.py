"""Browse a dataset as the network sees it: ``python -m clamp_pl.tools.browse [experiment=...] [split=train] [n=16]``.

The crops come from the DataModule's own datasets (``setup("fit")``), so what is drawn is exactly what training
or evaluation reads: the top-down crop (train: with this run's augmentation), the keypoints in crop pixels with
the skeleton (flip pairs already swapped on flipped crops), and, blended in, the target heatmaps (max over K).
Writes ``browse_<split>.png`` (a mosaic) and ``browse_<split>.json`` (per tile: annotation and image ids,
category, rotation, flip, visible keypoints; and the keypoint table: name, prompt, flip partner, upper/lower body,
sigma) into the run dir, and prints the keypoint table; mmpose's ``tools/misc/browse_dataset.py`` plays the same
part there. The crops are made with the configured model's preprocessing (its spec: input size, normalisation,
box padding, heatmap codec), which is all of the model that is built.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import cv2
import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from clamp_pl.cli.config import config_dir
from clamp_pl.cli.run import exit_on_user_error, task_wrapper
from clamp_pl.core.preprocess import denormalize
from clamp_pl.core.viz import draw_pose, mosaic, save_rgb
from clamp_pl.data.metainfo import format_meta_table, meta_table

log = logging.getLogger("clamp_pl")


def overlay_heatmaps(image: np.ndarray, heatmaps: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend target heatmaps ``[K, h, w]`` (max over K, in [0, 1]) into an RGB crop ``[H, W, 3]`` as a colour
    map, in proportion to the heat: cold pixels keep the image."""
    heat = np.clip(heatmaps.max(0) if len(heatmaps) else np.zeros(heatmaps.shape[1:]), 0.0, 1.0)
    heat = cv2.resize(heat.astype(np.float32), (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
    colour = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    w = (alpha * heat)[..., None]
    return (image * (1 - w) + colour * w).astype(np.uint8)


def render_samples(
    dm: Any, split: str = "train", n: int = 16, seed: int = 0, cols: int = 4, heatmaps: bool = True
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """A mosaic of ``n`` crops of ``dm.datasets[split]`` (RGB uint8) and one record per tile.

    The crops are chosen and augmented reproducibly from ``seed``; the DataModule must be set up.
    """
    if split not in dm.datasets:
        raise ValueError(f"split must be one of {sorted(dm.datasets)}, not {split!r}")
    ds = dm.datasets[split]
    if len(ds) == 0:
        raise ValueError(f"the {split} split of {dm.name} has no instances")
    meta = dm.ensure_meta()
    rng = np.random.default_rng(seed)
    picks = sorted(rng.choice(len(ds), size=min(n, len(ds)), replace=False).tolist())
    tiles, records = [], []
    with torch.random.fork_rng(devices=[]):  # the dataset draws its augmentation from torch's global generator
        torch.manual_seed(seed)
        items = [ds[i] for i in picks]
    mean, std = np.asarray(dm.spec.mean), np.asarray(dm.spec.std)
    for i, item in zip(picks, items):
        img = denormalize(item["image"].numpy(), mean, std)
        if heatmaps:
            img = overlay_heatmaps(img, item["heatmaps"].numpy())
        vis = item["visible"].numpy()
        img = draw_pose(img, item["keypoints"].numpy(), vis, meta.skeleton, threshold=0.0)
        cv2.putText(img, f"ann {int(item['ann_id'])}", (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255),
                    1, cv2.LINE_AA)
        tiles.append(img)
        records.append({
            "index": int(i),
            "ann_id": int(item["ann_id"]),
            "image_id": int(item["image_id"]),
            "category_id": int(item["category_id"]),
            "species": meta.species.get(int(item["category_id"]), ""),
            "rotation_deg": round(float(item["rotation"]), 2),
            "flipped": bool(item["flipped"]),
            "visible_keypoints": [meta.keypoint_names[k] for k in np.flatnonzero(vis > 0)],
        })
    return mosaic(tiles, cols=cols), records


@task_wrapper
def browse(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    from clamp_pl.cli.build import build_datamodule, build_spec

    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    dm = build_datamodule(cfg)
    meta = dm.ensure_meta()
    dm.use_spec(build_spec(cfg, meta, dm.name))
    dm.setup("fit")
    print(format_meta_table(meta))
    picture, records = render_samples(dm, cfg.split, int(cfg.n), int(cfg.seed), int(cfg.cols), bool(cfg.heatmaps))
    png, js = out / f"browse_{cfg.split}.png", out / f"browse_{cfg.split}.json"
    save_rgb(png, picture)
    js.write_text(json.dumps({"dataset": dm.name, "split": cfg.split, "seed": int(cfg.seed),
                              "keypoints": meta_table(meta), "provenance": dict(meta.provenance),
                              "tiles": records}, indent=1))
    log.info("%d %s crops of %s drawn to %s (tiles listed in %s)", len(records), cfg.split, dm.name, png, js)
    return {"picture": str(png), "records": str(js)}, {"datamodule": dm}


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="browse")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    browse(cfg)


if __name__ == "__main__":
    main()
