"""``KeypointVisCallback``: a fixed set of validation crops with predicted (coloured) and true (white)
skeletons, and the K score maps of the first crop, every N epochs; after testing, the keypoint confusion matrix,
per-keypoint PCK by species and the test instances with the lowest OKS (bad cases). As PNGs in
``<run dir>/vis/`` and as images in every logger that takes them (W&B, TensorBoard)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytorch_lightning as pl
import torch

from clamp_pl.core.preprocess import denormalize
from clamp_pl.core.viz import (
    confusion_image,
    draw_pose,
    mosaic,
    pck_table_image,
    save_rgb,
    score_map_grid,
)

log = logging.getLogger(__name__)


class KeypointVisCallback(pl.Callback):
    """Args:
        num_samples: validation/test crops drawn (evenly spaced through the split).
        every_n_epochs: draw the validation crops every N epochs (and at the last one).
        score_threshold: predicted keypoints at or below it are not drawn.
        num_worst: after testing, draw the test instances with the lowest OKS (``vis/test_worst_*.png``, with
            ``vis/test_worst.json`` listing ann id, image id, species and OKS); 0 turns it off.
    """

    def __init__(self, num_samples: int = 8, every_n_epochs: int = 10, score_threshold: float = 0.3,
                 num_worst: int = 8) -> None:
        self.num_samples = num_samples
        self.every_n_epochs = every_n_epochs
        self.score_threshold = score_threshold
        self.num_worst = num_worst

    @staticmethod
    def _dataset(trainer: pl.Trainer, split: str):
        dm = trainer.datamodule
        return getattr(dm, "datasets", {}).get(split) if dm is not None else None

    def _batch(self, trainer: pl.Trainer, split: str, indices=None) -> dict[str, torch.Tensor] | None:
        ds = self._dataset(trainer, split)
        if not ds:
            return None
        if indices is None:
            indices = np.linspace(0, len(ds) - 1, min(self.num_samples, len(ds))).round().astype(int)
        items = [ds[int(i)] for i in indices]
        return {k: torch.stack([torch.as_tensor(it[k]) for it in items])
                for k in ("image", "keypoint_weights", "heatmaps")}

    @torch.no_grad()
    def render(self, trainer: pl.Trainer, pl_module: pl.LightningModule, split: str = "val",
               indices=None, captions=None, score_maps: bool = True) -> dict[str, np.ndarray]:
        """Pictures of the crops ``indices`` of the split (default: the fixed evenly spaced ones):
        ``{"predictions": mosaic, "score_maps": mosaic}`` (RGB uint8; score maps of the first crop, unless
        ``score_maps`` is false); ``captions``: one line per crop."""
        batch = self._batch(trainer, split, indices)
        if batch is None:
            return {}
        was_training = pl_module.training
        pl_module.eval()
        images = batch["image"].to(pl_module.device)
        heatmaps = pl_module.predict_heatmaps(images)
        # the score maps of the first crop only: one extra single-image pass, not a second batch forward
        maps = pl_module(images[:1]).get("score_maps") if score_maps else None
        if was_training:
            pl_module.train()
        codec = pl_module.codec
        pred, scores = codec.batch_decode(heatmaps.cpu().numpy())
        true, _ = codec.batch_decode(batch["heatmaps"].numpy())
        spec = pl_module.spec
        skeleton = spec.meta["skeleton"]
        tiles = []
        for i in range(len(images)):
            img = denormalize(batch["image"][i].numpy(), spec.mean, spec.std)
            img = draw_pose(img, true[i], batch["keypoint_weights"][i].numpy(), skeleton, 0.5, color=(255, 255, 255))
            img = draw_pose(img, pred[i], scores[i], skeleton, self.score_threshold)
            if captions is not None:
                cv2.putText(img, captions[i], (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 0), 1, cv2.LINE_AA)
            tiles.append(img)
        pictures = {"predictions": mosaic(tiles)}
        if maps is not None:
            pictures["score_maps"] = score_map_grid(maps[0].float().cpu().numpy(),
                                                    spec.meta["prompts"])
        return pictures

    def _emit(self, trainer: pl.Trainer, pictures: dict[str, np.ndarray], tag: str) -> None:
        out = Path(trainer.default_root_dir) / "vis"
        out.mkdir(parents=True, exist_ok=True)
        for name, img in pictures.items():
            save_rgb(out / f"{tag}_{name}.png", img)
        for lg in trainer.loggers:
            if hasattr(lg, "log_image"):  # W&B
                lg.log_image(key=f"{tag.split('_')[0]}/{'pictures'}", images=list(pictures.values()),
                             caption=list(pictures), step=trainer.global_step)
            elif hasattr(getattr(lg, "experiment", None), "add_image"):  # TensorBoard
                for name, img in pictures.items():
                    lg.experiment.add_image(f"{tag.split('_')[0]}/{name}", img, trainer.global_step,
                                            dataformats="HWC")

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        epoch = trainer.current_epoch
        if self.every_n_epochs <= 0 or (epoch + 1) % self.every_n_epochs and not trainer.should_stop:
            return
        self._emit(trainer, self.render(trainer, pl_module, "val"), f"val_epoch{epoch:03d}")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        self._emit(trainer, self.render(trainer, pl_module, "test"), "test")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The keypoint confusion matrix, PCK@0.1 per keypoint (all and per species), and the bad-case gallery: the ``num_worst`` test instances with the
        lowest OKS (the metric's own)."""
        if not trainer.is_global_zero:
            return
        analysis = getattr(pl_module, "eval_analysis", {}).get("test") or {}
        names = list(pl_module.spec.meta["keypoint_names"])
        tables = {}
        confusion = analysis.get("keypoint_confusion")
        if confusion is not None:
            tables["keypoint_confusion"] = confusion_image(confusion, names)
        pck_rows = analysis.get("keypoint_pck")
        if pck_rows:
            tables["keypoint_pck"] = pck_table_image(pck_rows)
        if tables:
            self._emit(trainer, tables, "test")
        if self.num_worst <= 0:
            return
        oks = analysis.get("instance_oks") or {}
        ds = self._dataset(trainer, "test")
        if not oks or not ds:
            return
        index = {inst.ann_id: i for i, inst in enumerate(ds.instances)}
        worst = sorted((v, a) for a, v in oks.items() if a in index)[: self.num_worst]
        species = pl_module.spec.meta["species"]
        cases = [{"ann_id": int(a), "image_id": int(ds.instances[index[a]].image_id),
                  "species": species.get(ds.instances[index[a]].category_id, ""), "oks": round(float(v), 4)}
                 for v, a in worst]
        pictures = self.render(trainer, pl_module, "test", indices=[index[c["ann_id"]] for c in cases],
                               captions=[f"OKS {c['oks']:.2f} ann {c['ann_id']}" for c in cases], score_maps=False)
        self._emit(trainer, pictures, "test_worst")
        out = Path(trainer.default_root_dir) / "vis" / "test_worst.json"
        out.write_text(json.dumps(cases, indent=1))
        log.info("bad cases: the %d test instances with the lowest OKS drawn to %s", len(cases), out.parent)
