"""Deconvolution heads (mmpose ``TopdownHeatmapSimpleHead``): the keypoint head and the score-map upsampler."""

from __future__ import annotations

import torch
from torch import nn


def _deconv_stack(in_channels: int, num_deconv: int, channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(num_deconv):
        # kernel 4, stride 2, padding 1, output_padding 0: exactly doubles the spatial size
        layers += [
            nn.ConvTranspose2d(in_channels, channels, 4, stride=2, padding=1, output_padding=0, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        ]
        in_channels = channels
    return nn.Sequential(*layers)


class HeatmapHead(nn.Module):
    """SimpleBaseline head: ``num_deconv`` x [ConvT 4x4 s2 (no bias) -> BN -> ReLU], then 1x1 conv -> K.

    ``forward(x [B,C,h,w]) -> [B,K,h*2^n,w*2^n]``. Init as mmpose: deconvs and final conv normal(std 0.001),
    final bias 0, BN weight 1 / bias 0.
    """

    def __init__(self, in_channels: int, num_keypoints: int, num_deconv: int = 2, channels: int = 256) -> None:
        super().__init__()
        self.deconv_layers = _deconv_stack(in_channels, num_deconv, channels)
        self.final_layer = nn.Conv2d(channels if num_deconv else in_channels, num_keypoints, 1)
        self.init_weights()

    def init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.ConvTranspose2d, nn.Conv2d)):
                nn.init.normal_(m.weight, std=0.001)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_layer(self.deconv_layers(x))


class UpsampleHead(nn.Module):
    """Upsampler of the K score maps for the spatial loss (official ``upconv_head``).

    Same layout as ``HeatmapHead`` with ``channels`` filters (default K: CLAMP ViT uses 2 deconvs with K
    filters, RN50 3 with 256), keeping PyTorch's default init: the official code never initialises it.
    ``forward(s [B,K,h,w]) -> [B,K,h*2^n,w*2^n]``.
    """

    def __init__(self, num_keypoints: int, num_deconv: int = 2, channels: int | None = None) -> None:
        super().__init__()
        channels = channels or num_keypoints
        self.deconv_layers = _deconv_stack(num_keypoints, num_deconv, channels)
        self.final_layer = nn.Conv2d(channels if num_deconv else num_keypoints, num_keypoints, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_layer(self.deconv_layers(x))
