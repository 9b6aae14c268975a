"""Dense CLAMP features from open_clip's timm image towers.

open_clip builds the image tower of SigLIP / SigLIP 2, EVA02, PE-Core, ConvNeXt CLIPs and MobileCLIP /
MobileCLIP2 as an ``open_clip.timm_model.TimmModel``: a timm ``trunk`` (which may carry its own pooling and
classifier-as-projection head) followed by open_clip's ``head`` (empty, or dropout + linear / MLP projection).
The CLIP image embedding is ``visual.head(trunk.forward_head(trunk.forward_features(x)))``.

Two trunk families give dense features here:

* token trunks (timm ``VisionTransformer``: SigLIP / SigLIP 2, MobileCLIP-B, ...; timm ``Eva``: EVA02, PE-Core):
  ``feature_map`` = the last block's patch tokens as a grid (prefix tokens dropped, before the final norm, like
  the open_clip ViT tower's before ``ln_post``), read with timm's ``forward_intermediates``.
* spatial trunks (timm ``ConvNeXt``; timm ``FastVit``: MobileCLIP / MobileCLIP2): ``feature_map`` = the trunk's
  ``forward_features`` (ConvNeXt: the last stage; FastViT: the last stage and its final MobileOne expansion conv,
  which is what its head reads).

Embeddings. ``global_emb`` is exactly open_clip's image feature (the tower's full pooled head). ``pixel_emb`` is
the same pooled head applied to every feature position *alone*: a one-token sequence for token trunks, a 1x1 map
for spatial trunks. For average or token pooling that is the head's per-position part (final norm, projection),
as the open_clip ViT tower applies ``ln_post`` and ``proj`` per token. For a latent-query attention pool (SigLIP's
and PE-Core's MAP head) attention over a single key has weight 1, so each pixel gets the head's value path, output
projection and residual MLP: the embedding the pooled head would give if it attended to that pixel only (the
MaskCLIP reading of an attention pool; its learned query cannot be asked per pixel). Where the head is linear after
the pooling (FastViT's average pool + linear) the global embedding is the mean of the pixel embeddings.

Input size and stochastic depth are timm's own: :func:`rebuild_trunk` creates the trunk again through
``timm.create_model`` with ``img_size`` (positional table resampled by timm's helpers) and ``drop_path_rate``
(timm's linear per-block schedule, one draw per sample), then loads the built trunk's weights into it. Other input
sizes: spatial trunks take any multiple of the stride; timm ViTs are built with ``dynamic_img_size=True`` (the table
is resampled on the fly); Eva trunks (EVA02, PE-Core) run at the built size only, because timm's on-the-fly RoPE
path does not export to ONNX (its static path does), and CLAMP trains and predicts at one size anyway.

Tiny trunks of each family (for tests, random init) are registered in timm by :func:`register_tiny_timm_models`.
"""

from __future__ import annotations

import open_clip
import timm
import torch
from open_clip.timm_model import TimmModel
from timm.layers import resample_abs_pos_embed
from timm.models.convnext import ConvNeXt
from timm.models.eva import Eva
from timm.models.fastvit import FastVit
from timm.models.vision_transformer import VisionTransformer as TimmViT
from torch import nn

TOKEN_TRUNKS = (TimmViT, Eva)
SPATIAL_TRUNKS = (ConvNeXt, FastVit)
SUPPORTED = (
    "timm VisionTransformer (SigLIP, SigLIP 2, MobileCLIP-B), timm Eva (EVA02, PE-Core), "
    "timm ConvNeXt (convnext_*), timm FastVit (MobileCLIP, MobileCLIP2 S0-S4)"
)

#: tiny trunks of each family: name -> (timm architecture it shrinks, architecture overrides). Only widths and
#: depths change; everything else (pooling, RoPE, layer types) is the family's own.
TINY_TIMM_MODELS: dict[str, tuple[str, dict]] = {
    "clamp_tiny_vit_siglip": ("vit_base_patch16_siglip_256", dict(embed_dim=64, depth=2, num_heads=2)),
    "clamp_tiny_eva02": ("eva02_base_patch16_clip_224", dict(embed_dim=64, depth=2, num_heads=2)),
    "clamp_tiny_pe_core": (
        "vit_pe_core_base_patch16_224", dict(embed_dim=64, depth=2, num_heads=2, attn_pool_num_heads=2)
    ),
    "clamp_tiny_convnext": ("convnext_base", dict(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128))),
    "clamp_tiny_fastvit_mci": ("fastvit_mci0", dict(layers=(1, 1, 1, 1), embed_dims=(16, 32, 64, 128))),
}


def _tiny_entrypoint(name: str, base: str, arch: dict):
    def entrypoint(pretrained: bool = False, **kwargs):
        if pretrained:
            raise ValueError(f"{name} is a randomly initialised test model: it has no pretrained weights")
        return timm.create_model(base, pretrained=False, **{**arch, **kwargs})

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"{base} with {arch} (random init only)."
    return entrypoint


