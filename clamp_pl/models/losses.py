"""CLAMP losses: heatmap MSE, spatial MSE on the upsampled score maps, feature-level InfoNCE."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def keypoint_mse(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """mmpose ``JointsMSELoss(use_target_weight=True)``.

    ``pred``/``target`` [B,K,h,w], ``weights`` [B,K]. Per joint: MSE of ``w*pred`` and ``w*target`` averaged over
    batch and pixels; then averaged over joints (no 0.5 factor). Equals the mean over all B*K*h*w terms.
    """
    w = weights.to(pred.dtype)[:, :, None, None]
    return ((pred - target.to(pred.dtype)) * w).pow(2).mean()


def feature_contrastive(
    pixel_emb: torch.Tensor,
    prompt_emb: torch.Tensor,
    peak_index: torch.Tensor,
    peak_weights: torch.Tensor,
    logit_scale: torch.Tensor,
) -> torch.Tensor:
    """Symmetric InfoNCE between keypoint pixel embeddings and the prompts of the same instance.

    Args:
        pixel_emb: [B,D,gh,gw] dense image embeddings.
        prompt_emb: [B,K,D] refined prompt embeddings.
        peak_index: [B,K] int64 flat cell index ``row * gw + col`` of each keypoint on the feature grid.
        peak_weights: [B,K] target weights (0 = unlabelled or outside the input).
        logit_scale: scalar temperature multiplier tau (already exponentiated).

    v_bk = pixel_emb[b, :, peak_index[b, k]] (a zero vector where the weight is 0, as in the official code, where
    such keypoints have no peak cell); logits z_bkj = tau * cos(v_bk, t_bj). Loss
    ``0.5 * (mean_bk w_bk CE(z_bk., k) + mean_bk w_bk CE(z_b.k, k))``: negatives are the other keypoints of the
    same instance; the means run over all B*K entries, without renormalising by the weights (as the official code).

    Any K >= 1 (the prompt head's keypoints are whatever the prompts are): reordering the prompts together with
    ``peak_index``/``peak_weights`` leaves the loss unchanged. With K = 1 there is no negative and the loss is 0.
    """
    b, d = pixel_emb.shape[:2]
    k = prompt_emb.shape[1]
    flat = pixel_emb.flatten(2)  # [B, D, N]
    index = peak_index.long().clamp(0, flat.shape[2] - 1)
    v = torch.gather(flat, 2, index[:, None, :].expand(b, d, k)).transpose(1, 2)  # [B, K, D]
    w = peak_weights.to(v.dtype)
    v = v * (w > 0).to(v.dtype)[..., None]
    logits = logit_scale * torch.einsum("bkd,bjd->bkj", F.normalize(v, dim=-1), F.normalize(prompt_emb, dim=-1))
    labels = torch.arange(k, device=logits.device).expand(b, k)
    ce_img = F.cross_entropy(logits.transpose(1, 2), labels, reduction="none")  # rows: visual keypoint k
    ce_txt = F.cross_entropy(logits, labels, reduction="none")  # columns: prompt k over the visual keypoints
    return 0.5 * ((ce_img * w).mean() + (ce_txt * w).mean())


class CLAMPLoss(nn.Module):
    """Total CLAMP loss: ``loss = loss_heatmap + loss_spatial + loss_feature``.

    The returned ``loss_spatial``/``loss_feature`` already include their weights (the official logs do the
    same). They are zero tensors when the outputs lack their inputs: the image-only baseline, or eval mode for
    the spatial term (``spatial_heatmaps`` is only computed in training).

    ``batch`` needs ``heatmaps`` [B,K,h,w], ``keypoint_weights`` [B,K], and for the feature term
    ``peak_index`` [B,K] and ``peak_weights`` [B,K].
    Weights: spatial 2.0 (ViT-B/16), 0.4 (RN50), 1.0 (ViT-L/14); feature 5e-4 (all configs).
    """

    def __init__(self, spatial_weight: float = 2.0, feature_weight: float = 5e-4, heatmap_weight: float = 1.0):
        super().__init__()
        self.heatmap_weight = heatmap_weight
        self.spatial_weight = spatial_weight
        self.feature_weight = feature_weight

    def forward(self, outputs: dict, batch: dict) -> dict[str, torch.Tensor]:
        pred = outputs["heatmaps"]
        zero = pred.new_zeros(())
        target, weights = batch["heatmaps"], batch["keypoint_weights"]
        loss_heatmap = self.heatmap_weight * keypoint_mse(pred, target, weights)
        loss_spatial = zero
        spatial = outputs.get("spatial_heatmaps")
        if spatial is not None and self.spatial_weight:
            loss_spatial = self.spatial_weight * keypoint_mse(spatial, target, weights)
        loss_feature = zero
        if outputs.get("pixel_embeddings") is not None and self.feature_weight:
            loss_feature = self.feature_weight * feature_contrastive(
                outputs["pixel_embeddings"],
                outputs["prompt_embeddings"],
                batch["peak_index"],
                batch["peak_weights"],
                outputs["logit_scale"],
            )
        return dict(
            loss=loss_heatmap + loss_spatial + loss_feature,
            loss_heatmap=loss_heatmap,
            loss_spatial=loss_spatial,
            loss_feature=loss_feature,
        )
