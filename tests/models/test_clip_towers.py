import logging
import warnings

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import QuickGELU

from clamp_pl.models import DenseImageTower, TextTower, build_clip, read_checkpoint, register_tiny_configs
from clamp_pl.models.clip_towers import _DropPathHook


def _save(model, path, wrap=False):
    sd = model.state_dict()
    if wrap:  # DDP-style prefixes inside a training checkpoint
        sd = {"state_dict": {"module." + k: v for k, v in sd.items()}}
    torch.save(sd, path)
    return path


def _resize(pos, hw):
    grid = pos[1:].reshape(1, *[int(round((pos.shape[0] - 1) ** 0.5))] * 2, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=hw, mode="bilinear", align_corners=False)
    return torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(hw[0] * hw[1], -1)])


def test_tiny_configs_registered_idempotently():
    register_tiny_configs()
    register_tiny_configs()
    models = open_clip.list_models()
    assert "clamp-tiny-rn" in models and "clamp-tiny-vit" in models


def test_vit_tower_shapes_and_consistency_with_open_clip():
    torch.manual_seed(0)
    clip = build_clip("clamp-tiny-vit", None, 64).eval()
    tower = DenseImageTower("clamp-tiny-vit", None, 64, clip_model=clip).eval()
    assert (tower.out_channels, tower.embed_dim, tower.grid_size, tower.stride) == (64, 64, (4, 4), (16, 16))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        fmap, g, pix = tower(x)
        assert fmap.shape == (2, 64, 4, 4) and g.shape == (2, 64) and pix.shape == (2, 64, 4, 4)
        # the global embedding is open_clip's own image feature
        torch.testing.assert_close(g, clip.visual(x), atol=1e-5, rtol=1e-5)
        # pixel (r, c) is patch token 1 + r*gw + c after ln_post and the projection
        tokens = clip.visual.transformer(clip.visual._embeds(x))
        torch.testing.assert_close(pix[:, :, 1, 2], clip.visual.ln_post(tokens[:, 1 + 1 * 4 + 2]) @ clip.visual.proj)
        torch.testing.assert_close(fmap[:, :, 3, 0], tokens[:, 1 + 3 * 4 + 0])


def test_rn_tower_dense_attention_pool():
    torch.manual_seed(0)
    clip = build_clip("clamp-tiny-rn", None, 128).eval()
    tower = DenseImageTower("clamp-tiny-rn", None, 128, clip_model=clip).eval()
    assert (tower.out_channels, tower.embed_dim, tower.grid_size, tower.stride) == (512, 64, (4, 4), (32, 32))
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        fmap, g, pix = tower(x)
        assert fmap.shape == (2, 512, 4, 4) and g.shape == (2, 64) and pix.shape == (2, 64, 4, 4)
        # open_clip's attention pool returns the mean-token output of the same full attention
        torch.testing.assert_close(g, clip.visual(x), atol=1e-5, rtol=1e-5)
        # other input sizes work: the attention-pool grid is interpolated on the fly
        assert tower(torch.randn(1, 3, 160, 160))[2].shape == (1, 64, 5, 5)


def test_vit_checkpoint_at_other_resolution_is_resized(tmp_path):
    torch.manual_seed(0)
    src = build_clip("clamp-tiny-vit", None, 64)  # 4x4 grid "pretrained" checkpoint
    path = _save(src, tmp_path / "tiny_vit_64.pt", wrap=True)
    tower = DenseImageTower("clamp-tiny-vit", str(path), 128)  # 8x8 grid
    assert tower.grid_size == (8, 8)
    expected = _resize(src.visual.positional_embedding.detach(), (8, 8))
    torch.testing.assert_close(tower.visual.positional_embedding.detach(), expected)
    torch.testing.assert_close(tower.visual.proj, src.visual.proj)
    assert tower(torch.randn(1, 3, 128, 128))[0].shape == (1, 64, 8, 8)


def test_rn_checkpoint_attnpool_pos_embed_is_resized(tmp_path):
    torch.manual_seed(0)
    src = build_clip("clamp-tiny-rn", None, 128)  # 4x4 attention-pool grid
    path = _save(src, tmp_path / "tiny_rn_128.pt")
    with pytest.raises(RuntimeError):  # what open_clip alone does with it
        open_clip.create_model("clamp-tiny-rn", pretrained=str(path), force_image_size=160)
    clip = build_clip("clamp-tiny-rn", str(path), 160)  # 5x5
    expected = _resize(src.visual.attnpool.positional_embedding.detach(), (5, 5))
    torch.testing.assert_close(clip.visual.attnpool.positional_embedding.detach(), expected)
    torch.testing.assert_close(clip.visual.layer1[0].conv1.weight, src.visual.layer1[0].conv1.weight)


