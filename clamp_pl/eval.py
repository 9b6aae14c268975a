"""Evaluate a trained model: ``python -m clamp_pl.eval ckpt_path=<run dir, .ckpt or model file>
[split=val|test] [flip_test=true|false] [data=<dataset>] [protocol=<protocol>] [keypoints=[names]]``.

The checkpoint's model spec gives the network, the preprocessing (input size, normalisation, box padding), the
codec and, unless ``data=`` is given, the data the model was trained on with its split protocol, so the run's own
test numbers are reproduced with nothing else on the command line. A ``data=`` override is evaluated with the
model's normalisation and padding; ``protocol=`` replaces the split protocol. ``model=`` is an error: the network
is the checkpoint's.

Across vocabularies: when the data names its keypoints otherwise than the model (``data=animalpose`` for an
AP-10K model), or ``keypoints=[...]`` asks for some of the data's keypoints only, the model is scored on the
keypoints the two share by name (:func:`clamp_pl.data.vocabulary.match_vocabularies`: normalised names and the
synonym table; never by position), with the data's sigmas: ``test/AP``, ... on the matched subset
(``test/keypoints_matched`` of them). The mapping and the unmatched names are logged and written to
``vocabulary_mapping.json``. A model whose head takes its keypoints from its prompts (``head=prompt``) is also
asked for every data keypoint by its name (the model's prompt for a matched one, the data's for the others) and
scored on all of them: ``test/open/AP``, ... (files under ``open/``).

Writes ``results.json`` (every metric, per-species and per-family AP included, flat ``{"test/AP": ...}``) and
``predictions/`` (COCO results) in its run dir. Given a run dir, its best checkpoint is used.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Mapping, Sequence
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
from clamp_pl.data.metainfo import DatasetMeta
from clamp_pl.data.vocabulary import VocabularyMatch, keypoint_indices, match_vocabularies
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
            protocol = OmegaConf.to_container(cfg.protocol, resolve=True)
            # a multi-dataset run: every dataset takes the protocol
            for node in data["datasets"].values() if "datasets" in data else [data]:
                node["protocol"] = protocol
    return build_datamodule(None, run_dir, data=data)  # type: ignore[arg-type]


def load_module(ckpt: str | Path, meta: DatasetMeta | None = None) -> tuple[PoseLitModule, Path]:
    """``PoseLitModule`` rebuilt from a checkpoint's spec and weights (nothing downloaded), and the file read; with
    ``meta``, asked for that meta's keypoints (a prompt-head model: its prompts are the meta's)."""
    file = resolve_checkpoint(ckpt, prefer="best")
    spec, state = load_checkpoint(file)
    if meta is not None:
        spec = dataclasses.replace(spec, meta=meta.to_dict())
    model = PoseLitModule(spec=spec)
    model.net.load_state_dict(state)
    return model, file


def open_vocabulary_meta(data: DatasetMeta, keep: Sequence[int], match: VocabularyMatch, model_prompts: Sequence[str]
                         ) -> DatasetMeta:
    """The data keypoints ``keep`` as a prompt-head model is asked for them: a keypoint matched to one of the
    model's (``match`` is over the kept names) keeps the model's prompt, any other is asked by the data's prompt;
    the data's sigmas and flip pairs."""
    from clamp_pl.data.datamodule import restrict_keypoints

    _, cut = restrict_keypoints({"annotations": []}, data, keep)
    prompts = list(cut.prompts)
    for s, t in match.pairs:
        prompts[t] = model_prompts[s]
    return dataclasses.replace(cut, prompts=tuple(prompts))


def _is_prompt_head(model: PoseLitModule) -> bool:
    return getattr(model.net, "head", None) == "prompt"


