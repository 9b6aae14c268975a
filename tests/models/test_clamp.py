import json
import math

import open_clip
import pytest
import torch

from clamp_pl.models import CLAMP, CLAMPLoss, no_weight_decay

PROMPTS = ["left eye", "right eye", "nose", "neck", "tail root"]
TINY = {
    "vit": dict(clip_model="clamp-tiny-vit", image_size=64, heatmap_size=(16, 16), num_deconv=2, upconv_num_deconv=2),
    "rn": dict(clip_model="clamp-tiny-rn", image_size=128, heatmap_size=(32, 32), num_deconv=3,
               upconv_num_deconv=3, upconv_channels=16),
}


def make(kind="vit", **kw):
    torch.manual_seed(0)
    args = dict(TINY[kind], pretrained=None, prompts=PROMPTS, deconv_channels=32)
    args.update(kw)
    return CLAMP(**args)


def _batch(model, b=2, hm=16):
    gh, gw = model.feature_grid
    return dict(
        heatmaps=torch.rand(b, len(PROMPTS), hm, hm),
        keypoint_weights=torch.ones(b, len(PROMPTS)),
        peak_index=torch.randint(0, gh * gw, (b, len(PROMPTS))),
        peak_weights=torch.ones(b, len(PROMPTS)),
    )


@pytest.mark.parametrize("kind, size, hm, grid, d", [("vit", 64, 16, 4, 64), ("rn", 128, 32, 4, 64)])
def test_output_shapes(kind, size, hm, grid, d):
    model = make(kind)
    k = len(PROMPTS)
    out = model(torch.randn(2, 3, size, size))
    assert out["heatmaps"].shape == (2, k, hm, hm)
    assert out["score_maps"].shape == (2, k, grid, grid)
    assert out["spatial_heatmaps"].shape == (2, k, hm, hm)
    assert out["pixel_embeddings"].shape == (2, d, grid, grid)
    assert out["prompt_embeddings"].shape == (2, k, d)
    assert out["logit_scale"].shape == () and math.isclose(out["logit_scale"].item(), 1 / 0.07, rel_tol=1e-5)
    assert out["score_maps"].abs().max() <= 1 + 1e-5
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, size, size))["spatial_heatmaps"] is None


def test_image_only_baseline():
    model = make(text_branch=False)
    out = model(torch.randn(2, 3, 64, 64))
    assert out["heatmaps"].shape == (2, 5, 16, 16)
    assert all(out[k] is None for k in out if k != "heatmaps")
    assert model.keypoint_head.deconv_layers[0].in_channels == 64  # backbone map only
    groups = model.param_groups()
    assert groups["text"] == [] and model.prompt_learner is None
    losses = CLAMPLoss()(out, _batch(model))
    assert losses["loss_spatial"] == 0 and losses["loss_feature"] == 0
    torch.testing.assert_close(losses["loss"], losses["loss_heatmap"])


@pytest.mark.parametrize("kind, size, hm", [("vit", 64, 16), ("rn", 128, 32)])
def test_baseline_every_trainable_parameter_gets_a_gradient(kind, size, hm):
    # DDP with find_unused_parameters=False needs it: the unused CLIP embedding head is frozen and skipped
    model = make(kind, text_branch=False).train()
    frozen = {id(p) for p in model.image_tower.embedding_parameters()}
    assert frozen and all(not p.requires_grad for p in model.image_tower.embedding_parameters())
    CLAMPLoss()(model(torch.randn(2, 3, size, size)), _batch(model, hm=hm))["loss"].backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == (id(p) not in frozen), name
    clamp = make(kind)
    assert all(p.requires_grad for p in clamp.image_tower.parameters())


def test_ablation_switches():
    model = make(prompt_encoder=False, context_decoder=False, score_concat=False)
    assert model.prompt_encoder is None and model.context_decoder is None and model.gamma is None
    assert model.keypoint_head.deconv_layers[0].in_channels == 64
    out = model(torch.randn(1, 3, 64, 64))
    assert out["score_maps"].shape == (1, 5, 4, 4)
    no_spatial = make(spatial_head=False, upconv_num_deconv=5)  # upsampler settings then unused
    assert no_spatial.upsample_head is None and no_spatial(torch.randn(1, 3, 64, 64))["spatial_heatmaps"] is None
    full = make()
    assert full.keypoint_head.deconv_layers[0].in_channels == 64 + 5
    torch.testing.assert_close(full.gamma, torch.full((64,), 1e-3))


def test_gradients_flow_to_trainable_parts_only():
    model = make()
    batch = _batch(model)
    out = model(torch.randn(2, 3, 64, 64))
    CLAMPLoss()(out, batch)["loss"].backward()
    groups = model.param_groups()
    assert all(p.grad is None and not p.requires_grad for _, p in groups["text"])
    named = dict(model.named_parameters())
    for name in ["prompt_learner.ctx", "gamma", "logit_scale", "image_tower.visual.conv1.weight",
                 "keypoint_head.final_layer.weight", "upsample_head.final_layer.weight"]:
        assert named[name].grad is not None and named[name].grad.abs().sum() > 0, name


def test_param_groups_and_no_weight_decay():
    model = make()
    groups = model.param_groups()
    ids = [id(p) for g in groups.values() for _, p in g]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    assert all(n.startswith("image_tower.") for n, _ in groups["backbone"])
    named = dict(model.named_parameters())
    for name in ["prompt_learner.ctx", "gamma", "logit_scale", "keypoint_head.deconv_layers.1.weight",
                 "image_tower.visual.ln_post.weight", "image_tower.visual.positional_embedding"]:
        assert no_weight_decay(name, named[name]), name
    for name in ["image_tower.visual.proj", "keypoint_head.final_layer.weight",
                 "context_decoder.memory_proj.1.weight"]:
        assert not no_weight_decay(name, named[name]), name