def test_quick_gelu_resolution(tmp_path):
    src = build_clip("clamp-tiny-vit", None, 64)
    path = _save(src, tmp_path / "plain.pt")

    def has_quick_gelu(m):
        return any(isinstance(mod, QuickGELU) for mod in m.modules())

    assert not has_quick_gelu(build_clip("clamp-tiny-vit", str(path), 64))
    assert has_quick_gelu(build_clip("clamp-tiny-vit", str(path), 64, quick_gelu=True))
    # an OpenAI-style TorchScript release file: QuickGELU by default, weights identical
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(src).save(str(tmp_path / "openai_style.pt"))
    state, is_jit = read_checkpoint(tmp_path / "openai_style.pt")
    assert is_jit and "visual.proj" in state
    loaded = build_clip("clamp-tiny-vit", str(tmp_path / "openai_style.pt"), 64)
    assert has_quick_gelu(loaded)
    torch.testing.assert_close(loaded.visual.proj, src.visual.proj)


def test_unknown_pretrained_is_an_error_not_a_download():
    with pytest.raises(ValueError, match="neither a file nor an open_clip tag"):
        build_clip("clamp-tiny-vit", "no-such-tag", 64)
    with pytest.raises(ValueError, match="unknown open_clip model"):
        build_clip("no-such-model", None, 64)


def test_drop_path_only_in_training():
    torch.manual_seed(0)
    clip = build_clip("clamp-tiny-vit", None, 64)
    plain = DenseImageTower("clamp-tiny-vit", None, 64, clip_model=clip)
    assert not any(m._forward_hooks for m in plain.modules())  # rate 0: no hook, so no per-block cost
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        ref = plain.eval()(x)[2]
        dropped = DenseImageTower("clamp-tiny-vit", None, 64, drop_path_rate=0.5, clip_model=clip)
        torch.testing.assert_close(dropped.eval()(x)[2], ref)
        dropped.train()
        torch.manual_seed(1)
        a = dropped(x)[2]
        assert not torch.allclose(a, ref)
    with pytest.raises(ValueError, match="only supported for ViT"):
        DenseImageTower("clamp-tiny-rn", None, 128, drop_path_rate=0.1)
    with pytest.raises(ValueError, match="drop_path_mode"):
        DenseImageTower("clamp-tiny-vit", None, 64, drop_path_rate=0.1, drop_path_mode="row", clip_model=clip)


@pytest.mark.parametrize("mode", ["token", "sample"])
def test_drop_path_mask_semantics(mode):
    """token: one keep/drop per token position, the same in every image (the official sequence-first blocks);
    sample: one per image, the same for all its tokens. Kept branches are scaled by 1/(1-p): the mean is kept."""
    p, (b, length, w) = 0.3, (8, 50, 4)
    hook, module = _DropPathHook(p, mode), torch.nn.Identity()
    out = torch.ones(b, length, w)
    torch.manual_seed(0)
    y = hook(module, (out,), out)
    kept = y[..., 0] != 0  # [B, L]
    assert torch.all((y == 0) | torch.isclose(y, torch.tensor(1 / (1 - p))))
    assert torch.equal(y, y[..., :1].expand_as(y))  # a token's channels are dropped together
    if mode == "token":
        assert torch.equal(kept, kept[:1].expand_as(kept))  # shared over the batch
        assert len(set(kept[0].tolist())) == 2  # but not over the tokens
    else:
        assert torch.equal(kept, kept[:, :1].expand_as(kept))  # shared over the tokens
        assert len(set(kept[:, 0].tolist())) == 2
    # expectation preserved: mean over many draws -> 1
    torch.manual_seed(1)
    big = torch.ones(64, 256, 1)
    means = torch.stack([hook(module, (big,), big).mean() for _ in range(50)])
    assert abs(means.mean().item() - 1.0) < 0.02
    module.eval()
    assert hook(module, (out,), out) is out


def test_drop_path_token_mode_in_the_tower_is_shared_across_the_batch():
    """With every image identical, token mode gives identical outputs for the batch (one mask for all)
    and sample mode does not."""
    torch.manual_seed(0)
    clip = build_clip("clamp-tiny-vit", None, 64)
    x = torch.randn(1, 3, 64, 64).expand(6, -1, -1, -1)
    for mode, same in (("token", True), ("sample", False)):
        tower = DenseImageTower("clamp-tiny-vit", None, 64, drop_path_rate=0.9, drop_path_mode=mode,
                                clip_model=clip).train()
        torch.manual_seed(2)
        with torch.no_grad():
            fmap = tower(x)[0]
        assert torch.allclose(fmap, fmap[:1].expand_as(fmap), atol=1e-6) == same, mode


def test_class_embedding_twice():
    """The official ViT's class token: class_embedding + (positional_embedding[0] + class_embedding)."""
    torch.manual_seed(0)
    clip = build_clip("clamp-tiny-vit", None, 64).eval()
    once = DenseImageTower("clamp-tiny-vit", None, 64, clip_model=clip).eval()
    twice = DenseImageTower("clamp-tiny-vit", None, 64, class_embedding_twice=True, clip_model=clip).eval()
    x = torch.randn(2, 3, 64, 64)
    v = clip.visual
    with torch.no_grad():
        plain, official = once(x), twice(x)
        assert not torch.allclose(official[1], plain[1])
        original = v.positional_embedding.clone()
        v.positional_embedding[0] += v.class_embedding  # fold the second addition into the table
        for a, b in zip(once(x), official):
            torch.testing.assert_close(a, b)
        v.positional_embedding.copy_(original)
    with pytest.raises(ValueError, match="ViT towers only"):
        DenseImageTower("clamp-tiny-rn", None, 128, class_embedding_twice=True)


