"""Build a run's objects from a composed Hydra config: the datamodule, the model spec and the LightningModule.

Used by the entry points (train, eval, import_official) and scripts. The config splits into:

* ``cfg.model.net`` and ``cfg.model.test_cfg`` -> the spec's network arguments and test settings;
* ``cfg.data.sigma``, ``cfg.data.normalization``, ``cfg.data.padding`` (:data:`SPEC_DATA_KEYS`) -> the spec's
  codec and preprocessing (the datamodule gets them back from the spec);
* the rest of ``cfg.data`` -> the datamodule, recorded in the spec as the data the model was trained on;
* the rest of ``cfg.model`` (loss, optimizer, scheduler, ...) -> the training arguments of ``PoseLitModule``.

The feature grid and the heatmap size are derived from the network by :func:`clamp_pl.spec.make_spec`, never
read from the config.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from clamp_pl.data.datamodule import DATAMODULES, PoseDataModule, datamodule_class, datamodule_name
from clamp_pl.data.metainfo import DatasetMeta
from clamp_pl.inference.qc import fit_pose_prior
from clamp_pl.spec import SPEC_DATA_KEYS, ModelSpec, make_spec
from clamp_pl.training.module import PoseLitModule

__all__ = ["SPEC_DATA_KEYS", "SPEC_MODEL_KEYS", "build_datamodule", "build_model", "build_spec", "build_training",
           "data_config"]

#: ``model`` config keys that belong to the model spec (the network, the test settings)
SPEC_MODEL_KEYS = ("net", "test_cfg")
_TEST_KEYS = ("flip_test", "shift_heatmap", "decode")


def _container(node: Any) -> dict[str, Any]:
    if isinstance(node, DictConfig):
        return OmegaConf.to_container(node, resolve=True)  # type: ignore[return-value]
    return dict(node or {})


def data_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved ``cfg.data`` without the spec's keys, as a run records it: the datamodule's registry name
    (``datamodule``, :data:`clamp_pl.data.datamodule.DATAMODULES`) instead of the config's ``_target_`` path,
    and its arguments."""
    data = {k: v for k, v in _container(cfg.data).items() if k not in SPEC_DATA_KEYS}
    target = data.pop("_target_", None) or data.pop("datamodule", None)
    if target is None:
        raise ValueError("the data config names no datamodule (_target_: a class of clamp_pl.data.datamodule)")
    return {"datamodule": datamodule_name(str(target)), **data}


def build_datamodule(cfg: DictConfig | None, run_dir: Path | None = None,
                     data: Mapping[str, Any] | None = None) -> PoseDataModule:
    """The datamodule of ``cfg.data`` (or of ``data``: a :func:`data_config` dict such as a spec's
    ``data["config"]``, a composed ``data`` node with ``_target_``, or an old run's record with ``_target_``);
    it still needs the model's preprocessing (:meth:`PoseDataModule.use_spec`)."""
    kwargs = dict(data) if data is not None else data_config(cfg)
    kwargs = {k: v for k, v in kwargs.items() if k not in SPEC_DATA_KEYS}
    key = kwargs.pop("datamodule", None) or kwargs.pop("_target_", None)
    if key is None:
        raise ValueError(f"the data config names no datamodule (datamodule: one of {sorted(DATAMODULES)})")
    return datamodule_class(str(key))(**kwargs, report_dir=str(run_dir) if run_dir else None)


def build_spec(cfg: DictConfig, meta: DatasetMeta, data_name: str) -> ModelSpec:
    """The model spec of a composed train config for the keypoints ``meta`` of the datamodule ``data_name``:
    ``cfg.model.net``, ``cfg.model.test_cfg`` and ``cfg.data.{sigma, normalization, padding}``; the rest of
    ``cfg.data`` is recorded as the training data."""
    for derived in ("heatmap_size", "feature_stride"):
        if derived in cfg.model:
            raise ValueError(f"model.{derived} is derived from the network (model.net.clip_model, image_size, "
                             "num_deconv): remove it from the config")
    test = _container(cfg.model.get("test_cfg"))
    if set(test) != set(_TEST_KEYS):
        raise ValueError(f"model.test_cfg must set exactly {list(_TEST_KEYS)}, got {sorted(test)}")
    data = _container(cfg.data)
    missing = [k for k in SPEC_DATA_KEYS if k not in data]
    if missing:
        raise ValueError(f"data config has no {missing} (conf/data/_base.yaml sets them)")
    return make_spec(
        _container(cfg.model.net), meta,
        normalization=data["normalization"], padding=data["padding"], sigma=data["sigma"],
        decode=test["decode"], shift_heatmap=test["shift_heatmap"], flip_test=test["flip_test"],
        data={"name": data_name, "config": data_config(cfg)},
    )


def build_model(cfg: DictConfig, spec: ModelSpec, load_pretrained: bool = True) -> PoseLitModule:
    """``PoseLitModule`` of ``cfg.model`` (its training arguments) for ``spec``."""
    kwargs = {k: v for k, v in _container(cfg.model).items() if k not in SPEC_MODEL_KEYS}
    factory = instantiate(kwargs, _partial_=True, _convert_="all")
    return factory(spec=spec, load_pretrained=load_pretrained)


def build_training(cfg: DictConfig, run_dir: Path | None = None) -> tuple[PoseDataModule, ModelSpec, PoseLitModule]:
    """Datamodule, spec and module of a train config; the datamodule makes its targets with the module's
    codec object.

    The spec records a shape model of the training instances' poses (``pose_prior``,
    :func:`clamp_pl.inference.qc.fit_pose_prior`) for the label-free pose check of a model file; the training
    split is loaded here for it (``setup`` keeps what it loaded).
    """
    dm = build_datamodule(cfg, run_dir)
    spec = build_spec(cfg, dm.ensure_meta(), dm.name)
    dm.use_spec(spec)
    dm.setup("fit")
    train = dm.instances["train"]
    prior = fit_pose_prior(np.stack([i.keypoints[:, :2] for i in train]),
                           np.stack([i.keypoints[:, 2] > 0 for i in train])) if train else None
    spec = dataclasses.replace(spec, pose_prior=prior)
    model = build_model(cfg, spec)
    dm.use_spec(spec, codec=model.codec)
    return dm, spec, model