def register_tiny_timm_models() -> None:
    """Register :data:`TINY_TIMM_MODELS` with timm (idempotent)."""
    for name, (base, arch) in TINY_TIMM_MODELS.items():
        if not timm.is_model(name):
            timm.models.register_model(_tiny_entrypoint(name, base, arch))


# --------------------------------------------------------------------------------------------------------------
# building


def is_timm_tower(visual: nn.Module) -> bool:
    return isinstance(visual, TimmModel)


def trunk_kind(trunk: nn.Module, model_name: str) -> str:
    """``"token"`` or ``"spatial"``; an error naming the supported families otherwise."""
    if isinstance(trunk, TOKEN_TRUNKS):
        return "token"
    if isinstance(trunk, SPATIAL_TRUNKS):
        return "spatial"
    raise ValueError(
        f"{model_name}: no dense CLAMP features for the timm trunk {type(trunk).__name__}; supported timm "
        f"trunks: {SUPPORTED}"
    )


def _timm_cfg(model_name: str) -> tuple[dict, int]:
    cfg = open_clip.get_model_config(model_name)
    if cfg is None or "timm_model_name" not in cfg.get("vision_cfg", {}):
        raise ValueError(f"{model_name}: not an open_clip model with a timm image tower")
    return cfg["vision_cfg"], int(cfg["embed_dim"])


def _trunk_create_kwargs(vision_cfg: dict, embed_dim: int, model_name: str) -> tuple[dict, dict | None]:
    """The ``timm.create_model`` arguments open_clip's ``TimmModel`` builds its trunk with, and the
    ``reset_classifier`` arguments it applies afterwards (None: none). Mirrors ``TimmModel.__init__``."""
    pool = vision_cfg.get("timm_pool", "avg")
    proj = vision_cfg.get("timm_proj", "linear")
    if pool in ("abs_attn", "rot_attn"):
        raise ValueError(
            f"{model_name}: open_clip's '{pool}' pooling head on a timm trunk is not supported for dense features"
        )
    if proj not in ("linear", "mlp"):
        return dict(num_classes=0 if proj == "none" else embed_dim, global_pool=pool), None
    return {}, (dict(global_pool=pool) if pool else {})


def rebuild_trunk(visual: TimmModel, model_name: str, image_size: int, drop_path_rate: float) -> None:
    """Replace ``visual.trunk`` by the same timm architecture created for dense CLAMP use, with the built trunk's
    weights: ``img_size=image_size`` and ``dynamic_img_size=True`` for token trunks, ``drop_path_rate`` (timm's
    schedule; replaces the open_clip config's pretraining value, e.g. convnext_base's 0.1) for all, no patch
    dropout. Absolute positional tables are resampled (timm's ``resample_abs_pos_embed``, bicubic) when the built
    trunk has another grid."""
    old = visual.trunk
    kind = trunk_kind(old, model_name)
    vision_cfg, embed_dim = _timm_cfg(model_name)
    kwargs, reset = _trunk_create_kwargs(vision_cfg, embed_dim, model_name)
    kwargs["drop_path_rate"] = float(drop_path_rate)
    if kind == "token":
        # timm's dynamic RoPE grid (Eva) does not survive ONNX export: Eva trunks stay at the built size
        kwargs.update(img_size=int(image_size), dynamic_img_size=not isinstance(old, Eva))
    new = timm.create_model(vision_cfg["timm_model_name"], pretrained=False, **kwargs)
    if reset is not None:
        new.reset_classifier(0, **reset)
    state = old.state_dict()
    if kind == "token" and "pos_embed" in state and state["pos_embed"].shape != new.pos_embed.shape:
        prefix = 0 if new.no_embed_class else new.num_prefix_tokens
        old_grid = old.patch_embed.grid_size
        state["pos_embed"] = resample_abs_pos_embed(
            state["pos_embed"], new_size=new.patch_embed.grid_size, old_size=old_grid, num_prefix_tokens=prefix
        )
    mine = {k: tuple(v.shape) for k, v in new.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in state.items()}
    if mine != theirs:
        diff = sorted(set(mine.items()) ^ set(theirs.items()))[:6]
        raise RuntimeError(f"{model_name}: the rebuilt timm trunk differs from open_clip's ({diff} ...)")
    new.load_state_dict(state, strict=True)
    new.train(old.training)
    for p_new, p_old in zip(new.parameters(), old.parameters()):
        p_new.requires_grad_(p_old.requires_grad)
    visual.trunk = new
    visual.image_size = (int(image_size), int(image_size))


