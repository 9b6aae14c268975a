"""A small PoseLitModule on clamp-tiny-rn and a random dataset for it, shared by the training tests."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from clamp_pl.data.metainfo import DatasetMeta
from clamp_pl.spec import make_spec
from clamp_pl.training.module import PoseLitModule

PROMPTS = ["left eye", "right eye", "nose", "left paw", "right paw"]
FLIP = [1, 0, 2, 4, 3]
HM = 32  # heatmap side for clamp-tiny-rn at 128 px (4x4 grid, 3 deconvs)
OPT = {"lr": 1e-3, "weight_decay": 0.05, "backbone_lr_mult": 0.1, "fused": "auto"}
SCHED = {"warmup_iters": 500, "warmup_ratio": 1e-3, "milestones": [170, 200], "gamma": 0.1}
NO_DECAY_LEAVES = {"ctx", "positional_embedding", "class_embedding", "gamma", "logit_scale"}


def make_module(flip_test: bool = True, **kw) -> PoseLitModule:
    torch.manual_seed(0)
    meta = DatasetMeta(name="test", keypoint_names=tuple(PROMPTS), prompts=tuple(PROMPTS), flip_indices=tuple(FLIP),
                       sigmas=[0.07] * 5, skeleton=(), upper_body_ids=(), lower_body_ids=(), joint_weights=[1.0] * 5)
    net = dict(clip_model="clamp-tiny-rn", pretrained=None, image_size=128, num_deconv=3, deconv_channels=32,
               upconv_num_deconv=3, upconv_channels=16)
    spec = make_spec(net, meta, normalization="imagenet", padding=1.25, sigma=2.0, decode="default",
                     shift_heatmap=True, flip_test=flip_test)
    return PoseLitModule(spec=spec, **{"optimizer": OPT, "scheduler": SCHED, **kw})


class RandomPoseData(Dataset):
    """Batches of the keys the module reads; 128 px crops, K=5, a 4x4 feature grid."""

    def __len__(self) -> int:
        return 6

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(i)
        return {
            "image": torch.randn(3, 128, 128, generator=g),
            "heatmaps": torch.rand(5, HM, HM, generator=g),
            "keypoint_weights": torch.ones(5),
            "peak_index": torch.randint(0, 16, (5,), generator=g),
            "peak_weights": torch.ones(5),
            "center": torch.tensor([64.0, 64.0]),
            "scale": torch.tensor([160.0, 160.0]),
            "ann_id": torch.tensor(i),
            "image_id": torch.tensor(i),
            "category_id": torch.tensor(1),
        }
