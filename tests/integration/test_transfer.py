"""``python -m clamp_pl.train init_from=...`` across vocabularies: a prompt-head starting point trained on AP-10K's
17 keypoints loads WHOLE into a network for the mouse's 4 keypoints (every tensor, "0 skipped"; the prompts are the
mouse's names, the learned context comes from the file); a concat-head starting point keeps the partial load."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

from clamp_pl.data.metainfo import get_meta
from clamp_pl.inference.checkpoint import load_checkpoint, save_model_file
from clamp_pl.spec import make_spec
from clamp_pl.train import train

#: the network arguments of model=clamp_tiny that shape its tensors
CLAMP_TINY = dict(clip_model="clamp-tiny-rn", pretrained=None, image_size=128, num_deconv=3, deconv_channels=32,
                  upconv_num_deconv=3, upconv_channels=16, decoder_width=64, decoder_layers=2)
ONE_STEP = ["trainer.max_epochs=1", "+trainer.limit_train_batches=1", "+trainer.limit_val_batches=1",
            "trainer.check_val_every_n_epoch=1", "test=false", "extras.print_config=false",
            "trainer.enable_progress_bar=false", "callbacks.rich_progress_bar=null"]


def _starting_point(path: Path, head: str) -> Path:
    """A clamp_tiny model file on AP-10K's 17 keypoints (random weights, a recognisable context)."""
    torch.manual_seed(0)
    spec = make_spec({**CLAMP_TINY, "head": head}, get_meta("ap10k"), normalization="imagenet", padding=1.25,
                     sigma=2.0, decode="default", shift_heatmap=True, flip_test=True, data={"name": "toy_ap10k"})
    net = spec.build_network()
    net.prompt_learner.ctx.data.fill_(0.5)
    return save_model_file(path, spec, net.state_dict())


def _init_log(caplog) -> tuple[int, int, int]:
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("init_from"))
    loaded, skipped, left = map(int, re.search(r"(\d+) tensors loaded, (\d+) skipped.*, (\d+) left", line).groups())
    return loaded, skipped, left


def test_prompt_head_starting_point_loads_whole_into_other_names(make_cfg, tmp_path, caplog):
    start = _starting_point(tmp_path / "start.pt", "prompt")
    cfg = make_cfg("experiment=fewshot_mouse", f"init_from={start}", *ONE_STEP, fast=False)
    with caplog.at_level(logging.INFO, logger="clamp_pl.training.module"):
        _, objects = train(cfg)
    loaded, skipped, left = _init_log(caplog)
    net = objects["model"].net
    assert (skipped, left) == (0, 0) and loaded == len(net.state_dict())
    assert net.prompts == ["snout", "left ear", "right ear", "tail base"]
    assert objects["model"].spec.trained_vocabulary == ("snout", "leftear", "rightear", "tailbase")
    # the learned context came from the file (then took one optimiser step)
    assert torch.allclose(net.prompt_learner.ctx, torch.full_like(net.prompt_learner.ctx, 0.5), atol=0.05)
    assert not any("head" in r.getMessage() and r.levelno >= logging.WARNING for r in caplog.records
                   if "init_from" in r.getMessage())


def test_concat_starting_point_keeps_the_partial_load(make_cfg, tmp_path, caplog):
    start = _starting_point(tmp_path / "start.pt", "concat")
    cfg = make_cfg("experiment=fewshot_mouse", "model.net.head=concat", f"init_from={start}", *ONE_STEP, fast=False)
    with caplog.at_level(logging.INFO, logger="clamp_pl.training.module"):
        train(cfg)
    loaded, skipped, left = _init_log(caplog)
    assert skipped > 0 and left == skipped and loaded == len(load_checkpoint(start)[1]) - skipped
    # the prompt-head starting point into a concat network: says which head setting loads it whole
    caplog.clear()
    prompt_start = _starting_point(tmp_path / "prompt.pt", "prompt")
    cfg = make_cfg("experiment=fewshot_mouse", "model.net.head=concat", f"init_from={prompt_start}", *ONE_STEP,
                   fast=False)
    with caplog.at_level(logging.INFO, logger="clamp_pl.training.module"):
        train(cfg)
    assert any("model.net.head=prompt loads it too" in r.getMessage() for r in caplog.records)
