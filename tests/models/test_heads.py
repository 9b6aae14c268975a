"""The keypoint heads: the prompt head (keypoints = prompts, any number and order) and the concat head (CLAMP's,
fixed K, unchanged)."""

import math

import pytest
import torch
from torch import nn

from clamp_pl.models import CLAMP, CLAMPLoss, PromptHead, SharedUpsampleHead, UpsampleHead

AP10K = ["left eye", "right eye", "nose", "neck", "tail root", "left shoulder", "left elbow", "left front paw",
         "right shoulder", "right elbow", "right front paw", "left hip", "left knee", "left back paw", "right hip",
         "right knee", "right back paw"]
MANY = AP10K + [f"body part {i}" for i in range(40 - len(AP10K))]
TINY = dict(clip_model="clamp-tiny-vit", pretrained=None, image_size=64, heatmap_size=(16, 16), num_deconv=2,
            upconv_num_deconv=2, deconv_channels=32, decoder_width=32, decoder_layers=2)
HM, GRID, D = 16, 4, 64


def make(prompts=AP10K, seed=0, **kw):
    torch.manual_seed(seed)
    return CLAMP(**{**TINY, "prompts": list(prompts), "head": "prompt", **kw})


def scramble(model, seed=1):
    """Move the head-side parameters off their init, so that every term of the outputs is O(1): at init the
    heatmaps are ~1e-2, the score term is gated off and the context decoder is scaled by gamma = 1e-3, which would
    make a 1e-6 tolerance meaningless."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith(("keypoint_head.", "upsample_head.", "prompt_encoder.", "context_decoder.")):
                p.add_(0.1 * torch.randn(p.shape, generator=g))
        model.keypoint_head.score_scale.fill_(1.0)
        model.gamma.fill_(1.0)
    return model


def no_dropout(model):
    """Training mode (BatchNorm on batch statistics) without the context decoder's dropout: a dropout mask is
    drawn per position, so a reordered prompt would get another mask."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.eval()
    return model