def timm_stride(model_name: str) -> int:
    """Input pixels per feature cell of ``model_name``'s timm trunk, from the architecture alone (built on the meta
    device: no memory, no weights). Token trunks: the patch size; spatial trunks: their last stage's reduction."""
    vision_cfg, _ = _timm_cfg(model_name)
    with torch.device("meta"):
        trunk = timm.create_model(vision_cfg["timm_model_name"], pretrained=False)
    trunk_kind(trunk, model_name)
    if isinstance(trunk, TOKEN_TRUNKS):
        ph, pw = trunk.patch_embed.patch_size
        if ph != pw:
            raise ValueError(f"{model_name}: non-square patches {ph}x{pw}")
        return int(ph)
    return int(trunk.feature_info[-1]["reduction"])


def tower_geometry(visual: TimmModel, image_size: int) -> tuple[int, tuple[int, int], int]:
    """``(stride, (gh, gw), out_channels)`` of a (rebuilt) timm tower at ``image_size``."""
    trunk = visual.trunk
    if isinstance(trunk, TOKEN_TRUNKS):
        stride = int(trunk.patch_embed.patch_size[0])
        channels = int(trunk.embed_dim)
    else:
        stride = int(trunk.feature_info[-1]["reduction"])
        channels = int(trunk.num_features)
    return stride, (image_size // stride, image_size // stride), channels


def check_supported_head(visual: TimmModel, model_name: str) -> None:
    """A latent attention pool with its own absolute positional table cannot run on one token."""
    pool = getattr(visual.trunk, "attn_pool", None)
    if pool is not None and getattr(pool, "pos_embed", None) is not None:
        raise ValueError(f"{model_name}: attention-pool heads with a positional table are not supported")


def embedding_modules(visual: TimmModel) -> list[nn.Module]:
    """Modules used only for the CLIP embeddings, not for ``feature_map``."""
    trunk = visual.trunk
    if isinstance(trunk, TOKEN_TRUNKS):
        mods = [trunk.norm, trunk.fc_norm, trunk.head]
        if getattr(trunk, "attn_pool", None) is not None:
            mods.append(trunk.attn_pool)
    else:
        mods = [trunk.head]
    return [*mods, visual.head]


# --------------------------------------------------------------------------------------------------------------
# forward


def _token_head(visual: TimmModel, tokens: torch.Tensor) -> torch.Tensor:
    """The pooled head on one-token sequences ``[M, 1, C] -> [M, D]`` (``forward_head`` with the pool reduced to
    the single token: an attention pool attends to it alone, token / average pooling return it)."""
    trunk = visual.trunk
    pool = getattr(trunk, "attn_pool", None)
    y = pool(tokens) if pool is not None else tokens[:, 0]
    y = trunk.head(trunk.head_drop(trunk.fc_norm(y)))
    return visual.head(y)


def forward_token(
    visual: TimmModel, x: torch.Tensor, embeddings: bool
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    trunk = visual.trunk
    if not trunk.dynamic_img_size and tuple(x.shape[-2:]) != tuple(trunk.patch_embed.img_size):
        raise ValueError(
            f"{type(trunk).__name__} towers (EVA02, PE-Core) run at their built input size "
            f"{tuple(trunk.patch_embed.img_size)}, got {tuple(x.shape[-2:])}"
        )
    if not embeddings:
        inter = trunk.forward_intermediates(x, indices=1, norm=False, output_fmt="NCHW", intermediates_only=True)
        return inter[-1], None, None
    final, inter = trunk.forward_intermediates(x, indices=1, norm=False, output_fmt="NCHW")
    feature_map = inter[-1]  # [B, C, gh, gw]: last block, before the final norm
    b, c, gh, gw = feature_map.shape
    global_emb = visual.head(trunk.forward_head(final))  # open_clip's image feature
    tokens = final[:, trunk.num_prefix_tokens :]  # [B, gh*gw, C] after the final norm, row-major
    pixel = _token_head(visual, tokens.reshape(b * gh * gw, 1, c))
    pixel_emb = pixel.reshape(b, gh, gw, -1).permute(0, 3, 1, 2)
    return feature_map, global_emb, pixel_emb


def forward_spatial(
    visual: TimmModel, x: torch.Tensor, embeddings: bool
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    trunk = visual.trunk
    feature_map = trunk.forward_features(x)  # [B, C, gh, gw]
    if not embeddings:
        return feature_map, None, None
    b, c, gh, gw = feature_map.shape
    global_emb = visual.head(trunk.forward_head(feature_map))
    cells = feature_map.permute(0, 2, 3, 1).reshape(b * gh * gw, c, 1, 1)  # every position as a 1x1 map
    pixel = visual.head(trunk.forward_head(cells))
    pixel_emb = pixel.reshape(b, gh, gw, -1).permute(0, 3, 1, 2)
    return feature_map, global_emb, pixel_emb
