"""``RichProgressBar``: Lightning's rich progress bar, reading the logged values every N training batches.

Reading a value logged with ``prog_bar=True`` (the training loss) converts it with ``.item()``: on a GPU that
waits until the whole step has run, so a bar that reads every batch puts a host-device sync into every step and
the CPU can no longer queue the next step's kernels ahead. This bar still advances every batch, but refreshes
the numbers only every ``metrics_every_n`` batches (and at the start of each epoch and outside training).
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import RichProgressBar as _LightningRichProgressBar


class RichProgressBar(_LightningRichProgressBar):
    def __init__(self, metrics_every_n: int = 10, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if metrics_every_n < 1:
            raise ValueError(f"metrics_every_n must be >= 1, got {metrics_every_n}")
        self.metrics_every_n = metrics_every_n
        self._shown: dict[str, Any] | None = None

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        batch = trainer.fit_loop.epoch_loop.batch_idx if trainer.training else 0
        if self._shown is None or not trainer.training or batch % self.metrics_every_n == 0:
            self._shown = super().get_metrics(trainer, pl_module)
        return self._shown
