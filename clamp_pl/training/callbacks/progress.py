"""The console during a fit: the progress bar and the model summary.

``RichProgressBar``: Lightning's rich progress bar, reading the logged values every N training batches.
Reading a value logged with ``prog_bar=True`` (the training loss) converts it with ``.item()``: on a GPU that
waits until the whole step has run, so a bar that reads every batch puts a host-device sync into every step and
the CPU can no longer queue the next step's kernels ahead. This bar still advances every batch, but refreshes
the numbers only every ``metrics_every_n`` batches (and at the start of each epoch and outside training).

``ModelSummary``: Lightning's model summary as a rich table on a terminal and as plain text lines in a log
file or a pipe (rich draws at 80 columns there and wraps every cell into a narrow stack), followed by one line
naming the modules that are in eval mode at the start of training when they are frozen by design.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelSummary as _LightningModelSummary
from pytorch_lightning.callbacks import RichModelSummary
from pytorch_lightning.callbacks import RichProgressBar as _LightningRichProgressBar
from pytorch_lightning.utilities.warnings import PossibleUserWarning

log = logging.getLogger(__name__)

# Lightning's check at the start of training (fit_loop._warn_if_modules_in_eval_mode)
_EVAL_MODE_WARNING = r"Found \d+ module\(s\) in eval mode at the start of training"
_EXPLAINED: set[tuple[int, tuple[str, ...]]] = set()


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


def frozen_eval_modules(module: pl.LightningModule) -> tuple[list[str], bool]:
    """The outermost submodules in eval mode, and whether all of them are frozen (no trainable parameter).

    A frozen module in eval mode is deliberate (the CLAMP text tower: its dropout off, nothing to train); a
    trainable one in eval mode would be a bug, which Lightning's warning is for.
    """
    roots: list[str] = []
    frozen = True
    for name, sub in module.named_modules():
        if sub.training or any(name.startswith(f"{r}.") for r in roots):
            continue
        roots.append(name)
        frozen = frozen and not any(p.requires_grad for p in sub.parameters())
    return roots, frozen


class ModelSummary(_LightningModelSummary):
    """Lightning's model summary: rich on a terminal, plain text otherwise; explains frozen eval-mode modules.

    When every module in eval mode at the start of training is frozen, it logs one line naming them and
    silences Lightning's generic warning about them for that check only (any other eval-mode module keeps it).
    """

    def __init__(self, max_depth: int = 1, **summarize_kwargs: Any) -> None:
        super().__init__(max_depth=max_depth, **summarize_kwargs)
        self._quiet: warnings.catch_warnings | None = None

    def summarize(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        from rich import get_console

        if get_console().is_terminal:
            RichModelSummary.summarize(*args, **kwargs)
        else:
            kwargs = {k: v for k, v in kwargs.items() if k == "total_flops"}  # rich styling keys
            _LightningModelSummary.summarize(*args, **kwargs)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        roots, frozen = frozen_eval_modules(pl_module)
        if not roots or not frozen:
            return
        n = sum(1 for _, m in pl_module.named_modules() if not m.training)
        said = (n, tuple(roots))
        if trainer.is_global_zero and said not in _EXPLAINED:  # once per process (the demo fits several times)
            _EXPLAINED.add(said)
            log.info("%d modules are in eval mode by design: %s (frozen, no trainable parameters)", n,
                     ", ".join(roots))
        self._quiet = warnings.catch_warnings()
        self._quiet.__enter__()
        warnings.filterwarnings("ignore", _EVAL_MODE_WARNING, PossibleUserWarning)

    def _restore_warnings(self) -> None:
        if self._quiet is not None:
            self._quiet.__exit__(None, None, None)
            self._quiet = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning checks just before this hook: restore the filters so that a later fit still warns
        self._restore_warnings()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # a fit that fails between on_fit_start and on_train_start never reaches on_train_start
        self._restore_warnings()
