"""``RunSafetyCallback``: exact resumption (RNG states in the checkpoint), preemption (SIGTERM / SIGUSR1 save
a checkpoint and exit cleanly) and non-finite losses (skip the step, counted, or stop after a checkpoint)."""

from __future__ import annotations

import logging
import os
import random
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Training stopped on a non-finite loss (``on_nonfinite: stop``); a checkpoint was saved first."""


def _rng_state() -> dict[str, Any]:
    """The python, numpy, torch (CPU) and, once CUDA is initialised, the per-device CUDA generator states, as
    tensors and primitives (a checkpoint entry that ``torch.load(..., weights_only=True)`` accepts)."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        # numpy's state holds an ndarray: store it as a tensor so the checkpoint stays weights_only-loadable
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }
    # drop path and dropout on a GPU draw from the CUDA generators; reading them before CUDA is initialised
    # would initialise it (and a CPU run has none)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()  # one uint8 tensor per visible device
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    cuda = state.get("cuda")
    if cuda is None:
        return
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if visible == len(cuda):
        torch.cuda.set_rng_state_all(cuda)
    else:
        log.warning("the checkpoint holds the CUDA random state of %d device(s), this process sees %d: the CUDA "
                    "random stream (drop path, dropout) is not resumed exactly", len(cuda), visible)


def _keep_best_tracking(trainer: pl.Trainer, checkpoint: dict) -> None:
    """Let each ``ModelCheckpoint`` keep its best score when a run resumes into another folder (``ckpt_path=`` starts
    a new Hydra run dir). Lightning restores only ``best_model_path`` when the folder changed, so the first
    resumed validation would become "best" whatever its score, and the test would pick it. The previous run's
    files stay where they are: ModelCheckpoint deletes only files inside its own folder."""
    states = checkpoint.get("callbacks") or {}
    for cb in trainer.checkpoint_callbacks:
        state = states.get(cb.state_key)
        if state and cb.dirpath and state.get("dirpath") not in (None, cb.dirpath):
            state["dirpath"] = cb.dirpath
            state["last_model_path"] = ""  # the new folder has no last.ckpt yet


class RunSafetyCallback(pl.Callback):
    """Args:
        on_nonfinite: "skip" (drop the optimiser step, count it, go on), "stop" (drop it, save
            ``checkpoints/nonfinite.ckpt`` and stop with :class:`NonFiniteLossError`) or "off" (no check).
        max_nonfinite: with "skip", stop as with "stop" once more than this many steps were skipped (checked
            every ``log_every_n_steps``, when the count is read from the device).
        checkpoint_on_signal: on SIGTERM (and SIGUSR1 outside SLURM, where Lightning's own auto-requeue
            handler owns it) save ``checkpoints/last.ckpt`` and exit cleanly after the current step.
    """

    def __init__(self, on_nonfinite: str = "skip", max_nonfinite: int = 100, checkpoint_on_signal: bool = True):
        if on_nonfinite not in ("skip", "stop", "off"):
            raise ValueError(f"on_nonfinite must be skip, stop or off, not {on_nonfinite!r}")
        self.on_nonfinite = on_nonfinite
        self.max_nonfinite = max_nonfinite
        self.checkpoint_on_signal = checkpoint_on_signal
        self._signalled: int | None = None
        self._saved_on_signal = False
        self._previous_usr1: Any = None

    # ---------------------------------------------------------------- exact resume
    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        if hasattr(pl_module, "collect_nonfinite"):
            pl_module.collect_nonfinite(log_metric=False)
        checkpoint["rng_states"] = _rng_state()
        checkpoint["nonfinite_steps"] = int(getattr(pl_module, "nonfinite_steps", 0))

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        _keep_best_tracking(trainer, checkpoint)
        # only a resumed fit continues the run: testing a checkpoint (the best one, after fit) must neither
        # rewind the RNG nor the non-finite count of the run
        if trainer.state.fn != TrainerFn.FITTING:
            return
        if "rng_states" in checkpoint:
            _set_rng_state(checkpoint["rng_states"])
        pl_module.nonfinite_steps = int(checkpoint.get("nonfinite_steps", 0))

    # ---------------------------------------------------------------- signals
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        pl_module.nonfinite = self.on_nonfinite

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.checkpoint_on_signal and "SLURM_JOB_ID" not in os.environ and hasattr(signal, "SIGUSR1"):
            self._previous_usr1 = signal.signal(signal.SIGUSR1, self._on_usr1)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore_usr1()

    def _restore_usr1(self) -> None:
        if self._previous_usr1 is not None:
            signal.signal(signal.SIGUSR1, self._previous_usr1)
            self._previous_usr1 = None

    def _on_usr1(self, signum: int, frame: Any) -> None:
        self._signalled = signum

    def _checkpoint_path(self, trainer: pl.Trainer, name: str) -> Path:
        cb = trainer.checkpoint_callback
        folder = Path(cb.dirpath) if cb is not None and cb.dirpath else Path(trainer.default_root_dir) / "checkpoints"
        return folder / name

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # the skipped-step count lives on the device until read: every step with "stop", else at logging steps
        # (a host sync there costs nothing extra: Lightning syncs to log anyway)
        if hasattr(pl_module, "collect_nonfinite") and self.on_nonfinite != "off" and (
            self.on_nonfinite == "stop" or trainer.global_step % trainer.log_every_n_steps == 0
        ):
            pl_module.collect_nonfinite()
        reason = getattr(pl_module, "stop_reason", None)
        if reason is None and self.on_nonfinite == "skip" and pl_module.nonfinite_steps > self.max_nonfinite:
            reason = f"more than {self.max_nonfinite} steps had a non-finite loss"
        if reason is not None:
            path = self._checkpoint_path(trainer, "nonfinite.ckpt")
            trainer.save_checkpoint(path)
            raise NonFiniteLossError(f"{reason}; training stopped, checkpoint saved to {path}")
        if self.checkpoint_on_signal and (trainer.received_sigterm or self._signalled is not None):
            self._save_on_signal(trainer)
            if self._signalled is not None:
                # SIGTERM is raised by Lightning itself after this hook; SIGUSR1 exits the same clean way
                # (SIGTERMException is a SystemExit without a code: exit status 0)
                raise SIGTERMException()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # SIGTERM during validation: Lightning's evaluation loop stops before the next on_train_batch_end
        if (isinstance(exception, SIGTERMException) and self.checkpoint_on_signal and not self._saved_on_signal
                and trainer.state.fn == TrainerFn.FITTING):
            self._save_on_signal(trainer)
        self._restore_usr1()  # on_train_end is not called after an exception

    def _save_on_signal(self, trainer: pl.Trainer) -> None:
        path = self._checkpoint_path(trainer, "last.ckpt")
        trainer.save_checkpoint(path)
        self._saved_on_signal = True
        name = "SIGTERM" if trainer.received_sigterm else signal.Signals(self._signalled).name
        log.warning("%s received: checkpoint saved to %s; resume with ckpt_path=%s", name, path, path)
