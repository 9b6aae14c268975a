"""Every experiment file composes (a glob: a new experiment is covered automatically); config mistakes give
errors that list the choices."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf

from clamp_pl.cli.config import config_dir, group_choices

EXPERIMENTS = sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml"))


def test_experiment_files_exist():
    for name in ["supervised_ap10k", "fewshot_ap10k", "zeroshot_ap10k", "supervised_animalpose",
                 "fewshot_animalpose", "zeroshot_animalpose", "supervised_toy", "fewshot_toy", "zeroshot_toy",
                 "demo"]:
        assert name in EXPERIMENTS


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_resolves(make_cfg, experiment):
    cfg = make_cfg(f"experiment={experiment}", fast=False)
    resolved = OmegaConf.to_container(cfg, resolve=False)
    assert resolved["experiment_name"] == experiment
    # every interpolation outside hydra's own node resolves
    for key in ("data", "model", "protocol", "trainer", "callbacks", "logger", "paths"):
        OmegaConf.to_container(cfg[key], resolve=True)
    # the network's geometry (input size, feature grid, heatmap size) derives without error
    from clamp_pl.spec import network_geometry

    net = cfg.model.net
    assert network_geometry(net.clip_model, net.image_size, net.num_deconv).heatmap_size[0] > 0


@pytest.mark.parametrize("group,bad", [("experiment", "no_such_experiment"), ("model", "clamp_vitb99"),
                                       ("data", "imagenet")])
def test_unknown_choice_lists_the_options(make_cfg, group, bad):
    with pytest.raises(MissingConfigException) as err:
        make_cfg(f"{group}={bad}", fast=False)
    message = str(err.value)
    assert bad in message
    for choice in group_choices(group)[:3]:
        assert choice in message


def test_cli_cfg_job_composes():
    """The entry point itself composes (`--cfg job` prints the job config and exits)."""
    out = subprocess.run([sys.executable, "-m", "clamp_pl.train", "experiment=fewshot_ap10k", "--cfg", "job"],
                         capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[1])
    assert out.returncode == 0, out.stderr[-2000:]
    cfg = OmegaConf.create(out.stdout)
    assert cfg.protocol.name == "fewshot" and cfg.model.net.clip_model == "ViT-B-16"


@pytest.mark.parametrize("override", ["hydra/launcher=slurm", "hydra/launcher=local_parallel",
                                      "hparams_search=optuna_fewshot"])
def test_launchers_and_search_space_compose(make_cfg, override):
    cfg = make_cfg("experiment=fewshot_toy", override, fast=False)
    if "slurm" in override:
        launcher = cfg.hydra.launcher
        assert "SlurmLauncher" in launcher._target_
        assert launcher.tasks_per_node == launcher.gpus_per_node  # one process per GPU: no DDP re-launch
        assert launcher.max_num_timeout > 0  # requeue on preemption
    elif "local_parallel" in override:
        assert "JoblibLauncher" in cfg.hydra.launcher._target_ and cfg.hydra.launcher.n_jobs == 2
    else:
        assert "OptunaSweeper" in cfg.hydra.sweeper._target_
        assert set(cfg.hydra.sweeper.params) >= {"model.optimizer.lr", "model.net.n_ctx"}
        assert cfg.optimized_metric == "val/AP"


# ---------------------------------------------------------------------------------------------------------------
# The official recipes, value by value: the authors' configs (xuzhang1199/CLAMP,
# configs/animal/2d_kpt_sview_rgb_img/topdown_heatmap/ap10k/CLAMP_{ViTB,res50,ViTL}_ap10k_256x256.py and the
# mmpose 0.x / mmcv 1.4 code they run), written out here by hand, against `experiment=supervised_ap10k`.
OFFICIAL_COMMON = {
    # optimizer = AdamW(lr=5e-4, weight_decay=1e-4); lr_config: linear warmup 500 iters from 0.001x, steps 170/200
    "model.optimizer.lr": 5e-4,
    "model.optimizer.weight_decay": 1e-4,
    "model.scheduler.warmup_iters": 500,
    "model.scheduler.warmup_ratio": 1e-3,
    "model.scheduler.milestones": [170, 200],
    "model.scheduler.gamma": 0.1,
    "trainer.max_epochs": 210,
    "trainer.check_val_every_n_epoch": 10,  # evaluation interval 10, save_best AP
    "callbacks.model_checkpoint.monitor": "val/AP",
    # data: AP-10K split 1, ImageNet mean/std, sigma 2, box padding 1.25, full-resolution decode
    "data.split": 1,
    "data.test_split": "val",  # test=dict(ann_file=...val-split1.json)
    "data.sigma": 2.0,
    "data.padding": 1.25,
    "data.normalization": "imagenet",
    "data.reduced_decode": False,
    # train_pipeline + the mmpose 0.x dataset's box handling
    "data.augment.flip_prob": 0.5,
    "data.augment.half_body_prob": 0.3,
    "data.augment.half_body_min_kpts": 8,
    "data.augment.half_body_padding": 1.5,
    "data.augment.half_body_center": "mean",
    "data.augment.shift_mode": "dataset",
    "data.augment.shift_prob": 0.3,
    "data.augment.shift_factor": 0.2,
    "data.augment.scale_factor": 0.5,
    "data.augment.rot_factor": 40.0,
    "data.augment.rot_prob": 0.6,
    "data.augment.photometric": None,
    # test_cfg
    "model.test_cfg.flip_test": True,
    "model.test_cfg.shift_heatmap": True,
    "model.test_cfg.decode": "default",
    # model: 8 shared context tokens (text context_length 13 - 5), prompt encoder, 3-layer 256-wide decoder
    "model.net.pretrained": "openai",
    "model.net.quick_gelu": True,  # OpenAI CLIP's activation, hard-coded in the official towers
    "model.net.n_ctx": 8,
    "model.net.ctx_init_std": 1.0,
    "model.net.prompt_encoder": True,
    "model.net.context_decoder": True,
    "model.net.score_concat": True,
    "model.net.decoder_width": 256,
    "model.net.decoder_layers": 3,
    "model.net.deconv_channels": 256,
    "model.net.drop_path_mode": "token",
    "model.loss.feature_weight": 5e-4,  # CL_ratio
    # 4 GPUs x samples_per_gpu 32, fp32 (no fp16 hook), plain BatchNorm per GPU
    "global_batch": 128,
    "trainer.precision": 32,
}
OFFICIAL = {
    "clamp_vitb16": {
        **OFFICIAL_COMMON, "model.net.clip_model": "ViT-B-16", "model.net.image_size": 256, "heatmap_size": (64, 64),
        "model.net.drop_path_rate": 0.4, "model.loss.spatial_weight": 2.0, "model.optimizer.backbone_lr_mult": 0.1,
        "model.optimizer.no_decay_keys": ["norm"], "model.net.num_deconv": 2, "model.net.upconv_num_deconv": 2,
        "model.net.upconv_channels": None,  # K (17) filters
        "model.net.class_embedding_twice": True, "model.net.text_heads": None,
    },
    "clamp_rn50": {
        **OFFICIAL_COMMON, "model.net.clip_model": "RN50", "model.net.image_size": 256, "heatmap_size": (64, 64),
        "model.net.drop_path_rate": 0.0, "model.loss.spatial_weight": 0.4, "model.optimizer.backbone_lr_mult": 1.0,
        "model.optimizer.no_decay_keys": ["bias", "norm"], "model.net.num_deconv": 3,
        "model.net.upconv_num_deconv": 3, "model.net.upconv_channels": 256,
    },
    "clamp_vitl14": {
        **OFFICIAL_COMMON, "model.net.clip_model": "ViT-L-14", "model.net.image_size": 224, "heatmap_size": (64, 64),
        "model.net.drop_path_rate": 0.4, "model.loss.spatial_weight": 1.0, "model.optimizer.backbone_lr_mult": 0.1,
        "model.optimizer.no_decay_keys": ["norm"], "model.net.num_deconv": 2, "model.net.upconv_num_deconv": 2,
        "model.net.upconv_channels": None, "model.net.class_embedding_twice": True, "model.net.text_heads": 8,
    },
}
# Where clamp_pl's recipe deliberately differs: key -> (our value, the override that gives the official one)
DELIBERATE = {
    "data.test_split": ("test", "data.test_split=val"),
    "model.net.class_embedding_twice": (False, "model.net.class_embedding_twice=true"),
    "model.net.text_heads": (None, "model.net.text_heads=8"),
    "trainer.precision": ("bf16-mixed", "trainer.precision=32"),
}


def _value(cfg, key):
    from clamp_pl.spec import network_geometry

    if key == "heatmap_size":
        net = cfg.model.net
        return tuple(network_geometry(net.clip_model, net.image_size, net.num_deconv).heatmap_size)
    if key == "global_batch":
        return cfg.data.batch_size * cfg.trainer.devices * cfg.trainer.get("num_nodes", 1)
    value = OmegaConf.select(cfg, key, throw_on_missing=True)
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


@pytest.mark.parametrize("model", sorted(OFFICIAL))
def test_official_recipe_composes_to_the_official_values(make_cfg, model):
    official = OFFICIAL[model]
    deliberate = {k: DELIBERATE[k] for k in official if k in DELIBERATE and DELIBERATE[k][0] != official[k]}
    cfg = make_cfg("experiment=supervised_ap10k", f"model={model}", fast=False)
    expected = {k: deliberate[k][0] if k in deliberate else v for k, v in official.items()}
    composed = {k: _value(cfg, k) for k in official}
    assert {k: v for k, v in composed.items() if v != expected[k]} == {}, "composed values that are not expected"
    # every deliberate difference is one override away
    overrides = [part for _, o in deliberate.values() for part in o.split()]
    cfg = make_cfg("experiment=supervised_ap10k", f"model={model}", *overrides, fast=False)
    assert {k: _value(cfg, k) for k in official if _value(cfg, k) != official[k]} == {}


def test_official_ddp_setting_is_4x32_with_per_gpu_batchnorm_one_override_away(make_cfg):
    cfg = make_cfg("experiment=supervised_ap10k", "trainer=ddp", "trainer.devices=4", "data.batch_size=32",
                   fast=False)
    assert (cfg.trainer.devices, cfg.data.batch_size, cfg.trainer.sync_batchnorm) == (4, 32, True)
    assert cfg.trainer.precision == "bf16-mixed"
    cfg = make_cfg("experiment=supervised_ap10k", "trainer=ddp", "trainer.devices=4", "data.batch_size=32",
                   "trainer.precision=32", "trainer.sync_batchnorm=false", fast=False)
    assert (cfg.trainer.precision, cfg.trainer.sync_batchnorm) == (32, False)


def test_official_constants_outside_the_configs():
    """What the configs do not carry: the CLAMP and loss constructor defaults the official code also uses."""
    import inspect

    from clamp_pl.models import CLAMP, CLAMPLoss

    net = inspect.signature(CLAMP).parameters
    assert net["gamma_init"].default == 1e-3 and net["ctx_init_std"].default == 1.0
    assert inspect.signature(CLAMPLoss).parameters["heatmap_weight"].default == 1.0
