"""Importing the authors' checkpoints: a tiny CLAMP written out in the official (mmpose) layout by the tests' own
key table (helpers/official_layout.py), converted back, gives the same outputs; bad keys and shapes are named;
files load safely."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from helpers.official_layout import (
    mmpose_checkpoint,
    official_text_forward,
    official_vit_forward,
    to_official,
)

from clamp_pl.models import CLAMP
from clamp_pl.models.official import (
    UnsafeCheckpointError,
    convert_state_dict,
    describe,
    load_checkpoint_file,
    official_net_kwargs,
)

# longest name 3 BPE tokens: SOT + 8 context + 3 + EOT = 13 positions, the official text context
PROMPTS = ["left eye", "nose", "tail root", "left front paw", "right back paw"]
K = len(PROMPTS)
TINY = {
    "clamp-tiny-vit": dict(image_size=64, heatmap_size=(16, 16), class_embedding_twice=True),
    "clamp-tiny-rn": dict(image_size=128, heatmap_size=(32, 32), num_deconv=3, upconv_num_deconv=3,
                          upconv_channels=16),
}
def make(name: str, seed: int = 0, **kw) -> CLAMP:
    torch.manual_seed(seed)
    args = dict(clip_model=name, pretrained=None, prompts=PROMPTS, decoder_width=32, decoder_layers=2,
                text_context_length=13, **TINY[name])
    args.update(kw)
    return CLAMP(**args)


@pytest.mark.parametrize("name,num_deconv", [("clamp-tiny-vit", 2), ("clamp-tiny-rn", 3)])
def test_official_layout_converts_to_equal_outputs(name, num_deconv):
    src = make(name, seed=0).eval()
    official = to_official(src, name, num_deconv)
    dst = make(name, seed=1).eval()
    converted = convert_state_dict({"meta": {}, "state_dict": official}, expected=dst.state_dict())
    assert set(converted) == set(dst.state_dict())  # every CLAMP key filled, nothing left over
    assert set(converted.dropped) == {"text_projection", "prompt_encoder.positional_embedding",
                                      "prompt_encoder.text_projection"}
    dst.load_state_dict(converted, strict=True)
    x = torch.randn(2, 3, src.image_tower.image_size, src.image_tower.image_size)
    with torch.no_grad():
        a, b = src(x), dst(x)
    for key in ("heatmaps", "score_maps", "prompt_embeddings"):
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0)


def test_describe_and_official_net_kwargs_rebuild_the_network():
    official = to_official(make("clamp-tiny-vit"), "clamp-tiny-vit", 2)
    info = describe(official)
    assert (info["kind"], info["image_size"], info["n_ctx"], info["text_context_length"], info["num_keypoints"],
            info["decoder_width"], info["decoder_layers"], info["num_deconv"]) == ("vit", 64, 8, 13, K, 32, 2, 2)
    assert info["clip_model"] is None  # not a released tower
    kwargs = official_net_kwargs(official, "clamp-tiny-vit")
    assert kwargs["class_embedding_twice"] and kwargs["quick_gelu"] and kwargs["text_heads"] is None
    model = CLAMP(clip_model="clamp-tiny-vit", pretrained=None, prompts=PROMPTS, heatmap_size=(16, 16), **kwargs)
    convert_state_dict(official, expected=model.state_dict())
    rn = official_net_kwargs(to_official(make("clamp-tiny-rn"), "clamp-tiny-rn", 3), "clamp-tiny-rn")
    assert not rn["class_embedding_twice"] and rn["image_size"] == 128 and rn["upconv_channels"] == 16


def test_released_tower_is_recognised_and_a_wrong_model_named():
    sd = {"backbone.class_embedding": torch.zeros(1024), "backbone.conv1.weight": torch.zeros(1024, 3, 14, 14),
          "backbone.positional_embedding": torch.zeros(257, 1), "contexts": torch.zeros(1, 8, 768),
          "text_encoder.positional_embedding": torch.zeros(13, 768),
          "keypoint_head.final_layer.weight": torch.zeros(17, 256, 1, 1),
          "context_decoder.memory_proj.1.weight": torch.zeros(256, 768)}
    sd.update({f"backbone.transformer.resblocks.{i}.ln_1.weight": torch.zeros(1) for i in range(24)})
    info = describe(sd)
    assert info["clip_model"] == "ViT-L-14" and info["image_size"] == 224
    assert official_net_kwargs(sd, "ViT-L-14")["text_heads"] == 8
    with pytest.raises(ValueError, match="ViT-L-14 CLAMP but model.net.clip_model is 'ViT-B-16'"):
        official_net_kwargs(sd, "ViT-B-16")


def test_unknown_keys_are_named_with_shapes():
    official = to_official(make("clamp-tiny-vit"), "clamp-tiny-vit", 2)
    official["prompt_encoder.transformer.resblocks.1.ln_1.weight"] = torch.zeros(64)
    official["head.extra"] = torch.zeros(7, 3)
    with pytest.raises(KeyError) as err:
        convert_state_dict(official)
    assert "prompt_encoder.transformer.resblocks.1.ln_1.weight [64]" in str(err.value)
    assert "head.extra [7, 3]" in str(err.value)
    with pytest.raises(ValueError, match="already in clamp_pl's layout"):
        convert_state_dict(make("clamp-tiny-vit").state_dict())
    # under a known prefix but not in the model (an FPN the released configs switch off): named both ways
    official = to_official(make("clamp-tiny-vit"), "clamp-tiny-vit", 2)
    official["backbone.fpn1.0.weight"] = torch.zeros(7, 3)
    with pytest.raises(ValueError, match=r"does not have: image_tower\.visual\.fpn1\.0\.weight \(official "
                                         r"backbone\.fpn1\.0\.weight\) \[7, 3\]"):
        convert_state_dict(official, expected=make("clamp-tiny-vit").state_dict())


def test_wrong_shapes_and_unfilled_parameters_are_named():
    official = to_official(make("clamp-tiny-vit"), "clamp-tiny-vit", 2)
    target = make("clamp-tiny-vit", n_ctx=4, text_context_length=9).state_dict()
    with pytest.raises(ValueError) as err:
        convert_state_dict(official, expected=target)
    message = str(err.value)
    assert "prompt_learner.ctx (official contexts) [8, 64] vs [4, 64]" in message
    assert "prompt_learner.text_tower.positional_embedding (official text_encoder.positional_embedding) [13, 64]" \
           " vs [9, 64]" in message
    del official["gamma"]
    with pytest.raises(ValueError, match=r"does not fill: gamma \[64\]"):
        convert_state_dict(official, expected=make("clamp-tiny-vit").state_dict())
    official["contexts"] = torch.zeros(8, 64)
    with pytest.raises(ValueError, match=r"'contexts' should be \[1, n_ctx, width\], got \[8, 64\]"):
        convert_state_dict(official)


def test_mmpose_checkpoint_with_numpy_meta_loads_safely(tmp_path):
    src = make("clamp-tiny-vit").eval()
    path = tmp_path / "best_AP_epoch_210.pth"
    torch.save(mmpose_checkpoint(to_official(src, "clamp-tiny-vit", 2)), path)
    ckpt = load_checkpoint_file(path)
    assert ckpt["meta"]["hook_msgs"]["best_score"] == pytest.approx(0.747)
    np.testing.assert_array_equal(ckpt["meta"]["flops"], [1.5, 2.5])
    dst = make("clamp-tiny-vit", seed=3).eval()
    dst.load_state_dict(convert_state_dict(ckpt, expected=dst.state_dict()))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(dst(x)["heatmaps"], src(x)["heatmaps"], rtol=0, atol=0)


def test_disallowed_pickled_type_is_refused_by_name(tmp_path, caplog):
    path = tmp_path / "odd.pth"
    torch.save(mmpose_checkpoint({"gamma": torch.zeros(2)}, args=argparse.Namespace(lr=1)), path)
    with pytest.raises(UnsafeCheckpointError, match=r"odd\.pth: refusing to unpickle argparse\.Namespace.*trust_checkpoint"):
        load_checkpoint_file(path)
    with caplog.at_level("WARNING"):
        ckpt = load_checkpoint_file(path, trust_checkpoint=True)
    assert ckpt["meta"]["args"].lr == 1 and "trust_checkpoint=true" in caplog.text
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        load_checkpoint_file(tmp_path / "missing.pth")


def test_text_context_length_limits_the_prompts():
    model = make("clamp-tiny-vit")
    assert model.prompt_learner.text_tower.positional_embedding.shape == (13, 64)
    with pytest.raises(ValueError, match="exceeds the text context length 13"):
        model.set_prompts(["a very long keypoint name indeed"] * K)


def test_imported_network_computes_the_official_forward_pass():
    """The network official_net_kwargs builds runs what the official modules run on the official weights
    (sequence-first blocks with QuickGELU, class embedding twice, contexts after SOT in a 13-position text
    context), re-derived here with plain torch ops; with CLIP's single class embedding it does not."""
    import open_clip

    official = to_official(make("clamp-tiny-vit", quick_gelu=True), "clamp-tiny-vit", 2)
    x = torch.randn(2, 3, 64, 64)
    ref_map, ref_pix = official_vit_forward(official, x, heads=2)
    tok = open_clip.get_tokenizer("clamp-tiny-vit")
    ids = torch.zeros(K, 5, dtype=torch.long)
    for i, name in enumerate(PROMPTS):
        seq = [tok.sot_token_id, *tok.encode(name), tok.eot_token_id]
        ids[i, : len(seq)] = torch.tensor(seq)
    ref_text = official_text_forward(official, ids, heads=2)

    def build(**override):
        kwargs = {**official_net_kwargs(official, "clamp-tiny-vit"), **override}
        model = CLAMP(clip_model="clamp-tiny-vit", pretrained=None, prompts=PROMPTS, heatmap_size=(16, 16), **kwargs)
        model.load_state_dict(convert_state_dict(official, expected=model.state_dict()))
        return model.eval()

    model = build()
    with torch.no_grad():
        fmap, _, pix = model.image_tower(x)
        torch.testing.assert_close(fmap, ref_map, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(pix, ref_pix, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(model.text_features(), ref_text, atol=1e-5, rtol=1e-4)
        assert not torch.allclose(build(class_embedding_twice=False).image_tower(x)[0], ref_map, atol=1e-3)
        assert not torch.allclose(build(quick_gelu=False).text_features(), ref_text, atol=1e-3)
