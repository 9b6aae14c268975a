"""CLAMP network components (plain nn.Modules; no Lightning/Hydra)."""

from .adapters import ContextDecoder, PromptEncoder
from .clamp import CLAMP, no_weight_decay
from .clip_towers import (
    DenseImageTower,
    TextTower,
    build_clip,
    load_clip_weights,
    read_checkpoint,
    register_tiny_configs,
)
from .heads import HeatmapHead, PromptHead, SharedUpsampleHead, UpsampleHead
from .losses import CLAMPLoss, feature_contrastive, keypoint_mse
from .prompts import PromptLearner

register_tiny_configs()

__all__ = [
    "CLAMP",
    "CLAMPLoss",
    "ContextDecoder",
    "DenseImageTower",
    "HeatmapHead",
    "PromptEncoder",
    "PromptHead",
    "PromptLearner",
    "SharedUpsampleHead",
    "TextTower",
    "UpsampleHead",
    "build_clip",
    "feature_contrastive",
    "keypoint_mse",
    "load_clip_weights",
    "no_weight_decay",
    "read_checkpoint",
    "register_tiny_configs",
]