def test_text_heads_override():
    base = build_clip("clamp-tiny-vit", None, 64)
    other = build_clip("clamp-tiny-vit", None, 64, text_heads=4)
    assert base.transformer.resblocks[0].attn.num_heads == 2
    assert other.transformer.resblocks[0].attn.num_heads == 4
    assert {k: v.shape for k, v in base.state_dict().items()} == {k: v.shape for k, v in other.state_dict().items()}
    with pytest.raises(ValueError, match="does not divide"):
        build_clip("clamp-tiny-vit", None, 64, text_heads=5)


def test_text_tower_is_frozen_and_stays_in_eval():
    tower = TextTower(build_clip("clamp-tiny-vit", None, 64), "clamp-tiny-vit")
    assert all(not p.requires_grad for p in tower.parameters())
    tower.train()
    assert not tower.training and not any(m.training for m in tower.modules())
    assert (tower.width, tower.embed_dim, tower.context_length) == (64, 64, 77)
    assert "attn_mask" not in tower.state_dict()


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, cf, d, grid",
    [("ViT-B-16", 768, 512, 16), ("RN50", 2048, 1024, 8)],
)
def test_real_towers_at_256_random_init(name, cf, d, grid):
    tower = DenseImageTower(name, None, 256).eval()
    with torch.no_grad():
        fmap, g, pix = tower(torch.randn(1, 3, 256, 256))
    assert fmap.shape == (1, cf, grid, grid) and g.shape == (1, d) and pix.shape == (1, d, grid, grid)


@pytest.mark.slow
@pytest.mark.parametrize("name, key", [("ViT-B-16", "visual.positional_embedding"),
                                       ("RN50", "visual.attnpool.positional_embedding")])
def test_real_224_checkpoint_into_256_model(tmp_path, name, key):
    src = build_clip(name, None, 224)
    path = _save(src, tmp_path / f"{name}_224.pt")
    del src
    model = build_clip(name, str(path), 256)
    side = 16 if name.startswith("ViT") else 8
    assert model.state_dict()[key].shape[0] == side * side + 1


def test_token_mode_is_timm_drop_path_on_sequence_first_blocks():
    """The official blocks call timm's drop_path on [L, B, W]; token mode on open_clip's [B, L, W] draws the
    same mask (same draws, same order) and applies it the same way."""
    drop_path = pytest.importorskip("timm.layers").drop_path
    x = torch.randn(3, 7, 5)  # [B, L, W]
    torch.manual_seed(0)
    official = drop_path(x.transpose(0, 1), 0.4, training=True).transpose(0, 1)
    torch.manual_seed(0)
    ours = _DropPathHook(0.4, "token")(torch.nn.Identity(), (x,), x)
    torch.testing.assert_close(ours, official)


def test_random_init_does_not_warn_on_every_build(caplog):
    """pretrained=None is the caller's choice (tiny configs, networks about to be filled from a checkpoint):
    open_clip's 'initialized randomly' warning would be printed by every run and every load_model."""
    with pytest.raises(ValueError, match="text_heads"):  # a build that fails must not leave the filter behind
        build_clip("clamp-tiny-rn", None, 64, text_heads=7)
    with caplog.at_level("WARNING"):
        build_clip("clamp-tiny-rn", None, 64)
    assert not [r for r in caplog.records if "initialized randomly" in r.getMessage()]
    # the filter is removed again: other root-logger warnings still pass
    assert not any(f.__class__.__name__ == "_DropMessage" for f in logging.getLogger().filters)


@pytest.mark.parametrize("hw", [(5, 5), (8, 8), (3, 3), (5, 7)])
def test_resize_grid_is_the_official_bilinear_resize(hw):
    """_resize_grid uses timm's resample_abs_pos_embed (bilinear, no antialiasing), which must stay the official
    CLAMP/DenseCLIP F.interpolate(bilinear, align_corners=False) resize."""
    from clamp_pl.models.clip_towers import _resize_grid

    torch.manual_seed(0)
    pos = torch.randn(1 + 16, 8)
    torch.testing.assert_close(_resize_grid(pos, hw, "pos"), _resize(pos, hw), atol=1e-6, rtol=0)
    assert _resize_grid(pos, (4, 4), "pos") is pos  # no resampling op when the grid matches


def test_sample_mode_is_timm_drop_path_on_batch_first_blocks():
    drop_path = pytest.importorskip("timm.layers").drop_path
    x = torch.randn(3, 7, 5)  # [B, L, W]
    torch.manual_seed(0)
    expected = drop_path(x, 0.4, training=True)
    torch.manual_seed(0)
    torch.testing.assert_close(_DropPathHook(0.4, "sample")(torch.nn.Identity(), (x,), x), expected)