def test_no_weight_decay_official_keys():
    """The official rule: excluded iff the name contains a key; ViT recipe ["norm"], RN50 ["bias", "norm"]."""
    named = dict(make().named_parameters())
    vit = {n for n, p in named.items() if no_weight_decay(n, p, ["norm"])}
    assert vit and all(".norm" in n and n.startswith("context_decoder.decoder.") for n in vit)
    for name in ["image_tower.visual.ln_post.weight", "image_tower.visual.positional_embedding", "gamma",
                 "prompt_learner.ctx", "keypoint_head.deconv_layers.1.weight", "prompt_encoder.ln.weight"]:
        assert name not in vit, name
    rn = {n for n, p in named.items() if no_weight_decay(n, p, ["bias", "norm"])}
    assert rn == vit | {n for n in named if "bias" in n}
    assert "image_tower.visual.transformer.resblocks.0.attn.in_proj_bias" in rn
    assert not no_weight_decay("gamma", named["gamma"], [])


def test_logit_scale_is_clamped_at_100():
    model = make()
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    assert math.isclose(model(torch.randn(1, 3, 64, 64))["logit_scale"].item(), 100.0, rel_tol=1e-5)


def test_text_tower_runs_once_per_validation_epoch():
    model = make().eval()
    calls = []
    model.prompt_learner.text_tower.register_forward_hook(lambda *_: calls.append(1))
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        for _ in range(3):
            model(x)
            model(x.flip(-1))  # flip-test pass
    assert len(calls) == 1


def test_set_prompts_changes_the_output():
    model = make().eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a = model(x)["heatmaps"]
        model.set_prompts(["snout", "withers", "throat", "left ear", "right ear"])
        b = model(x)["heatmaps"]
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="expected 5 prompts"):
        model.set_prompts(["nose"])


def test_precomputed_text_features_bypass_the_text_tower():
    model = make().eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tf = model.text_features().clone()
        ref = model(x)
        model.prompt_learner.text_tower.register_forward_hook(lambda *_: pytest.fail("text tower ran"))
        out = model(x, text_features=tf)
    torch.testing.assert_close(out["heatmaps"], ref["heatmaps"])


def test_no_batch_coupling_in_eval():
    model = make().eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        together = model(x)["heatmaps"]
        apart = torch.cat([model(x[i : i + 1])["heatmaps"] for i in range(3)])
    torch.testing.assert_close(together, apart, atol=1e-5, rtol=1e-4)


def test_checkpoint_round_trip(tmp_path):
    model = make(drop_path_rate=0.1).eval()
    path = tmp_path / "clamp.pt"
    torch.save(model.state_dict(), path)
    state = torch.load(path, weights_only=True)
    assert not any(k.endswith(("token_ids", "eot_index", "attn_mask")) for k in state)
    other = make(prompts=["a", "b", "c", "d", "e"], drop_path_rate=0.1)  # names do not matter
    torch.manual_seed(123)
    for p in other.parameters():
        p.data.normal_()
    other.load_state_dict(state, strict=True)
    other.set_prompts(PROMPTS)
    other.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(other(x)["heatmaps"], model(x)["heatmaps"])


def test_text_projection_only_when_dims_differ(tmp_path):
    cfg = open_clip.get_model_config("clamp-tiny-vit")
    cfg["text_cfg"].update(width=32, heads=2, proj_type="none")
    (tmp_path / "clamp-test-notextproj.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path)
    model = make(clip_model="clamp-test-notextproj")
    assert model.text_proj.shape == (32, 64)
    assert model(torch.randn(1, 3, 64, 64))["prompt_embeddings"].shape == (1, 5, 64)
    assert make().text_proj is None


def test_heatmap_size_mismatch_is_reported():
    with pytest.raises(ValueError, match="num_deconv=3"):
        make(num_deconv=3)


@pytest.mark.slow
def test_vit_b16_at_256_shapes():
    torch.manual_seed(0)
    model = CLAMP(clip_model="ViT-B-16", pretrained=None, image_size=256, prompts=PROMPTS, drop_path_rate=0.4)
    assert model.prompt_learner.sequence_length == 1 + 8 + 2 + 1  # "tail root": 2 BPE tokens
    out = model(torch.randn(1, 3, 256, 256))
    assert out["heatmaps"].shape == (1, 5, 64, 64) and out["score_maps"].shape == (1, 5, 16, 16)
    assert model.keypoint_head.deconv_layers[0].in_channels == 768 + 5


@pytest.mark.slow
def test_rn50_at_256_shapes():
    torch.manual_seed(0)
    model = CLAMP(clip_model="RN50", pretrained=None, image_size=256, prompts=PROMPTS, num_deconv=3,
                  upconv_num_deconv=3, upconv_channels=256)
    out = model(torch.randn(1, 3, 256, 256))
    assert out["heatmaps"].shape == (1, 5, 64, 64) and out["score_maps"].shape == (1, 5, 8, 8)
    assert out["pixel_embeddings"].shape == (1, 1024, 8, 8)
    assert model.keypoint_head.deconv_layers[0].in_channels == 2048 + 5


def test_resolved_activation_is_recorded():
    """quick_gelu=None resolves from the weights; the built value is what a spec must keep to rebuild the net."""
    assert make(quick_gelu=True).quick_gelu is True
    assert make(quick_gelu=None).quick_gelu is False  # the tiny open_clip config's GELU
