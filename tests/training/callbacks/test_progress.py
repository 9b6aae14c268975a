"""``clamp_pl.training.callbacks.progress``: the rich bar reads the logged values (a GPU sync each) every N batches; the model
summary is plain text off a terminal and explains (and only then silences) frozen modules in eval mode."""

from __future__ import annotations

import logging
import warnings

import pytest
import pytorch_lightning as pl
from helpers.training import RandomPoseData, make_module
from pytorch_lightning.callbacks import RichProgressBar as LightningRichProgressBar
from torch import nn
from torch.utils.data import DataLoader

from clamp_pl.training.callbacks import progress
from clamp_pl.training.callbacks.progress import ModelSummary, RichProgressBar, frozen_eval_modules


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


def _fit_with_summary(module: pl.LightningModule, caplog: pytest.LogCaptureFixture) -> list[str]:
    """Fit one batch; returns the eval-mode warnings. Lightning's logger does not propagate: capture it too."""
    lightning_log = logging.getLogger("pytorch_lightning")
    lightning_log.addHandler(caplog.handler)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=1, limit_val_batches=0,
                         num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, callbacks=[ModelSummary(max_depth=2)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            trainer.fit(module, train_dataloaders=DataLoader(RandomPoseData(), batch_size=2))
        finally:
            lightning_log.removeHandler(caplog.handler)
        # the silencing filter is gone once Lightning's check has run (checked here: leaving this block restores
        # the filters anyway)
        assert not any(f[1] is not None and f[1].pattern == progress._EVAL_MODE_WARNING for f in warnings.filters)
    return [str(w.message) for w in caught if "in eval mode" in str(w.message)]


def test_summary_plain_off_terminal_and_frozen_eval_modules_explained(caplog, monkeypatch):
    monkeypatch.setattr(progress, "_EXPLAINED", set())  # explained once per process: not yet in this one
    module = make_module()
    assert frozen_eval_modules(module) == (["net.prompt_learner.text_tower"], True)
    with caplog.at_level(logging.INFO):
        eval_warnings = _fit_with_summary(module, caplog)
    text = caplog.text
    assert "Trainable params" in text and "net.image_tower" in text  # the table, as log lines (pytest: no tty)
    assert max(len(line) for line in text.splitlines()) > 100  # not wrapped into rich's 80 columns
    assert "in eval mode by design: net.prompt_learner.text_tower" in text
    assert not eval_warnings
    # the filter is scoped to Lightning's check: later warnings of that text are shown again
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        warnings.warn("Found 3 module(s) in eval mode at the start of training.", pl.utilities.warnings.PossibleUserWarning,
                      stacklevel=1)
    assert len(caught) == 1


def test_trainable_module_in_eval_mode_still_warns(caplog):
    module = make_module()
    module.stray = nn.Linear(2, 2).eval()  # trainable but left in eval mode: what Lightning's warning is for
    assert frozen_eval_modules(module)[1] is False
    with caplog.at_level(logging.INFO):
        eval_warnings = _fit_with_summary(module, caplog)
    assert eval_warnings and "by design" not in caplog.text
