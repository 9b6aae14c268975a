"""Evaluate a trained model: ``python -m clamp_pl.eval ckpt_path=<run dir, .ckpt or model file>
[split=val|test] [flip_test=true|false] [data=<dataset>] [protocol=<protocol>]``.

The checkpoint's model spec gives the network, the preprocessing (input size, normalisation, box padding), the
codec and, unless ``data=`` is given, the data the model was trained on with its split protocol, so the run's own
test numbers are reproduced with nothing else on the command line. A ``data=`` override must have the model's
keypoints (same names, same order) and the model's normalisation and padding; ``protocol=`` replaces the split
protocol. ``model=`` is an error: the network is the checkpoint's.

Writes ``results.json`` (every metric, per-species and per-family AP included, flat ``{"test/AP": ...}``) and
``predictions/`` (COCO results) in its run dir. Given a run dir, its best checkpoint is used.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from clamp_pl.cli.build import build_datamodule
from clamp_pl.cli.config import config_dir
from clamp_pl.cli.run import (
    exit_on_user_error,
    instantiate_loggers,
    print_config_tree,
    task_wrapper,
    write_json,
)
from clamp_pl.data.datamodule import PoseDataModule
from clamp_pl.inference.checkpoint import load_checkpoint, resolve_checkpoint, run_config_file
from clamp_pl.spec import LEGACY_DATA_KEYS, SPEC_DATA_KEYS, ModelSpec
from clamp_pl.training.module import PoseLitModule

log = logging.getLogger("clamp_pl")


def _command_line_keys() -> set[str]:
    """The keys set on the command line (``a.b=...``, ``+a.b=...``), from Hydra's record of the overrides."""
    try:
        overrides = HydraConfig.get().overrides.task
    except ValueError:  # no Hydra run (a config composed by hand)
        return set()
    return {str(o).split("=", 1)[0].lstrip("+~") for o in overrides}


def _check_data_override(spec: ModelSpec, data: Mapping[str, Any]) -> None:
    """A ``data=`` override is evaluated with the model's preprocessing. Setting one of its values on the command
    line to something else is an error naming both; the data config's own defaults are simply not used."""
    ours = {"normalization": spec.normalization, "padding": spec.padding, "input_size": list(spec.input_size),
            "heatmap_size": list(spec.heatmap_size)}
    given = _command_line_keys()
    for key, value in ours.items():
        theirs = data.get(key)
        if theirs is not None and theirs != value and (f"data.{key}" in given or key in LEGACY_DATA_KEYS):
            raise ValueError(f"data.{key}={theirs!r} but the model's {key} is {value!r} (its model spec): "
                             f"evaluation preprocesses as the model was trained; drop data.{key}")


def _run_data_config(spec: ModelSpec, ckpt: Path) -> dict[str, Any]:
    """The data config recorded in the spec; for checkpoints written before the spec existed, whose recorded
    config still holds interpolations, the data node of the run's ``.hydra/config.yaml``, resolved."""
    data = dict(spec.data.get("config") or {})
    if not data:
        raise ValueError(f"{ckpt}: the model spec records no training data; pass data=<dataset> (conf/data)")
    if "${" in str(data):
        file = run_config_file(ckpt)
        if file is None:
            raise ValueError(f"{ckpt}: the recorded data config has unresolved values and the run's "
                             ".hydra/config.yaml is not beside it; pass data=<dataset>")
        data = OmegaConf.to_container(OmegaConf.load(file).data, resolve=True)  # type: ignore[assignment]
    return {k: v for k, v in data.items() if k not in (*SPEC_DATA_KEYS, *LEGACY_DATA_KEYS)}


def build_eval_datamodule(cfg: DictConfig, spec: ModelSpec, ckpt: Path, run_dir: Path | None) -> PoseDataModule:
    """The datamodule to evaluate on: ``cfg.data`` when given (checked against the spec; split protocol
    ``cfg.protocol``, else supervised: every instance), else the run's own with its protocol, which ``cfg.protocol``
    replaces when given. Preprocessing still to be set (``use_spec``)."""
    if cfg.get("data") is not None:
        if cfg.get("protocol") is None:
            with open_dict(cfg):
                cfg.protocol = {"name": "supervised"}
        data = OmegaConf.to_container(cfg.data, resolve=True)
        _check_data_override(spec, data)  # type: ignore[arg-type]
        data = {k: v for k, v in data.items() if k not in LEGACY_DATA_KEYS}  # type: ignore[union-attr]
    else:
        data = _run_data_config(spec, ckpt)
        if cfg.get("protocol") is not None:
            data["protocol"] = OmegaConf.to_container(cfg.protocol, resolve=True)
    return build_datamodule(None, run_dir, data=data)  # type: ignore[arg-type]


def load_module(ckpt: str | Path) -> tuple[PoseLitModule, Path]:
    """``PoseLitModule`` rebuilt from a checkpoint's spec and weights (nothing downloaded), and the file read."""
    file = resolve_checkpoint(ckpt, prefer="best")
    spec, state = load_checkpoint(file)
    model = PoseLitModule(spec=spec)
    model.net.load_state_dict(state)
    return model, file


@task_wrapper
def evaluate(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    if cfg.get("model") is not None:
        raise ValueError("model= cannot be set for evaluation (an experiment= sets it too): the network, its "
                         "preprocessing and codec are the checkpoint's (its model spec)")
    if cfg.split not in ("val", "test"):
        raise ValueError(f"split must be val or test, not {cfg.split!r}")
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.extras.get("print_config"):
        print_config_tree(cfg, save_to=run_dir / "config_tree.log", print_=True)
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    model, ckpt = load_module(cfg.ckpt_path)
    if cfg.get("flip_test") is not None:
        model.flip_test = bool(cfg.flip_test)
    dm = build_eval_datamodule(cfg, model.spec, ckpt, run_dir)
    dm.use_spec(model.spec, codec=model.codec)
    log.info("evaluating %s on the %s split of %s (flip test %s)", ckpt, cfg.split, dm.name, model.flip_test)
    loggers = instantiate_loggers(cfg.get("logger"), run_dir)
    trainer: pl.Trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=[])
    if cfg.split == "val":
        trainer.validate(model, datamodule=dm)
    else:
        trainer.test(model, datamodule=dm)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(f"{cfg.split}/")}
    metrics.update({k: v for k, v in getattr(model, "last_metrics", {}).items() if isinstance(v, float)})
    if trainer.is_global_zero:
        write_json(run_dir / "results.json", metrics)
    return metrics, {"trainer": trainer, "model": model, "datamodule": dm, "checkpoint": ckpt}


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="eval")
@exit_on_user_error
def main(cfg: DictConfig) -> float | None:
    metrics, _ = evaluate(cfg)
    value = metrics.get(f"{cfg.split}/AP")
    return value if value is not None and math.isfinite(value) else None


if __name__ == "__main__":
    main()
