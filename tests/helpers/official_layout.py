"""An official CLAMP (mmpose) state dict written from a clamp_pl CLAMP by a key table of its own, taken from the
official modules' structure (not from the converter under test)."""

from __future__ import annotations

import collections

import numpy as np
import open_clip
import torch

from clamp_pl.models import CLAMP

BLOCK = ["attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight", "attn.out_proj.bias",
         "ln_1.weight", "ln_1.bias", "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias",
         "ln_2.weight", "ln_2.bias"]
BN = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
ATTN = ["q_proj.weight", "k_proj.weight", "v_proj.weight", "proj.weight", "proj.bias"]


def official_keys(name: str, decoder_layers: int = 2, num_deconv: int = 2) -> dict[str, str]:
    """Official parameter name -> CLAMP parameter name, written from the official modules (mmpose CLAMP
    detector, CLIPVisionTransformer / CLIPResNetWithAttention, CLIPTextContextEncoder,
    PromptEncoderWithoutPositionemb, ContextDecoder, TopdownHeatmapSimpleHead) for a model of this shape."""
    cfg = open_clip.get_model_config(name)
    table: dict[str, str] = {}
    vis = "image_tower.visual."
    if name.endswith("vit"):
        for leaf in ["conv1.weight", "class_embedding", "positional_embedding", "ln_pre.weight", "ln_pre.bias",
                     "ln_post.weight", "ln_post.bias", "proj"]:
            table[f"backbone.{leaf}"] = vis + leaf
        for i in range(cfg["vision_cfg"]["layers"]):
            for leaf in BLOCK:
                table[f"backbone.transformer.resblocks.{i}.{leaf}"] = f"{vis}transformer.resblocks.{i}.{leaf}"
    else:
        for j in (1, 2, 3):
            table[f"backbone.conv{j}.weight"] = f"{vis}conv{j}.weight"
            for leaf in BN:
                table[f"backbone.bn{j}.{leaf}"] = f"{vis}bn{j}.{leaf}"
        for stage, blocks in enumerate(cfg["vision_cfg"]["layers"], start=1):
            for b in range(blocks):
                pre = f"layer{stage}.{b}."
                for j in (1, 2, 3):
                    table[f"backbone.{pre}conv{j}.weight"] = f"{vis}{pre}conv{j}.weight"
                    for leaf in BN:
                        table[f"backbone.{pre}bn{j}.{leaf}"] = f"{vis}{pre}bn{j}.{leaf}"
                if b == 0:  # every first block changes width or stride here
                    table[f"backbone.{pre}downsample.0.weight"] = f"{vis}{pre}downsample.0.weight"
                    for leaf in BN:
                        table[f"backbone.{pre}downsample.1.{leaf}"] = f"{vis}{pre}downsample.1.{leaf}"
        for proj in ["q_proj", "k_proj", "v_proj", "c_proj"]:
            for leaf in ["weight", "bias"]:
                table[f"backbone.attnpool.{proj}.{leaf}"] = f"{vis}attnpool.{proj}.{leaf}"
        table["backbone.attnpool.positional_embedding"] = f"{vis}attnpool.positional_embedding"
    txt = "prompt_learner.text_tower."
    for leaf in ["token_embedding.weight", "positional_embedding", "ln_final.weight", "ln_final.bias",
                 "text_projection"]:
        table[f"text_encoder.{leaf}"] = txt + leaf
    for i in range(cfg["text_cfg"]["layers"]):
        for leaf in BLOCK:
            table[f"text_encoder.transformer.resblocks.{i}.{leaf}"] = f"{txt}transformer.resblocks.{i}.{leaf}"
    for leaf in BLOCK:
        table[f"prompt_encoder.transformer.resblocks.0.{leaf}"] = f"prompt_encoder.block.{leaf}"
    table["prompt_encoder.ln_final.weight"] = "prompt_encoder.ln.weight"
    table["prompt_encoder.ln_final.bias"] = "prompt_encoder.ln.bias"
    cd = "context_decoder."
    for mod, idx in [("memory_proj", (0, 1, 2)), ("text_proj", (0, 1)), ("out_proj", (0, 1))]:
        for i in idx:
            for leaf in ["weight", "bias"]:
                table[f"{cd}{mod}.{i}.{leaf}"] = f"{cd}{mod}.{i}.{leaf}"
    for i in range(decoder_layers):
        for attn in ["self_attn", "cross_attn"]:
            for leaf in ATTN:
                table[f"{cd}decoder.{i}.{attn}.{leaf}"] = f"{cd}decoder.{i}.{attn}.{leaf}"
        for leaf in ["norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias", "norm3.weight", "norm3.bias",
                     "mlp.0.weight", "mlp.0.bias", "mlp.3.weight", "mlp.3.bias"]:
            table[f"{cd}decoder.{i}.{leaf}"] = f"{cd}decoder.{i}.{leaf}"
    for official, ours in [("keypoint_head", "keypoint_head"), ("upconv_head", "upsample_head")]:
        for d in range(num_deconv):
            table[f"{official}.deconv_layers.{3 * d}.weight"] = f"{ours}.deconv_layers.{3 * d}.weight"
            for leaf in BN:
                table[f"{official}.deconv_layers.{3 * d + 1}.{leaf}"] = f"{ours}.deconv_layers.{3 * d + 1}.{leaf}"
        for leaf in ["weight", "bias"]:
            table[f"{official}.final_layer.{leaf}"] = f"{ours}.final_layer.{leaf}"
    table["gamma"] = "gamma"
    table["logit_scale"] = "logit_scale"
    table["contexts"] = "prompt_learner.ctx"
    return table


