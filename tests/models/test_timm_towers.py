"""open_clip's timm image towers (SigLIP 2, EVA02, PE-Core, ConvNeXt, MobileCLIP2) and their text towers as CLAMP
backbones, on tiny randomly initialised configs of each family (clamp_pl/models/model_configs). Nothing downloads."""

import copy
import json
import warnings

import open_clip
import pytest
import torch
import torch.nn.functional as F

from clamp_pl.models import CLAMP, CLAMPLoss
from clamp_pl.models.clip_towers import (
    DenseImageTower,
    TextTower,
    build_clip,
    preprocess_config,
    tower_geometry,
)
from clamp_pl.models.prompts import PromptLearner
from clamp_pl.spec import ModelSpec, make_spec

PROMPTS = ["left eye", "right eye", "nose", "neck", "tail root"]
#: tiny config -> (image size, tower kind, feature channels, pixel-embedding rule)
FAMILIES = {
    "clamp-tiny-mapvit": (64, "timm_token", 64, "map"),  # SigLIP 2
    "clamp-tiny-eva02": (64, "timm_token", 64, "token"),
    "clamp-tiny-pecore": (64, "timm_token", 64, "map"),
    "clamp-tiny-convnext": (128, "timm_spatial", 128, "norm_linear"),
    "clamp-tiny-mobileclip2": (128, "timm_spatial", 256, "linear"),
}
NAMES = list(FAMILIES)


def _clip(name, seed=0):
    torch.manual_seed(seed)
    return build_clip(name, None, FAMILIES[name][0]).eval()


def _map_head_alone(trunk, t):
    """SigLIP's MAP head with all attention on one token, written out: value, output projection, residual MLP."""
    pool, c = trunk.attn_pool, t.shape[-1]
    v = F.linear(t, pool.kv.weight[c:], pool.kv.bias[c:])
    y = pool.proj(v)
    return y + pool.mlp(pool.norm(y))


