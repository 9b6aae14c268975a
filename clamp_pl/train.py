"""Train (then test the best checkpoint): ``python -m clamp_pl.train [experiment=...] [key=value ...]``.

A finished run leaves in its Hydra output dir: ``.hydra/config.yaml``, ``config_tree.log``, ``checkpoints/``
(best by ``val/AP`` and ``last.ckpt``, each carrying the model spec, written atomically), ``metrics.csv``, ``results.json`` (flat ``{"test/AP": ...}``),
``predictions/`` (COCO-format test predictions), ``split.json`` (the protocol's split) and, with W&B,
``wandb_run_id.txt``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from clamp_pl.cli.build import build_training
from clamp_pl.cli.config import config_dir
from clamp_pl.cli.run import (
    exit_on_user_error,
    instantiate_callbacks,
    instantiate_loggers,
    log_hyperparameters,
    print_config_tree,
    task_wrapper,
    write_json,
)
from clamp_pl.inference.checkpoint import is_model_file, resolve_checkpoint
from clamp_pl.training.callbacks.checkpoint_io import AtomicCheckpointIO

log = logging.getLogger("clamp_pl")


def _is_multirun() -> bool:
    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:  # not under @hydra.main (tests, train() called directly)
        return False


def _ddp_under_multirun(cfg: DictConfig) -> None:
    """Lightning's "ddp" launcher re-runs ``sys.argv`` in each child: inside a Hydra multirun the children would
    start their own sweeps (Lightning #11300). Unless the processes are created externally (torchrun, SLURM),
    switch to spawned workers, which inherit the composed job instead of re-parsing the command line."""
    multirun = _is_multirun()
    strategy = cfg.trainer.get("strategy")
    external = "LOCAL_RANK" in os.environ or "SLURM_NTASKS" in os.environ
    if multirun and isinstance(strategy, DictConfig) and "DDPStrategy" in strategy.get("_target_", ""):
        if strategy.get("start_method", "popen") == "popen" and not external:
            log.warning("Hydra multirun with DDP: using spawned workers (start_method=spawn) for this job")
            with open_dict(cfg):
                cfg.trainer.strategy.start_method = "spawn"


@task_wrapper
def train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit, then test with the best checkpoint. Returns (metrics, objects)."""
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    if cfg.extras.get("print_config"):
        print_config_tree(cfg, save_to=run_dir / "config_tree.log", print_=True)
    _ddp_under_multirun(cfg)

    dm, _, model = build_training(cfg, run_dir)
    if cfg.get("init_from"):
        model.load_weights_from(cfg.init_from)
    ckpt_path = resolve_checkpoint(cfg.get("ckpt_path"), prefer="last")
    if ckpt_path is not None and is_model_file(ckpt_path):
        raise ValueError(f"ckpt_path={ckpt_path} is a model file (the network's weights and spec, no optimiser or "
                         f"schedule state): resuming needs a training checkpoint; start from its weights with "
                         f"init_from={ckpt_path}")

    callbacks = instantiate_callbacks(cfg.get("callbacks"), cfg.trainer.get("enable_progress_bar", True))
    loggers = instantiate_loggers(cfg.get("logger"), run_dir, resume_from=ckpt_path)
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                                      plugins=[AtomicCheckpointIO()])
    hp = log_hyperparameters(cfg, model, trainer)
    log.info("model size: %s", {k: v for k, v in hp.items() if k.startswith(("params/", "flops/"))})

    metrics: dict[str, Any] = {}
    if cfg.get("train"):
        trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    if cfg.get("test"):
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if not best and cfg.get("train"):
            log.warning("no best checkpoint (no validation ran?): testing the current weights")
        elif not best:
            log.info("train=false: testing the weights as built (init_from=%s)", cfg.get("init_from"))
        trainer.test(model, datamodule=dm, ckpt_path=best or None, weights_only=True)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")})
        # the metric's own float64 values (the logged ones are float32), as clamp_pl.eval writes them
        metrics.update({k: v for k, v in getattr(model, "last_metrics", {}).items()
                        if k.startswith("test/") and isinstance(v, float)})
        if trainer.is_global_zero:
            write_json(run_dir / "results.json", {k: v for k, v in metrics.items() if k.startswith("test/")})
            write_json(run_dir / "run.json", {"best_checkpoint": best, "skipped_records": dm.skipped_counts,
                                              "nonfinite_steps": model.nonfinite_steps})
    return metrics, {"trainer": trainer, "model": model, "datamodule": dm}


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
@exit_on_user_error
def main(cfg: DictConfig) -> float | None:
    metrics, _ = train(cfg)
    return objective_value(metrics, cfg.get("optimized_metric"), multirun=_is_multirun())


def objective_value(metrics: dict[str, Any], name: str | None, multirun: bool) -> float | None:
    """What a sweeper (Optuna) optimises: ``metrics[name]`` (``optimized_metric``), NaN included (Optuna records
    the trial as failed). None without ``optimized_metric``, or in a single run that did not log it.

    Raises:
        ValueError: in a multirun, the run did not log ``name``; the message lists what it logged.
    """
    if not name:
        return None
    if name not in metrics:
        if multirun:
            raise ValueError(f"optimized_metric={name!r} was not logged by this run, so the sweeper has nothing to "
                           f"optimise; logged metrics: {sorted(metrics)}")
        return None
    return float(metrics[name])


if __name__ == "__main__":
    main()