def to_official(model: CLAMP, name: str, num_deconv: int) -> dict[str, torch.Tensor]:
    """The model's weights under the official names, plus the official parameters CLAMP does not have."""
    ours = model.state_dict()
    table = official_keys(name, num_deconv=num_deconv)
    assert sorted(table.values()) == sorted(ours), "the key table covers every CLAMP parameter exactly once"
    sd = {official: ours[mine].clone() for official, mine in table.items()}
    sd["contexts"] = sd["contexts"].unsqueeze(0)  # official [1, n_ctx, width]
    d, w = model.image_tower.embed_dim, model.prompt_learner.text_tower.width
    sd["text_projection"] = torch.randn(d, d)
    sd["prompt_encoder.positional_embedding"] = torch.randn(model.num_keypoints, d)
    sd["prompt_encoder.text_projection"] = torch.randn(w, d)
    return sd


def mmpose_checkpoint(state_dict, **meta_extra):
    """What mmcv 1.4's save_checkpoint writes: meta (versions, config text, numpy scores), weights, optimiser."""
    meta = {"mmcv_version": "1.4.0", "time": "Tue Jun 27 10:00:00 2023", "config": "model = dict(type='CLAMP')",
            "epoch": 210, "iter": 11550, "seed": np.int64(0),
            "hook_msgs": {"best_score": np.float64(0.747), "best_ckpt": "work_dirs/best_AP_epoch_210.pth"},
            "env_info": "sys.platform: linux", "flops": np.array([1.5, 2.5], dtype=np.float32),
            "dtype": np.dtype("float32"), **meta_extra}
    sd = collections.OrderedDict(("module." + k, v) for k, v in state_dict.items())
    return {"meta": meta, "state_dict": sd, "optimizer": {"state": {}, "param_groups": [{"lr": 5e-6}]}}


# ---------------------------------------------------------------------------------------------------------------
# the official forward passes, re-derived from the official modules with plain torch ops on the official keys


def _ln(x: torch.Tensor, sd: dict, key: str) -> torch.Tensor:
    return torch.nn.functional.layer_norm(x, x.shape[-1:], sd[f"{key}.weight"], sd[f"{key}.bias"])