@pytest.mark.parametrize("name", NAMES)
def test_tower_embeddings_follow_the_open_clip_head(name):
    size, kind, channels, rule = FAMILIES[name]
    clip = _clip(name)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected_global = clip.visual(x)  # before the tower rebuilds the trunk
    tower = DenseImageTower(name, None, size, clip_model=clip).eval()
    assert (tower.kind, tower.out_channels, tower.embed_dim, tower.grid_size) == (kind, channels, 64, (4, 4))
    assert tower.stride == ((16, 16) if kind == "timm_token" else (32, 32))
    v, trunk = tower.visual, tower.visual.trunk
    with torch.no_grad():
        fmap, g, pix = tower(x)
        assert fmap.shape == (2, channels, 4, 4) and g.shape == (2, 64) and pix.shape == (2, 64, 4, 4)
        # the global embedding is open_clip's image feature, also after the trunk was rebuilt for dense use
        torch.testing.assert_close(g, expected_global, atol=1e-5, rtol=1e-5)
        # embeddings=False: the same feature map, no head
        f2, g2, p2 = tower(x, embeddings=False)
        assert g2 is None and p2 is None
        torch.testing.assert_close(f2, fmap)
        r, c = 1, 2
        if kind == "timm_token":
            final, inter = trunk.forward_intermediates(x, indices=1)
            torch.testing.assert_close(fmap, inter[-1])  # last block, before the final norm
            token = final[:, trunk.num_prefix_tokens + r * 4 + c]  # row-major
            if rule == "map":
                y = _map_head_alone(trunk, token)
            else:
                y = token
            expected = v.head(trunk.head(trunk.fc_norm(y)))
        else:
            torch.testing.assert_close(fmap, trunk.forward_features(x))
            cell = fmap[:, :, r, c]
            if rule == "norm_linear":  # ConvNeXt: the head's LayerNorm per pixel, then open_clip's projection
                y = F.layer_norm(cell, (channels,), trunk.head.norm.weight, trunk.head.norm.bias, trunk.head.norm.eps)
                expected = v.head(y)
            else:  # FastViT: average pool + linear, so the global embedding is the mean pixel embedding
                expected = v.head(trunk.head.fc(cell))
                torch.testing.assert_close(pix.mean(dim=(2, 3)), g, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(pix[:, :, r, c], expected, atol=1e-5, rtol=1e-5)
        # other input sizes: the grid follows (timm ViT's dynamic_img_size, convolutions); Eva trunks (RoPE) are
        # built static, what exports to ONNX
        big = torch.randn(1, 3, size + size // 2, size + size // 2)
        if name in ("clamp-tiny-eva02", "clamp-tiny-pecore"):
            with pytest.raises(ValueError, match="run at their built input size"):
                tower(big)
        else:
            assert tower(big)[2].shape == (1, 64, 6, 6)


@pytest.mark.parametrize("name", NAMES)
def test_geometry_from_the_config_matches_the_built_tower(name):
    size = FAMILIES[name][0]
    tower = DenseImageTower(name, None, size)
    stride, grid = tower_geometry(name, size)
    assert (stride, stride) == tower.stride and grid == tower.grid_size


@pytest.mark.parametrize(
    "name, size, stride",
    [
        ("ViT-B-16-SigLIP2-256", 256, 16),
        ("EVA02-B-16", 224, 16),
        ("PE-Core-B-16", 224, 16),
        ("convnext_base", 256, 32),
        ("MobileCLIP2-S0", 256, 32),
        ("MobileCLIP2-S2", 256, 32),
        ("MobileCLIP2-S3", 256, 64),  # five stages
    ],
)
def test_geometry_of_the_full_configs_without_building(name, size, stride):
    from clamp_pl.spec import network_geometry

    g = network_geometry(name, size, 2)
    assert (g.stride, g.feature_grid, g.heatmap_size) == (stride, (size // stride,) * 2, (size // stride * 4,) * 2)
    with pytest.raises(ValueError, match="not a multiple"):
        tower_geometry(name, size + 8)


def test_preprocess_config():
    """The normalisation an open_clip tag was trained with; for None / a local file the one all tags share."""
    siglip = preprocess_config("ViT-B-16-SigLIP2-256", "webli")
    assert siglip["mean"] == [0.5] * 3 and siglip["std"] == [0.5] * 3 and siglip["image_size"] == [256, 256]
    assert preprocess_config("ViT-B-16-SigLIP2-256", None, 384)["image_size"] == [384, 384]
    assert preprocess_config("ViT-B-16-SigLIP2-256")["mean"] == [0.5] * 3
    mobile = preprocess_config("MobileCLIP2-S0", None)
    assert mobile["mean"] == [0.0] * 3 and mobile["std"] == [1.0] * 3 and mobile["interpolation"] == "bilinear"
    assert preprocess_config("PE-Core-B-16")["std"] == [0.5] * 3
    openai_mean = [0.48145466, 0.4578275, 0.40821073]
    for name in ("EVA02-B-16", "convnext_base", "ViT-B-16", "clamp-tiny-mapvit"):
        assert preprocess_config(name)["mean"] == pytest.approx(openai_mean)
    with pytest.raises(ValueError, match="neither a file nor an open_clip tag"):
        preprocess_config("EVA02-B-16", "no-such-tag")


def test_drop_path_is_timm_own_rate():
    from timm.layers import DropPath

    def rates(tower):
        return [m.drop_prob for m in tower.modules() if isinstance(m, DropPath)]

    clip = _clip("clamp-tiny-convnext")
    assert max(rates(clip.visual)) == pytest.approx(0.1)  # the open_clip config's pretraining value
    plain = DenseImageTower("clamp-tiny-convnext", None, 128, clip_model=copy.deepcopy(clip))
    assert rates(plain) == []  # replaced by CLAMP's rate: none
    tower = DenseImageTower("clamp-tiny-eva02", None, 64, drop_path_rate=0.3, drop_path_mode="sample")
    assert rates(tower) == pytest.approx([0.3, 0.3])  # timm's linear schedule: block 0 of 2 gets 0, block 1 0.3
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        ref = tower.eval()(x)[0]
        torch.testing.assert_close(tower(x)[0], ref)
        torch.manual_seed(0)
        assert not torch.allclose(tower.train()(x)[0], ref)
    with pytest.raises(ValueError, match="drop_path_mode='sample'"):
        DenseImageTower("clamp-tiny-eva02", None, 64, drop_path_rate=0.3)  # CLAMP's default mode is the official token
    with pytest.raises(ValueError, match="ViT towers only"):
        DenseImageTower("clamp-tiny-eva02", None, 64, class_embedding_twice=True)


def test_timm_checkpoint_at_other_resolution_is_resampled(tmp_path):
    from timm.layers import resample_abs_pos_embed

    src = _clip("clamp-tiny-mapvit")  # 4x4 grid
    path = tmp_path / "tiny_mapvit_64.pt"
    torch.save(src.state_dict(), path)
    model = build_clip("clamp-tiny-mapvit", str(path), 128)  # 8x8
    expected = resample_abs_pos_embed(src.visual.trunk.pos_embed.detach(), new_size=[8, 8], num_prefix_tokens=0)
    torch.testing.assert_close(model.visual.trunk.pos_embed.detach(), expected)
    torch.testing.assert_close(model.visual.trunk.blocks[0].attn.qkv.weight, src.visual.trunk.blocks[0].attn.qkv.weight)


# ---------------------------------------------------------------------------------------------------------------
# text towers


@pytest.mark.parametrize(
    "name, causal, pool",
    [
        ("clamp-tiny-eva02", True, "argmax"),  # CLIP's text tower
        ("clamp-tiny-pecore", True, "argmax"),
        ("clamp-tiny-mapvit", False, "last"),  # SigLIP: bidirectional, read at the last position
        ("clamp-tiny-mobileclip2", False, "argmax"),  # MobileCLIP2: bidirectional, read at EOT
    ],
)
def test_prompt_learner_drives_the_text_tower_as_open_clip(name, causal, pool):
    """With no context vectors the prompt features are open_clip's own text features of the names."""
    clip = _clip(name)
    tower = TextTower(clip, name)
    assert (tower.causal, tower.pool_type) == (causal, pool)
    pl = PromptLearner(tower, PROMPTS, n_ctx=0)
    # causal towers run up to the last EOT (SOT + 2 name tokens + EOT), bidirectional ones their whole context
    length = 4 if causal else tower.context_length
    assert pl.sequence_length == length
    tokens = open_clip.get_tokenizer(name)(PROMPTS)
    with torch.no_grad():
        torch.testing.assert_close(pl(), clip.encode_text(tokens), atol=1e-5, rtol=1e-5)
    # with context: [SOT] ctx name [EOT] pad...; bidirectional towers run the full context
    pl8 = PromptLearner(tower, PROMPTS, n_ctx=8)
    assert pl8.sequence_length == (length + 8 if causal else length)
    assert (pl8.token_ids[:, 0] == 49406).all() and (pl8.token_ids[:, 1:9] == 0).all()
    if pool == "last":
        assert (pl8.eot_index == length - 1).all()
    else:
        assert (pl8.token_ids[torch.arange(len(PROMPTS)), pl8.eot_index] == 49407).all()
    pl8.train()
    pl8().pow(2).sum().backward()
    assert pl8.ctx.grad.abs().sum() > 0


class _GemmaLike:
    """SigLIP 2's tokenizer layout without its files: no start token, EOS = 1 appended, padding 0."""

    def __call__(self, texts, context_length=64):
        out = torch.zeros(len(texts), context_length, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = [100 + (sum(map(ord, word)) % 1000) for word in text.lower().split()] + [1]
            out[i, : min(len(ids), context_length)] = torch.tensor(ids[:context_length])
        return out


def test_prompt_layout_without_a_start_token():
    clip = _clip("clamp-tiny-mapvit")
    tower = TextTower(clip, "clamp-tiny-mapvit")
    tok = _GemmaLike()
    pl = PromptLearner(tower, ["left front paw", "nose"], n_ctx=4, tokenizer=tok)
    ids = pl.token_ids
    assert pl.prefix_length == 0 and ids.shape == (2, 16)
    assert (ids[:, :4] == 0).all()  # the context comes first
    assert ids[0, 4:8].tolist() == tok(["left front paw"], 16)[0, :4].tolist()  # name tokens + EOS
    assert (ids[0, 8:] == 0).all() and (pl.eot_index == 15).all()  # pooled at the last position
    with torch.no_grad():
        pl0 = PromptLearner(tower, ["nose"], n_ctx=0, tokenizer=tok)
        torch.testing.assert_close(pl0(), clip.encode_text(tok(["nose"], 16)), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="exceeds the text context length 16"):
        PromptLearner(tower, ["a b c d e f g h"], n_ctx=8, tokenizer=tok)


def test_text_towers_the_prompt_learner_cannot_drive_are_clear_errors():
    # a Hugging Face text model: refused before anything is built (or downloaded)
    with pytest.raises(ValueError, match="roberta-ViT-B-32: its text tower is the Hugging Face model .*SigLIP"):
        build_clip("roberta-ViT-B-32", None, 224)
    with pytest.raises(ValueError, match="CoCa"):
        build_clip("coca_ViT-B-32", None, 224)
    clip = _clip("clamp-tiny-mapvit")
    with pytest.raises(ValueError, match="bidirectional text tower runs on its full context"):
        TextTower(clip, "clamp-tiny-mapvit", context_length=13)

    class HFLike(torch.nn.Module):
        pass

    fake = torch.nn.Module()
    fake.text = HFLike()
    with pytest.raises(ValueError, match="HFLike, which CLAMP's prompt learner cannot drive"):
        TextTower(fake, "hf-model")


# ---------------------------------------------------------------------------------------------------------------
# the CLAMP network on every family


def _clamp(name, seed=0, **kw):
    torch.manual_seed(seed)
    args = dict(
        clip_model=name, pretrained=None, image_size=FAMILIES[name][0], prompts=PROMPTS, heatmap_size=(16, 16),
        num_deconv=2, upconv_num_deconv=2, deconv_channels=16, decoder_width=32, decoder_layers=1,
    )
    args.update(kw)
    return CLAMP(**args)


def _batch(model, b=2):
    g = torch.Generator().manual_seed(0)
    gh, gw = model.feature_grid
    k = len(PROMPTS)
    return dict(
        heatmaps=torch.rand(b, k, 16, 16, generator=g),
        keypoint_weights=torch.ones(b, k),
        peak_index=torch.randint(0, gh * gw, (b, k), generator=g),
        peak_weights=torch.ones(b, k),
    )


@pytest.mark.parametrize("name", NAMES)
def test_clamp_trains_and_round_trips(name):
    size = FAMILIES[name][0]
    model = _clamp(name).train()
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    batch = _batch(model)
    out = model(images)
    assert out["heatmaps"].shape == (2, 5, 16, 16) and out["score_maps"].shape == (2, 5, 4, 4)
    assert out["pixel_embeddings"].shape == (2, 64, 4, 4) and out["spatial_heatmaps"].shape == (2, 5, 16, 16)
    loss_fn = CLAMPLoss(feature_weight=0.05)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    losses = []
    for _ in range(6):
        opt.zero_grad()
        loss = loss_fn(model(images), batch)["loss"]
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    # state dict round trip into a freshly built (differently initialised) network
    model.eval()
    other = _clamp(name, seed=1).eval()
    other.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        a, b = model(images), other(images)
    for key in ("heatmaps", "score_maps", "pixel_embeddings"):
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0)


@pytest.mark.parametrize("name", ["clamp-tiny-mapvit", "clamp-tiny-mobileclip2"])
def test_image_only_baseline_every_trainable_parameter_gets_a_gradient(name):
    """DDP without find_unused_parameters: the timm head (final norm, pooled head, projection) is frozen."""
    model = _clamp(name, text_branch=False).train()
    frozen = {id(p) for p in model.image_tower.embedding_parameters()}
    assert frozen
    size = FAMILIES[name][0]
    CLAMPLoss()(model(torch.randn(2, 3, size, size)), _batch(model))["loss"].backward()
    for pname, p in model.named_parameters():
        assert (p.grad is not None) == (id(p) not in frozen), pname


# ---------------------------------------------------------------------------------------------------------------
# full-size towers (random init)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, size, cf, d, grid",
    [
        ("ViT-B-16-SigLIP2-256", 256, 768, 768, 16),
        ("EVA02-B-16", 224, 768, 512, 14),
        ("PE-Core-B-16", 224, 768, 1024, 14),
        ("convnext_base", 256, 1024, 512, 8),
        ("MobileCLIP2-S0", 256, 1024, 512, 8),
    ],
)
def test_full_size_towers_random_init(name, size, cf, d, grid):
    clip = build_clip(name, None, size)
    tower = DenseImageTower(name, None, size, clip_model=clip).eval()
    assert (tower.out_channels, tower.embed_dim, tower.grid_size) == (cf, d, (grid, grid))
    assert tower_geometry(name, size) == (tower.stride[0], tower.grid_size)
    with torch.no_grad():
        fmap, g, pix = tower(torch.randn(1, 3, size, size))
    assert fmap.shape == (1, cf, grid, grid) and g.shape == (1, d) and pix.shape == (1, d, grid, grid)
    text = TextTower(clip, name)
    assert text.embed_dim == d


_OPENAI_MEAN, _OPENAI_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


@pytest.mark.parametrize(
    "model, clip_model, mean, std",
    [
        ("clamp_siglip2_vitb16", "ViT-B-16-SigLIP2-256", [0.5] * 3, [0.5] * 3),
        ("clamp_eva02_vitb16", "EVA02-B-16", _OPENAI_MEAN, _OPENAI_STD),
        ("clamp_pecore_vitb16", "PE-Core-B-16", [0.5] * 3, [0.5] * 3),
        ("clamp_convnext_base", "convnext_base", _OPENAI_MEAN, _OPENAI_STD),
        ("clamp_mobileclip2_s0", "MobileCLIP2-S0", [0.0] * 3, [1.0] * 3),
    ],
)
def test_model_configs_compose_to_a_spec(make_cfg, model, clip_model, mean, std):
    """``python -m clamp_pl.train experiment=supervised_ap10k model=<tower config>`` composes; every tower config gets
    64x64 heatmaps at 256 px from its network geometry, and the mean/std its tower was trained with
    (data.normalization: tower) as numbers in the spec, through a JSON round trip; its pretrained tag is an open_clip
    tag of the architecture (checked, not downloaded). data.normalization still overrides."""
    from clamp_pl.cli.build import build_spec
    from clamp_pl.data.metainfo import get_meta

    cfg = make_cfg("experiment=supervised_ap10k", f"model={model}", fast=False)
    assert cfg.data._target_.endswith("AP10KDataModule")
    net = cfg.model.net
    assert net.clip_model == clip_model and net.drop_path_mode == "sample"
    assert open_clip.get_pretrained_cfg(clip_model, net.pretrained)
    spec = build_spec(cfg, get_meta("ap10k"), "ap10k")
    assert list(spec.heatmap_size) == [64, 64] and spec.input_size == (256, 256)
    assert cfg.data.normalization == "tower"
    d = json.loads(json.dumps(spec.to_dict()))
    assert d["normalization"] == {"name": "tower", "mean": pytest.approx(mean), "std": pytest.approx(std)}
    assert ModelSpec.from_dict(d).mean == pytest.approx(tuple(mean))
    imagenet = build_spec(make_cfg("experiment=supervised_ap10k", f"model={model}", "data.normalization=imagenet",
                                   fast=False), get_meta("ap10k"), "ap10k")
    assert imagenet.mean == (0.485, 0.456, 0.406)


def test_spec_rejects_an_unknown_normalization():
    from clamp_pl.data.metainfo import get_meta

    with pytest.raises(ValueError, match=r"\['clip', 'imagenet', 'tower'\]"):
        make_spec({"clip_model": "clamp-tiny-mapvit", "pretrained": None, "image_size": 64}, get_meta("ap10k"),
                  normalization="siglip", padding=1.25, sigma=2.0, decode="default", shift_heatmap=True,
                  flip_test=True)


@pytest.mark.parametrize("name, expected", [
    ("clamp-tiny-mapvit", {"trunk.pos_embed", "trunk.attn_pool.latent"}),
    ("clamp-tiny-eva02", {"trunk.pos_embed", "trunk.cls_token"}),
    ("clamp-tiny-pecore", {"trunk.pos_embed", "trunk.cls_token", "trunk.attn_pool.latent"}),
])
def test_timm_tables_and_tokens_do_not_decay(name, expected):
    """timm's positional tables, class/register tokens and attention-pool query are 2-/3-D: excluded by name (the
    ndim rule alone would decay them); the weight matrices beside them still decay."""
    from clamp_pl.models.clamp import no_weight_decay

    model = _clamp(name)
    params = dict(model.image_tower.visual.named_parameters())
    kept = {n for n, p in params.items() if p.ndim > 1 and no_weight_decay(n, p)}
    assert kept == expected
    assert not no_weight_decay("trunk.patch_embed.proj.weight", params["trunk.patch_embed.proj.weight"])


@pytest.mark.parametrize("name", ["clamp-tiny-mapvit", "clamp-tiny-pecore", "clamp-tiny-mobileclip2"])
def test_tower_exports_to_onnx(tmp_path, name):
    """TorchScript-based export (as clamp_pl.inference.onnx), batch dynamic: a timm ViT, an Eva with RoPE, a
    BatchNorm FastViT."""
    ort = pytest.importorskip("onnxruntime")
    size = FAMILIES[name][0]
    torch.manual_seed(0)
    tower = DenseImageTower(name, None, size).eval()

    class Outputs(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.tower = tower

        def forward(self, x):
            return self.tower(x)

    wrapper = Outputs().eval()
    path = tmp_path / "tower.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on shape-dependent Python values
        torch.onnx.export(wrapper, (torch.randn(2, 3, size, size),), str(path), input_names=["images"],
                          output_names=["feature_map", "global_emb", "pixel_emb"], opset_version=17,
                          dynamic_axes={k: {0: "batch"} for k in ("images", "feature_map", "global_emb", "pixel_emb")},
                          dynamo=False)
    x = torch.randn(3, 3, size, size)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})
    with torch.no_grad():
        expected = wrapper(x)
    for a, b in zip(got, expected):
        torch.testing.assert_close(torch.from_numpy(a), b, atol=1e-4, rtol=1e-4)

