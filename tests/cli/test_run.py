"""``clamp_pl.cli.run``: the model-size figures logged once per run."""

from __future__ import annotations

import pytest
import torch

from clamp_pl.cli.run import count_flops, count_parameters
from clamp_pl.data.metainfo import DatasetMeta
from clamp_pl.spec import make_spec
from clamp_pl.training.module import PoseLitModule


def _module(text_branch: bool) -> PoseLitModule:
    torch.manual_seed(0)
    net = dict(clip_model="clamp-tiny-rn", pretrained=None, image_size=128, num_deconv=3, deconv_channels=32,
               upconv_num_deconv=3, upconv_channels=16, text_branch=text_branch)
    meta = DatasetMeta(name="t", keypoint_names=("a", "b", "c"), prompts=("a", "b", "c"), flip_indices=(0, 2, 1),
                       sigmas=[0.05] * 3, skeleton=(), upper_body_ids=(), lower_body_ids=(), joint_weights=[1.0] * 3)
    spec = make_spec(net, meta, normalization="imagenet", padding=1.25, sigma=2.0, decode="default",
                     shift_heatmap=True, flip_test=True)
    return PoseLitModule(spec=spec)


def test_flops_per_crop_by_hand_for_the_head_and_state_untouched():
    from torch.utils.flop_counter import FlopCounterMode

    clamp, base = _module(True).train(), _module(False)
    f_clamp, f_base = count_flops(clamp)["flops/gflops_per_crop"], count_flops(base)["flops/gflops_per_crop"]
    assert clamp.training  # the count leaves train mode as it was
    tower = FlopCounterMode(display=False)
    with torch.no_grad(), tower:
        base.net.image_tower(torch.zeros(1, 3, 128, 128), embeddings=False)
    # the keypoint head by hand: 3 deconvs (4x4 kernel, stride 2: 16 MACs per input pixel and channel pair)
    # from the 4x4 grid, then the 1x1 conv to K=3; FLOPs = 2 x MACs
    c = base.net.image_tower.out_channels
    head = 2 * (4 * 4 * c * 32 * 16 + 8 * 8 * 32 * 32 * 16 + 16 * 16 * 32 * 32 * 16 + 32 * 32 * 32 * 3)
    assert f_base * 1e9 == pytest.approx(tower.get_total_flops() + head, rel=1e-9)
    # CLAMP adds the dense embeddings, prompt refinement and score maps, but not the text tower (cached) nor
    # the training-only upsampler: well under twice the baseline
    assert f_base < f_clamp < 2 * f_base
    p = count_parameters(clamp)
    assert p["params/total"] == p["params/trainable"] + p["params/frozen"] and p["params/frozen"] > 0


def test_lightning_summary_sees_the_flops_too():
    """The example input makes Lightning's model summary count FLOPs (it was 0): our per-crop figure plus the
    text tower, which its first eval forward runs once."""
    from pytorch_lightning.utilities.model_summary import ModelSummary

    model = _module(True)
    total = ModelSummary(model, max_depth=1).total_flops
    assert total > count_flops(model)["flops/gflops_per_crop"] * 1e9 > 0


def test_flops_of_something_else_is_empty():
    assert count_flops(torch.nn.Linear(2, 2)) == {}
