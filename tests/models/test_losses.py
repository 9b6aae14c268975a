import math

import torch
import torch.nn.functional as F

from clamp_pl.models import CLAMPLoss, feature_contrastive, keypoint_mse


def test_keypoint_mse_matches_mmpose_joints_mse():
    torch.manual_seed(0)
    pred, target = torch.rand(3, 4, 5, 6), torch.rand(3, 4, 5, 6)
    w = torch.tensor([[1.0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 1, 0]])
    # mmpose JointsMSELoss(use_target_weight=True): per joint MSELoss(mean) of weighted maps, averaged over joints
    expected = sum(
        F.mse_loss(pred[:, j] * w[:, j, None, None], target[:, j] * w[:, j, None, None]) for j in range(4)
    ) / 4
    torch.testing.assert_close(keypoint_mse(pred, target, w), expected)
    # tiny hand example: one joint, two pixels, weight 1 -> mean of squared errors
    p = torch.tensor([[[[1.0, 0.0]]]])
    t = torch.tensor([[[[0.0, 0.0]]]])
    assert keypoint_mse(p, t, torch.ones(1, 1)).item() == 0.5
    assert keypoint_mse(p, t, torch.zeros(1, 1)).item() == 0.0


def _lse(*z):
    return math.log(sum(math.exp(v) for v in z))


def test_feature_contrastive_two_keypoints_by_hand():
    # 1x2 grid; pixel 0 = (1, 0), pixel 1 = (0, 2) (normalised: (0, 1)); keypoint 0 at cell 1, keypoint 1 at cell 0
    pix = torch.tensor([[[[1.0, 0.0]], [[0.0, 2.0]]]])  # [B=1, D=2, gh=1, gw=2]
    s = 1 / math.sqrt(2)
    prompts = torch.tensor([[[0.0, 3.0], [1.0, 1.0]]])  # t0 -> (0, 1), t1 -> (s, s)
    idx = torch.tensor([[1, 0]])
    tau = torch.tensor(2.0)
    # v0 = (0, 1), v1 = (1, 0); z[k][j] = tau * <v_k, t_j>
    z = [[2 * 1.0, 2 * s], [2 * 0.0, 2 * s]]
    img = [_lse(*z[0]) - z[0][0], _lse(*z[1]) - z[1][1]]  # softmax over prompts
    txt = [_lse(z[0][0], z[1][0]) - z[0][0], _lse(z[0][1], z[1][1]) - z[1][1]]  # softmax over keypoints
    expected = 0.5 * (sum(img) / 2 + sum(txt) / 2)
    got = feature_contrastive(pix, prompts, idx, torch.ones(1, 2), tau)
    assert math.isclose(got.item(), expected, rel_tol=1e-6)

    # keypoint 1 unlabelled: its visual vector is zero (logits 0), its terms are weighted 0, the mean stays over 2
    z = [[2 * 1.0, 2 * s], [0.0, 0.0]]
    expected = 0.5 * ((_lse(*z[0]) - z[0][0]) / 2 + (_lse(z[0][0], z[1][0]) - z[0][0]) / 2)
    got = feature_contrastive(pix, prompts, idx, torch.tensor([[1.0, 0.0]]), tau)
    assert math.isclose(got.item(), expected, rel_tol=1e-6)


def test_feature_contrastive_picks_row_major_cells():
    torch.manual_seed(0)
    pix = torch.randn(1, 8, 3, 4)
    prompts = torch.randn(1, 2, 8)
    idx = torch.tensor([[1 * 4 + 2, 2 * 4 + 3]])  # (row 1, col 2) and (row 2, col 3)
    v = torch.stack([pix[0, :, 1, 2], pix[0, :, 2, 3]])
    logits = 3.0 * F.normalize(v, dim=-1) @ F.normalize(prompts[0], dim=-1).T
    labels = torch.arange(2)
    expected = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
    got = feature_contrastive(pix, prompts, idx, torch.ones(1, 2), torch.tensor(3.0))
    torch.testing.assert_close(got, expected)


def test_clamp_loss_combines_weighted_terms():
    torch.manual_seed(0)
    b, k, hm = 2, 3, 8
    outputs = dict(
        heatmaps=torch.rand(b, k, hm, hm), spatial_heatmaps=torch.rand(b, k, hm, hm),
        pixel_embeddings=torch.randn(b, 4, 2, 2), prompt_embeddings=torch.randn(b, k, 4),
        logit_scale=torch.tensor(1 / 0.07), score_maps=None,
    )
    batch = dict(heatmaps=torch.rand(b, k, hm, hm), keypoint_weights=torch.ones(b, k),
                 peak_index=torch.randint(0, 4, (b, k)), peak_weights=torch.ones(b, k))
    out = CLAMPLoss(spatial_weight=0.4, feature_weight=5e-4)(outputs, batch)
    torch.testing.assert_close(out["loss_heatmap"], keypoint_mse(outputs["heatmaps"], batch["heatmaps"], batch["keypoint_weights"]))
    torch.testing.assert_close(out["loss_spatial"], 0.4 * keypoint_mse(outputs["spatial_heatmaps"], batch["heatmaps"], batch["keypoint_weights"]))
    feat = feature_contrastive(outputs["pixel_embeddings"], outputs["prompt_embeddings"], batch["peak_index"],
                               batch["peak_weights"], outputs["logit_scale"])
    torch.testing.assert_close(out["loss_feature"], 5e-4 * feat)
    torch.testing.assert_close(out["loss"], out["loss_heatmap"] + out["loss_spatial"] + out["loss_feature"])


def test_feature_contrastive_any_number_of_prompts():
    torch.manual_seed(0)
    pix, prompts = torch.randn(2, 8, 3, 3), torch.randn(2, 6, 8)
    idx, w = torch.randint(0, 9, (2, 6)), torch.rand(2, 6)
    tau = torch.tensor(5.0)
    perm = torch.tensor([4, 0, 5, 2, 1, 3])
    torch.testing.assert_close(feature_contrastive(pix, prompts[:, perm], idx[:, perm], w[:, perm], tau),
                               feature_contrastive(pix, prompts, idx, w, tau))
    # one prompt: nothing to contrast with
    assert feature_contrastive(pix, prompts[:, :1], idx[:, :1], w[:, :1], tau).item() == 0.0
