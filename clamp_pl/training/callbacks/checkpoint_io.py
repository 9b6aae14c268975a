"""Lightning's checkpoint writes made atomic: a crash or ``kill -9`` mid-write leaves the previous file intact."""

from __future__ import annotations

from typing import Any

from lightning_fabric.utilities.types import _PATH
from pytorch_lightning.plugins.io import TorchCheckpointIO

from clamp_pl.inference.checkpoint import atomic_torch_save


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose ``save_checkpoint`` goes through :func:`clamp_pl.inference.checkpoint.atomic_torch_save`
    (temporary file in the same folder, fsync, rename): ``last.ckpt`` is always the old or the new checkpoint,
    never a truncated one. Every save of the Trainer (``ModelCheckpoint``, the run-safety callback's signal and
    non-finite checkpoints, ``trainer.save_checkpoint``) goes through it."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        atomic_torch_save(checkpoint, path)
