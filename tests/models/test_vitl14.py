"""model=clamp_vitl14 (the official CLAMP_ViTL recipe: 224 px, 16x16 grid, 64x64 heatmaps) builds and trains."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.slow
def test_vitl14_builds_and_steps_at_random_init(make_cfg):
    from clamp_pl.spec import network_geometry
    from clamp_pl.train import train

    cfg = make_cfg("experiment=supervised_toy", "model=clamp_vitl14", "model.net.pretrained=null",
                   "trainer.fast_dev_run=1", "data.batch_size=2")
    net = cfg.model.net
    assert (net.clip_model, net.image_size, net.drop_path_rate, net.drop_path_mode) == ("ViT-L-14", 224, 0.4, "token")
    assert network_geometry(net.clip_model, net.image_size, net.num_deconv).heatmap_size == (64, 64)
    metrics, objs = train(cfg)
    model = objs["model"]
    assert model.net.feature_grid == (16, 16) and model.net.image_tower.out_channels == 1024
    assert model.net.keypoint_head.deconv_layers[0].in_channels == 1024 + 17
    for key in ("train/loss_heatmap", "train/loss_spatial", "train/loss_feature"):
        assert torch.isfinite(torch.tensor(metrics[key])), key