def targets(b, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(HM), torch.arange(HM), indexing="ij")
    centres = torch.randint(2, HM - 2, (b, k, 2), generator=g)
    heatmaps = torch.exp(-((xs - centres[..., 0, None, None]) ** 2 + (ys - centres[..., 1, None, None]) ** 2) / 8.0)
    cells = (centres[..., 1] // (HM // GRID)) * GRID + centres[..., 0] // (HM // GRID)
    weights = torch.ones(b, k)
    weights[0, 0] = 0
    return dict(heatmaps=heatmaps, keypoint_weights=weights, peak_index=cells, peak_weights=weights.clone())


def close(a, b, tol=1e-6):
    """Equal up to ``tol`` of the tensor's scale: reordered prompts change only the summation order inside the
    attention over prompts, so float32 results differ by a few ulps of the largest values."""
    assert a.shape == b.shape
    scale = max(1.0, b.abs().max().item())
    assert (a - b).abs().max().item() <= tol * scale, ((a - b).abs().max().item(), scale)


def test_one_prompt_head_network_takes_any_number_of_keypoints():
    model = make().train()
    x = torch.randn(2, 3, 64, 64)
    for k in (1, 4, 17, 40):
        model.set_prompts(MANY[:k])
        assert model.num_keypoints == k and model.prompts == MANY[:k]
        out = model(x)
        assert out["heatmaps"].shape == (2, k, HM, HM)
        assert out["score_maps"].shape == (2, k, GRID, GRID)
        assert out["spatial_heatmaps"].shape == (2, k, HM, HM)
        assert out["prompt_embeddings"].shape == (2, k, D)
        assert out["pixel_embeddings"].shape == (2, D, GRID, GRID)
        losses = CLAMPLoss()(out, targets(2, k))
        assert all(torch.isfinite(v) for v in losses.values())
    # precomputed text features of any K bypass the prompts without changing them
    model.eval()
    with torch.no_grad():
        model.set_prompts(MANY[:3])
        tf = model.text_features().clone()
        model.set_prompts(MANY[:7])
        out = model(x, text_features=tf)
    assert out["heatmaps"].shape == (2, 3, HM, HM) and model.num_keypoints == 7


def test_prompt_head_initial_heatmaps_are_small():
    model = make().train()
    out = model(torch.randn(2, 3, 64, 64))
    assert out["heatmaps"].abs().max() < 0.05  # mmpose's final layer (std 0.001) gives the same order
    assert model.keypoint_head.score_scale.item() == 0.0
    assert model.keypoint_head.kernel.weight.std() < 0.002 and (model.keypoint_head.kernel.bias == 0).all()


@pytest.mark.parametrize("seed", [0, 1])
def test_prompt_head_is_permutation_equivariant_in_eval(seed):
    model = scramble(make()).eval()
    perm = torch.randperm(len(AP10K), generator=torch.Generator().manual_seed(seed))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        model.set_prompts([AP10K[i] for i in perm])
        out = model(x)
    assert ref["heatmaps"].abs().amax() > 1  # the check is not vacuous
    for key in ("heatmaps", "score_maps", "prompt_embeddings"):
        close(out[key], ref[key][:, perm])
    close(out["pixel_embeddings"], ref["pixel_embeddings"])


def test_prompt_head_is_permutation_equivariant_to_float64_rounding():
    """In float64 the reordered outputs agree to ~1e-15: the equivariance is exact, not approximate."""
    model = scramble(make()).double().eval()
    perm = torch.randperm(len(AP10K), generator=torch.Generator().manual_seed(2))
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        ref = model(x)
        model.set_prompts([AP10K[i] for i in perm])
        out = model(x)
    for key in ("heatmaps", "score_maps", "prompt_embeddings"):
        close(out[key], ref[key][:, perm], tol=1e-12)


def test_prompt_head_is_permutation_equivariant_in_training_and_losses_are_invariant():
    model = no_dropout(scramble(make()))
    perm = torch.randperm(len(AP10K), generator=torch.Generator().manual_seed(3))
    x = torch.randn(3, 3, 64, 64)
    batch = targets(3, len(AP10K))
    permuted = {k: v[:, perm] for k, v in batch.items()}
    ref = model(x)
    ref_losses = CLAMPLoss()(ref, batch)
    model.set_prompts([AP10K[i] for i in perm])
    out = model(x)
    for key in ("heatmaps", "score_maps", "spatial_heatmaps", "prompt_embeddings"):
        close(out[key], ref[key][:, perm])
    losses = CLAMPLoss()(out, permuted)
    assert ref_losses["loss_spatial"] > 0 and ref_losses["loss_feature"] > 0
    for key, value in ref_losses.items():
        close(losses[key], value)


def test_a_keypoints_output_depends_on_the_other_prompts():
    """Documented behaviour: the prompt encoder and the context decoder attend across prompts."""
    model = scramble(make()).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        among = model(x)["heatmaps"][:, AP10K.index("nose")]
        model.set_prompts(["nose"])
        alone = model(x)["heatmaps"][:, 0]
    assert not torch.allclose(among, alone, atol=1e-3)


def test_prompt_head_state_dict_does_not_depend_on_k():
    small, large = make(AP10K[:4]), make(AP10K, seed=1)
    a, b = small.state_dict(), large.state_dict()
    assert a.keys() == b.keys()
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    # so a network trained on one vocabulary loads into one built for another
    large.load_state_dict(a, strict=True)
    small.set_prompts(AP10K)
    small.eval(), large.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        close(large(x)["heatmaps"], small(x)["heatmaps"])


def test_prompt_head_parameters_all_get_gradients():
    # DDP with find_unused_parameters=False needs every trainable parameter in the graph
    model = make().train()
    CLAMPLoss()(model(torch.randn(2, 3, 64, 64)), targets(2, len(AP10K)))["loss"].backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name
    assert model.keypoint_head.score_scale.grad.abs() > 0


def test_prompt_head_loss_decreases_on_a_repeated_batch():
    model = make(AP10K[:6]).train()
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    batch = targets(4, 6)
    crit = CLAMPLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    first = last = None
    for _ in range(25):
        losses = crit(model(x), batch)
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        first = first or {k: v.item() for k, v in losses.items()}
        last = {k: v.item() for k, v in losses.items()}
    assert last["loss"] < 0.7 * first["loss"], (first, last)
    assert last["loss_heatmap"] < 0.75 * first["loss_heatmap"], (first, last)


def test_prompt_head_ablations_and_errors():
    no_score = make(score_concat=False, spatial_head=False)
    assert no_score.keypoint_head.score_scale is None and no_score.upsample_head is None
    assert no_score(torch.randn(1, 3, 64, 64))["heatmaps"].shape == (1, len(AP10K), HM, HM)
    with pytest.raises(ValueError, match=r"head='prompt'.*text_branch=False.*head='concat'"):
        make(text_branch=False)
    with pytest.raises(ValueError, match="head must be one of"):
        make(head="mlp")
    with pytest.raises(ValueError, match="non-empty"):
        make().set_prompts([])


def test_shared_upsampler_is_one_upsampler_per_map():
    torch.manual_seed(0)
    up = SharedUpsampleHead(num_deconv=2).eval()
    s = torch.randn(2, 5, 4, 4)
    out = up(s)
    assert out.shape == (2, 5, 16, 16)
    for k in range(5):
        torch.testing.assert_close(out[:, k : k + 1], UpsampleHead.forward(up, s[:, k : k + 1]))
    assert up.deconv_layers[0].out_channels == 16 and up.final_layer.out_channels == 1


def test_prompt_head_shapes_alone():
    head = PromptHead(80, 64, num_deconv=2, channels=32)
    out = head(torch.randn(2, 80, 4, 4), torch.randn(2, 9, 64), torch.rand(2, 9, 4, 4))
    assert out.shape == (2, 9, 16, 16)
    with pytest.raises(ValueError, match="score maps"):
        head(torch.randn(2, 80, 4, 4), torch.randn(2, 9, 64))


# ------------------------------------------------------------------------------------------ the concat head


def make_concat(**kw):
    torch.manual_seed(0)
    args = dict(clip_model="clamp-tiny-vit", pretrained=None, image_size=64, heatmap_size=(16, 16), num_deconv=2,
                upconv_num_deconv=2, prompts=["left eye", "right eye", "nose", "neck", "tail root"],
                deconv_channels=32)
    return CLAMP(**{**args, **kw})


def test_concat_head_refuses_another_count_and_names_the_way_out():
    model = make_concat()
    assert model.head == "concat" and model.num_keypoints == 5
    msg = r"the concat head \(CLAMP's\) predicts exactly K=5 keypoints.*got 1.*model\.net\.head=prompt"
    with pytest.raises(ValueError, match=msg):
        model.set_prompts(["nose"])
    with pytest.raises(ValueError, match=msg.replace("got 1", "got 3")):
        model(torch.randn(1, 3, 64, 64), text_features=torch.randn(3, 64))
    model.set_prompts(["a", "b", "c", "d", "e"])  # the same count is fine
    assert model.num_keypoints == 5


def test_concat_head_unchanged():
    """Same parameters, same init draws (the checksum of the seeded state dict from before the prompt head was
    added), and the forward is CLAMP's: the keypoint head on cat[backbone map, score maps]."""
    model = make_concat(head="concat")
    state = model.state_dict()
    assert state.keys() == make_concat().state_dict().keys()
    assert not any(k.endswith(("kernel.weight", "score_scale")) for k in state)
    assert state["keypoint_head.final_layer.weight"].shape == (5, 32, 1, 1)
    assert state["keypoint_head.deconv_layers.0.weight"].shape == (64 + 5, 32, 4, 4)
    assert state["upsample_head.final_layer.weight"].shape == (5, 5, 1, 1)
    assert len(state) == 180
    checksum = sum(v.double().sum().item() for v in state.values() if v.is_floating_point())
    assert math.isclose(checksum, 3905.608468253911, rel_tol=1e-9)

    model.eval()
    with torch.no_grad():
        for p in model.keypoint_head.parameters():
            p.normal_(std=0.1)
        x = torch.randn(2, 3, 64, 64)
        out = model(x)
        feature_map = model.image_tower(x, embeddings=True)[0]
        expected = model.keypoint_head(torch.cat([feature_map, out["score_maps"]], dim=1))
    torch.testing.assert_close(out["heatmaps"], expected, rtol=0, atol=0)