def _block_seq_first(x: torch.Tensor, sd: dict, key: str, heads: int, mask: torch.Tensor | None) -> torch.Tensor:
    """One official ResidualAttentionBlock on [L, B, W]: x + attn(ln_1 x); x + c_proj(QuickGELU(c_fc(ln_2 x)))."""
    import torch.nn.functional as F

    y = _ln(x, sd, f"{key}.ln_1")
    w = x.shape[-1]
    y, _ = F.multi_head_attention_forward(
        y, y, y, w, heads, sd[f"{key}.attn.in_proj_weight"], sd[f"{key}.attn.in_proj_bias"], None, None, False,
        0.0, sd[f"{key}.attn.out_proj.weight"], sd[f"{key}.attn.out_proj.bias"], training=False,
        need_weights=False, attn_mask=mask)
    x = x + y
    h = F.linear(_ln(x, sd, f"{key}.ln_2"), sd[f"{key}.mlp.c_fc.weight"], sd[f"{key}.mlp.c_fc.bias"])
    h = h * torch.sigmoid(1.702 * h)  # QuickGELU
    return x + F.linear(h, sd[f"{key}.mlp.c_proj.weight"], sd[f"{key}.mlp.c_proj.bias"])


def official_vit_forward(sd: dict, x: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIPVisionTransformer.forward (get_embeddings, no FPN) at its trained size: (last-block patch map
    [B, W, g, g], pixel embeddings [B, D, g, g]). The class token gets class_embedding twice."""
    import torch.nn.functional as F

    p = "backbone."
    x = F.conv2d(x, sd[p + "conv1.weight"], stride=sd[p + "conv1.weight"].shape[-1])
    b, w, g, _ = x.shape
    x = x.reshape(b, w, g * g).permute(0, 2, 1)
    cls = sd[p + "class_embedding"]
    x = torch.cat([cls + torch.zeros(b, 1, w), x], dim=1)
    pos = sd[p + "positional_embedding"].clone()
    pos[0] = pos[0] + cls
    x = _ln(x + pos, sd, p + "ln_pre").permute(1, 0, 2)  # [L, B, W]
    n = len({k.split(".")[3] for k in sd if k.startswith(p + "transformer.resblocks.")})
    for i in range(n):
        x = _block_seq_first(x, sd, f"{p}transformer.resblocks.{i}", heads, None)
    x = x.permute(1, 0, 2)
    fmap = x[:, 1:].permute(0, 2, 1).reshape(b, w, g, g)
    emb = _ln(x, sd, p + "ln_post") @ sd[p + "proj"]
    return fmap, emb[:, 1:].reshape(b, g, g, -1).permute(0, 3, 1, 2)


def official_text_forward(sd: dict, token_ids: torch.Tensor, heads: int) -> torch.Tensor:
    """CLIPTextContextEncoder.forward for one image: ``token_ids`` [K, 5] (SOT, name, EOT, zero padding, as the
    official tokenizer writes them at context_length 5); the contexts go right after SOT; EOT read at
    argmax + n_ctx. Returns [K, D]."""
    p = "text_encoder."
    emb = sd[p + "token_embedding.weight"][token_ids]  # [K, 5, W]
    k = emb.shape[0]
    ctx = sd["contexts"].expand(k, -1, -1)
    x = torch.cat([emb[:, :1], ctx, emb[:, 1:]], dim=1) + sd[p + "positional_embedding"]
    length = x.shape[1]
    mask = torch.full((length, length), float("-inf")).triu(1)
    x = x.permute(1, 0, 2)
    n = len({kk.split(".")[3] for kk in sd if kk.startswith(p + "transformer.resblocks.")})
    for i in range(n):
        x = _block_seq_first(x, sd, f"{p}transformer.resblocks.{i}", heads, mask)
    x = _ln(x.permute(1, 0, 2), sd, p + "ln_final")
    eot = token_ids.argmax(dim=-1) + ctx.shape[1]
    return x[torch.arange(k), eot] @ sd[p + "text_projection"]
