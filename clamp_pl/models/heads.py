"""Keypoint heads and score-map upsamplers.

* ``HeatmapHead`` / ``UpsampleHead``: mmpose ``TopdownHeatmapSimpleHead`` (CLAMP's), K output channels.
* ``PromptHead`` / ``SharedUpsampleHead``: the same deconvolutions with weights shared across keypoints, so
  that the keypoints are whatever the prompts are at forward time (any number, any order).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
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


class SharedUpsampleHead(UpsampleHead):
    """The score-map upsampler for any number of keypoints: one single-channel ``UpsampleHead`` applied to every
    score map, as a batch of B*K one-channel maps, so its weights are shared across keypoints and no shape
    depends on K (the prompt head's spatial loss).

    ``forward(s [B,K,h,w]) -> [B,K,h*2^n,w*2^n]``. BatchNorm (training) pools its statistics over all B*K maps,
    which a reordering of the keypoints leaves unchanged. Memory grows as B*K*``channels``: keep ``channels``
    small (default 16, about the official ViT upsampler's 17).
    """

    def __init__(self, num_deconv: int = 2, channels: int | None = None) -> None:
        super().__init__(1, num_deconv, channels or 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, k, h, w = x.shape
        y = super().forward(x.reshape(b * k, 1, h, w))
        return y.reshape(b, k, *y.shape[-2:])


class PromptHead(nn.Module):
    """A keypoint head whose keypoints are its prompts: no parameter's shape depends on K.

    ``forward(x [B,C,gh,gw], prompts [B,K,D], score_maps [B,K,gh,gw] | None) -> [B,K,h,w]``, h = gh*2^n:

    * ``F = deconv_layers(x)`` [B,c,h,w]: the image decoded once, with the ``HeatmapHead`` deconv stack;
    * ``(w_k, b_k) = kernel(normalize(t_k))`` [c], []: a dynamic 1x1 kernel and bias per prompt;
    * ``heatmap_k = <F, w_k> + b_k + score_scale * bilinear_upsample(score_map_k)``.

    Every keypoint goes through the same weights, so reordering the prompts reorders the heatmaps and any K >= 1
    works. The prompts are L2-normalised first because everything else that reads them (score maps, feature loss)
    uses only their direction; it also makes the init scale independent of D and of the prompts' norm.

    Init: the deconvs as mmpose (normal std 0.001, BN 1/0); ``kernel`` normal(std 0.001) with zero bias, so that
    ``w_k`` has std 0.001 per entry like mmpose's final 1x1 conv and the initial heatmaps are near 0;
    ``score_scale`` 0 (the score term is learned from zero, as a residual gate). ``score_term=False`` (CLAMP's
    ``score_concat=False`` ablation) drops the score term and its parameter; ``score_maps`` is then ignored.
    """

    def __init__(
        self,
        in_channels: int,
        embed_dim: int,
        num_deconv: int = 2,
        channels: int = 256,
        score_term: bool = True,
    ) -> None:
        super().__init__()
        self.deconv_layers = _deconv_stack(in_channels, num_deconv, channels)
        self.out_channels = channels if num_deconv else in_channels
        # one row per channel of F, plus one for the bias b_k
        self.kernel = nn.Linear(embed_dim, self.out_channels + 1)
        self.score_scale = nn.Parameter(torch.zeros(())) if score_term else None
        self.init_weights()

    def init_weights(self) -> None:
        for m in self.deconv_layers.modules():
            if isinstance(m, nn.ConvTranspose2d):
                nn.init.normal_(m.weight, std=0.001)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.kernel.weight, std=0.001)
        nn.init.zeros_(self.kernel.bias)
        if self.score_scale is not None:
            nn.init.zeros_(self.score_scale)

    def forward(
        self, x: torch.Tensor, prompts: torch.Tensor, score_maps: torch.Tensor | None = None
    ) -> torch.Tensor:
        feats = self.deconv_layers(x)  # [B, c, h, w]
        kernel = self.kernel(F.normalize(prompts, dim=-1)).to(feats.dtype)  # [B, K, c + 1]
        w, bias = kernel[..., :-1], kernel[..., -1]
        heatmaps = torch.einsum("bchw,bkc->bkhw", feats, w) + bias[..., None, None]
        if self.score_scale is not None:
            if score_maps is None:
                raise ValueError("this PromptHead was built with a score term: pass the score maps")
            up = F.interpolate(
                score_maps.to(feats.dtype), size=feats.shape[-2:], mode="bilinear", align_corners=False
            )
            heatmaps = heatmaps + self.score_scale * up
        return heatmaps
