"""Evaluate a checkpoint: ``python -m clamp_pl.eval ckpt_path=<.ckpt or run dir> [experiment=...] [split=val|test]
[flip_test=true|false]``.

Writes ``results.json`` (every metric, per-species and per-family AP included, flat ``{"test/AP": ...}``) and
``predictions/`` (COCO results) in its run dir. Given a run dir, the best checkpoint is used.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig

from clamp_pl.pose_module import PoseLitModule
from clamp_pl.utils.config import config_dir
from clamp_pl.utils.run import (
    instantiate_loggers,
    print_config_tree,
    resolve_checkpoint,
    task_wrapper,
    write_json,
)

log = logging.getLogger("clamp_pl")


@task_wrapper
def evaluate(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.extras.get("print_config"):
        print_config_tree(cfg, save_to=run_dir / "config_tree.log", print_=True)
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    ckpt = resolve_checkpoint(cfg.ckpt_path, prefer="best")
    log.info("evaluating %s on %s (flip test %s)", ckpt, cfg.split, cfg.flip_test)
    model = PoseLitModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    model.test_cfg["flip_test"] = bool(cfg.flip_test)
    dm = instantiate(cfg.data, report_dir=str(run_dir), _convert_="all")
    meta = dm.ensure_meta()
    if len(meta.prompts) != len(model.hparams.prompts):
        raise ValueError(
            f"{ckpt} predicts {len(model.hparams.prompts)} keypoints but the {dm.name} data has "
            f"{len(meta.prompts)}: pass the experiment the checkpoint was trained with"
        )
    loggers = instantiate_loggers(cfg.get("logger"), run_dir)
    trainer: pl.Trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=[])
    if cfg.split == "val":
        trainer.validate(model, datamodule=dm)
    elif cfg.split == "test":
        trainer.test(model, datamodule=dm)
    else:
        raise ValueError(f"split must be val or test, not {cfg.split!r}")
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(f"{cfg.split}/")}
    metrics.update({k: v for k, v in getattr(model, "last_metrics", {}).items() if isinstance(v, float)})
    if trainer.is_global_zero:
        write_json(run_dir / "results.json", metrics)
    return metrics, {"trainer": trainer, "model": model, "datamodule": dm}


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="eval")
def main(cfg: DictConfig) -> float | None:
    metrics, _ = evaluate(cfg)
    value = metrics.get(f"{cfg.split}/AP")
    return value if value is not None and math.isfinite(value) else None


if __name__ == "__main__":
    main()