def _test(model: PoseLitModule, dm: PoseDataModule, cfg: DictConfig, root: Path, loggers: list) -> tuple[
        pl.Trainer, dict[str, float]]:
    trainer: pl.Trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=[], default_root_dir=str(root))
    if cfg.split == "val":
        trainer.validate(model, datamodule=dm)
    else:
        trainer.test(model, datamodule=dm)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(f"{cfg.split}/")}
    metrics.update({k: v for k, v in getattr(model, "last_metrics", {}).items() if isinstance(v, float)})
    return trainer, metrics


def evaluate_by_name(cfg: DictConfig, model: PoseLitModule, ckpt: Path, run_dir: Path, loggers: list
                     ) -> tuple[pl.Trainer, dict[str, float], PoseDataModule]:
    """Score ``model`` on the data keypoints it shares by name with the data of ``cfg`` (``cfg.keypoints``: only
    those), and a prompt-head model also on all of them (``<split>/open/...``); writes
    ``vocabulary_mapping.json``. See the module docstring."""
    split = cfg.split
    dm = build_eval_datamodule(cfg, model.spec, ckpt, run_dir)
    data = dm.ensure_meta()
    asked = None if cfg.get("keypoints") is None else [str(n) for n in cfg.keypoints]
    keep = list(range(data.num_keypoints)) if asked is None else keypoint_indices(data, asked)
    target = [data.keypoint_names[k] for k in keep]
    match = match_vocabularies(model.spec.trained_vocabulary, target)
    prompt_head = _is_prompt_head(model)
    log.info("model %s -> data %s:\n%s", ckpt, dm.name, match.format())
    mapping = {"model": str(ckpt), "data": dm.name, "model_keypoints": list(match.source),
               "data_keypoints": target, **match.to_dict(), "open_vocabulary": prompt_head}
    (run_dir / "vocabulary_mapping.json").write_text(json.dumps(mapping, indent=1))
    if not match.pairs and not prompt_head:
        raise ValueError(f"no keypoint of the model matches one of the {dm.name} data by name (mapping in "
                         f"{run_dir / 'vocabulary_mapping.json'}); a model with head=prompt can be asked for them")
    metrics: dict[str, float] = {}
    trainer = None
    if match.pairs:
        dm.use_spec(model.spec, codec=model.codec, check_keypoints=False)
        dm.score_channels(match.source_indices, [keep[t] for t in match.target_indices])
        trainer, metrics = _test(model, dm, cfg, run_dir, loggers)
        metrics[f"{split}/keypoints_matched"] = float(len(match.pairs))
    if prompt_head:
        meta = open_vocabulary_meta(data, keep, match, model.spec.meta["prompts"])
        open_model, _ = load_module(ckpt, meta=meta)
        open_model.flip_test = model.flip_test
        open_dm = build_eval_datamodule(cfg, open_model.spec, ckpt, run_dir / "open")
        open_dm.use_spec(open_model.spec, codec=open_model.codec, check_keypoints=False)
        open_dm.score_channels(range(len(keep)), keep)
        open_trainer, open_metrics = _test(open_model, open_dm, cfg, run_dir / "open", [])
        prefix = f"{split}/"
        metrics.update({f"{split}/open/{k[len(prefix):]}": v for k, v in open_metrics.items()})
        metrics[f"{split}/open/keypoints"] = float(len(keep))
        trainer = trainer or open_trainer
    return trainer, metrics, dm


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
    loggers = instantiate_loggers(cfg.get("logger"), run_dir)
    same = tuple(dm.ensure_meta().keypoint_names) == model.spec.trained_vocabulary
    if same and cfg.get("keypoints") is None:
        dm.use_spec(model.spec, codec=model.codec)
        log.info("evaluating %s on the %s split of %s (flip test %s)", ckpt, cfg.split, dm.name, model.flip_test)
        trainer, metrics = _test(model, dm, cfg, run_dir, loggers)
    else:
        log.info("evaluating %s on the %s split of %s by keypoint name (flip test %s)", ckpt, cfg.split, dm.name,
                 model.flip_test)
        trainer, metrics, dm = evaluate_by_name(cfg, model, ckpt, run_dir, loggers)
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
