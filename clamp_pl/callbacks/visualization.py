"""``KeypointVisCallback``: a fixed set of validation crops with predicted (coloured) and true (white)
skeletons, and the K score maps of the first crop, every N epochs — as PNGs in ``<run dir>/vis/`` and as images
in every logger that takes them (W&B, TensorBoard). """

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

from clamp_pl.visualization import denormalize, draw_pose, mosaic, save_rgb, score_map_grid

log = logging.getLogger(__name__)


class KeypointVisCallback(pl.Callback):
    def __init__(self, num_samples: int = 8, every_n_epochs: int = 10, score_threshold: float = 0.3) -> None:
        self.num_samples = num_samples
        self.every_n_epochs = every_n_epochs
        self.score_threshold = score_threshold

    def _batch(self, trainer: pl.Trainer, split: str) -> dict[str, torch.Tensor] | None:
        dm = trainer.datamodule
        ds = getattr(dm, "datasets", {}).get(split) if dm is not None else None
        if not ds:
            return None
        idx = np.linspace(0, len(ds) - 1, min(self.num_samples, len(ds))).round().astype(int)
        items = [ds[int(i)] for i in idx]
        return {k: torch.stack([torch.as_tensor(it[k]) for it in items])
                for k in ("image", "keypoint_weights", "heatmaps")}

    @torch.no_grad()
    def render(self, trainer: pl.Trainer, pl_module: pl.LightningModule, split: str = "val") -> dict[str, np.ndarray]:
        """Pictures of the fixed crops: ``{"predictions": mosaic, "score_maps": mosaic}`` (RGB uint8)."""
        batch = self._batch(trainer, split)
        if batch is None:
            return {}
        was_training = pl_module.training
        pl_module.eval()
        images = batch["image"].to(pl_module.device)
        heatmaps = pl_module.predict_heatmaps(images)
        # the score maps of the first crop only: one extra single-image pass, not a second batch forward
        score_maps = pl_module(images[:1]).get("score_maps")
        if was_training:
            pl_module.train()
        codec = pl_module.codec
        pred, scores = codec.batch_decode(heatmaps.cpu().numpy())
        true, _ = codec.batch_decode(batch["heatmaps"].numpy())
        skeleton = pl_module.hparams.skeleton
        norm = getattr(trainer.datamodule, "normalization", "imagenet")
        tiles = []
        for i in range(len(images)):
            img = denormalize(batch["image"][i].numpy(), norm)
            img = draw_pose(img, true[i], batch["keypoint_weights"][i].numpy(), skeleton, 0.5, color=(255, 255, 255))
            img = draw_pose(img, pred[i], scores[i], skeleton, self.score_threshold)
            tiles.append(img)
        pictures = {"predictions": mosaic(tiles)}
        if score_maps is not None:
            pictures["score_maps"] = score_map_grid(score_maps[0].float().cpu().numpy(),
                                                    pl_module.hparams.prompts)
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
