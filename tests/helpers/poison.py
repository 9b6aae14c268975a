"""A callback that puts a NaN pixel into chosen training batches of chosen ranks: the non-finite-loss tests drive
real subprocess runs (DDP) through the CLI with ``+callbacks.poison._target_=helpers.poison.PoisonBatches``."""

from __future__ import annotations

import pytorch_lightning as pl


class PoisonBatches(pl.Callback):
    """NaN in ``image[0, 0, 0, 0]`` of training batches ``batches`` (indices within the epoch) of epoch ``epoch``
    on the global ranks ``ranks``."""

    def __init__(self, batches: list[int], ranks: list[int], epoch: int = 0) -> None:
        self.batches, self.ranks, self.epoch = set(batches), set(ranks), epoch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.current_epoch == self.epoch and batch_idx in self.batches and trainer.global_rank in self.ranks:
            batch["image"][0, 0, 0, 0] = float("nan")
