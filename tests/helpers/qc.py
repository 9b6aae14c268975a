"""A randomly initialised mouse model (clamp-tiny-rn, the four body parts of helpers.projects) saved as a model
file, and a small video of a moving blob: what the quality-check and outlier tests predict with (no training)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from clamp_pl.data.metainfo import DatasetMeta
from clamp_pl.inference.checkpoint import save_model_file
from clamp_pl.spec import make_spec
from helpers.projects import BODYPARTS


def make_model_file(path: Path, seed: int = 0, pose_prior: dict | None = None) -> Path:
    """A model file of an untrained clamp-tiny-rn network on ``BODYPARTS`` (left/right ear flip pair)."""
    import dataclasses

    torch.manual_seed(seed)
    meta = DatasetMeta(name="mouse", keypoint_names=tuple(BODYPARTS), prompts=("snout", "left ear", "right ear",
                       "tail base"), flip_indices=(0, 2, 1, 3), sigmas=[0.08] * 4, skeleton=((0, 3),),
                       upper_body_ids=(), lower_body_ids=(), joint_weights=[1.0] * 4)
    net = dict(clip_model="clamp-tiny-rn", pretrained=None, image_size=64, num_deconv=2, deconv_channels=16,
               upconv_num_deconv=2, upconv_channels=8, decoder_width=32, decoder_layers=1)
    spec = make_spec(net, meta, normalization="imagenet", padding=1.25, sigma=2.0, decode="default",
                     shift_heatmap=True, flip_test=True)
    spec = dataclasses.replace(spec, pose_prior=pose_prior)
    return save_model_file(path, spec, spec.build_network().state_dict())


def make_video(path: Path, n: int = 12, size: tuple[int, int] = (64, 48), fps: float = 10.0) -> Path:
    """An MJPG .avi (OpenCV writes it without FFmpeg) of a bright blob crossing a dark frame."""
    w, h = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    assert writer.isOpened()
    for i in range(n):
        img = np.full((h, w, 3), 40, np.uint8)
        cv2.circle(img, (8 + (i * 4) % (w - 16), h // 2), 8, (90, 200, 180), -1)
        writer.write(img)
    writer.release()
    return path
