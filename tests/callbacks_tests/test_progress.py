"""``clamp_pl.callbacks.progress.RichProgressBar`` reads the logged values (a GPU sync each) every N batches."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
from pytorch_lightning.callbacks import RichProgressBar as LightningRichProgressBar
from test_pose_module import RandomPoseData, make_module
from torch.utils.data import DataLoader

from clamp_pl.callbacks.progress import RichProgressBar


def test_metrics_read_every_n_batches(monkeypatch):
    reads: list[int] = []
    parent = LightningRichProgressBar.get_metrics

    def counting(self, trainer, pl_module):
        if trainer.training:
            reads.append(trainer.fit_loop.epoch_loop.batch_idx)
        return parent(self, trainer, pl_module)

    monkeypatch.setattr(LightningRichProgressBar, "get_metrics", counting)
    bar = RichProgressBar(metrics_every_n=3)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=7, limit_val_batches=0,
                         num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                         enable_model_summary=False, callbacks=[bar])
    trainer.fit(make_module(), train_dataloaders=DataLoader(RandomPoseData(), batch_size=1))
    assert set(reads) == {0, 3}  # 6 batches: read at 0 and 3 only
    assert "train/loss" in bar.get_metrics(trainer, trainer.lightning_module)  # the numbers are shown


def test_bad_n():
    with pytest.raises(ValueError, match="metrics_every_n"):
        RichProgressBar(metrics_every_n=0)
